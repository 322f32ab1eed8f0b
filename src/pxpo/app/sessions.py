"""Human-feedback sessions on disk. A session is a run folder in single-image mode, plus the painted maps.

    SESSIONS/<name>/
      config.toml  metrics.jsonl  lora/  checkpoints/epoch_0001 ...   (a normal run folder)
      eval/epoch_0003/seed_0042.png     the image after 3 steps (what the person paints on next)
      feedback/step_0003.feedback.png   the map painted on that image (green +2, red -2)
      feedback/step_0003.difference.png where image 3 differs from image 2, with the outline of the map painted on image 2
      feedback_evolution.png            images and painted feedback per step (the paper's Fig. 1 and 7)

Step k trains epoch k + 1 on the map painted on image k. Every step writes a checkpoint, so a
restarted app continues a session where it stopped.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from pxpo.config import Config, validate_config
from pxpo.io import atomic_write_text, save_image
from pxpo.plots import pick_columns, plot_image_grid
from pxpo.models import check_model_reference
from pxpo.rewards.human import ALLOWED_VALUES, PAINTED_KEY, decode_feedback, encode_feedback, feedback_layer, feedback_name, overlay_feedback
from pxpo.run_folder import RunFolder

SESSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # matched in full (fullmatch): no trailing newline
MAX_SEED = 2**63 - 1
OLD_PAINTED_NAME = "injected:pxpo.rewards.human.PaintedFeedback"  # how sessions of earlier versions recorded the painted reward


class SessionError(ValueError):
    """A request that cannot be served; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# The policy's noise in sessions (DDIM's eta for SD models, the SDE's noise level for SD3/FLUX). The step noise is
