"""A procedural world of 64 x 64 scenes, each with a pixel-exact label map and a caption.

Three families mirror the paper's prompts:

- "nature landscape": sky, sun, clouds, mountains (snow caps), a lake, trees, grass;
- "red taxi in traffic": sky, buildings, a road, a red taxi and other cars;
- "portrait of a man on the beach": sky, sea, sand and a person (skin, clothes, hair, maybe a hat).

A scene is drawn as class ids first (PIL, no antialiasing, so the label map is exact), then
coloured per class with the scene's palette, light (day, sunset, night) and a little texture.
Everything is a function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
CLASSES = (
    "sky", "sun", "cloud", "mountain", "snow", "water", "tree", "grass",
    "road", "building", "car", "sand", "skin", "clothes", "hair", "hat",
)  # fmt: skip
ID2LABEL = dict(enumerate(CLASSES))
LABEL2ID = {name: i for i, name in ID2LABEL.items()}
FAMILY_PROMPTS = {
    "landscape": "nature landscape",
    "taxi": "red taxi in traffic",
    "beach": "portrait of a man on the beach",
}
FAMILIES = tuple(FAMILY_PROMPTS)
# Classes a sample of each family must show (the quality gate); "person" is any of its parts.
PERSON = ("skin", "clothes", "hair", "hat")
KEY_CLASSES = {"landscape": ("tree", "water", "sky"), "taxi": ("car", "road"), "beach": ("person", "hair", "sand")}

TIMES = ("day", "sunset", "night")
_LIGHT = {"day": 1.0, "sunset": 0.85, "night": 0.45}
_SKY = {  # top and horizon colours
    "day": ((0.30, 0.55, 0.95), (0.70, 0.85, 1.00)),
    "sunset": ((0.35, 0.25, 0.55), (1.00, 0.55, 0.25)),
    "night": ((0.02, 0.03, 0.12), (0.10, 0.12, 0.30)),
}
_CAR_COLOURS = {"blue": (0.15, 0.3, 0.85), "white": (0.92, 0.92, 0.92), "black": (0.1, 0.1, 0.12),
                "green": (0.15, 0.6, 0.25), "yellow": (0.95, 0.8, 0.1), "grey": (0.55, 0.55, 0.58)}  # fmt: skip
_HAIR = {"blond": (0.9, 0.78, 0.4), "brown": (0.4, 0.25, 0.12), "black": (0.08, 0.07, 0.07)}
_CLOTHES = {"red": (0.85, 0.15, 0.15), "blue": (0.2, 0.35, 0.85), "white": (0.95, 0.95, 0.95),
            "green": (0.2, 0.65, 0.3), "yellow": (0.95, 0.85, 0.2), "black": (0.1, 0.1, 0.1)}  # fmt: skip


@dataclass
class Scene:
    """One rendered scene.

    Attributes:
        image: [64, 64, 3] uint8 RGB.
        labels: [64, 64] uint8 class ids (see ID2LABEL).
        caption: a prompt describing it; the family's bare prompt or that prompt with a detail.
        family: "landscape", "taxi" or "beach".
        attributes: what was drawn (time of day, counts, colours, ...).
    """

    image: np.ndarray
    labels: np.ndarray
    caption: str
    family: str
    attributes: dict = field(default_factory=dict)


class _Canvas:
    """Paint class ids with PIL; keep per-pixel colour overrides for classes with several colours."""

    def __init__(self) -> None:
        self.labels = Image.new("L", (SIZE, SIZE), LABEL2ID["sky"])
        self.draw = ImageDraw.Draw(self.labels)
        self.tint = Image.new("L", (SIZE, SIZE), 0)  # index into a per-scene tint table; 0 = class colour
        self.tint_draw = ImageDraw.Draw(self.tint)
        self.tints: list[tuple[float, float, float]] = [(0, 0, 0)]

    def _tint_index(self, colour: tuple[float, float, float] | None) -> int:
        if colour is None:
            return 0
        self.tints.append(colour)
        return len(self.tints) - 1

    def polygon(self, points, cls: str, colour=None) -> None:
        self.draw.polygon([tuple(map(float, p)) for p in points], fill=LABEL2ID[cls])
        self.tint_draw.polygon([tuple(map(float, p)) for p in points], fill=self._tint_index(colour))

    def rectangle(self, box, cls: str, colour=None) -> None:
        self.draw.rectangle([float(v) for v in box], fill=LABEL2ID[cls])
        self.tint_draw.rectangle([float(v) for v in box], fill=self._tint_index(colour))

    def ellipse(self, box, cls: str, colour=None) -> None:
        self.draw.ellipse([float(v) for v in box], fill=LABEL2ID[cls])
        self.tint_draw.ellipse([float(v) for v in box], fill=self._tint_index(colour))


def _colourise(canvas: _Canvas, time: str, horizon: int, rng: np.random.Generator, palette: dict) -> np.ndarray:
    labels = np.asarray(canvas.labels)
    tint = np.asarray(canvas.tint)
    rows = np.linspace(0, 1, SIZE)[:, None, None] * np.ones((1, SIZE, 1))
    top, low = (np.array(c) for c in _SKY[time])
    sky = top + (low - top) * np.clip(rows / max(horizon / SIZE, 0.2), 0, 1)
    image = np.zeros((SIZE, SIZE, 3))
    for cls, colour in palette.items():
        mask = labels == LABEL2ID[cls]
        image[mask] = colour
    sky_mask = labels == LABEL2ID["sky"]
    image[sky_mask] = sky[sky_mask]
    tints = np.array(canvas.tints)
    tinted = tint > 0
    image[tinted] = tints[tint[tinted]]
    light = _LIGHT[time]
    lit = ~np.isin(labels, [LABEL2ID["sky"], LABEL2ID["sun"]])
    image[lit] *= light
    if time == "sunset":
        image[lit] = image[lit] * np.array([1.1, 0.9, 0.8])
    image += rng.normal(0, 0.025, image.shape)  # texture
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _jitter(colour, rng, amount=0.06):
    return tuple(np.clip(np.array(colour) + rng.uniform(-amount, amount, 3), 0, 1))


def _landscape(rng: np.random.Generator):
    canvas = _Canvas()
    time = rng.choice(TIMES, p=[0.6, 0.25, 0.15])
    horizon = int(rng.integers(24, 36))
    attrs: dict = {"time": str(time)}
    if time != "night" and rng.random() < 0.7:
        r = rng.integers(4, 8)
        cx, cy = rng.integers(8, 56), rng.integers(5, max(6, horizon - 14))
        canvas.ellipse((cx - r, cy - r, cx + r, cy + r), "sun")
    for _ in range(rng.integers(0, 3)):
        cx, cy, w = rng.integers(0, 64), rng.integers(3, 14), rng.integers(8, 18)
        canvas.ellipse((cx - w, cy - 3, cx + w, cy + 3), "cloud")
    snowy = rng.random() < 0.5
    attrs["snow"] = bool(snowy)
    for _ in range(rng.integers(1, 4)):
        peak_x, peak_y, half = rng.integers(0, 64), rng.integers(horizon - 22, horizon - 8), rng.integers(12, 26)
        canvas.polygon([(peak_x - half, horizon), (peak_x, peak_y), (peak_x + half, horizon)], "mountain")
        if snowy:
            cap = (horizon - peak_y) * 0.35
            k = cap / (horizon - peak_y)
            canvas.polygon([(peak_x - half * k, peak_y + cap), (peak_x, peak_y), (peak_x + half * k, peak_y + cap)], "snow")
    canvas.rectangle((0, horizon, 63, 63), "grass")
    lake_w = int(rng.integers(14, 30))
    lake_h = int(rng.integers(5, 12))
    lake_x = int(rng.integers(lake_w // 2, 64 - lake_w // 2))
    lake_y = int(rng.integers(horizon + lake_h // 2 + 2, 62 - lake_h // 2))
    canvas.ellipse((lake_x - lake_w, lake_y - lake_h, lake_x + lake_w, lake_y + lake_h), "water")
    n_trees = int(rng.integers(2, 8))
    attrs.update(trees=n_trees, lake_width=2 * lake_w)
    pine = rng.random() < 0.5
    trees = sorted((int(rng.integers(2, 62)), int(rng.integers(horizon + 2, 63))) for _ in range(n_trees))
    for x, base in sorted(trees, key=lambda t: t[1]):
        height = int(rng.integers(8, 16)) * (0.6 + 0.6 * base / 63)
        width = height * rng.uniform(0.35, 0.55)
        if pine:
            canvas.polygon([(x - width, base), (x, base - height), (x + width, base)], "tree")
        else:
            canvas.rectangle((x - 1, base - height * 0.4, x + 1, base), "tree", colour=(0.35, 0.22, 0.1))
            canvas.ellipse((x - width, base - height, x + width, base - height * 0.3), "tree")
    palette = {
        "sun": (1.0, 0.9, 0.4) if time == "day" else (1.0, 0.6, 0.3),
        "cloud": (0.95, 0.95, 0.97),
        "mountain": _jitter((0.45, 0.42, 0.45), rng),
        "snow": (0.96, 0.97, 1.0),
        "grass": _jitter((0.3, 0.6, 0.25), rng),
        "water": _jitter((0.15, 0.4, 0.8), rng),
        "tree": _jitter((0.08, 0.38, 0.12) if pine else (0.15, 0.5, 0.15), rng),
    }
    details = []
    if snowy:
        details.append("with snow mountains")
    if time != "day":
        details.append(f"at {time}")
    if n_trees >= 5:
        details.append("with many trees")
    if lake_w >= 24:
        details.append("with a large lake")
    return canvas, str(time), horizon, palette, attrs, details


def _car(canvas: _Canvas, x: int, y: int, length: int, colour, rng) -> None:
    """A side-view car with its bottom at y: body, cabin, wheels (all labelled car)."""
    h = max(3, length // 3)
    canvas.rectangle((x, y - h, x + length, y - 2), "car", colour)
    canvas.polygon([(x + length * 0.2, y - h), (x + length * 0.32, y - h - h * 0.8), (x + length * 0.72, y - h - h * 0.8), (x + length * 0.85, y - h)], "car", colour)
    wheel = max(1, length // 8)
    for wx in (x + length * 0.22, x + length * 0.78):
        canvas.ellipse((wx - wheel, y - 1 - wheel * 1.5, wx + wheel, y), "car", (0.05, 0.05, 0.05))


def _taxi(rng: np.random.Generator):
    canvas = _Canvas()
    time = rng.choice(TIMES, p=[0.6, 0.2, 0.2])
    horizon = int(rng.integers(30, 40))
    attrs: dict = {"time": str(time)}
    x = -int(rng.integers(0, 6))
    while x < 64:
        w, top = int(rng.integers(8, 16)), int(rng.integers(4, horizon - 8))
        shade = rng.uniform(0.35, 0.75)
        canvas.rectangle((x, top, x + w - 1, horizon), "building", (shade, shade * rng.uniform(0.9, 1.05), shade * rng.uniform(0.85, 1.05)))
        lit = (0.95, 0.85, 0.4) if time == "night" else (0.6, 0.75, 0.9)
        for wy in range(top + 2, horizon - 2, 4):
            for wx in range(x + 2, x + w - 2, 4):
                if rng.random() < 0.6:
                    canvas.rectangle((wx, wy, wx + 1, wy + 1), "building", lit)
        x += w
    canvas.rectangle((0, horizon, 63, 63), "road")
    lane = int((horizon + 63) / 2)
    for mx in range(int(rng.integers(0, 6)), 64, 10):
        canvas.rectangle((mx, lane, mx + 4, lane), "road", (0.9, 0.9, 0.85))
    n_cars = int(rng.integers(1, 4))
    lanes = [horizon + 8, 62]
    cars = []
    for _ in range(n_cars):
        cars.append((int(rng.integers(-8, 56)), lanes[int(rng.integers(0, 2))], int(rng.integers(14, 20)), rng.choice(list(_CAR_COLOURS))))
    taxi = (int(rng.integers(8, 36)), int(rng.integers(horizon + 14, 63)), int(rng.integers(20, 28)))
    for cx, cy, length, name in sorted(cars, key=lambda c: c[1]):
        if cy <= taxi[1]:
            _car(canvas, cx, cy, length, _jitter(_CAR_COLOURS[name], rng, 0.04), rng)
    _car(canvas, taxi[0], taxi[1], taxi[2], _jitter((0.85, 0.1, 0.1), rng, 0.05), rng)
    length = taxi[2]
    canvas.rectangle((taxi[0] + length * 0.45, taxi[1] - length // 3 - length // 3 * 0.8 - 2, taxi[0] + length * 0.6, taxi[1] - length // 3 - length // 3 * 0.8), "car", (0.95, 0.9, 0.3))
    for cx, cy, length, name in cars:
        if cy > taxi[1]:
            _car(canvas, cx, cy, length, _jitter(_CAR_COLOURS[name], rng, 0.04), rng)
    attrs["cars"] = n_cars + 1
    palette = {"road": _jitter((0.32, 0.32, 0.34), rng, 0.04), "building": (0.5, 0.5, 0.5), "car": (0.5, 0.5, 0.5)}
    details = []
    if time != "day":
        details.append(f"at {time}")
    if n_cars >= 3:
        details.append("on a busy street")
    return canvas, str(time), horizon, palette, attrs, details


def _beach(rng: np.random.Generator):
    canvas = _Canvas()
    time = rng.choice(TIMES, p=[0.7, 0.25, 0.05])
    horizon = int(rng.integers(18, 30))
    shore = int(rng.integers(horizon + 8, 48))
    attrs: dict = {"time": str(time)}
    if time != "night" and rng.random() < 0.5:
        r = int(rng.integers(3, 6))
        cx, cy = int(rng.integers(6, 58)), int(rng.integers(4, max(5, horizon - 6)))
        canvas.ellipse((cx - r, cy - r, cx + r, cy + r), "sun")
    canvas.rectangle((0, horizon, 63, shore), "water")
    canvas.polygon([(0, shore), (63, shore - int(rng.integers(-3, 4))), (63, 63), (0, 63)], "sand")
    # The person, centred-ish, shoulders to the bottom edge.
    cx = int(rng.integers(22, 42))
    head_r = int(rng.integers(6, 9))
    head_cy = int(rng.integers(22, 32))
    skin = _jitter(rng.choice([(0.95, 0.78, 0.62), (0.8, 0.6, 0.45), (0.55, 0.38, 0.25), (0.35, 0.24, 0.16)]), rng, 0.03)
    clothes_name = rng.choice(list(_CLOTHES))
    hair_name = rng.choice(list(_HAIR))
    long_hair = rng.random() < 0.3
    hat = rng.random() < 0.35
    shoulders = head_cy + head_r + 3
    canvas.polygon([(cx - head_r * 2.4, 63), (cx - head_r * 1.9, shoulders), (cx + head_r * 1.9, shoulders), (cx + head_r * 2.4, 63)], "clothes", _jitter(_CLOTHES[clothes_name], rng, 0.04))
    canvas.rectangle((cx - head_r * 0.4, head_cy + head_r - 2, cx + head_r * 0.4, shoulders + 1), "skin", skin)
    if long_hair:
        canvas.rectangle((cx - head_r * 1.15, head_cy - head_r * 0.2, cx + head_r * 1.15, head_cy + head_r * 1.5), "hair", _HAIR[hair_name])
    hair_top = head_cy - head_r - int(rng.integers(1, 4))
    hair_colour = _jitter(_HAIR[hair_name], rng, 0.03)
    # Hair frames the face down to ear level, so some shows at the sides even under a hat.
    canvas.ellipse((cx - head_r * 1.15, hair_top, cx + head_r * 1.15, head_cy + head_r * 0.45), "hair", hair_colour)
    canvas.ellipse((cx - head_r * 0.8, head_cy - head_r * 0.35, cx + head_r * 0.8, head_cy + head_r), "skin", skin)
    for ex in (cx - head_r * 0.35, cx + head_r * 0.35):  # eyes, part of the face
        canvas.rectangle((ex, head_cy + 1, ex, head_cy + 1), "skin", (0.1, 0.1, 0.1))
    if hat:
        hat_colour = _jitter(rng.choice([(0.85, 0.75, 0.45), (0.2, 0.2, 0.25), (0.8, 0.2, 0.2), (0.95, 0.95, 0.9)]), rng, 0.04)
        brim = head_cy - head_r * 0.6
        canvas.ellipse((cx - head_r * 1.6, brim - 2, cx + head_r * 1.6, brim + 1), "hat", hat_colour)
        canvas.rectangle((cx - head_r * 0.9, hair_top - 3, cx + head_r * 0.9, brim), "hat", hat_colour)
    attrs.update(hat=bool(hat), hair=str(hair_name), clothes=str(clothes_name), long_hair=bool(long_hair))
    palette = {
        "sun": (1.0, 0.9, 0.45),
        "water": _jitter((0.1, 0.45, 0.75), rng),
        "sand": _jitter((0.9, 0.8, 0.55), rng),
    }
    details = []
    if hat:
        details.append("wearing a hat")
    if hair_name == "blond" and not hat:
        details.append("with blond hair")
    if time != "day":
        details.append(f"at {time}")
    return canvas, str(time), horizon, palette, attrs, details


_DRAW = {"landscape": _landscape, "taxi": _taxi, "beach": _beach}


def render_scene(seed: int, family: str | None = None, detail_probability: float = 0.5) -> Scene:
    """Render one scene from its seed.

    Args:
        seed: everything about the scene follows from it.
        family: "landscape", "taxi" or "beach"; drawn from the seed when None.
        detail_probability: chance that the caption adds one true detail ("at sunset", "wearing a hat", ...).

    Returns:
        A Scene with image [64, 64, 3] uint8, labels [64, 64] uint8 and caption.
    """
    rng = np.random.default_rng(seed)
    if family is None:
        family = FAMILIES[int(rng.integers(0, len(FAMILIES)))]
    if family not in _DRAW:
        raise ValueError(f"family = {family!r}: expected one of {', '.join(FAMILIES)}")
    canvas, time, horizon, palette, attrs, details = _DRAW[family](rng)
    image = _colourise(canvas, time, horizon, rng, palette)
    caption = FAMILY_PROMPTS[family]
    if details and rng.random() < detail_probability:
        caption = f"{caption} {details[int(rng.integers(0, len(details)))]}"
    return Scene(image=image, labels=np.asarray(canvas.labels).copy(), caption=caption, family=family, attributes=attrs)


def render_dataset(seeds: range | list[int], family: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images [N, 64, 64, 3] uint8, labels [N, 64, 64] uint8 and captions for many seeds."""
    scenes = [render_scene(s, family) for s in seeds]
    return np.stack([s.image for s in scenes]), np.stack([s.labels for s in scenes]), [s.caption for s in scenes]


def class_presence(labels: np.ndarray, family: str, min_pixels: int = 4) -> dict[str, bool]:
    """Which of the family's key classes a label map [64, 64] shows (at least ``min_pixels`` pixels)."""
    counts = np.bincount(labels.ravel(), minlength=len(CLASSES))
    present = {name: counts[LABEL2ID[name]] >= min_pixels for name in CLASSES}
    present["person"] = sum(counts[LABEL2ID[p]] for p in PERSON) >= min_pixels
    return {name: bool(present[name]) for name in KEY_CLASSES[family]}
