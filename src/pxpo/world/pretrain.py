"""Pre-train the bundled models on the procedural world (``pxpo pretrain``).

1. AutoencoderKL (4x downsampling) on rendered images: L1 + MSE reconstruction, a small KL term;
   the latent scaling factor is set to 1 / std of the training latents (as SD does).
2. UNet2DConditionModel and CLIPTextModel jointly, epsilon prediction on the VAE latents with the
   Stable Diffusion v1 noise schedule, captions dropped 10 % of the time for classifier-free
   guidance, an EMA of the UNet's weights saved.
3. SegformerForSemanticSegmentation (a tiny config) on the renders' label maps.

Everything is seeded and sized in optimizer steps (not seconds), so a re-run repeats the work.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel, compute_density_for_timestep_sampling
from pxpo.progress import bar
from transformers import CLIPTextModel, SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

from pxpo.io import atomic_directory
from pxpo.world import WEIGHTS
from pxpo.world.architecture import (
    build_tiny_sd3_pipeline,
    build_tokenizer,
    scheduler_config,
    text_encoder_config,
    unet_config,
    vae_config,
)
from pxpo.world.scenes import CLASSES, ID2LABEL, LABEL2ID, render_dataset

logger = logging.getLogger(__name__)

HELD_OUT_SEED = 10_000_000  # renders from this seed on are never trained on
BUNDLED_VAE = WEIGHTS / "pxpo-tiny" / "vae"


@dataclass
class PretrainSettings:
    """Sizes of the three trainings (defaults: the bundled models)."""

    num_scenes: int = 12_000  # training renders (all three families)
    vae_steps: int = 800
    vae_batch: int = 32
    vae_crop: int = 32  # the VAE is fully convolutional: random crops train it 4x faster than 64 x 64
    vae_lr: float = 1e-3
    unet_steps: int = 2_400
    unet_batch: int = 32
    unet_lr: float = 1e-3
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    flow_steps: int = 5_000  # the SD3-class pxpo-tiny-flow (its VAE is pxpo-tiny's)
    flow_batch: int = 32
    flow_lr: float = 1e-3
    seg_steps: int = 1_500
    seg_batch: int = 32
    seg_lr: float = 2e-3
    seed: int = 0


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """[N, 64, 64, 3] uint8 -> [N, 3, 64, 64] float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def _cosine(step: int, total: int, warmup: int = 200) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _batches(n: int, batch: int, generator: torch.Generator):
    while True:
        for idx in torch.randperm(n, generator=generator).split(batch):
            if len(idx) == batch:
                yield idx


def _optimizer_step(loss, params, optimizer, lr_schedule, ema: EMAModel, model, losses: list[float], name: str, progress: bool) -> None:
    """One step of the denoiser trainings: backward, clip to norm 1, AdamW, schedule, EMA; a log line every 1000 steps."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    lr_schedule.step()
    ema.step(model.parameters())
    losses.append(loss.item())
    if progress and len(losses) % 1000 == 0:
        logger.info("%s step %d: loss %.4f", name, len(losses), np.mean(losses[-1000:]))


def train_vae(images: torch.Tensor, s: PretrainSettings, progress: bool = True) -> tuple[AutoencoderKL, dict]:
    """Train the tiny AutoencoderKL on images [N, 3, 64, 64] in [-1, 1]; set its scaling factor."""
    torch.manual_seed(s.seed)
    vae = AutoencoderKL(**vae_config())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: _cosine(i, s.vae_steps))
    gen = torch.Generator().manual_seed(s.seed)
    batches = _batches(len(images), s.vae_batch, gen)
    losses = []
    for _ in bar(range(s.vae_steps), desc="vae", enabled=progress, leave=True):
        top, left = torch.randint(0, images.shape[-1] - s.vae_crop + 1, (2,), generator=gen).tolist()
        x = images[next(batches), :, top : top + s.vae_crop, left : left + s.vae_crop]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(F.mse_loss(recon, x).item())
    vae.eval()
    with torch.no_grad():
        held_out = images[:512]
        latents = vae.encode(held_out).latent_dist.mean
        full_mse = F.mse_loss(vae.decode(latents).sample, held_out).item()
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    return vae, {
        "vae_mse_first_100": float(np.mean(losses[:100])),
        "vae_mse_last_100": float(np.mean(losses[-100:])),
        "vae_mse_full_images": full_mse,
    }


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std [N, 4, 16, 16] of every image, scaled by the VAE's scaling factor."""
    means, stds = [], []
    for i in range(0, len(images), 256):
        dist = vae.encode(images[i : i + 256]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    scale = vae.config.scaling_factor
    return torch.cat(means) * scale, torch.cat(stds) * scale


def train_unet(latent_mean: torch.Tensor, latent_std: torch.Tensor, captions: list[str], s: PretrainSettings, progress: bool = True):
    """Train UNet and text encoder jointly on latents [N, 4, 16, 16]; return (EMA UNet, text encoder, tokenizer, stats)."""
    torch.manual_seed(s.seed + 1)
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(text_encoder_config(tokenizer))
    unet = UNet2DConditionModel(**unet_config())
    ema = EMAModel(unet.parameters(), decay=s.ema_decay)
    noise_scheduler = DDPMScheduler(**{k: v for k, v in scheduler_config().items() if k not in ("set_alpha_to_one", "steps_offset")})
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=s.unet_lr, weight_decay=1e-4)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: _cosine(i, s.unet_steps))
    tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    gen = torch.Generator().manual_seed(s.seed + 2)
    batches = _batches(len(latent_mean), s.unet_batch, gen)
    losses = []
    for _ in bar(range(s.unet_steps), desc="unet", enabled=progress, leave=True):
        idx = next(batches)
        x0 = latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=gen)
        ids = tokens[idx].clone()
        drop = torch.rand(len(idx), generator=gen) < s.caption_dropout
        ids[drop] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        _optimizer_step(loss, params, optimizer, lr_schedule, ema, unet, losses, "unet", progress)
    ema.copy_to(unet.parameters())
    stats = {"unet_loss_first_500": float(np.mean(losses[:500])), "unet_loss_last_500": float(np.mean(losses[-500:]))}
    return unet.eval(), text_encoder.eval(), tokenizer, stats


