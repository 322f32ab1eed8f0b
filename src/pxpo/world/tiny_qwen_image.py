"""A tiny Qwen-Image pipeline (QwenImagePipeline) built from configs in code, offline, with random weights.

The same classes as Qwen/Qwen-Image (QwenImageTransformer2DModel, AutoencoderKLQwenImage, a Qwen2.5-VL text
encoder with a Qwen2 tokenizer, FlowMatchEulerDiscreteScheduler with Qwen-Image's dynamic shift) at toy size:
a 64 x 64 image has a 4 x 16 x 16 latent (the VAE downsamples 4x), packed into 8 x 8 tokens of 2 x 2 cells.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import AddedToken, pre_tokenizers
from transformers import Qwen2Tokenizer

from pxpo.world.architecture import VOCABULARY, _eval

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
# The words of QwenImagePipeline's prompt template: with each one token, its system prompt is 34 tokens long, as
# with Qwen2.5-VL's own tokenizer (the pipeline drops exactly 34 tokens: prompt_template_encode_start_idx).
TEMPLATE_WORDS = "image by detailing color shape size texture quantity text spatial relationships objects background".split()
LINE_START_WORDS = ("system", "Describe", "user", "assistant")  # the template's words at a line start (no space before)


def build_qwen_tokenizer(words: Iterable[str] = (*VOCABULARY, *TEMPLATE_WORDS)) -> Qwen2Tokenizer:
    """A Qwen2Tokenizer (Qwen's byte-level BPE and pre-tokenizer) in which every word after a space is one token.

    Byte-level alphabet; each word w = c0 c1 ... grows from its leading space marker: merges (Ġ, c0), (Ġc0, c1), ...
    Among these only a pair whose left side starts with Ġ can merge, and a piece holds one such pair at a time, so
    each listed word becomes one token; other words split into a known start and shorter pieces. The template's
    line-start words (no space before) are merged the same way without the marker, ranked after all the others.
    Deterministic, no download; ``save_pretrained`` / ``from_pretrained`` round-trip it.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet)}
    merges: dict[tuple[str, str], None] = {}
    for chain in [*("Ġ" + w for w in sorted({w.lower() for w in words})), *LINE_START_WORDS]:
        token = chain[0]
        for char in chain[1:]:
            merges[(token, char)] = None
            token += char
            vocab.setdefault(token, len(vocab))
    for special in SPECIAL_TOKENS:
        vocab[special] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=list(merges), model_max_length=32768)
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS], special_tokens=True)
    return tokenizer


def qwen_text_encoder(tokenizer: Qwen2Tokenizer, hidden_size: int = 32):
    """A 2-layer Qwen2.5-VL (text width 32, a 1-block vision tower of width 16): the pipeline reads its last hidden states."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vision_ids = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>"])
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default"},
            "rope_theta": 1000000.0, "max_position_embeddings": 2048, "bos_token_id": tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": hidden_size},
        vocab_size=len(tokenizer), hidden_size=hidden_size,
        vision_start_token_id=vision_ids[0], vision_end_token_id=vision_ids[1], image_token_id=vision_ids[2],
    )  # fmt: skip
    return Qwen2_5_VLForConditionalGeneration(config)


def qwen_vae_config() -> dict:
    """AutoencoderKLQwenImage with 4x downsampling and 4 latent channels: 3 x 64 x 64 <-> 4 x (1 frame) x 16 x 16, with
    latents_mean / latents_std away from 0 / 1, so that decoding must un-normalise as the pipeline does."""
    return dict(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0],
    )  # fmt: skip


def qwen_scheduler_config() -> dict:
    """Qwen-Image's scheduler (dynamic exponential shift, shift_terminal 0.02), its shift range scaled to tiny token counts."""
    return dict(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=16,
        max_image_seq_len=256, shift_terminal=0.02, time_shift_type="exponential",
    )  # fmt: skip


def build_tiny_qwen_image_pipeline(seed: int = 0):
    """A QwenImagePipeline at toy size with random weights drawn from ``seed`` (no true CFG unless a negative prompt is given)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = build_qwen_tokenizer()
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    return _eval(QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**qwen_scheduler_config()),
        vae=AutoencoderKLQwenImage(**qwen_vae_config()),
        text_encoder=qwen_text_encoder(tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    ))  # fmt: skip
