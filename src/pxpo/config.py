"""The training configuration: typed, validated, every field documented.

A config is a TOML file with the sections below; ``--set section.key=value`` overrides any field
(the value is read as TOML, so ``--set train.learning_rate=1e-4`` is a float and
``--set sample.prompts=["a", "b"]`` a list). Unknown keys, wrong types and impossible values stop
the run before any work, with a message naming the key, the value and what was expected.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the key, the value and what was expected."""


class _Section(BaseModel):
    # every number finite unless a field says otherwise (inf or nan would fail late, as a "non-finite reward")
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    pretrained: str = Field(
        "pxpo-tiny",
        description="Base pipeline: a registered name (pxpo-tiny, pxpo-tiny-flow, tiny-random and tiny-random-<family>: sd3, sdxl, "
        "flux, flux2, flux2-klein, qwen-image, z-image), a local folder or a hub id (org/name) of a StableDiffusionPipeline, "
        "StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline, Flux2Pipeline, Flux2KleinPipeline, QwenImagePipeline "
        "or ZImagePipeline.",
    )
    single_file_config: str | None = Field(
        None,
        description="When pretrained is a single-file .safetensors checkpoint: a diffusers-layout folder or hub id of the same "
        "architecture (names the pipeline class; unset: StableDiffusionPipeline with configs from the hub).",
    )
    lora: bool = Field(True, description="Train a LoRA adapter (peft) on the denoiser (UNet or transformer); false fine-tunes all of it.")
    lora_rank: int = Field(4, gt=0, description="LoRA rank r.")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha; defaults to the rank (scale 1).")
    gradient_checkpointing: bool = Field(False, description="Recompute the denoiser's activations in the backward pass to save memory.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="Frozen weights and autocast in half precision (GPU only; LoRA weights stay fp32)."
    )

    @field_validator("pretrained")
    @classmethod
    def _exists(cls, value: str) -> str:
        from pxpo.models import check_model_reference

        return check_model_reference(value)


