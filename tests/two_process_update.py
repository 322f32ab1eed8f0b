"""Run by tests/test_multiprocess.py under `accelerate launch --num_processes 2`: one epoch's update on each rank's own
samples; saves what each rank trained on (trajectories, advantages) and the weights after the update."""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from pxpo.config import load_config
from pxpo.models import trainable_state_dict
from pxpo.trainer import Batch, Trainer

config_path, out = sys.argv[1], Path(sys.argv[2])
trainer = Trainer(load_config(config_path), progress=False)
rank = trainer.accelerator.process_index
trajectories = trainer.sample(1)
heatmaps = trainer.reward(trajectories.images, trajectories.prompts, [{}] * len(trajectories))
advantages = trainer.advantages(heatmaps, trajectories.prompts)  # normalised over both ranks' samples
tensors = {"latents": trajectories.latents, "log_probs": trajectories.log_probs, "timesteps": trajectories.timesteps,
           "advantages": advantages, "images": trajectories.images, "heatmaps": heatmaps,
           **{f"conditioning.{k}": v for k, v in trajectories.conditioning.tensors.items()}}  # fmt: skip
save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, out / f"batch{rank}.safetensors", metadata={"prompts": json.dumps(trajectories.prompts)})
trainer.update(Batch(trajectories, heatmaps, advantages), 1)
state = trainable_state_dict(trainer.accelerator.unwrap_model(trainer.denoiser))
save_file({k: v.contiguous() for k, v in state.items()}, out / f"after{rank}.safetensors")
