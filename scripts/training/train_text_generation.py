"""Train a language model with RL from one YAML config (RL4LMs' entry point).

    python scripts/training/train_text_generation.py --config_path task_configs/<task>/<cfg>.yml
"""
import sys

from rl4lms.cli import main

if __name__ == "__main__":
    sys.exit(main())