class SampleConfig(_Section):
    prompts: list[str] = Field(["red taxi in traffic"], min_length=1, description="Training prompts, drawn uniformly for each sample.")
    num_steps: int = Field(20, gt=0, description="Denoising steps T per sample.")
    eta: float = Field(
        1.0, gt=0, le=1, description="DDIM noise weight of SD-family models, in (0, 1]; eta = 0 is deterministic (no log-probability)."
    )
    noise_level: float = Field(
        0.7,
        gt=0,
        le=2,
        description="Noise level a of the flow-matching SDE (SD3, FLUX families; Flow-GRPO's 0.7), in (0, 2]: above about 2 the "
        "SDE's drift term blows up (pxpo-tiny-flow, 10 steps: latents of 1e11 at a = 10, NaN at 100).",
    )
    sde_type: Literal["sde", "cps"] = Field(
        "sde",
        description="The policy step of the flow-matching families (SD3, FLUX): 'sde', Flow-GRPO's SDE; 'cps', "
        "coefficients-preserving sampling (Wang & Yu 2025, Flow-GRPO's sde_type 'cps'): the predicted clean image re-noised "
        "to exactly the next step's noise level, fresh noise of std sigma_next * sin(noise_level * pi / 2), so noise_level "
        "must be in (0, 1] (Flow-GRPO uses 0.8); its last step is deterministic and never trained. SD-family models (DDIM) "
        "take 'sde' only.",
    )
    guidance_scale: float = Field(
        5.0, ge=0, description="Classifier-free guidance weight (on when > 1); FLUX: the guidance embedding's value (3.5 for FLUX.1-dev)."
    )
    group_size: int = Field(
        1,
        gt=0,
        description="Samples per prompt (GRPO's group), the prompt drawn alike on every process; a group may span sampling "
        "batches and processes (Flow-GRPO's 24 over 8 GPUs), so it must divide the samples per epoch over all processes "
        "(batch_size * num_batches_per_epoch * processes; checked at launch). Its advantages are normalised over the gathered group.",
    )
    batch_size: int = Field(8, gt=0, description="Samples per sampling batch (per process).")
    num_batches_per_epoch: int = Field(1, gt=0, description="Sampling batches per epoch (per process).")
    single_image_seed: int | None = Field(
        None,
        description="Single-image mode: every epoch samples ONE image of prompts[0] from the same initial noise (this seed); "
        "the image shown after epoch k is exactly the trajectory epoch k + 1 trains on. Needs batch sizes of 1.",
    )
    single_image_noise: Literal["fixed", "fresh"] = Field(
        "fixed",
        description="Single-image mode's noise for the denoising steps: 'fixed' draws it from single_image_seed too, so the "
        "shown image is a function of the weights alone and changes only when the model does (what a person painting on "
        "it needs); 'fresh' draws it anew each epoch (the policy's spread, for simulated annotators).",
    )
    sde_window: list[int] | None = Field(
        None,
        description="[start, end]: only denoising steps start..end-1 are stochastic (the policy's noise) and trained, the "
        "others follow the deterministic sampler (DDIM at eta = 0, the flow ODE), and only the window's steps are stored "
        "(MixGRPO, TempFlow-GRPO, Flow-GRPO-Fast; Flow-Factory's sde_steps). [start, start] (empty): every step deterministic, "
        "for forward-process algorithms (awm) only. Unset: every step stochastic and trained.",
    )
    sde_window_schedule: Literal["fixed", "random", "sliding"] = Field(
        "fixed",
        description="Where the SDE window sits: 'fixed' at sde_window; 'random', a position drawn per group each epoch "
        "(the window's length kept); 'sliding', MixGRPO's window moving one step later every sde_window_shift_every epochs, "
        "back to the start after the last step. Evaluation images always use the window at sde_window.",
    )
    sde_window_shift_every: int = Field(1, gt=0, description="Epochs between the sliding window's one-step moves (sde_window_schedule = 'sliding').")
    height: int | None = Field(None, gt=0, description="Image height in pixels; defaults to the model's native size.")
    width: int | None = Field(None, gt=0, description="Image width in pixels; defaults to the model's native size.")

    @field_validator("prompts")
    @classmethod
    def _non_empty(cls, prompts: list[str]) -> list[str]:
        for prompt in prompts:
            if not prompt.strip():
                raise ValueError("prompts must not be empty strings")
        return prompts


