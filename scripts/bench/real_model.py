"""What RL does to a real pretrained model: SmolLM2-135M-Instruct on held-out two-digit addition.

    python scripts/bench/real_model.py [--configs smollm2_grpo smollm2_ppo] [--seeds 0 1 2]
        [--n_iters 20] [--eval_every 5] [--out_dir bench_real_model] [--threads 2]

Each config of ``task_configs/synthetic_arithmetic/`` trains once per seed from the instruct model
itself (no supervised step on the task's answers) and is evaluated greedily on the held-out val and
test problems before training and every ``--eval_every`` iterations. The runs live in ``--out_dir``:
a finished run is read back instead of trained again and an interrupted one resumes from its
checkpoint, so the bench can be stopped and continued. The seed moves the training problems' order,
the sampling and the value head's initialisation; the val and test problems stay the same.

Prints a Markdown table (accuracy before and after, mean and spread over seeds, training minutes on
this machine) and the per-run numbers, and writes ``real_model.json`` and ``real_model.png`` (the val
accuracy and the training reward over iterations, the mean over seeds with the range as a band) into
``--out_dir``. Every run is reported, including those that did not learn: the per-run rows say how
each ended (accuracy, share of replies with a readable number, reply length, entropy, KL).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from algorithms import IterationClock  # noqa: E402

from rl4lms.config import load_config  # noqa: E402
from rl4lms.training.trainer import OnPolicyTrainer  # noqa: E402

TASK = REPO / "task_configs" / "synthetic_arithmetic"
METRIC = "answer/exact_match"


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def run_one(config_name: str, seed: int, args: argparse.Namespace) -> Dict[str, Any]:
    """Train (or read back) one run; return its curves and end state."""
    name = f"{config_name}_seed{seed}"
    folder = Path(args.out_dir) / name
    seconds_file = folder / "bench_training_seconds.json"
    config = load_config(TASK / f"{config_name}.yml")
    config["seed"] = seed
    config["train_evaluation"].update(n_iters=args.n_iters, eval_every=args.eval_every, save_every=args.eval_every)
    trainer = OnPolicyTrainer(config, name, args.out_dir)
    timer = IterationClock(trainer)
    try:
        trainer.train_and_eval()
    finally:
        trainer.close()
    earlier = json.loads(seconds_file.read_text()) if seconds_file.is_file() else []
    seconds = earlier + timer.seconds  # a resumed run adds its iterations to those timed before
    seconds_file.write_text(json.dumps(seconds))
    return summarize(config_name, seed, folder, seconds)


def summarize(config_name: str, seed: int, folder: Path, seconds: List[float]) -> Dict[str, Any]:
    val = {r["epoch"]: r["metrics"][METRIC] for r in read_jsonl(folder / "val_split_metrics.jsonl")}
    test = {r["epoch"]: r["metrics"] for r in read_jsonl(folder / "test_split_metrics.jsonl")}
    rollouts = read_jsonl(folder / "rollout_info.jsonl")
    training = read_jsonl(folder / "training_info.jsonl")
    last_epoch = max(test)
    predictions = json.loads((folder / f"epoch_{last_epoch}_test_split_predictions.json").read_text())
    replies = [p["generated_text"] for p in predictions]
    last = training[-1] if training else {}
    return {
        "config": config_name, "seed": seed, "iterations": len(rollouts), "training_seconds": sum(seconds),
        "val_before": val[0], "val_after": val[max(val)], "test_before": test[0][METRIC],
        "test_after": test[last_epoch][METRIC], "test_answer_found_after": test[last_epoch].get("answer/found"),
        "val_curve": sorted(val.items()),
        "reward_curve": [(r["iteration"], r["rollout_info/ep_rew"]) for r in rollouts],
        "entropy_last": last.get("entropy", last.get("ppo/policy/entropy")),
        "kl_last": rollouts[-1].get("rollout_info/kl_div_mean") if rollouts else None,
        "mean_reply_chars_after": statistics.mean(len(r) for r in replies),
        "sample_replies_after": replies[:4],
    }


def spread(values: List[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def table(results: List[Dict[str, Any]], configs: List[str]) -> str:
    lines = ["| config | seeds | iterations | val before | val after | test before | test after | "
             "training min per run |", "|---|---|---|---|---|---|---|---|"]
    for config in configs:
        rows = [r for r in results if r["config"] == config]
        lines.append(f"| {config} | {len(rows)} | {rows[0]['iterations']} | {spread([r['val_before'] for r in rows])} "
                     f"| {spread([r['val_after'] for r in rows])} | {spread([r['test_before'] for r in rows])} "
                     f"| {spread([r['test_after'] for r in rows])} "
                     f"| {statistics.mean(r['training_seconds'] for r in rows) / 60:.1f} |")
    return "\n".join(lines)


def run_rows(results: List[Dict[str, Any]]) -> str:
    lines = ["| run | val | test | answer found (test) | reply chars | entropy | KL | reward first -> last |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rewards = [reward for _, reward in r["reward_curve"]]
        first, last = statistics.mean(rewards[:5]), statistics.mean(rewards[-5:])
        entropy = "" if r["entropy_last"] is None else f"{r['entropy_last']:.2f}"
        kl = "" if r["kl_last"] is None else f"{r['kl_last']:.3f}"
        lines.append(f"| {r['config']} seed {r['seed']} | {r['val_before']:.3f} -> {r['val_after']:.3f} "
                     f"| {r['test_before']:.3f} -> {r['test_after']:.3f} | {r['test_answer_found_after']:.2f} "
                     f"| {r['mean_reply_chars_after']:.0f} | {entropy} | {kl} | {first:.3f} -> {last:.3f} |")
    return "\n".join(lines)


def plot(results: List[Dict[str, Any]], configs: List[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, (val_axis, reward_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for config in configs:
        rows = [r for r in results if r["config"] == config]
        for axis, key in ((val_axis, "val_curve"), (reward_axis, "reward_curve")):
            width = min(len(r[key]) for r in rows)
            x = [point[0] for point in rows[0][key][:width]]
            y = np.array([[point[1] for point in r[key][:width]] for r in rows])
            axis.plot(x, y.mean(0), label=f"{config} (mean of {len(rows)})")
            axis.fill_between(x, y.min(0), y.max(0), alpha=0.2)
    val_axis.set(title="held-out val accuracy (greedy)", xlabel="iteration", ylabel="exact match")
    reward_axis.set(title="training reward (sampled replies)", xlabel="iteration", ylabel="mean reward")
    for axis in (val_axis, reward_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["smollm2_grpo", "smollm2_ppo"],
                        help="config stems under task_configs/synthetic_arithmetic/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n_iters", type=int, default=20, help="trainer iterations per run")
    parser.add_argument("--eval_every", type=int, default=5, help="iterations between held-out evaluations")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out_dir", default="bench_real_model", help="run folders, JSON and PNG")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:  # seeds outermost: every config has a result early
        for config in args.configs:
            results.append(run_one(config, seed, args))
            r = results[-1]
            print(f"{config} seed {seed}: val {r['val_before']:.3f} -> {r['val_after']:.3f}, test {r['test_before']:.3f} "
                  f"-> {r['test_after']:.3f} ({r['training_seconds'] / 60:.1f} min)", file=sys.stderr, flush=True)
    out = Path(args.out_dir)
    (out / "real_model.json").write_text(json.dumps({"n_iters": args.n_iters, "threads": args.threads,
                                                     "metric": METRIC, "runs": results}, indent=2))
    plot(results, args.configs, out / "real_model.png")
    print(f"\nSmolLM2-135M-Instruct, two-digit addition (48 val, 48 test problems held out), greedy exact match, "
          f"{args.n_iters} iterations, {args.threads} torch threads:\n")
    print(table(results, args.configs))
    print()
    print(run_rows(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
