"""A tiny Z-Image pipeline, built from configs in code, offline (random weights).

Z-Image's layout at toy size: a single-stream ZImageTransformer2DModel (2 x 2 patches, caption and noise
refiner blocks, 3-axis RoPE), a Qwen3 text encoder whose second-to-last hidden states are the caption
features, read through a Qwen2-style byte-level BPE tokenizer with a Qwen3-style chat template, the FLUX
VAE's scaling and shift, and Z-Image-Turbo's scheduler config (a static shift of 3). A 64 x 64 image has a
4 x 16 x 16 latent, as the other tiny pipelines (a 4x VAE with 4 latent channels; the real VAE is 8x, 16
channels). Tokenizer and models save with ``save_pretrained`` and load back with ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from tokenizers import pre_tokenizers
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

from pxpo.world.architecture import VOCABULARY, _eval, vae_config

TEXT_WIDTH = 32  # the Qwen3 encoder's hidden size = the transformer's caption feature width
MAX_TOKENS = 64  # the tokenizer's model_max_length: the chat template and a short caption fit
END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
FLUX_VAE_SCALING, FLUX_VAE_SHIFT = 0.3611, 0.1159  # Tongyi-MAI/Z-Image-Turbo's vae/config.json (the FLUX VAE)
TURBO_SHIFT = 3.0  # Tongyi-MAI/Z-Image-Turbo's scheduler_config.json (use_dynamic_shifting false)

# Qwen3's chat template, reduced to what ZImagePipeline asks of it: one user message, the generation prompt, and
# the empty thinking block that Qwen3 adds when thinking is switched off (the pipeline switches it on).
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def build_qwen_tokenizer(words: Iterable[str] = VOCABULARY, max_length: int = MAX_TOKENS) -> Qwen2Tokenizer:
    """A Qwen2Tokenizer (byte-level BPE, Qwen's pre-tokenizer regex) in which every word of ``words`` after a space
    is one token; built deterministically, offline.

    Qwen's layout: the 256-symbol byte-level alphabet, words carrying their leading space as ``Ġ``, and the
    special tokens ``<|endoftext|>`` (padding), ``<|im_start|>``, ``<|im_end|>``. The merges grow each word from
    its start: (Ġ, c_1), (Ġc_1, c_2), ... Only a pair whose left side starts with ``Ġ`` can merge, and a
    pre-tokenized word holds one such pair at a time, so every listed word becomes one token whatever the merges'
    order (a word without a leading space, e.g. first in a line, stays single bytes).
    """
    words = sorted({w.lower() for w in words})
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet)}
    merges: dict[tuple[str, str], None] = {}
    for word in words:
        prefix = "Ġ"
        for char in word:
            merges[(prefix, char)] = None
            prefix += char
            vocab.setdefault(prefix, len(vocab))
    for special in (END_OF_TEXT, IM_START, IM_END):
        vocab[special] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=list(merges),
        model_max_length=max_length,
        extra_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
    )


def qwen3_config(tokenizer: Qwen2Tokenizer) -> Qwen3Config:
    """A 2-layer Qwen3 of width 32 (grouped-query attention: 2 heads, 1 key/value head)."""
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        tie_word_embeddings=False,
    )


def z_image_transformer_config() -> dict:
    """ZImageTransformer2DModel: 4-channel latents in 2 x 2 patches, width 32 (2 heads of 16 = RoPE axes 4 + 6 + 6),
    2 main blocks and 1 block in each refiner; caption features of the text encoder's width."""
    return dict(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=TEXT_WIDTH,
        axes_dims=[4, 6, 6],
        axes_lens=[2 * MAX_TOKENS, 256, 256],  # caption positions (the image's first axis sits after them), token rows, columns
    )


def build_tiny_z_image_pipeline(seed: int = 0) -> ZImagePipeline:
    """A ZImagePipeline at toy size with random weights drawn from ``seed``, for tests and smoke runs."""
    torch.manual_seed(seed)
    tokenizer = build_qwen_tokenizer()
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=TURBO_SHIFT, use_dynamic_shifting=False),
        vae=AutoencoderKL(**vae_config(), scaling_factor=FLUX_VAE_SCALING, shift_factor=FLUX_VAE_SHIFT),
        text_encoder=Qwen3Model(qwen3_config(tokenizer)),
        tokenizer=tokenizer,
        transformer=ZImageTransformer2DModel(**z_image_transformer_config()),
    )
    return _eval(pipe)