def train_flow(vae: AutoencoderKL, images: torch.Tensor, captions: list[str], s: PretrainSettings, progress: bool = True):
    """Train the tiny SD3-class pipeline (transformer and both CLIP encoders) with the rectified-flow loss.

    The VAE is frozen and given a ``shift_factor`` (the latents' mean) and a ``scaling_factor`` (1 / their std),
    as SD3's VAE has. Timesteps are drawn logit-normal as in SD3 (diffusers' training utilities); the model
    predicts the velocity ``noise - x0`` at ``x_sigma = (1 - sigma) x0 + sigma noise``. Prompts are encoded
    with the pipeline's own ``encode_prompt`` (no T5: no T5 tokens), so sampling sees the same embeddings.
    Returns the pipeline (EMA weights) and statistics.
    """
    with torch.no_grad():
        posteriors = [vae.encode(images[i : i + 256]).latent_dist for i in range(0, len(images), 256)]
    raw, stds = torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])
    shift = float(raw.mean())
    scale = float(1 / (raw - shift).std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    torch.manual_seed(s.seed + 5)
    pipe = build_tiny_sd3_pipeline(seed=s.seed + 5, vae=vae)
    transformer, encoders = pipe.transformer, [pipe.text_encoder, pipe.text_encoder_2]
    ema = EMAModel(transformer.parameters(), decay=s.ema_decay)
    params = list(transformer.parameters()) + [p for e in encoders for p in e.parameters()]
    optimizer = torch.optim.AdamW(params, lr=s.flow_lr, weight_decay=1e-4)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: _cosine(i, s.flow_steps))
    noise_scheduler = pipe.scheduler
    gen = torch.Generator().manual_seed(s.seed + 6)
    batches = _batches(len(raw), s.flow_batch, gen)
    losses = []
    for e in encoders:
        e.train()
    transformer.train()
    for _ in bar(range(s.flow_steps), desc="flow transformer", enabled=progress, leave=True):
        idx = next(batches)
        x0 = (raw[idx] + stds[idx] * torch.randn(raw[idx].shape, generator=gen) - shift) * scale
        drop = (torch.rand(len(idx), generator=gen) < s.caption_dropout).tolist()
        prompts = ["" if d else captions[i] for d, i in zip(drop, idx.tolist())]
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device="cpu", do_classifier_free_guidance=False, max_sequence_length=0)
        u = compute_density_for_timestep_sampling("logit_normal", len(idx), logit_mean=0.0, logit_std=1.0, generator=gen)
        indices = (u * noise_scheduler.config.num_train_timesteps).long()
        timesteps = noise_scheduler.timesteps[indices]
        sigmas = noise_scheduler.sigmas[indices].reshape(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=gen)
        noisy = (1 - sigmas) * x0 + sigmas * noise
        pred = transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=embeds, pooled_projections=pooled, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)
        _optimizer_step(loss, params, optimizer, lr_schedule, ema, transformer, losses, "flow", progress)
    ema.copy_to(transformer.parameters())
    for module in (transformer, *encoders):
        module.eval()
    stats = {"flow_loss_first_500": float(np.mean(losses[:500])), "flow_loss_last_500": float(np.mean(losses[-500:]))}
    return pipe, stats


