"""The ``pxpo`` command: parse arguments, build objects, call the library. No algorithm code here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

EPILOG_TRAIN = """examples:
  pxpo train configs/blue_penalty.toml
  pxpo train configs/blue_penalty.toml --set train.algorithm=ddpo --set run.num_epochs=20
  pxpo train --resume runs/blue_penalty-20261123-101500          # continue from its last checkpoint
  pxpo train --resume RUN --set run.num_epochs=30                # ... and train for longer
"""

EPILOG_SAMPLE = """examples:
  pxpo sample tiny-random --prompt "red taxi in traffic" --seed 0 1 2 3
  pxpo sample pxpo-tiny-flow --prompt "nature landscape" --seed 0 1 2 3
  pxpo sample runs/blue_penalty-20261123-101500 --prompt "red taxi in traffic" --out taxi.png
"""


def build_parser() -> argparse.ArgumentParser:
    from pxpo import __version__

    parser = argparse.ArgumentParser(
        prog="pxpo", description="Fine-tune text-to-image diffusion models with pixel-wise feedback (PXPO) or DDPO."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"pxpo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (_add_train_command, _add_sample_command, _add_app_command, _add_serve_reward_command, _add_pretrain_command):
        add_command(commands)
    return parser


def _add_train_command(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train with PXPO or DDPO from a TOML config",
        description="Train a diffusers pipeline with PXPO (per-pixel rewards) or DDPO (per-image rewards). "
        "Every field of the config is described in docs/config.md. The run folder gets the resolved config, "
        "metrics.jsonl, reward_curve.png, evolution.png, eval images, LoRA weights and checkpoints.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", nargs="?", help="TOML config file (optional with --resume: the run's config.toml is used)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config field; VALUE is read as TOML (repeatable)")
    train.add_argument("--resume", metavar="RUN", help="continue the run folder RUN from its latest checkpoint")
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_sample_command(commands) -> None:
    sample = commands.add_parser(
        "sample",
        help="generate images from a model or a trained run",
        description="Generate images with a base model (bundled name, folder or hub id) or a run folder "
        "(its base model plus its trained LoRA or UNet), one image per seed, saved side by side in one PNG.",
        epilog=EPILOG_SAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sample.add_argument("model", metavar="MODEL_OR_RUN", help="a bundled model name, a model folder, a hub id, or a run folder")
    sample.add_argument("--prompt", required=True, help="the text prompt")
    sample.add_argument("--seed", type=int, nargs="+", default=[0], help="one image per seed (default: 0)")
    sample.add_argument("--num-steps", type=int, default=20, help="denoising steps (default: 20)")
    sample.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance (default: 5)")
    sample.add_argument("--eta", type=float, default=1.0, help="SD models: DDIM noise weight in (0, 1] (default: 1, as in training)")
    sample.add_argument("--noise-level", type=float, default=0.7, help="SD3/FLUX models: the SDE's noise level (default: 0.7, as in training)")
    sample.add_argument("--sde-type", choices=("sde", "cps"), help="SD3/FLUX models: the policy step, Flow-GRPO's SDE or CPS (default: a run's sample.sde_type, else sde)")
    sample.add_argument("--height", type=int, help="image height in pixels (with --width; default: the model's)")
    sample.add_argument("--width", type=int, help="image width in pixels (with --height; default: the model's)")
    sample.add_argument("--out", default="samples.png", help="output PNG (default: samples.png)")


def _add_host_and_port(command: argparse.ArgumentParser, port: int) -> None:
    command.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    command.add_argument("--port", type=int, default=port, help=f"port (default: {port})")


def _add_app_command(commands) -> None:
    app = commands.add_parser(
        "app",
        help="the human-feedback web app: paint + and - on an image, train one step, see the change",
        description="Serve the human-feedback page. Each session is a run folder under --sessions (single-image mode: one "
        "prompt and seed, one painted map per step); restarting the app continues a session where it stopped.",
    )
    app.add_argument("--sessions", default="sessions", help="folder of the sessions (default: sessions)")
    app.add_argument("--model", default="pxpo-tiny", help="default model for new sessions (default: pxpo-tiny)")
    _add_host_and_port(app, port=8000)
    app.add_argument("--timesteps-per-forward", type=int, default=1, metavar="K",
                     help="denoising steps trained per UNet call in new sessions: same result, faster, more memory "
                     "(default: 1; on a CPU with the bundled model, 20)")  # fmt: skip


def _add_serve_reward_command(commands) -> None:
    serve = commands.add_parser(
        "serve-reward",
        help="serve a heatmap reward over HTTP, for `reward.name = \"http\"` runs",
        description="Serve a registered reward or your own 'module:factory' with pxpo's reward protocol (docs/reward_protocol.md): "
        "POST /v1/reward takes images and returns heatmaps, so that a heavy reward model runs in its own process or on its own GPU.",
        epilog="examples:\n  pxpo serve-reward segmentation --port 8100 --set 'classes={hair = -1.0}'\n"
        "  pxpo serve-reward myreward:make --port 8101        # myreward.py in the current folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("reward", metavar="NAME_OR_MODULE", help="a registered reward (e.g. segmentation) or module:factory")
    serve.add_argument("--set", dest="kwargs", action="append", default=[], metavar="KEY=VALUE", help="a keyword argument of the reward's factory; VALUE is read as TOML (repeatable)")
    _add_host_and_port(serve, port=8100)
    serve.add_argument("--max-request-bytes", type=int, metavar="N",
                       help="the largest request body read, in bytes; a larger one is answered 413 unread (default: 268435456, 256 MiB)")  # fmt: skip


def _add_pretrain_command(commands) -> None:
    pretrain = commands.add_parser(
        "pretrain",
        help="re-train the bundled tiny models on the procedural world",
        description="Render the procedural world and train the bundled text-to-image pipelines (pxpo-tiny: VAE, then UNet "
        "and text encoder; pxpo-tiny-flow: transformer and text encoders, on pxpo-tiny's VAE) and segmenter (pxpo-tiny-seg). "
        "Seeded and sized in steps: a re-run repeats the work. The defaults are the bundled models' settings (about 95 minutes "
        "on 2 CPU cores, 45 of them for pxpo-tiny-flow).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pretrain.add_argument("--out", default="pretrained", help="folder for pxpo-tiny/, pxpo-tiny-flow/ and pxpo-tiny-seg/ (default: pretrained)")
    pretrain.add_argument("--only", choices=["t2i", "flow", "segmenter"],
                          help="train only one of the three: t2i (pxpo-tiny), flow (pxpo-tiny-flow) or segmenter (pxpo-tiny-seg)")  # fmt: skip
    pretrain.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help="override a PretrainSettings field, e.g. unet_steps=100 (repeatable)")


def cmd_pretrain(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from pxpo.config import parse_override
    from pxpo.io import atomic_write_json
    from pxpo.world.pretrain import PretrainSettings, pretrain

    fields = {f.name: f.type for f in dataclasses.fields(PretrainSettings)}
    values = {}
    for text in args.overrides:
        (key, *rest), value = parse_override(text)
        if key not in fields or rest:
            raise ValueError(f"--set {text!r}: unknown setting; expected one of {', '.join(fields)}")
        expected = float if fields[key] == "float" else int
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"--set {text!r}: expected a number")
        values[key] = expected(value)
    settings = PretrainSettings(**values)
    out = Path(args.out)
    parts = (args.only,) if args.only else ("t2i", "flow", "segmenter")
    stats = pretrain(out, settings, parts)
    atomic_write_json(out / f"pretrain_stats_{'_'.join(parts)}.json", {"settings": dataclasses.asdict(settings), **stats})
    print(json.dumps(stats, indent=2))
    return 0


def cmd_serve_reward(args: argparse.Namespace) -> int:
    from pxpo.config import parse_override
    from pxpo.rewards import load_reward
    from pxpo.rewards.remote import MAX_REQUEST_BYTES, check_max_request_bytes, serve_reward

    max_request_bytes = check_max_request_bytes(MAX_REQUEST_BYTES if args.max_request_bytes is None else args.max_request_bytes)
    kwargs = {}
    for text in args.kwargs:
        (key, *rest), value = parse_override(text)
        if rest:
            raise ValueError(f"--set {text!r}: expected KEY=VALUE with a plain key")
        kwargs[key] = value
    load_reward(args.reward, **kwargs)  # fails here, in one line, if the reward cannot be built
    print(f"pxpo serve-reward: {args.reward} on http://{args.host}:{args.port}/v1/reward")
    serve_reward(args.reward, kwargs, host=args.host, port=args.port, max_request_bytes=max_request_bytes)
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from pxpo.app.server import serve
    from pxpo.models import check_model_reference

    check_model_reference(args.model)
    print(f"pxpo app: http://{args.host}:{args.port}/ (sessions in {args.sessions})")
    serve(args.sessions, host=args.host, port=args.port, default_model=args.model, timesteps_per_forward=args.timesteps_per_forward)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pxpo.config import ConfigError, load_config
    from pxpo.reporting import nothing_left_message, reward_change, trackers_line
    from pxpo.trainer import Trainer

    if args.resume:
        run_config = Path(args.resume) / "config.toml"
        if not run_config.is_file():
            raise ConfigError(f"--resume {args.resume!r}: not a run folder (no config.toml)")
        config = load_config(args.config or run_config, args.overrides)  # the trainer refuses what changes the run's meaning
        trainer = Trainer(config, run_dir=args.resume, resume=True, progress=not args.no_progress)
    else:
        if not args.config:
            raise ConfigError("pxpo train needs a CONFIG file (or --resume RUN)")
        config = load_config(args.config, args.overrides)
        trainer = Trainer(config, progress=not args.no_progress, config_name=Path(args.config).stem)
    if trainer.start_epoch > config.run.num_epochs and trainer.accelerator.is_main_process:  # a finished run resumed as it was
        print(f"pxpo train: {nothing_left_message(trainer.run.path, trainer.start_epoch - 1, config.run.num_epochs)}")
        trainer.progress = False  # no empty "epochs" bar
    try:
        metrics = trainer.train()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see main)
        print(f"pxpo train: stopped; {_resume_point(trainer.run)}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:  # e.g. a reward server lost mid-run: the run folder and how to continue
        if args.verbose:
            raise
        print(f"pxpo train: error: {error}\n{_resume_point(trainer.run)}", file=sys.stderr)
        return 2
    if not trainer.accelerator.is_main_process:
        return 0  # the main process prints the summary
    print(f"run folder: {trainer.run.path}")
    for line in (reward_change(metrics), trackers_line(trainer.run.path, config.run.log_with)):
        if line:
            print(line)
    print(f"figures: {trainer.run.reward_curve}, {trainer.run.evolution}")
    weights = trainer.run.weights(config.model.lora, trainer.family.denoiser_name)
    print(f"weights: {weights}  (pxpo sample {trainer.run.path} --prompt ...)")
    return 0


def _resume_point(run) -> str:
    """Which epoch a resume of ``run`` starts from, and the command."""
    done = run.last_checkpoint_epoch()
    where = f"the last checkpoint is epoch {done}: a resume starts at epoch {done + 1}" if done else "no checkpoint yet: a resume starts at epoch 1"
    return f"{where}. Continue with: pxpo train --resume {run.path}"


def cmd_sample(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from pxpo.families import family_for
    from pxpo.images import to_pil
    from pxpo.io import save_image
    from pxpo.models import load_pipeline
    from pxpo.region import run_region, sample_where_judged
    from pxpo.rewards import build_reward, check_reward_output
    from pxpo.rollout import sample_trajectories
    from pxpo.run_folder import RunFolder, load_run_pipeline

    if not 0 < args.eta <= 1:
        raise ValueError(f"--eta {args.eta}: expected a number in (0, 1]")
    if not args.noise_level > 0:
        raise ValueError(f"--noise-level {args.noise_level}: expected a number > 0")
    if args.num_steps < 1:
        raise ValueError(f"--num-steps {args.num_steps}: expected at least 1")
    if Path(args.out).suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--out {args.out!r}: expected a file name ending in {', '.join(IMAGE_SUFFIXES)}")
    pipe, config = load_run_pipeline(args.model) if RunFolder(args.model).config.is_file() else (load_pipeline(args.model), None)
    if config is not None and config.train.regional_adapter and args.height is None:  # its region is of the run's size
        args.height, args.width = config.sample.height, config.sample.width
    family = family_for(pipe, args.sde_type or (config.sample.sde_type if config else "sde"))
    noise_level = family.policy_noise(args.eta, args.noise_level)

    def run(generator, region):
        return sample_trajectories(
            family, [args.prompt] * len(args.seed), num_steps=args.num_steps, guidance_scale=args.guidance_scale,
            noise_level=noise_level, generator=generator, height=args.height, width=args.width,
            adapter_steps=config.adapter_steps if config else None, region=region,
        )  # fmt: skip

    generators = [torch.Generator().manual_seed(seed) for seed in args.seed]
    latent_size = family.latent_shape(args.height, args.width)[1:]
    if config is None or not config.train.regional_adapter:
        images = run(generators, None).images
    elif config.sample.single_image_seed is not None:  # the LoRA acts where the run's image was judged
        size = (args.height, args.width) if args.height is not None else None
        images = run(generators, run_region(RunFolder(args.model).lora, latent_size, size, config.advantage.interpolation)).images
    else:  # where the run's reward judges the base model's image of each seed
        if config.reward.name.startswith("injected:"):
            raise ValueError(f"the run's reward was passed in from Python ({config.reward.name.removeprefix('injected:')}): pxpo sample "
                             "cannot judge the base images its regional adapter needs; sample with pxpo.region.sample_where_judged")  # fmt: skip
        reward = build_reward(config.reward.name, config.reward.kwargs, config.reward.terms)
        metadata = [{"prompt": args.prompt, "seed": seed} for seed in args.seed]
        judge = lambda base: check_reward_output(reward(base.images, base.prompts, metadata), base.images, config.reward.name).judged  # noqa: E731
        images = sample_where_judged(run, generators, judge, latent_size, config.advantage.interpolation).images
    strip = Image.new("RGB", (images.shape[-1] * len(images), images.shape[-2]))
    for i, image in enumerate(images):
        strip.paste(to_pil(image), (i * images.shape[-1], 0))
    save_image(strip, args.out)
    print(f"wrote {args.out} ({len(images)} image(s), seeds {args.seed})")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "pretrain": cmd_pretrain, "app": cmd_app, "serve-reward": cmd_serve_reward}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from pxpo.launch import stop_on_signals
    from pxpo.progress import log_above_bars

    stop_on_signals()  # SIGTERM ends a run the way Ctrl-C does: one line, no traceback

    try:
        with log_above_bars():
            return COMMANDS[args.command](args)
    except (ValueError, OSError) as error:  # ConfigError and RewardError are ValueErrors; OSError: files and folders
        if args.verbose:
            raise
        print(f"pxpo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
