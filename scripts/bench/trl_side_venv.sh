#!/usr/bin/env bash
# Build a side virtual environment with the real TRL 0.11.4, to compare rl4lms.trl against it.
#
#     bash scripts/bench/trl_side_venv.sh [VENV_DIR]      # VENV_DIR defaults to /tmp/trlvenv
#
# The venv gets TRL's last release with the classic PPOTrainer and the libraries of its time
# (transformers 4.46.3, datasets 3.1.0), plus this repository installed editable without its
# dependencies, so that `rl4lms.models.tiny` (the embedded tiny models) and the IMDB fixture
# rows import there too. Those need only numpy, torch, tokenizers and transformers, which TRL's
# own requirements bring in; `rl4lms.envs.tool_env` (the calculator tool) also needs gymnasium
# (`rl4lms.envs` imports it), pinned as setup.py does. Also installed, because TRL's examples
# need them:
#   rich        trl imports it without declaring it;
#   aiohttp     the datasets/fsspec http client;
#   peft        examples/scripts/ppo.py imports LoraConfig at the top;
#   wandb       the notebook and the calculator example log with log_with="wandb"
#               (run them with WANDB_MODE=disabled);
#   pandas<3    the notebook builds a DataFrame; datasets 3.1.0 predates pandas 3.
# accelerate, peft and wandb are pinned to releases of TRL 0.11.4's time (autumn 2024).
# Set PYTHON to choose the interpreter (default python3). Rerunning reuses an existing venv; pip
# then warns that rl4lms's own requirements (transformers 5, ...) are unmet: expected with --no-deps.
set -euo pipefail

venv_dir="${1:-/tmp/trlvenv}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

if [[ ! -x "$venv_dir/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv_dir"
fi
pip=("$venv_dir/bin/python" -m pip install --quiet)

# torch first and pinned: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" "torch==2.13.0" "trl==0.11.4" "transformers==4.46.3" "datasets==3.1.0" \
    "accelerate==1.1.1" "peft==0.13.2" "wandb==0.18.7" "pandas<3" aiohttp rich "gymnasium>=1.0,<2"
"${pip[@]}" --no-deps -e "$repo_root"

"$venv_dir/bin/python" -c "
import trl, transformers, datasets
from trl import PPOTrainer
from rl4lms.models.tiny import write_tiny_model
from rl4lms.data_pools.sources import fixture_path
from rl4lms.envs.tool_env import calculator
print(f'trl {trl.__version__}, transformers {transformers.__version__}, datasets {datasets.__version__}: '
      f'{PPOTrainer.__module__}.PPOTrainer imports; rl4lms tiny models, fixtures and calculator import')
"
echo "side venv ready: $venv_dir"