def segmenter_config() -> SegformerConfig:
    """A tiny SegFormer: 4 stages of widths 16-128, stride 2 per stage (logits at half resolution)."""
    return SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        depths=[1, 1, 2, 1],
        sr_ratios=[4, 2, 1, 1],
        hidden_sizes=[16, 32, 64, 128],
        patch_sizes=[3, 3, 3, 3],
        strides=[2, 2, 2, 2],
        num_attention_heads=[1, 2, 4, 8],
        mlp_ratios=[4, 4, 4, 4],
        decoder_hidden_size=64,
        num_labels=len(CLASSES),
        id2label=dict(ID2LABEL),
        label2id=dict(LABEL2ID),
        semantic_loss_ignore_index=255,
    )


def segmenter_processor() -> SegformerImageProcessor:
    """64 x 64 input, ImageNet normalisation (as SegFormer checkpoints use)."""
    return SegformerImageProcessor(do_resize=True, size={"height": 64, "width": 64}, do_reduce_labels=False)


def train_segmenter(images: np.ndarray, labels: np.ndarray, s: PretrainSettings, progress: bool = True):
    """Train the tiny SegFormer on uint8 images [N, 64, 64, 3] and label maps [N, 64, 64]."""
    torch.manual_seed(s.seed + 3)
    processor = segmenter_processor()
    model = SegformerForSemanticSegmentation(segmenter_config())
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    targets = torch.from_numpy(labels).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.seg_lr, weight_decay=1e-4)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: _cosine(i, s.seg_steps))
    batches = _batches(len(pixels), s.seg_batch, torch.Generator().manual_seed(s.seed + 4))
    losses = []
    model.train()
    for _ in bar(range(s.seg_steps), desc="segmenter", enabled=progress, leave=True):
        idx = next(batches)
        x, y = pixels[idx], targets[idx]
        if torch.rand(()) < 0.5:  # horizontal flip: the world is left-right symmetric
            x, y = x.flip(-1), y.flip(-1)
        loss = model(pixel_values=x, labels=y).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        losses.append(loss.item())
    stats = {"seg_loss_first_100": float(np.mean(losses[:100])), "seg_loss_last_100": float(np.mean(losses[-100:]))}
    return model.eval(), processor, stats


def save_pipeline(vae, unet, text_encoder, tokenizer, folder: Path) -> None:
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_directory(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)


def save_segmenter(model, processor, folder: Path) -> None:
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)


def pretrain(out: Path, settings: PretrainSettings, parts: tuple[str, ...] = ("t2i", "flow", "segmenter"), progress: bool = True) -> dict:
    """Render the world, train the requested parts, save them under ``out``; return the statistics."""
    stats: dict = {}
    start = time.perf_counter()
    images, labels, captions = render_dataset(range(settings.num_scenes))
    stats["render_seconds"] = time.perf_counter() - start
    if "t2i" in parts:
        t0 = time.perf_counter()
        unit = to_unit_range(images)
        vae, vae_stats = train_vae(unit, settings, progress)
        stats.update(vae_stats, vae_seconds=time.perf_counter() - t0)
        t1 = time.perf_counter()
        mean, std = encode_latents(vae, unit)
        unet, text_encoder, tokenizer, unet_stats = train_unet(mean, std, captions, settings, progress)
        stats.update(unet_stats, unet_seconds=time.perf_counter() - t1)
        save_pipeline(vae, unet, text_encoder, tokenizer, out / "pxpo-tiny")
    if "flow" in parts:
        t3 = time.perf_counter()
        if "t2i" not in parts:  # the flow model reuses pxpo-tiny's VAE: the one in ``out``, else the bundled one
            source = out / "pxpo-tiny" / "vae"
            vae = AutoencoderKL.from_pretrained(source if source.is_dir() else BUNDLED_VAE).eval()
        flow_pipe, flow_stats = train_flow(vae, to_unit_range(images), captions, settings, progress)
        stats.update(flow_stats, flow_seconds=time.perf_counter() - t3)
        with atomic_directory(out / "pxpo-tiny-flow") as tmp:
            flow_pipe.save_pretrained(tmp, safe_serialization=True)
    if "segmenter" in parts:
        t2 = time.perf_counter()
        model, processor, seg_stats = train_segmenter(images, labels, settings, progress)
        stats.update(seg_stats, segmenter_seconds=time.perf_counter() - t2)
        save_segmenter(model, processor, out / "pxpo-tiny-seg")
    stats["total_seconds"] = time.perf_counter() - start
    return stats
