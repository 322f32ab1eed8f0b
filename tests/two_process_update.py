"""Run by tests/test_multiprocess.py under `accelerate launch --num_processes 2`: one epoch on each rank's own samples;
saves what each rank trained on (trajectories, heatmaps, advantages: the phases' results, seen by a callback) and the
weights after the epoch's update."""

import json
import sys
from pathlib import Path

from conftest import PhaseRecorder
from safetensors.torch import save_file

from pxpo.config import load_config
from pxpo.models import trainable_state_dict
from pxpo.trainer import Trainer

config_path, out = sys.argv[1], Path(sys.argv[2])
phases = PhaseRecorder()  # phase callbacks run on every process
trainer = Trainer(load_config(config_path), progress=False, callbacks=[phases])
rank = trainer.accelerator.process_index
trainer.run_epoch(1)
trajectories, advantages = phases.results["sample", 1], phases.results["advantage", 1]  # normalised over both ranks' samples
tensors = {"latents": trajectories.latents, "log_probs": trajectories.log_probs, "timesteps": trajectories.timesteps,
           "advantages": advantages, "images": trajectories.images, "heatmaps": phases.results["reward", 1].heatmaps,
           **{f"conditioning.{k}": v for k, v in trajectories.conditioning.tensors.items()}}  # fmt: skip
save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, out / f"batch{rank}.safetensors", metadata={"prompts": json.dumps(trajectories.prompts)})
state = trainable_state_dict(trainer.accelerator.unwrap_model(trainer.denoiser))
save_file({k: v.contiguous() for k, v in state.items()}, out / f"after{rank}.safetensors")
