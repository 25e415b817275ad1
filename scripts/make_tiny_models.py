"""Write the embedded tiny models (random-init GPT-2 / T5 + locally trained tokenizer) to folders.

    python scripts/make_tiny_models.py --out_dir models/
    # -> models/tiny-gpt2, models/tiny-t5, each usable as model_name in a config
"""
import argparse
from pathlib import Path

from rl4lms.models.tiny import TINY_MODELS, write_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, type=Path)
    parser.add_argument("--models", nargs="+", default=sorted(TINY_MODELS), choices=sorted(TINY_MODELS))
    args = parser.parse_args()
    for name in args.models:
        folder = write_tiny_model(name, args.out_dir / name.split("/")[-1])
        print(f"{name} -> {folder}")


if __name__ == "__main__":
    main()
