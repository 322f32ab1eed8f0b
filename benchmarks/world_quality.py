"""Quality of the bundled world models: the quality gate and the segmenter's IoU.

- Quality gate: 64 fresh samples per family prompt from each bundled pipeline (pxpo-tiny at eta = 1,
  pxpo-tiny-flow with the SDE at noise level 0.7, the training samplers); the bundled segmenter must
  find each prompt's key classes in at least 80 % of them.
- Segmenter: per-class IoU on 500 held-out renders (seeds never trained on); mean IoU >= 0.85.

Writes DOCS/world.md and DOCS/images/world_samples.png (pxpo-tiny) and world_samples_flow.png (pxpo-tiny-flow).

    python benchmarks/world_quality.py [--out docs]
"""

from __future__ import annotations

import _common as bench

import inspect
import json
from pathlib import Path

import numpy as np
from PIL import Image

from pxpo.images import to_pil
from pxpo.io import save_image
from pxpo.models import load_pipeline, load_segmenter
from pxpo.world import WEIGHTS
from pxpo.world.evaluate import quality_gate, segmenter_iou
from pxpo.world.pretrain import HELD_OUT_SEED
from pxpo.world.scenes import FAMILY_PROMPTS, class_presence

GATE = 0.8
IOU_FLOOR = 0.85
MIN_PIXELS = inspect.signature(class_presence).parameters["min_pixels"].default  # a class is present with this many pixels
GRID_COLUMNS = 8  # samples per prompt in the sample grids
# model -> (sampler noise, guidance scale, sample grid file)
MODELS = {"pxpo-tiny": (1.0, 5.0, "world_samples.png"), "pxpo-tiny-flow": (0.7, 4.5, "world_samples_flow.png")}


def sample_grid(images_by_family: dict, per_family: int = GRID_COLUMNS) -> Image.Image:
    rows = []
    for images in images_by_family.values():
        rows.append(np.concatenate([np.asarray(to_pil(img)) for img in images[:per_family]], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    return grid.resize((grid.width * 3, grid.height * 3), Image.NEAREST)


def main() -> None:
    parser = bench.arguments(__doc__, out="docs", out_flags=("--out", "--docs"), out_help="where world.md and images/ go")
    parser.add_argument("--samples", type=int, default=64, help="samples per family prompt")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of the samples")
    parser.add_argument("--renders", type=int, default=500, help="held-out renders for the IoU")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = bench.parse(parser)

    docs = Path(args.out)
    model, processor = load_segmenter("pxpo-tiny-seg")
    gates = {}
    for name in args.models:
        noise, guidance, grid_file = MODELS[name]
        gates[name], images = quality_gate(load_pipeline(name), model, processor, samples_per_prompt=args.samples, num_steps=args.steps,
                                           noise_level=noise, guidance_scale=guidance, first_seed=HELD_OUT_SEED)  # fmt: skip
        save_image(sample_grid(images), docs / "images" / grid_file)
    ious = segmenter_iou(model, processor, num_images=args.renders, first_seed=HELD_OUT_SEED)

    stats_files = sorted(WEIGHTS.glob("pretrain_stats_*.json"))
    stats = {k: v for f in stats_files for k, v in json.loads(f.read_text()).items() if k != "settings"}
    settings = {k: v for f in stats_files for k, v in json.loads(f.read_text())["settings"].items()}

    samplers = ", ".join(f"{m} with {'DDIM at eta' if m == 'pxpo-tiny' else 'the flow SDE at noise level'} {MODELS[m][0]:g} and guidance "
                         f"{MODELS[m][1]:g}" for m in gates)  # fmt: skip
    lines = ["# The bundled world", "", "## Quality gate: key classes in fresh samples", "",
             f"{args.samples} samples per prompt, {args.steps} steps, seeds from {HELD_OUT_SEED:,} on: {samplers}. A class counts as "
             f"present with at least {MIN_PIXELS} pixels in the bundled segmenter's map; the gate is {GATE:.0%}.", ""]  # fmt: skip
    first = next(iter(gates.values()))
    gate_rows = []
    for family, classes in first.items():
        for cls in classes:
            fractions = [g[family][cls] for g in gates.values()]
            gate_rows.append([FAMILY_PROMPTS[family], cls, *(f"{f:.0%}" for f in fractions), "pass" if min(fractions) >= GATE else "FAIL"])
    lines += bench.table(["prompt", "class", *(f"{m}: present in" for m in gates), "gate"], gate_rows)
    lines += ["", "(\"person\" is any of skin, clothes, hair, hat.)", ""]
    for name in gates:
        lines += [f"![{name} samples](images/{MODELS[name][2]})", "",
                  f"{name}: rows " + ", ".join(f"\"{p}\"" for p in FAMILY_PROMPTS.values()) + f"; the first {min(GRID_COLUMNS, args.samples)} samples of the gate.", ""]
    lines += ["## Segmenter: IoU on held-out renders", "",
              f"{args.renders} renders with seeds from {HELD_OUT_SEED:,} on (training used seeds below {settings.get('num_scenes', '?')}); "
              f"the floor for the mean is {IOU_FLOOR}.", ""]  # fmt: skip
    lines += bench.table(["class", "IoU"], [[name, f"{iou:.3f}"] for name, iou in ious.items() if name != "mean_iou"]
                         + [["**mean**", f"**{ious['mean_iou']:.3f}** ({'pass' if ious['mean_iou'] >= IOU_FLOOR else 'FAIL'})"]])
    lines.append("")
    if stats:
        lines += ["## Pre-training (`pxpo pretrain`)", ""]
        lines += bench.table(["quantity", "value"], [[k, f"{v:.4g}"] for k, v in stats.items()])
        lines += ["", f"Settings: `{json.dumps(settings)}`"]
    bench.write_markdown(docs / "world.md", lines)


if __name__ == "__main__":
    main()
