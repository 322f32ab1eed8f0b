"""Tiny Stable-Diffusion v1, SD3 and FLUX architectures, built from configs in code, offline.

The same classes as SD v1.x (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer,
DDIMScheduler) at toy size: a 64 x 64 image has a 4 x 16 x 16 latent (4x VAE downsampling, so a
latent cell covers 4 x 4 pixels: fine enough for pixel feedback). About 4.8M parameters in all.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

IMAGE_SIZE = 64
LATENT_SIZE = 16
MAX_TOKENS = 16  # a short context: 77 padded tokens would drown a three-word prompt
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Words of the world's captions; any other word is split into byte-level pieces.
VOCABULARY = (
    "a an the of in on with and at by under during near red yellow blue green white black grey orange "
    "taxi car cars bus traffic street road city buildings night day sunset sunrise noon dusk evening morning "
    "nature landscape lake river sea ocean water trees tree forest pine mountains mountain snow sun sky clouds "
    "grass field hills portrait man woman person beach sand hat cap hair wearing standing smiling blond brown "
    "dark short long sunny cloudy calm small large big many few one two three busy empty"
).split()

def build_tokenizer(words: Iterable[str] = VOCABULARY, max_length: int = MAX_TOKENS) -> CLIPTokenizer:
    """A CLIPTokenizer in which every word of ``words`` is one token; built deterministically, offline.

    CLIP's layout: byte-level alphabet, ``</w>`` word ends, start and end tokens, lower case. The
    BPE merges grow each word from its end: (c_{n-1}, c_n</w>), (c_{n-2}, c_{n-1}c_n</w>), ...
    Only a pair whose right side ends a word can merge, and a word holds one such pair at a time,
    so every listed word becomes exactly one token whatever the merges' order; other words split
    into a known ending and single characters. (tokenizers' BpeTrainer breaks ties differently
    from run to run, which would change the token ids of the same model.)
    """
    words = sorted({w.lower() for w in words})
    for word in words:
        if not (word.isascii() and word.isalpha()):
            raise ValueError(f"vocabulary word {word!r}: expected lower-case ASCII letters")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*alphabet, *(c + "</w>" for c in alphabet)])}
    merges: dict[tuple[str, str], None] = {}
    for word in words:
        suffix = word[-1] + "</w>"
        for char in reversed(word[:-1]):
            merges[(char, suffix)] = None
            suffix = char + suffix
            vocab.setdefault(suffix, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=max_length)


def unet_config() -> dict:
    """UNet2DConditionModel: 16 x 16 latents, channels (32, 64, 128), cross-attention in the lower blocks."""
    return dict(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def vae_config() -> dict:
    """AutoencoderKL with 4x downsampling: 3 x 64 x 64 <-> 4 x 16 x 16."""
    return dict(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        mid_block_add_attention=False,
    )


def text_encoder_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """A 2-layer CLIP text encoder of width 32."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def scheduler_config() -> dict:
    """Stable Diffusion v1's noise schedule, as a DDIMScheduler config."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A randomly initialised tiny pipeline (weights drawn from ``seed``), for tests and smoke runs."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**vae_config()),
        text_encoder=CLIPTextModel(text_encoder_config(tokenizer)),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**unet_config()),
        scheduler=DDIMScheduler(**scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sd15_random_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Stable Diffusion v1.5's architecture (860M-parameter UNet, 512 px, 4 x 64 x 64 latents) with random
    weights and a tiny vocabulary: for speed and memory measurements where no checkpoint can be downloaded."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # the SD v1 defaults otherwise
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(**scheduler_config()),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def _eval(pipe):
    """Every module in eval mode, as ``from_pretrained`` leaves them (T5's dropout would make text embeddings random)."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


# --- flow-matching families -------------------------------------------------------------------------
def clip_with_projection(tokenizer: CLIPTokenizer, hidden_size: int = 32, num_layers: int = 2):
    """A tiny CLIPTextModelWithProjection (SD3 uses two: penultimate hidden states and pooled projections)."""
    from transformers import CLIPTextModelWithProjection

    config = text_encoder_config(tokenizer)
    config.hidden_size, config.num_hidden_layers, config.projection_dim = hidden_size, num_layers, hidden_size
    return CLIPTextModelWithProjection(config)


def sd3_transformer_config() -> dict:
    """SD3Transformer2DModel: 4 x 16 x 16 latents in 2 x 2 patches (64 tokens), width 128, 6 joint blocks."""
    return dict(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=6,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=64,  # two CLIP encoders of width 32, concatenated
        caption_projection_dim=128,
        pooled_projection_dim=64,  # their pooled projections, concatenated
        pos_embed_max_size=LATENT_SIZE // 2,
    )


def flow_scheduler_config() -> dict:
    """FlowMatchEulerDiscreteScheduler settings of the tiny flow model (no timestep shift at 64 px)."""
    return dict(num_train_timesteps=1000, shift=1.0)


def build_tiny_sd3_pipeline(seed: int = 0, vae: AutoencoderKL | None = None):
    """A StableDiffusion3Pipeline at toy size (no T5): random weights drawn from ``seed``; ``vae`` reused if given."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    return _eval(StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**sd3_transformer_config()),
        scheduler=FlowMatchEulerDiscreteScheduler(**flow_scheduler_config()),
        vae=vae if vae is not None else AutoencoderKL(**vae_config(), shift_factor=0.0),
        text_encoder=clip_with_projection(tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=clip_with_projection(tokenizer),
        tokenizer_2=build_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    ))


def build_tiny_flux_pipeline(seed: int = 0):
    """A FluxPipeline at toy size with random weights (guidance embedding, packed 2 x 2 latents), for tests.

    FLUX's second text encoder is a T5 encoder; here it is a 1-layer T5 with the world's CLIP-layout
    tokenizer (no SentencePiece model can be built offline), which the pipeline uses the same way.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    tokenizer_2 = build_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    return _eval(FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**flow_scheduler_config(), use_dynamic_shifting=True,
                                                  base_image_seq_len=16, max_image_seq_len=256, base_shift=0.5, max_shift=1.15),
        vae=AutoencoderKL(**vae_config(), shift_factor=0.0),
        text_encoder=CLIPTextModel(text_encoder_config(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    ))  # fmt: skip