class TrainConfig(_Section):
    algorithm: str = Field(
        "pxpo", description="A registered algorithm (pxpo.algorithms): pxpo (per-pixel advantages) or ddpo (one advantage per image; GRPO with groups)."
    )
    learning_rate: float = Field(3e-4, gt=0, allow_inf_nan=False, description="AdamW learning rate.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    batch_size: int = Field(
        4,
        gt=0,
        description="Samples per training batch (per process). When one batch (times gradient_accumulation_steps) holds all "
        "of an epoch's samples and num_inner_epochs = 1, the epoch makes one optimizer step, on the policy that sampled it: "
        "approx_kl and clipfrac are then 0 by construction and the epoch lines leave them out (metrics.jsonl keeps them).",
    )
    gradient_accumulation_steps: int = Field(1, gt=0, description="Training batches whose gradients are summed per optimizer step.")
    num_inner_epochs: int = Field(
        1,
        gt=0,
        description="Passes over each epoch's samples (PPO inner epochs). Only the second and later optimizer steps of an "
        "epoch are off-policy, so the PPO clip, approx_kl and clipfrac act only with several steps per epoch (more inner "
        "epochs, or train.batch_size below the samples per epoch); with one, the epoch lines leave approx_kl and clipfrac out.",
    )
    timestep_fraction: float = Field(1.0, gt=0, le=1, description="Fraction of the T steps trained per sample (a random subset).")
    step_window: list[int] | None = Field(
        None,
        description="[start, end]: the LoRA acts, and is trained, only on denoising steps start..end-1 (0 is the first, noisiest "
        "step); the other steps run the base model, while sampling too. Late steps decide detail rather than layout, so a "
        "late window keeps the composition (docs/human_feedback.md). Needs model.lora. Unset: every step.",
    )
    regional_adapter: bool = Field(
        False,
        description="The LoRA changes the model's prediction only where the reward judges the image (its judged map, "
        "downsampled like the heatmaps): the prediction is base + region * (adapted - base), so what no reward judged is "
        "denoised by the base model. In single-image mode the region is the union of every step's judged map (a "
        "person's strokes so far), kept in checkpoints and beside the LoRA (lora/region.png); otherwise it is, per "
        "sample, what the reward judges in the base model's image from the same noise (one more sampling pass with the "
        "LoRA off and one more reward call per batch, in training, evaluation and pxpo sample). One more forward pass "
        "without gradient per denoiser call. Needs model.lora (docs/human_feedback.md).",
    )
    timesteps_per_forward: int = Field(
        1,
        gt=0,
        description="Trained steps of each sample batched into one UNet forward and backward. The gradient is the same "
        "(the steps' gradients are summed before each optimizer step either way); larger is faster and uses more memory.",
    )
    kl_coef: float = Field(
        0.0,
        ge=0,
        description="Weight of the KL to the reference policy (the base model, LoRA switched off): per element "
        "(mean - mean_ref)^2 / (2 std^2), averaged; needs model.lora = true. 0: off.",
    )
    preserve_coef: float = Field(
        0.0,
        ge=0,
        description="Weight of the preservation term: a per-element divergence on the latent locations that no reward judged "
        "(a reward's judged map, e.g. a person's strokes or a segmenter's target classes, downsampled like the heatmaps), "
        "averaged over elements, so that feedback on some pixels leaves the others as they were. 0: off (rewards that judge "
        "every pixel make it 0 anyway). docs/human_feedback.md measures what it costs and buys.",
    )
    preserve_reference: Literal["base", "sampling"] = Field(
        "base",
        description="What the unjudged locations are kept close to: 'base', the base model (the LoRA off; per element "
        "(mean - mean_base)^2 / (2 std^2); one more forward pass per trained step; needs model.lora); 'sampling', the "
        "policy that sampled the epoch (per element 0.5 * log_ratio^2 from the recorded log-probs; no extra pass, but 0 "
        "on the first optimiser step of an epoch).",
    )
    clip_range: float | None = Field(
        None,
        gt=0,
        description="PPO clip range on the ratio; unset: the algorithm's, 1e-4 for ddpo (element-mean ratio), 2e-3 for pxpo (per-element ratio; docs/clip_range.md).",
    )
    adv_clip_max: float = Field(5.0, gt=0, allow_inf_nan=True, description="Advantages are clipped to +-this (inf: no clipping).")
    ema_decay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Keep an exponential moving average (EMA) of the trained weights (the LoRA, or the whole denoiser), in "
        "[0, 1); 0: off. The live weights still sample the training batches and train; the EMA makes the evaluation "
        "images (and eval reward) and the exported lora/ (or denoiser) that pxpo sample loads. Its n-th update "
        "moves it by (1 - d) towards the weights with d = 0 for the first, then min(ema_decay, n / (n + 9)) (the ramp of "
        "diffusers' EMAModel, Flow-GRPO and Flow-Factory; Flow-GRPO uses 0.9). Not with single-image mode.",
    )
    ema_update_every: int = Field(
        1,
        gt=0,
        description="Update the EMA after every this-many optimizer steps (Flow-GRPO: 8, with ema_decay = 0.9; an "
        "average then spans about 8 / (1 - ema_decay) steps). The ramp of ema_decay counts EMA updates, not optimizer steps.",
    )

    @field_validator("algorithm")
    @classmethod
    def _registered(cls, value: str) -> str:
        from pxpo.algorithms import algorithm_class

        algorithm_class(value)  # a clear error naming the registered algorithms
        return value
    max_grad_norm: float = Field(1.0, gt=0, allow_inf_nan=True, description="Gradient norm clipped to this before each optimizer step (inf: off).")


