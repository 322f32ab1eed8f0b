"""Run by tests/test_multiprocess.py under `accelerate launch --num_processes 2`: train, then save this rank's weights."""

import sys
from pathlib import Path

from safetensors.torch import save_file

from pxpo.config import load_config
from pxpo.models import trainable_state_dict
from pxpo.trainer import Trainer

config_path, out = sys.argv[1], Path(sys.argv[2])
trainer = Trainer(load_config(config_path), progress=False)
trainer.train()
state = trainable_state_dict(trainer.accelerator.unwrap_model(trainer.denoiser))
save_file({k: v.contiguous() for k, v in state.items()}, out / f"rank{trainer.accelerator.process_index}.safetensors")
