"""Quality of the bundled world models: the quality gate and the segmenter's IoU.

- Quality gate: 64 fresh samples per family prompt at eta = 1 from the bundled pipeline; the
  bundled segmenter must find each prompt's key classes in at least 80 % of them.
- Segmenter: per-class IoU on 500 held-out renders (seeds never trained on); mean IoU >= 0.85.

Writes docs/world.md and docs/images/world_samples.png.

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
from pxpo.models import WEIGHTS, load_pipeline, load_segmenter  # noqa: E402
from pxpo.run_folder import to_pil  # noqa: E402
from pxpo.world.evaluate import quality_gate, segmenter_iou  # noqa: E402
from pxpo.world.scenes import FAMILY_PROMPTS  # noqa: E402

GATE = 0.8
IOU_FLOOR = 0.85


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
    parser.add_argument("--docs", default="docs", help="where world.md and images/ go")
    args = parser.parse_args()

    start = time.perf_counter()
    pipe = load_pipeline("pxpo-tiny")
    model, processor = load_segmenter("pxpo-tiny-seg")
    gate, images = quality_gate(pipe, model, processor, samples_per_prompt=args.samples)
    ious = segmenter_iou(model, processor, num_images=args.renders)
    seconds = time.perf_counter() - start

    docs = Path(args.docs)
    save_image(sample_grid(images), docs / "images" / "world_samples.png")
    stats_files = sorted(WEIGHTS.glob("pretrain_stats_*.json"))
    stats = {k: v for f in stats_files for k, v in json.loads(f.read_text()).items() if k != "settings"}
    settings = json.loads(stats_files[0].read_text())["settings"] if stats_files else {}

    lines = ["# The bundled world", "", "Measured by `python benchmarks/world_quality.py` "
             f"({seconds:.0f} s on this machine's 2 CPU cores).", ""]
    lines += ["## Quality gate: key classes in fresh samples", "",
              f"{args.samples} samples per prompt at eta = 1, 20 DDIM steps, guidance 5, seeds from 10,000,000 on; "
              f"a class counts as present with at least 4 pixels in the bundled segmenter's map; the gate is {GATE:.0%}.", "",
              "| prompt | class | present in | gate |", "| --- | --- | --- | --- |"]
    for family, classes in gate.items():
        for cls, fraction in classes.items():
            lines.append(f"| {FAMILY_PROMPTS[family]} | {cls} | {fraction:.0%} | {'pass' if fraction >= GATE else 'FAIL'} |")
    lines += ["", "(\"person\" is any of skin, clothes, hair, hat.)", "",
              "![samples](images/world_samples.png)", "",
              "Rows: \"nature landscape\", \"red taxi in traffic\", \"portrait of a man on the beach\"; first 8 samples of the gate.", ""]
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
