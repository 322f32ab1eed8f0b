"""Quality of the bundled world models: the quality gate and the segmenter's IoU.

- Quality gate: 64 fresh samples per family prompt from each bundled pipeline (pxpo-tiny at eta = 1,
  pxpo-tiny-flow with the SDE at noise level 0.7, the training samplers); the bundled segmenter must
  find each prompt's key classes in at least 80 % of them.
- Segmenter: per-class IoU on 500 held-out renders (seeds never trained on); mean IoU >= 0.85.

Writes docs/world.md and docs/images/world_samples.png (pxpo-tiny) and world_samples_flow.png (pxpo-tiny-flow).

    python benchmarks/world_quality.py
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pxpo.io import atomic_write_text, save_image  # noqa: E402
from pxpo.models import load_pipeline, load_segmenter  # noqa: E402
from pxpo.world import WEIGHTS  # noqa: E402
from pxpo.run_folder import to_pil  # noqa: E402
from pxpo.world.evaluate import quality_gate, segmenter_iou  # noqa: E402
from pxpo.world.scenes import FAMILY_PROMPTS  # noqa: E402

GATE = 0.8
IOU_FLOOR = 0.85
# model -> (sampler noise, guidance scale, sample grid file)
MODELS = {"pxpo-tiny": (1.0, 5.0, "world_samples.png"), "pxpo-tiny-flow": (0.7, 4.5, "world_samples_flow.png")}


def sample_grid(images_by_family: dict, per_family: int = 8) -> Image.Image:
    rows = []
    for images in images_by_family.values():
        rows.append(np.concatenate([np.asarray(to_pil(img)) for img in images[:per_family]], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    return grid.resize((grid.width * 3, grid.height * 3), Image.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="samples per family prompt")
    parser.add_argument("--renders", type=int, default=500, help="held-out renders for the IoU")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--docs", default="docs", help="where world.md and images/ go")
    args = parser.parse_args()

    start = time.perf_counter()
    docs = Path(args.docs)
    model, processor = load_segmenter("pxpo-tiny-seg")
    gates = {}
    for name in args.models:
        noise, guidance, grid_file = MODELS[name]
        gates[name], images = quality_gate(load_pipeline(name), model, processor, samples_per_prompt=args.samples,
                                           noise_level=noise, guidance_scale=guidance)  # fmt: skip
        save_image(sample_grid(images), docs / "images" / grid_file)
    ious = segmenter_iou(model, processor, num_images=args.renders)
    seconds = time.perf_counter() - start

    stats_files = sorted(WEIGHTS.glob("pretrain_stats_*.json"))
    stats = {k: v for f in stats_files for k, v in json.loads(f.read_text()).items() if k != "settings"}
    settings = {k: v for f in stats_files for k, v in json.loads(f.read_text())["settings"].items()}

    lines = ["# The bundled world", "", "Measured by `python benchmarks/world_quality.py` "
             f"({seconds:.0f} s on this machine's 2 CPU cores).", ""]
    lines += ["## Quality gate: key classes in fresh samples", "",
              f"{args.samples} samples per prompt, 20 steps, seeds from 10,000,000 on: pxpo-tiny with DDIM at eta = 1 and "
              "guidance 5, pxpo-tiny-flow with the flow SDE at noise level 0.7 and guidance 4.5. A class counts as present "
              f"with at least 4 pixels in the bundled segmenter's map; the gate is {GATE:.0%}.", "",
              "| prompt | class | " + " | ".join(f"{m}: present in" for m in gates) + " | gate |",
              "|" + " --- |" * (len(gates) + 3)]
    first = next(iter(gates.values()))
    for family, classes in first.items():
        for cls in classes:
            fractions = [g[family][cls] for g in gates.values()]
            verdict = "pass" if min(fractions) >= GATE else "FAIL"
            lines.append(f"| {FAMILY_PROMPTS[family]} | {cls} | " + " | ".join(f"{f:.0%}" for f in fractions) + f" | {verdict} |")
    lines += ["", "(\"person\" is any of skin, clothes, hair, hat.)", ""]
    for name in gates:
        lines += [f"![{name} samples](images/{MODELS[name][2]})", "", f"{name}: rows \"nature landscape\", \"red taxi in traffic\", "
                  "\"portrait of a man on the beach\"; the first 8 samples of the gate.", ""]
    lines += ["## Segmenter: IoU on held-out renders", "",
              f"{args.renders} renders with seeds from 10,000,000 on (training used seeds below {settings.get('num_scenes', '?')}); "
              f"the floor for the mean is {IOU_FLOOR}.", "", "| class | IoU |", "| --- | --- |"]
    lines += [f"| {name} | {iou:.3f} |" for name, iou in ious.items() if name != "mean_iou"]
    lines += [f"| **mean** | **{ious['mean_iou']:.3f}** ({'pass' if ious['mean_iou'] >= IOU_FLOOR else 'FAIL'}) |", ""]
    if stats:
        lines += ["## Pre-training (`pxpo pretrain`)", "", "| quantity | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in stats.items()]
        lines += ["", f"Settings: `{json.dumps(settings)}`", ""]
    report = "\n".join(lines)
    atomic_write_text(docs / "world.md", report)
    print(report)


if __name__ == "__main__":
    main()