class AdvantageConfig(_Section):
    normalization: Literal["none", "batch", "per_prompt", "group", "group_location"] = Field(
        "batch",
        description="none; batch (all pixels of all images); per_prompt (a buffer of recent images per prompt); group (within "
        "each prompt group of sample.group_size images: over the group's elements); group_location (each latent location "
        "within its group).",
    )
    interpolation: Literal["area", "bilinear"] = Field("area", description="Heatmap -> latent grid resampling (area keeps the mean).")
    per_prompt_buffer_size: int = Field(32, gt=0, description="Images kept per prompt for per_prompt statistics.")
    per_prompt_min_count: int = Field(16, gt=0, description="Images a prompt needs before its own statistics replace the batch's.")


class RewardTerm(_Section):
    name: str = Field(description="A registered reward or 'module:factory'.")
    weight: float = Field(1.0, allow_inf_nan=False, description="Its weight in the sum.")
    kwargs: dict[str, Any] = Field({}, description="Keyword arguments for its factory.")
    label: str | None = Field(None, description="The name it is logged under (default: its name).")


class RewardConfig(_Section):
    name: str = Field("blue_penalty", description="A registered reward (pxpo.rewards.available()) or 'module:factory'.")
    kwargs: dict[str, Any] = Field({}, description="Keyword arguments for the reward's factory.")
    terms: list[RewardTerm] = Field(
        [],
        description="Several rewards ([[reward.terms]] tables: name, weight, kwargs, label): the weighted sum of their "
        "heatmaps (a scalar reward counts as its constant map), each term logged as reward_term_<label>. Replaces name and kwargs.",
    )

    @model_validator(mode="after")
    def _either(self) -> RewardConfig:
        if self.terms and {"name", "kwargs"} & self.model_fields_set:
            raise ValueError("give either reward.name (and kwargs) or reward.terms, not both")
        if "terms" in self.model_fields_set and not self.terms and "name" not in self.model_fields_set:
            raise ValueError("reward.terms is empty: give at least one [[reward.terms]] table, or reward.name (the default reward is not used silently)")
        return self


class EvalConfig(_Section):
    seeds: list[int] | None = Field(
        None, min_length=1, description="Fixed seeds sampled after every epoch (rows of the evolution grid); unset: [0, 1, 2, 3], or the single image's seed."
    )
    prompts: list[str] | None = Field(None, description="Prompts for the fixed seeds, cycled; defaults to sample.prompts.")
    reward: bool = Field(True, description="Score the evaluation images with the reward (turn off when the reward is a person).")


class RunConfig(_Section):
    output_dir: str = Field("runs", description="Folder in which the run folder is made.")
    name: str | None = Field(
        None,
        description="Run folder name; defaults to the config file's name, the algorithm when it is not pxpo and the file's "
        "name does not say it, and the time (blue_penalty-ddpo-20261205-101500 for --set train.algorithm=ddpo).",
    )
    num_epochs: int = Field(10, gt=0, description="Epochs: each samples, rewards, computes advantages and updates.")
    seed: int = Field(0, ge=0, description="Seed of all randomness (LoRA initialisation, sampling noise, prompt draws, shuffling).")
    checkpoint_every: int = Field(5, gt=0, description="Write a checkpoint every this many epochs (and after the last).")
    keep_checkpoints: int = Field(2, gt=0, description="How many recent checkpoints to keep.")
    log_with: list[Literal["tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive"]] = Field(
        [],
        description="Experiment trackers (accelerate's) that get every metric and the evaluation images each epoch; "
        "files go to RUN/trackers/. Each needs its package (pip install tensorboard / wandb ...).",
    )


