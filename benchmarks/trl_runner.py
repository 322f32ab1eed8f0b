"""TRL 0.23.1's DDPOTrainer on a local pipeline folder, timed per epoch. Run by benchmarks/peer_trl.py with the
Python of .venv-trl (TRL removed DDPO in 0.24; pxpo is not installed there: _common's top level needs the standard
library only). Prints one JSON line per epoch; with ``--save-lora DIR``, also writes the LoRA after each epoch (untimed) as
DIR/epoch_N.safetensors, named as pxpo names its trainable parameters (the same peft adapter on the same modules), so
that benchmarks/time_to_reward.py scores TRL's policy with pxpo's evaluation."""

import _common as bench

import os
import time
from pathlib import Path

from accelerate import PartialState

PartialState()  # TRL's trainer needs accelerate's state before the pipeline is built (CPU)

from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline  # noqa: E402


def main() -> None:
    parser = bench.arguments(__doc__)
    for name, kind in [("model", str), ("samples", int), ("train_batch_size", int), ("steps", int), ("epochs", int),
                       ("guidance_scale", float), ("learning_rate", float), ("prompt", str), ("seed", int)]:
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, required=True)
    parser.add_argument("--save-lora", help="folder for the LoRA after each epoch (not timed)")
    args = bench.parse(parser)
    config = DDPOConfig(
        num_epochs=args.epochs,
        sample_num_steps=args.steps,
        sample_eta=1.0,
        sample_guidance_scale=args.guidance_scale,
        sample_batch_size=args.samples,
        sample_num_batches_per_epoch=1,
        train_batch_size=args.train_batch_size,
        train_gradient_accumulation_steps=1,
        train_learning_rate=args.learning_rate,
        train_timestep_fraction=1.0,
        per_prompt_stat_tracking=False,
        mixed_precision="no",
        save_freq=10**9,
        log_with=None,
        seed=args.seed,
    )
    pipeline = DefaultDDPOStableDiffusionPipeline(args.model, use_lora=True)

    def reward(images, prompts, metadata):  # the blue penalty as one number per image
        return -images[:, 2].float().mean(dim=(1, 2)), {}

    def prompt():
        return args.prompt, {}

    trainer = DDPOTrainer(config, reward, prompt, pipeline)
    global_step = 0
    for epoch in range(args.epochs):
        start = time.perf_counter()
        global_step = trainer.step(epoch, global_step)
        seconds = time.perf_counter() - start
        if args.save_lora:
            save_lora(pipeline.sd_pipeline.unet, Path(args.save_lora) / f"epoch_{epoch + 1}.safetensors")
        bench.print_epoch(epoch, seconds)


def save_lora(unet, path: Path) -> None:
    """The UNet's trainable (LoRA) parameters by name, as safetensors, written atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: p.detach().contiguous() for name, p in unet.named_parameters() if p.requires_grad}
    save_file(state, str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)


if __name__ == "__main__":
    main()
