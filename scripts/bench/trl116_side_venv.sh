#!/usr/bin/env bash
# Build a side virtual environment with TRL 1.16.0 (today's GRPOTrainer), to compare this project's
# grpo against it (scripts/bench/trl_grpo_parity.py).
#
#     bash scripts/bench/trl116_side_venv.sh [VENV_DIR]      # VENV_DIR defaults to /tmp/trl116
#
# The venv gets trl 1.16.0 with the libraries this project uses (torch 2.13.0, transformers 5.25.0)
# plus datasets and accelerate, which GRPOTrainer needs. Nothing else: the bench's TRL side imports
# only rl4lms' registry, data pools and rewards (numpy and the standard library) from the checkout,
# by path. TRL is never a dependency of the project or of CI. Set PYTHON to choose the interpreter
# (default python3). Rerunning reuses an existing venv.
set -euo pipefail

venv_dir="${1:-/tmp/trl116}"

if [[ ! -x "$venv_dir/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv_dir"
fi
pip=("$venv_dir/bin/python" -m pip install --quiet)

# torch first and pinned: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" "torch==2.13.0" "transformers==5.25.0" "trl==1.16.0" datasets accelerate

"$venv_dir/bin/python" -c "
import trl, transformers, torch
from trl import GRPOConfig, GRPOTrainer
print(f'trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}: GRPOTrainer imports')
"
echo "side venv ready: $venv_dir"