# fixed per session (sample.single_image_noise = "fixed"), so the shown image changes only when the weights do;
# at 0.3 the image stays close to the seed's deterministic render, and the policy stays stochastic (REINFORCE).
SESSION_ETA = 0.3
SESSION_NOISE_LEVEL = 0.3
SESSION_STEPS = 20  # denoising steps per image
# Locality (docs/benchmarks/locality.md, the painted task): with the LoRA acting only where painted and on the last
# half of the steps, a painted step changes the painted pixels 3.3-3.5x as much as the others (1.0x with the LoRA
# everywhere), at a learning rate that keeps the painted change at least that of the LoRA everywhere at 1e-2.
SESSION_WINDOW = (SESSION_STEPS // 2, SESSION_STEPS)
SESSION_REGIONAL_LR = 3e-2
SESSION_LR = 1e-2  # without the regional adapter

# The difference view: per pixel the mean absolute RGB change (RGB in [0, 1]) on a fixed scale, black (unchanged) to
# white (a change of DIFFERENCE_FULL_SCALE or more), so that two steps' pictures compare. Greyscale, not a colour map:
# the outline of the painted map is drawn over it in the map's own green and red, which no grey can be taken for.
DIFFERENCE_FULL_SCALE = 0.25
OUTLINE_COLOURS = {1: (0, 255, 0), -1: (255, 0, 0)}  # + and - regions, as the page paints them


def pixel_change(before: Image.Image, after: Image.Image) -> np.ndarray:
    """Per pixel the mean absolute RGB change between two images of one size, RGB in [0, 1]: float32 [H, W]."""
    a, b = (np.asarray(image.convert("RGB"), dtype=np.float32) / 255 for image in (before, after))
    return np.abs(b - a).mean(axis=2)


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels (4-neighbour steps) of a pixel outside it: its inner border.

    A region reaching the image's edge is not outlined along the edge (it goes on, as far as the picture shows).
    """
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, mode="edge")
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def difference_picture(change: np.ndarray, painted: np.ndarray | None = None) -> Image.Image:
    """``change`` [H, W] as a greyscale picture on the fixed scale, with the outline of the ``painted`` map drawn over it.

    An exactly unchanged pixel is black, and any change of an 8-bit image (at least 1/765) is not. The outline is
    1 pixel wide per 128 pixels of the image's shorter side (at least 1), so it stays visible when a large image is shown small.
    """
    grey = np.round(np.clip(change / DIFFERENCE_FULL_SCALE, 0, 1) * 255).astype(np.uint8)
    grey[(change > 0) & (grey == 0)] = 1
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if painted is not None:
        width = max(1, min(change.shape) // 128)
        for sign, colour in OUTLINE_COLOURS.items():
            rgb[outline(np.sign(painted) == sign, width)] = colour
    return Image.fromarray(rgb)


def change_numbers(change: np.ndarray, painted: np.ndarray | None) -> dict:
    """The mean change where the map was painted and elsewhere (None where there is no such pixel), and the painted fraction."""
    where = painted != 0 if painted is not None else np.zeros(change.shape, dtype=bool)

    def mean(pixels: np.ndarray) -> float | None:
        return float(change[pixels].mean()) if pixels.any() else None

    return {"painted": mean(where), "elsewhere": mean(~where), "painted_fraction": float(where.mean())}


def session_config(
    model: str,
    prompt: str,
    seed: int,
    folder: Path,
    learning_rate: float | None = None,
    num_inner_epochs: int = 2,
    timesteps_per_forward: int = 1,
    regional: bool = True,
) -> Config:
    """Single-image PXPO on a painted map: advantages are the painted values themselves (no normalisation).

    ``regional`` (the app's default): the LoRA acts only where the image was painted (``train.regional_adapter``) and
    on the last half of the steps (``train.step_window``), at a learning rate of 3e-2, so that a step changes what
    was painted and little else (docs/benchmarks/locality.md). Off: the LoRA everywhere, at 1e-2 (``learning_rate``
    overrides either). ``timesteps_per_forward`` (train.timesteps_per_forward, at most the steps trained) only
    trades memory for speed.
    """
    window = SESSION_WINDOW if regional else (0, SESSION_STEPS)
    train = {"batch_size": 1, "num_inner_epochs": num_inner_epochs, "timesteps_per_forward": min(timesteps_per_forward, window[1] - window[0]),
             "learning_rate": learning_rate if learning_rate is not None else SESSION_REGIONAL_LR if regional else SESSION_LR}  # fmt: skip
    if regional:
        train |= {"regional_adapter": True, "step_window": list(window)}
    return validate_config(
        {
            "model": {"pretrained": model},
            "sample": {"prompts": [prompt], "single_image_seed": seed, "single_image_noise": "fixed", "batch_size": 1, "eta": SESSION_ETA,
                       "noise_level": SESSION_NOISE_LEVEL, "num_steps": SESSION_STEPS},
            "train": train,
            "advantage": {"normalization": "none"},
            "reward": {"name": "painted"},
            "eval": {"reward": False},
            "run": {"output_dir": str(folder.parent), "name": folder.name, "num_epochs": 1_000_000, "checkpoint_every": 1, "keep_checkpoints": 1_000_000},
        }
    )


class Session:
    """One person's image being trained step by step."""

    def __init__(self, folder: Path, trainer) -> None:
        self.folder = folder
        self.trainer = trainer
        self.run = RunFolder(folder)

    @property
    def config(self) -> Config:
        return self.trainer.config

    @property
    def step(self) -> int:
        return len(self.run.read_metrics()) - 1

    def image_path(self, step: int) -> Path:
        return self.run.eval_image_path(step, self.config.sample.single_image_seed)

    def checked_image_step(self, step: int) -> int:
        """``step`` if the session has its image; 404 naming the steps it has otherwise."""
        if not 0 <= step <= self.step:
            raise SessionError(f"step {step}: session {self.folder.name!r} has images of steps {describe_steps(range(self.step + 1))}",
                               status=404)  # fmt: skip
        return step

    def painted_steps(self) -> list[int]:
        """The steps whose image has a painted map (the map of step k is saved when step k + 1 trains)."""
        return [k for k in range(self.step + 1) if self.feedback_path(k).is_file()]

    def checked_painted_step(self, step: int) -> int:
        """``step`` if a map was painted on its image; 404 naming the steps that have one otherwise."""
        steps = self.painted_steps()
        if step not in steps:
            where = f"painted maps of step{'s' if len(steps) > 1 else ''} {describe_steps(steps)}" if steps else \
                "no painted map yet (a map is kept when a step trains on it)"  # fmt: skip
            raise SessionError(f"step {step}: session {self.folder.name!r} has {where}", status=404)
        return step

    def feedback_path(self, step: int) -> Path:
        return self._feedback_file(step, "feedback")

    def _feedback_file(self, step: int, kind: str) -> Path:
        """feedback/step_0003.{kind}.png: the painted map ("feedback"), its layer or its overlay on the image."""
        return self.folder / "feedback" / f"{feedback_name(step)}.{kind}.png"

    def checked_difference_step(self, step: int) -> int:
        """``step`` if image ``step`` has one before it (1 to the current step); 404 naming those steps otherwise."""
        if not 1 <= step <= self.step:
            where = f"differences of step{'s' if self.step > 1 else ''} {describe_steps(range(1, self.step + 1))}" if self.step else \
                "no difference yet (the first is step 1's, after a step has trained)"  # fmt: skip
            raise SessionError(f"step {step}: session {self.folder.name!r} has {where}", status=404)
        return step

    def _change(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The per-pixel change from image ``step - 1`` to image ``step``, and the map painted on image ``step - 1`` (or None)."""
        self.checked_difference_step(step)
        with Image.open(self.image_path(step - 1)) as before, Image.open(self.image_path(step)) as after:
            change = pixel_change(before, after)
        return change, self._painted_map(step - 1) if self.feedback_path(step - 1).is_file() else None

    def difference(self, step: int) -> Path:
        """Where image ``step`` differs from image ``step - 1``, with the outline of the map painted on image ``step - 1``."""
        self.checked_difference_step(step)
        target = self._feedback_file(step, "difference")
        if not target.exists():
            save_image(difference_picture(*self._change(step)), target)
        return target

    def change(self, step: int) -> dict:
        """The mean change from image ``step - 1`` to image ``step`` inside the map painted on ``step - 1`` and outside it."""
        return {"step": step, **change_numbers(*self._change(step))}

    def image_size(self) -> tuple[int, int]:
        """(width, height) of the session's images."""
        with Image.open(self.image_path(0)) as image:
            return image.size

    def train_step(self, values: np.ndarray, painted_on: int | None = None) -> dict:
        """Train one epoch on the map painted on image ``painted_on`` (the current one); return the new state.

        A map painted on an image that is no longer current (a stale tab) is refused with 409; an empty map with 400.
        """
        step = self.step
        if painted_on is not None and painted_on != step:
            raise SessionError(f"this map was painted on step {painted_on}, but the session is at step {step}: "
                               "the page now shows the current image", status=409)  # fmt: skip
        if not np.any(values):
            raise SessionError("paint something first: an empty map would train nothing")
        save_image(encode_feedback(values), self.feedback_path(step))
        self.trainer.step(step + 1, metadata={PAINTED_KEY: values})  # checkpoint_every = 1: every step is saved
        return self.state()

    def state(self) -> dict:
        metrics = self.run.read_metrics()
        history = [
            {"step": m["epoch"] - 1, "feedback_mean": m["reward_mean"], "train_seconds": m["train_seconds"] + m["sample_seconds"]}
            for m in metrics
            if "reward_mean" in m
        ]
        width, height = self.image_size()
        step = len(metrics) - 1
        return {
            "name": self.folder.name,
            "model": self.config.model.pretrained,
            "prompt": self.config.sample.prompts[0],
            "seed": self.config.sample.single_image_seed,
            "step": step,
            "width": width,
            "height": height,
            "history": history,
            "change": self._last_change(step),
        }

    def _last_change(self, step: int) -> dict | None:
        """What the last step changed, where painted and elsewhere; None before a step (or if an image is missing)."""
        try:
            return self.change(step) if step >= 1 else None
        except OSError:  # a damaged folder: the session still opens, without the numbers
            return None

    def map_layer(self, step: int) -> Path:
        """The map painted on image ``step`` as a transparent layer (the page's "previous map" overlay)."""
        self.checked_painted_step(step)
        target = self._feedback_file(step, "layer")
        if not target.exists():
            save_image(feedback_layer(self._painted_map(step)), target)
        return target

    def _painted_map(self, step: int) -> np.ndarray:
        return decode_feedback(Image.open(self.feedback_path(self.checked_painted_step(step))))

    def painted_overlay(self, step: int) -> Path:
        """The image of ``step`` with the map painted on it blended in (the "before" of the next step)."""
        self.checked_painted_step(step)
        target = self._feedback_file(step, "overlay")
        if not target.exists():
            save_image(overlay_feedback(Image.open(self.image_path(step)), self._painted_map(step)), target)
        return target

    @property
    def figure_path(self) -> Path:
        """Where ``export_figure`` draws the feedback-evolution figure."""
        return self.folder / "feedback_evolution.png"

    def export_figure(self, max_columns: int = 8) -> Path:
        """The paper's Fig. 1/7 layout: row 1 the image at each step, row 2 the feedback painted on it."""
        steps = pick_columns(range(self.step + 1), max_columns)
        overlays = []
        for step in steps:
            overlays.append(self.painted_overlay(step) if self.feedback_path(step).exists() else self.image_path(step))
        figure = self.figure_path
        plot_image_grid(
            [[self.image_path(s) for s in steps], overlays],
            ["image", "feedback"],
            [f"step {s}" for s in steps],
            figure,
            title=f"{self.config.sample.prompts[0]} (seed {self.config.sample.single_image_seed})",
        )
        return figure


class SessionManager:
    """Sessions under one folder; one training step at a time across all of them."""

    def __init__(self, root: str | Path, default_model: str = "pxpo-tiny", timesteps_per_forward: int = 1) -> None:
        # The trainer's modules are imported here, once, in one thread. Imported by two request threads at once (a page
        # reopening its session builds a Trainer while the session list validates a config, which looks up the algorithm),
        # diffusers' lazy modules race: "cannot import name 'DiffusionPipeline'", and the session did not open.
        import pxpo.trainer  # noqa: F401

        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.default_model = default_model
        if not 1 <= timesteps_per_forward <= SESSION_STEPS:
            raise ValueError(f"timesteps_per_forward = {timesteps_per_forward}: expected 1 to {SESSION_STEPS} (a session's DDIM steps)")
        self.timesteps_per_forward = timesteps_per_forward
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()

    def folder(self, name: str) -> Path:
        if not isinstance(name, str) or not SESSION_NAME.fullmatch(name):
            raise SessionError(f"session name {name!r}: expected 1-64 letters, digits, '-' or '_' (starting with a letter or digit)")
        folder = (self.root / name).resolve()
        if folder.parent != self.root:
            raise SessionError(f"session name {name!r} leaves the sessions folder")
        return folder

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "config.toml").is_file())

    def exists(self, name: str) -> bool:
        """Whether session ``name`` exists (open, or on disk)."""
        return name in self.sessions or (self.folder(name) / "config.toml").is_file()

    def summaries(self) -> list[dict]:
        """Each session's name, model, prompt and step count, read from its folder (no model is loaded)."""
        from pxpo.config import load_config

        out = []
        for name in self.names():
            folder = self.root / name
            try:
                config = load_config(folder / "config.toml")
                model, prompt = config.model.pretrained, config.sample.prompts[0]
            except ValueError:  # a damaged config.toml: still listed, so that it can be looked at
                model, prompt = "?", "?"
            out.append({"name": name, "model": model, "prompt": prompt, "step": max(len(RunFolder(folder).read_metrics()) - 1, 0)})
        return out

    def open(self, name: str, model: str | None = None, prompt: str | None = None, seed: int | None = None) -> Session:
        """Load an existing session (continuing from its last step), or create a new one."""
        from pxpo.trainer import Trainer

        folder = self.folder(name)
        for field, text in (("model", model), ("prompt", prompt)):
            check_text(field, text)
        if name in self.sessions:
            session = self.sessions[name]
            _check_same(name, session.config, model, prompt, seed)
            return session
        if (folder / "config.toml").is_file():
            from pxpo.config import load_config

            config = load_config(folder / "config.toml")
            _check_same(name, config, model, prompt, seed)  # before the model is loaded
            if config.reward.name == OLD_PAINTED_NAME:  # a session of a version whose painted reward was injected: the same reward
                config.reward.name = "painted"
                atomic_write_text(folder / "config.toml", config.to_toml())
            trainer = Trainer(config, run_dir=folder, resume=True, progress=False)
        else:
            if prompt is None and seed is None:  # opened by name (a link, a reload) after it was deleted, or a typo
                raise SessionError(f"no session named {name!r} (a new session needs a prompt and a seed)", status=404)
            if not prompt or not prompt.strip():
                raise SessionError("a new session needs a prompt")
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
                raise SessionError(f"seed {seed!r}: expected a whole number from 0 to {MAX_SEED}")
            try:
                check_model_reference(model or self.default_model)  # one line naming the model, before any loading
            except ValueError as error:
                raise SessionError(f"model {error}") from None
            config = session_config(model or self.default_model, prompt.strip(), seed, folder, timesteps_per_forward=self.timesteps_per_forward)
            trainer = Trainer(config, run_dir=folder, progress=False)
            trainer.begin()
        session = Session(folder, trainer)
        self.sessions[name] = session
        return session

    def get(self, name: str) -> Session:
        folder = self.folder(name)
        if name not in self.sessions and not (folder / "config.toml").is_file():
            raise SessionError(f"no session named {name!r}", status=404)
        return self.open(name)


def check_text(field: str, text: str | None) -> None:
    """Refuse a string that is not text (JSON can carry lone surrogates, which no file or tokenizer can hold)."""
    if not isinstance(text, str):
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise SessionError(f"{field}: not encodable text: character {error.start + 1} is a lone surrogate ({text[error.start]!r}), "
                           "half of a character that UTF-8 cannot write; retype it") from None  # fmt: skip


def describe_steps(steps) -> str:
    """[0, 1, 2, 5] -> "0 to 2, 5": whole runs of consecutive steps as ranges."""
    runs: list[list[int]] = []
    for step in steps:
        if runs and step == runs[-1][1] + 1:
            runs[-1][1] = step
        else:
            runs.append([step, step])
    return ", ".join(str(a) if a == b else f"{a} to {b}" for a, b in runs)


def _check_same(name: str, config: Config, model: str | None, prompt: str | None, seed: int | None) -> None:
    """An existing session opened with a model, prompt or seed must name its own (409 otherwise, nothing changed)."""
    given = {"model": model, "prompt": prompt.strip() if isinstance(prompt, str) else prompt, "seed": seed}
    own = {"model": config.model.pretrained, "prompt": config.sample.prompts[0], "seed": config.sample.single_image_seed}
    for key, value in given.items():
        if value not in (None, "") and value != own[key]:
            raise SessionError(f"session {name!r} already exists with {key} {own[key]!r} (not {value!r}): "
                               "open it as it is, or choose another session name", status=409)  # fmt: skip


def parse_painted_map(body: bytes, width: int, height: int, expected: tuple[int, int], max_bytes: int) -> np.ndarray:
    """Check an uploaded map (int8 values, row-major, width x height) and return it as float32 [H, W]."""
    if len(body) > max_bytes:
        raise SessionError(f"feedback of {len(body)} bytes: the limit is {max_bytes}", status=413)
    if (width, height) != expected:
        raise SessionError(f"feedback of size {width}x{height}: the image is {expected[0]}x{expected[1]}")
    if len(body) != width * height:
        raise SessionError(f"feedback of {len(body)} bytes: expected {width * height} (one int8 per pixel, {width}x{height})")
    values = np.frombuffer(body, dtype=np.int8).reshape(height, width)
    bad = ~np.isin(values, ALLOWED_VALUES)
    if bad.any():
        raise SessionError(f"feedback holds {int(bad.sum())} values outside {list(ALLOWED_VALUES)} (e.g. {int(values[bad][0])})")
    return values.astype(np.float32)
