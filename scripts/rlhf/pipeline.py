"""Run the RLHF pipeline of a config: SFT -> reward model -> PPO (see rl4lms/rlhf/pipeline.py)."""
import argparse
import json
import sys

from rl4lms.errors import ConfigError
from rl4lms.rlhf.pipeline import run_pipeline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config_path", required=True)
    parser.add_argument("--output_dir", default=None, help="default: the config's output_dir")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    try:
        summary = run_pipeline(args.config_path, args.output_dir, args.device)
    except (ConfigError, ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"sft_last_epoch": summary["sft"][-1], "reward_model_last_epoch": summary["reward_model"][-1],
                      "ppo": {k: summary["ppo"][k] for k in ("val", "test", "train_ep_rew")}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
