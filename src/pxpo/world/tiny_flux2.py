"""Tiny FLUX.2 and FLUX.2 [klein] pipelines with random weights, built in code, offline.

The same classes as the hub models: a Flux2Transformer2DModel on packed tokens, an AutoencoderKLFlux2
(whose batch norm holds the latent statistics), a FlowMatchEulerDiscreteScheduler, and the text encoders
the pipelines type-hint: FLUX.2's Mistral3ForConditionalGeneration (with a tokenizer in the hub processor's place), klein's
Qwen3ForCausalLM with a Qwen2 tokenizer. At toy size: a 64 x 64 image has a 4 x 16 x 16 VAE latent
(4x downsampling) that the pipeline patchifies to 16 x 8 x 8, i.e. 64 tokens of width 16.

The pipelines take the text encoder's hidden states after layers (10, 20, 30) (FLUX.2) or (9, 18, 27)
(klein) by default, so the tiny encoders keep that depth (30 and 27 layers) at width 16.
The tokenizers are byte-level BPE (as Mistral's and Qwen's are) over the world's vocabulary; they save
and load with ``save_pretrained`` / ``from_pretrained`` like the hub's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import pre_tokenizers

from pxpo.world.architecture import VOCABULARY, _eval

TEXT_WIDTH = 16
MAX_TOKENS = 64  # the tokenizers' model_max_length: pxpo and the test rows pad prompts to this many tokens
# words of FLUX.2's system message, so that it takes a few tokens and the prompt fits after it
SYSTEM_WORDS = (
    "you are ai that reasons about image descriptions give structured responses focusing object relationships attribution "
    "actions without speculation"
).split()

MISTRAL_SPECIAL = tuple(
    "<unk> <s> </s> <pad> [INST] [/INST] [SYSTEM_PROMPT] [/SYSTEM_PROMPT] [IMG] [IMG_BREAK] [IMG_END]".split()
)
QWEN_SPECIAL = tuple("<|endoftext|> <|im_start|> <|im_end|> <think> </think>".split())

# Mistral's chat layout, for messages whose content is a string or a list of {"type": "text"} parts.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['content'] is string %}{% set text = m['content'] %}"
    "{% else %}{% set text = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% endif %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]{{ text }}[/INST]{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)
# Qwen3's chat layout, with its empty thinking block when ``enable_thinking=False``.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def byte_level_bpe(words: Iterable[str], special_tokens: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a byte-level BPE (GPT-2 layout) in which every word after a space is one token.

    The merges grow each " word" (``Ġword``) from its start: a pre-token holds one ``Ġ``, and every prefix of
    a listed word has a merge, so the word is completed whatever other merges exist; any other text splits
    into known pieces and single bytes. Deterministic (no trainer ties), offline.
    """
    vocab = {token: i for i, token in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges: dict[tuple[str, str], None] = {}
    for word in sorted({w.lower() for w in words}):
        prefix = "Ġ"
        for char in word:
            merges[(prefix, char)] = None
            prefix += char
            vocab.setdefault(prefix, len(vocab))
    for token in special_tokens:
        vocab[token] = len(vocab)
    return vocab, list(merges)


def build_mistral_tokenizer(max_length: int = MAX_TOKENS):
    """FLUX.2's tokenizer: a byte-level BPE tokenizer with Mistral's special tokens and chat layout.

    The hub's is a PixtralProcessor, which needs torchvision for images; FLUX.2 encodes text only, through
    ``apply_chat_template``, which the tokenizer has the same way (and ``AutoProcessor`` loads it back).
    """
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab, merges = byte_level_bpe([*VOCABULARY, *SYSTEM_WORDS], MISTRAL_SPECIAL)
    backend = Tokenizer(BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=list(MISTRAL_SPECIAL[4:]), model_max_length=max_length,
    )  # fmt: skip
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    return tokenizer


def build_qwen_tokenizer(max_length: int = MAX_TOKENS):
    """A Qwen2TokenizerFast (FLUX.2 [klein]'s tokenizer): byte-level BPE with Qwen's special tokens and chat layout."""
    from transformers import Qwen2TokenizerFast

    vocab, merges = byte_level_bpe(VOCABULARY, QWEN_SPECIAL)
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=merges, model_max_length=max_length,
                                   additional_special_tokens=list(QWEN_SPECIAL[1:]))  # fmt: skip
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def tiny_mistral3(tokenizer, num_layers: int = 30):
    """A Mistral3ForConditionalGeneration of width 16 (and a one-layer Pixtral vision tower FLUX.2 does not use for text)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    text = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=num_layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=8,
                                 image_size=32, patch_size=16)  # fmt: skip
    config = Mistral3Config(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
                            spatial_merge_size=1)  # fmt: skip
    return Mistral3ForConditionalGeneration(config)


def tiny_qwen3(tokenizer, num_layers: int = 27):
    """A Qwen3ForCausalLM of width 16."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=num_layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return Qwen3ForCausalLM(config)


def tiny_flux2_vae():
    """AutoencoderKLFlux2 with 4x downsampling (3 x 64 x 64 <-> 4 x 16 x 16) and drawn batch-norm statistics.

    A fresh batch norm holds mean 0 and variance 1, under which decoding would not show whether the latent
    normalisation is inverted; drawn statistics make it matter.
    """
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(
        latent_channels=4, block_out_channels=(16, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False,
        sample_size=64,
    )  # fmt: skip
    with torch.no_grad():
        vae.bn.running_mean.normal_(0, 0.5)
        vae.bn.running_var.uniform_(0.5, 1.0)
    return vae


def tiny_flux2_transformer(guidance_embeds: bool):
    """Flux2Transformer2DModel: 16-channel tokens (4 latent channels x 2 x 2), width 32, one double and one single block."""
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=3 * TEXT_WIDTH, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )  # fmt: skip


def flux2_scheduler():
    """FlowMatchEulerDiscreteScheduler as FLUX.2 ships it: dynamic shifting (the pipeline passes its empirical mu)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)


def build_tiny_flux2_pipeline(seed: int = 0):
    """A Flux2Pipeline at toy size with random weights drawn from ``seed`` (guidance embedding, no CFG)."""
    from diffusers import Flux2Pipeline

    torch.manual_seed(seed)
    tokenizer = build_mistral_tokenizer()
    return _eval(Flux2Pipeline(scheduler=flux2_scheduler(), vae=tiny_flux2_vae(), text_encoder=tiny_mistral3(tokenizer),
                               tokenizer=tokenizer, transformer=tiny_flux2_transformer(guidance_embeds=True)))  # fmt: skip


def build_tiny_flux2_klein_pipeline(seed: int = 0, is_distilled: bool = False):
    """A Flux2KleinPipeline at toy size with random weights drawn from ``seed``: the base model (CFG with the empty
    prompt), or with ``is_distilled`` the step-distilled one (no guidance)."""
    from diffusers import Flux2KleinPipeline

    torch.manual_seed(seed)
    tokenizer = build_qwen_tokenizer()
    return _eval(Flux2KleinPipeline(scheduler=flux2_scheduler(), vae=tiny_flux2_vae(), text_encoder=tiny_qwen3(tokenizer),
                                    tokenizer=tokenizer, transformer=tiny_flux2_transformer(guidance_embeds=False),
                                    is_distilled=is_distilled))  # fmt: skip
