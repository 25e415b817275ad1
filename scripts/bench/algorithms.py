"""Benchmark every algorithm on the synthetic increasing-numbers task over several seeds.

    python scripts/bench/algorithms.py [--n_iters 100] [--seeds 0 1 2] [--model tiny_gpt2]
    python scripts/bench/algorithms.py --budget_of ppo [--calibration_iters 10] ...

Each algorithm trains from the shipped ``task_configs/synthetic_increasing_numbers/<model>_<alg>.yml``
and is scored on the test split before training (the untrained model) and after. By default every
algorithm runs ``--n_iters`` trainer iterations (rollout + update for RL, one epoch for supervised).

With ``--budget_of ALG`` every algorithm gets the same training wall-clock as ALG instead: ALG runs
``--n_iters`` iterations per seed first, and the mean of its training seconds is the budget; every
other algorithm is timed over ``--calibration_iters`` iterations (first seed) and then runs
``round(budget / median seconds per iteration)`` iterations. The iteration count is fixed before a
run starts, so each run stays deterministic and resumable. Training seconds are the iterations'
own time (from the end of the previous iteration or evaluation to the iteration's record), so
evaluation and model loading do not count. On a machine shared with other work, wall-clock
timings are noisy; ``--clock cpu`` times with the process's CPU seconds instead, which other
processes barely move.

Prints a Markdown table of mean and standard deviation over seeds (with the memory each policy
holds relative to its actor's weights) and writes the numbers as JSON.
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
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from rl4lms.config import load_config  # noqa: E402
from rl4lms.policies.base import weight_bytes  # noqa: E402
from rl4lms.training.trainer import OnPolicyTrainer  # noqa: E402

TASK = REPO / "task_configs" / "synthetic_increasing_numbers"
METRIC = "synthetic/increasing_numbers_in_text"
ALGORITHMS = ["ppo", "nlpo", "a2c", "trpo", "supervised", "grpo", "rloo", "reinforce_plus_plus"]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class IterationClock:
    """Seconds of each training iteration of a trainer (wall-clock or the process's CPU time): from
    the end of the previous iteration (or evaluation) to the moment the iteration's record is written."""

    def __init__(self, trainer: OnPolicyTrainer, clock: str = "wall") -> None:
        assert trainer.tracker is not None
        now = CLOCKS[clock]
        self.seconds: List[float] = []
        self._mark = now()
        evaluate, log_iteration = trainer._evaluate, trainer.tracker.log_iteration

        def timed_evaluate(*args: Any) -> None:
            evaluate(*args)
            self._mark = now()

        def timed_log_iteration(*args: Any) -> None:
            self.seconds.append(now() - self._mark)
            log_iteration(*args)
            self._mark = now()

        trainer._evaluate = timed_evaluate  # type: ignore[method-assign]
        trainer.tracker.log_iteration = timed_log_iteration  # type: ignore[method-assign]


def run_one(alg: str, model: str, seed: int, n_iters: int, folder: Path, clock: str = "wall",
            name: Optional[str] = None) -> Dict[str, Any]:
    """Train one (algorithm, seed) for ``n_iters`` iterations; return before/after test scores, the
    training seconds of each iteration and the weights the policy holds relative to its actor's."""
    config = load_config(TASK / f"{model}_{alg}.yml")
    config["seed"] = seed
    config["datapool"]["args"]["seed"] = seed
    config["train_evaluation"].update(n_iters=n_iters, eval_every=n_iters, save_every=n_iters)
    trainer = OnPolicyTrainer(config, name or f"{alg}_seed{seed}", str(folder))
    timer = IterationClock(trainer, clock)
    try:
        summary = trainer.train_and_eval()
        assert trainer.parts is not None
        policy = trainer.parts.alg.policy
        memory = weight_bytes(policy) / weight_bytes(policy.model)
    finally:
        trainer.close()
    return {"alg": alg, "seed": seed, "iterations": n_iters, "untrained": summary["test"]["before"][METRIC],
            "trained": summary["test"]["after"][METRIC], "seconds": sum(timer.seconds),
            "iteration_seconds": timer.seconds, "memory_ratio": memory}


def calibrated_iterations(alg: str, model: str, seed: int, budget: float, calibration_iters: int,
                          folder: Path, clock: str) -> int:
    """Iterations of ``alg`` that fit ``budget`` training seconds, from the median iteration time of
    a ``calibration_iters``-iteration run."""
    calibration = run_one(alg, model, seed, calibration_iters, folder, clock, name=f"{alg}_calibration")
    return max(1, round(budget / statistics.median(calibration["iteration_seconds"])))


def mean_std(values: List[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def table(results: List[Dict[str, Any]], algorithms: List[str]) -> str:
    lines = ["| algorithm | untrained test score | trained | gain | iterations | training seconds per run | "
             "weights held / actor |",
             "|---|---|---|---|---|---|---|"]
    for alg in algorithms:
        rows = [r for r in results if r["alg"] == alg]
        gains = [r["trained"] - r["untrained"] for r in rows]
        lines.append(f"| {alg} | {mean_std([r['untrained'] for r in rows])} | {mean_std([r['trained'] for r in rows])} "
                     f"| {mean_std(gains)} | {rows[0]['iterations']} | {statistics.mean(r['seconds'] for r in rows):.1f} "
                     f"| {rows[0]['memory_ratio']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_iters", type=int, default=100, help="trainer iterations per run (of --budget_of's "
                        "algorithm with a wall-clock budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    parser.add_argument("--model", default="tiny_gpt2", choices=["tiny_gpt2", "tiny_t5"])
    parser.add_argument("--budget_of", choices=ALGORITHMS, default=None,
                        help="give every algorithm the training wall-clock of this one's --n_iters iterations")
    parser.add_argument("--calibration_iters", type=int, default=10,
                        help="iterations timed per algorithm to size its run under --budget_of")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="what a training second is: wall-clock, or the process's CPU time (steadier on a busy machine)")
    parser.add_argument("--json", default="bench_algorithms.json", help="where to write the per-run numbers")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    algorithms = list(dict.fromkeys([args.budget_of, *args.algorithms] if args.budget_of else args.algorithms))
    results: List[Dict[str, Any]] = []
    iterations = {alg: args.n_iters for alg in algorithms}
    budget = None
    with tempfile.TemporaryDirectory(prefix="rl4lms_bench_") as folder:
        for alg in algorithms:
            if budget is not None:
                iterations[alg] = calibrated_iterations(alg, args.model, args.seeds[0], budget, args.calibration_iters,
                                                        Path(folder), args.clock)
            for seed in args.seeds:
                results.append(run_one(alg, args.model, seed, iterations[alg], Path(folder), args.clock))
                print(f"{alg} seed {seed}: {results[-1]['untrained']:.3f} -> {results[-1]['trained']:.3f} "
                      f"({iterations[alg]} iterations, {results[-1]['seconds']:.1f} s)", file=sys.stderr)
            if alg == args.budget_of:
                budget = statistics.mean(r["seconds"] for r in results if r["alg"] == alg)
    Path(args.json).write_text(json.dumps({"model": args.model, "n_iters": args.n_iters, "budget_of": args.budget_of,
                                           "budget_seconds": budget, "clock": args.clock, "metric": METRIC,
                                           "runs": results}, indent=2))
    what = (f"the training time ({args.clock}) of {args.n_iters} {args.budget_of} iterations ({budget:.1f} s)"
            if args.budget_of else f"{args.n_iters} iterations")
    print(f"\nSynthetic increasing numbers, {args.model}, test split '{METRIC}', seeds {args.seeds}, {what}:\n")
    print(table(results, algorithms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
