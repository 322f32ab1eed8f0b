#!/usr/bin/env bash
# The main job: set up, then run the blue-penalty experiment (the paper's first) on the default model.
# Extra arguments go to `pxpo train`, e.g. --set run.num_epochs=5
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
.venv/bin/pxpo train configs/blue_penalty.toml "$@"