class Config(_Section):
    """A whole training run. Sections: model, sample, train, advantage, reward, eval, run."""

    model: ModelConfig = ModelConfig()
    sample: SampleConfig = SampleConfig()
    train: TrainConfig = TrainConfig()
    advantage: AdvantageConfig = AdvantageConfig()
    reward: RewardConfig = RewardConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        # Resolve defaults that depend on other fields, so the saved config says what ran.
        if self.train.clip_range is None:
            from pxpo.algorithms import algorithm_class

            self.train.clip_range = algorithm_class(self.train.algorithm).default_clip_range
        if self.model.lora_alpha is None:
            self.model.lora_alpha = float(self.model.lora_rank)
        if self.sample.single_image_seed is not None:
            self._check_single_image()
        if self.eval.seeds is None:
            self.eval.seeds = [0, 1, 2, 3]
        if (self.sample.height is None) != (self.sample.width is None):
            raise ValueError(f"sample.height = {self.sample.height}, sample.width = {self.sample.width}: set both or neither")
        group = self.sample.group_size  # (that the groups fill an epoch needs the process count: check_processes, at launch)
        if self.advantage.normalization in ("group", "group_location") and group < 2:
            raise ValueError(
                f"advantage.normalization = {self.advantage.normalization!r} needs sample.group_size >= 2 (got {group})"
            )
        self._check_lora_needs()
        if self.sample.sde_type == "cps":
            self._check_cps()
        if self.eval.prompts is None:
            self.eval.prompts = list(self.sample.prompts)
        per_epoch = self.sample.batch_size * self.sample.num_batches_per_epoch
        if per_epoch % self.train.batch_size:
            raise ValueError(
                f"train.batch_size = {self.train.batch_size} must divide the {per_epoch} samples per epoch "
                "(sample.batch_size * sample.num_batches_per_epoch)"
            )
        batches = per_epoch // self.train.batch_size
        if batches % self.train.gradient_accumulation_steps:
            raise ValueError(
                f"train.gradient_accumulation_steps = {self.train.gradient_accumulation_steps} must divide the "
                f"{batches} training batches per epoch"
            )
        if self.train.timesteps_per_forward > self.num_train_timesteps:
            raise ValueError(
                f"train.timesteps_per_forward = {self.train.timesteps_per_forward} is more than the {self.num_train_timesteps} "
                "steps trained per sample (sample.num_steps * train.timestep_fraction)"
            )
        return self

    def _check_single_image(self) -> None:
        """Single-image mode: batch sizes of 1, one prompt, its own seed as the evaluation seed, and no EMA."""
        single = self.sample.single_image_seed
        sizes = {"sample.batch_size": self.sample.batch_size, "sample.num_batches_per_epoch": self.sample.num_batches_per_epoch,
                 "train.batch_size": self.train.batch_size}  # fmt: skip
        for key, value in sizes.items():
            if value != 1:
                raise ValueError(f"{key} = {value}: single-image mode (sample.single_image_seed = {single}) needs 1")
        if len(self.sample.prompts) != 1:
            raise ValueError(f"sample.prompts has {len(self.sample.prompts)} prompts: single-image mode needs exactly 1")
        if self.eval.seeds is None:
            self.eval.seeds = [single]  # the image shown is the next epoch's sample
        elif self.eval.seeds != [single]:
            raise ValueError(f"eval.seeds = {self.eval.seeds}: single-image mode evaluates its own seed; leave it unset or [{single}]")
        if self.train.ema_decay > 0:
            raise ValueError(
                f"train.ema_decay = {self.train.ema_decay}: single-image mode (sample.single_image_seed = {single}) shows the "
                "image the next epoch trains on, which the live weights sample, not an average; use 0"
            )

    def _check_lora_needs(self) -> None:
        """The settings that switch the LoRA off somewhere (a reference policy, a step window) need one; windows in range."""
        train = self.train
        if train.preserve_coef > 0 and train.preserve_reference == "base" and not self.model.lora:
            raise ValueError(
                f"train.preserve_coef = {train.preserve_coef} with preserve_reference = 'base' needs model.lora = true: "
                "the base policy is the model with its LoRA off (or use preserve_reference = 'sampling')"
            )
        self._check_sde_window()
        window = train.step_window
        if window is not None:
            if len(window) != 2 or not 0 <= window[0] < window[1] <= self.sample.num_steps:
                raise ValueError(f"train.step_window = {window}: expected [start, end] with 0 <= start < end <= sample.num_steps = {self.sample.num_steps}")
            if not self.model.lora:
                raise ValueError(f"train.step_window = {window} needs model.lora = true: outside the window the LoRA is switched off")
        if train.regional_adapter and not self.model.lora:
            raise ValueError("train.regional_adapter = true needs model.lora = true: outside the region the LoRA is switched off")
        if train.regional_adapter and self.sample.single_image_seed is None and self.reward.name in PERSON_REWARDS:
            raise ValueError(
                f"train.regional_adapter = true with reward.name = {self.reward.name!r} needs single-image mode (sample.single_image_seed): "
                "over many images the region is what the reward judges in the base model's image, which a person's map does not say"
            )
        if train.kl_coef > 0 and not self.model.lora:
            raise ValueError(f"train.kl_coef = {train.kl_coef} needs model.lora = true: the reference policy is the model with its LoRA off")

    def _check_cps(self) -> None:
        """CPS: noise_level is its eta, in (0, 1]; its last step is deterministic (no log-probability), so no trained
        window may end there (without one, ``step_range`` stops before it)."""
        sample = self.sample
        if sample.noise_level > 1:
            raise ValueError(f"sample.noise_level = {sample.noise_level}: sample.sde_type = 'cps' needs a noise level in (0, 1] (CPS's eta)")
        if sample.num_steps < 2:
            raise ValueError(f"sample.num_steps = {sample.num_steps}: sample.sde_type = 'cps' needs at least 2 (its last step is deterministic)")
        windows = {"train.step_window": self.train.step_window, "sample.sde_window": sample.sde_window}
        for key, window in windows.items():
            if window is not None and window[1] > self.policy_steps and self.trains_log_probs:
                raise ValueError(
                    f"{key} = {window} ends with the last step, which sample.sde_type = 'cps' takes deterministically (no "
                    f"log-probability to train on): end it at {self.policy_steps} at most"
                )

    def _check_sde_window(self) -> None:
        """The SDE window in range; empty only for an algorithm that needs no log-probabilities; not with a step window."""
        window, steps = self.sample.sde_window, self.sample.num_steps
        if window is None:
            if self.sample.sde_window_schedule != "fixed":
                raise ValueError(f"sample.sde_window_schedule = {self.sample.sde_window_schedule!r} needs a sample.sde_window")
            return
        if len(window) != 2 or not 0 <= window[0] <= window[1] <= steps:
            raise ValueError(f"sample.sde_window = {window}: expected [start, end] with 0 <= start <= end <= sample.num_steps = {steps}")
        if window[0] == window[1] and self.trains_log_probs:
            raise ValueError(
                f"sample.sde_window = {window} is empty (every step deterministic): train.algorithm = {self.train.algorithm!r} "
                "trains on the stochastic steps' log-probabilities; give at least one step, or use a forward-process algorithm (awm)"
            )
        if self.train.step_window is not None:
            raise ValueError(
                f"sample.sde_window = {window} and train.step_window = {self.train.step_window}: set one (the SDE window "
                "already chooses the trained steps)"
            )

    @property
    def sde_steps(self) -> int:
        """K, the stochastic steps each trajectory stores: the SDE window's length, or every step."""
        window = self.sample.sde_window
        return window[1] - window[0] if window is not None else self.sample.num_steps

    def check_processes(self, num_processes: int) -> None:
        """What needs the launch's process count: the GRPO groups must fill an epoch's samples over all processes."""
        sample, group = self.sample, self.sample.group_size
        per_process = sample.batch_size * sample.num_batches_per_epoch
        if per_process * num_processes % group:
            raise ConfigError(
                f"sample.group_size = {group} must divide the {per_process * num_processes} samples per epoch over all processes "
                f"(sample.batch_size = {sample.batch_size} * sample.num_batches_per_epoch = {sample.num_batches_per_epoch} * "
                f"{num_processes} processes): it would leave a group that cannot be spread over the processes"
            )

    @property
    def num_train_timesteps(self) -> int:
        """How many steps are trained per sample: of the stored steps (or the step window), times train.timestep_fraction."""
        return max(1, math.floor(len(range(*self.step_range)) * self.train.timestep_fraction))

    @property
    def adapter_steps(self) -> tuple[int, int] | None:
        """The steps the LoRA acts on while sampling (``rollout.sample_trajectories``): the step window, or None (every step)."""
        return self.step_range if self.train.step_window is not None else None

    @property
    def step_range(self) -> tuple[int, int]:
        """(start, end) of the trained steps, as indices of the steps a trajectory stores (``Trajectories.step_of`` maps
        them to denoising steps): train.step_window, or every stored step (the SDE window's, or all but CPS's deterministic
        last step). A forward-process algorithm trains on the sampler's timesteps themselves: every step (or the step window)."""
        if self.train.step_window is not None:
            return tuple(self.train.step_window)
        if not self.trains_log_probs:
            return (0, self.sample.num_steps)
        return (0, self.sde_steps if self.sample.sde_window is not None else self.policy_steps)

    @property
    def trains_log_probs(self) -> bool:
        """Whether train.algorithm trains on the sampled steps' log-probabilities (a policy gradient), not on the final
        latents alone (a forward-process algorithm, which may sample every step deterministically)."""
        from pxpo.algorithms import algorithm_class

        return algorithm_class(self.train.algorithm).needs_log_probs

    @property
    def policy_steps(self) -> int:
        """The first denoising steps that have a log-probability (can be stochastic and trained): all T, or T - 1 with
        sample.sde_type = 'cps', whose last step is deterministic."""
        return self.sample.num_steps - (self.sample.sde_type == "cps")

    def to_toml(self) -> str:
        unused = {"reward": {"name", "kwargs"}} if self.reward.terms else None  # terms replace them
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True, exclude=unused))


