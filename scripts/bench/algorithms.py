"""Benchmark every algorithm on the synthetic increasing-numbers task: fixed budget, several seeds.

    python scripts/bench/algorithms.py [--n_iters 100] [--seeds 0 1 2] [--model tiny_gpt2]

Each algorithm trains from the shipped ``task_configs/synthetic_increasing_numbers/<model>_<alg>.yml``
for ``--n_iters`` trainer iterations (rollout + update for RL, one epoch for supervised) and is
scored on the test split before training (the untrained model) and after. Prints a Markdown
table of mean and standard deviation over seeds and writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from rl4lms.config import load_config  # noqa: E402
from rl4lms.training.trainer import OnPolicyTrainer  # noqa: E402

TASK = REPO / "task_configs" / "synthetic_increasing_numbers"
METRIC = "synthetic/increasing_numbers_in_text"
ALGORITHMS = ["ppo", "nlpo", "a2c", "trpo", "supervised"]


def run_one(alg: str, model: str, seed: int, n_iters: int, folder: Path) -> Dict[str, Any]:
    """Train one (algorithm, seed) for ``n_iters`` iterations; return before/after test scores and time."""
    config = load_config(TASK / f"{model}_{alg}.yml")
    config["seed"] = seed
    config["datapool"]["args"]["seed"] = seed
    config["train_evaluation"].update(n_iters=n_iters, eval_every=n_iters, save_every=n_iters)
    trainer = OnPolicyTrainer(config, f"{alg}_seed{seed}", str(folder))
    start = time.perf_counter()
    try:
        summary = trainer.train_and_eval()
    finally:
        trainer.close()
    return {"alg": alg, "seed": seed, "untrained": summary["test"]["before"][METRIC],
            "trained": summary["test"]["after"][METRIC], "seconds": time.perf_counter() - start}


def mean_std(values: List[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def table(results: List[Dict[str, Any]], algorithms: List[str], n_iters: int) -> str:
    lines = [f"| algorithm | untrained test score | after {n_iters} iterations | gain | seconds per run |",
             "|---|---|---|---|---|"]
    for alg in algorithms:
        rows = [r for r in results if r["alg"] == alg]
        gains = [r["trained"] - r["untrained"] for r in rows]
        lines.append(f"| {alg} | {mean_std([r['untrained'] for r in rows])} | {mean_std([r['trained'] for r in rows])} "
                     f"| {mean_std(gains)} | {statistics.mean(r['seconds'] for r in rows):.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_iters", type=int, default=100, help="trainer iterations per run (the budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    parser.add_argument("--model", default="tiny_gpt2", choices=["tiny_gpt2", "tiny_t5"])
    parser.add_argument("--json", default="bench_algorithms.json", help="where to write the per-run numbers")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    with tempfile.TemporaryDirectory(prefix="rl4lms_bench_") as folder:
        for alg in args.algorithms:
            for seed in args.seeds:
                results.append(run_one(alg, args.model, seed, args.n_iters, Path(folder)))
                print(f"{alg} seed {seed}: {results[-1]['untrained']:.3f} -> {results[-1]['trained']:.3f} "
                      f"({results[-1]['seconds']:.1f} s)", file=sys.stderr)
    Path(args.json).write_text(json.dumps({"model": args.model, "n_iters": args.n_iters, "metric": METRIC,
                                           "runs": results}, indent=2))
    print(f"\nSynthetic increasing numbers, {args.model}, test split '{METRIC}', seeds {args.seeds}:\n")
    print(table(results, args.algorithms, args.n_iters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
