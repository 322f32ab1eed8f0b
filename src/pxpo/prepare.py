"""Making a pipeline trainable: frozen parts, LoRA (peft) or the whole denoiser, precision, the optimizer."""

from __future__ import annotations

import torch
from diffusers.training_utils import cast_training_params

from pxpo.config import ModelConfig, TrainConfig
from pxpo.families import ModelFamily

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def prepare_trainable(family: ModelFamily, model: ModelConfig, lora_seed: int, device: torch.device) -> list[torch.nn.Parameter]:
    """Freeze the VAE and text encoders (and the denoiser under LoRA), cast frozen weights to the mixed-precision
    dtype, add the LoRA adapter (its A matrices drawn from ``lora_seed``, not global state); return the trained
    parameters (float32)."""
    pipe = family.pipe
    pipe.to(device)
    frozen = [pipe.vae, *family.text_encoders]
    for module in frozen:
        module.requires_grad_(False).eval()  # an injected pipeline built from configs starts in train mode
    if model.lora:
        frozen.append(family.denoiser)
    weight_dtype = WEIGHT_DTYPES[model.mixed_precision]
    if weight_dtype != torch.float32:
        for module in frozen:
            module.to(dtype=weight_dtype)
    if model.lora:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(lora_seed)
            family.add_lora(model.lora_rank, model.lora_alpha)
        cast_training_params(family.denoiser, dtype=torch.float32)
    else:
        family.denoiser.requires_grad_(True)
    if model.gradient_checkpointing:
        family.denoiser.enable_gradient_checkpointing()
    return [p for p in family.denoiser.parameters() if p.requires_grad]


def build_optimizer(params: list[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the config's settings."""
    return torch.optim.AdamW(
        params, lr=train.learning_rate, betas=(train.adam_beta1, train.adam_beta2), weight_decay=train.adam_weight_decay, eps=train.adam_epsilon
    )
