"""Run by tests/test_multiprocess.py under `accelerate launch --num_processes 2`: one epoch's samples and rewards on each
rank, then the advantages of the same rewards under "group" and "group_location" normalisation (groups that span the
ranks); saves what each rank has: heatmaps, its group ids, both advantages, and its prompts."""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from pxpo.config import load_config
from pxpo.schedule import sample_groups
from pxpo.trainer import Trainer

config_path, out = sys.argv[1], Path(sys.argv[2])
trainer = Trainer(load_config(config_path), progress=False)
trajectories = trainer.sample(1)
heatmaps = trainer.reward(trajectories.images, trajectories.prompts, trajectories.metadata).heatmaps
groups = sample_groups(trajectories.metadata)
tensors = {"heatmaps": heatmaps, "groups": groups}
for normalization in ("group", "group_location"):
    trainer.config.advantage.normalization = normalization  # the algorithm reads the same (validated) config
    tensors[normalization] = trainer.advantages(heatmaps, trajectories.prompts, groups)
rank = trainer.accelerator.process_index
metadata = {"prompts": json.dumps(trajectories.prompts)}
save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, out / f"groups{rank}.safetensors", metadata=metadata)