# Settings a resumed run may change: they extend or observe the run. Every other one changes what the run means
# (model, family, LoRA shape, algorithm, reward, sampler, optimiser ...) and is refused on resume.
PERSON_REWARDS = ("painted", "folder_feedback")  # rewards whose maps a person gives for the images shown (pxpo.rewards.human)
RESUMABLE_CHANGES = ("run.num_epochs", "run.log_with", "run.checkpoint_every", "run.keep_checkpoints", "run.name", "run.output_dir")


def check_resume(saved: Config, given: Config, what: str = "--resume") -> None:
    """Refuse ``given`` for resuming a run saved as ``saved`` if it changes anything but RESUMABLE_CHANGES, naming
    each changed key with both values."""
    a, b = saved.model_dump(mode="json"), given.model_dump(mode="json")
    changed = [
        f"{section}.{key} = {b[section][key]!r} (the run has {a[section].get(key)!r})"
        for section in b
        for key in b[section]
        if b[section][key] != a[section].get(key) and f"{section}.{key}" not in RESUMABLE_CHANGES
    ]
    if changed:
        allowed = ", ".join(k for k in RESUMABLE_CHANGES if k not in ("run.name", "run.output_dir"))
        raise ConfigError(
            f"{what} would change what the run means: {'; '.join(changed)}. A resumed run may change only {allowed}; "
            "start a new run for anything else"
        )


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            section = _section_fields(item["loc"][:-1])
            lines.append(f"{key}: unknown key; expected one of {', '.join(section)}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            shown = item.get("input")
            value = "" if isinstance(shown, (dict, BaseModel)) else f" (got {shown!r})"
            lines.append(f"{key}: {message}{value}")
    return "\n".join(lines)


def _section_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.learning_rate=1e-4"`` -> (["train", "learning_rate"], 1e-4); the value is read as TOML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        if raw.strip().startswith(("[", "{")):  # a list or table of bare words: the shell ate the quotes
            raise ConfigError(_quoting_hint(key.strip(), raw.strip())) from None
        value = raw.strip()  # a bare word is a string: --set model.pretrained=some/model
    return key.strip().split("."), value


def _quoting_hint(key: str, raw: str) -> str:
    """What to type for ``--set key=[a, b]``: strings in TOML lists and tables are quoted, and the quotes must survive
    the shell."""
    import shlex

    def quote(item: str) -> str:
        item = item.strip()
        try:
            tomllib.loads(f"v = {item}")
            return item
        except tomllib.TOMLDecodeError:
            return '"' + item.strip("\"'").replace("\\", "\\\\").replace('"', '\\"') + '"'

    inner, table = raw[1:].removesuffix("]" if raw[0] == "[" else "}"), raw[0] == "{"
    if table:
        pairs = [item.partition("=") for item in inner.split(",") if item.strip()]
        fixed = "{" + ", ".join(f"{k.strip()} = {quote(v)}" for k, _, v in pairs) + "}"
    else:
        fixed = "[" + ", ".join(quote(item) for item in inner.split(",") if item.strip()) + "]"
    try:
        tomllib.loads(f"v = {fixed}")
    except tomllib.TOMLDecodeError:
        fixed = '["a", "b"]' if not table else '{key = "value"}'
    return (
        f"--set {key}={raw}: not a TOML value (strings in a list or table need double quotes, and the shell removes "
        f"them unless the argument is in single quotes); write --set {shlex.quote(f'{key}={fixed}')}"
    )


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides to a raw config dict (a new dict is returned)."""
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def validate_config(data: dict) -> Config:
    """Build a Config from a raw dict, or raise ConfigError listing every problem."""
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError("invalid config:\n" + _format_errors(error)) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a TOML config (or the defaults when ``path`` is None), apply overrides, validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {error.start}: {error.reason}): save it as UTF-8") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    return validate_config(apply_overrides(data, list(overrides)))


def reference_markdown() -> str:
    """docs/config.md: every section and field with its type, default and meaning."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `pxpo.config` by `python -m pxpo.config > docs/config.md` (a test checks it is current).",
        "A config is a TOML file with these sections; `pxpo train CONFIG --set section.key=value` overrides a field.",
        "Every number must be finite (`inf` only where a field says it means off).",
        "",
        f"On `pxpo train --resume RUN`, only {', '.join(f'`{k}`' for k in RESUMABLE_CHANGES[:4])} may change: they extend or "
        "observe the run. Any other setting would change what the run means (model, family, LoRA shape, algorithm, reward, "
        "sampler, optimiser) and is refused before anything is written, naming the key and both values.",
        "",
    ]
    for section, field in Config.model_fields.items():
        model = field.annotation
        lines += [f"## [{section}]", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, info in model.model_fields.items():
            annotation = str(info.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "").replace(" | ", " or ")
            annotation = annotation.replace("pxpo.config.", "").replace("__main__.", "")
            default = "unset" if info.default is None else repr(info.default)
            lines.append(f"| `{name}` | `{annotation}` | `{default}` | {info.description} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown(), end="")
