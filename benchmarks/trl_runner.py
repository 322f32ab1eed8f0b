"""TRL 0.23.1's DDPOTrainer on a local pipeline folder, timed per epoch. Run by benchmarks/peer_trl.py with the
Python of .venv-trl (TRL removed DDPO in 0.24; pxpo is not installed there: _common's top level needs the standard
library only). Prints one JSON line per epoch."""

import _common as bench

import time

from accelerate import PartialState

PartialState()  # TRL's trainer needs accelerate's state before the pipeline is built (CPU)

from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline  # noqa: E402


def main() -> None:
    parser = bench.arguments(__doc__)
    for name, kind in [("model", str), ("samples", int), ("train_batch_size", int), ("steps", int), ("epochs", int),
                       ("guidance_scale", float), ("learning_rate", float), ("prompt", str), ("seed", int)]:
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, required=True)
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
        bench.print_epoch(epoch, time.perf_counter() - start)


if __name__ == "__main__":
    main()
