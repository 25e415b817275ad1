"""Command line of ``scripts/training/train_text_generation.py`` (also installed as ``rl4lms-train``).

Only argparse and the config reader are imported up front, so ``--help`` and ``--validate_only``
answer without loading torch or any model.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fine-tune a language model with RL from one YAML config.")
    parser.add_argument("--config_path", help="path to the YAML config (required unless --describe)")
    parser.add_argument("--describe", metavar="KEY_PATH_OR_ID", default=None,
                        help="print the reference of a config key path (e.g. alg.args, env.args) or a component id "
                             "(e.g. ppo, rouge), or 'all', and exit; needs no config and loads no torch")
    parser.add_argument("--experiment_name", default=None,
                        help="run folder name (default: <config folder>_<config stem>, plus _smoke with --smoke)")
    parser.add_argument("--base_path_to_store_results", default="rl4lms_exps", help="parent folder of run folders")
    parser.add_argument("--log_to_wandb", action="store_true", help="also log to Weights & Biases")
    parser.add_argument("--project_name", default="rl4lms", help="wandb project")
    parser.add_argument("--entity_name", default=None, help="wandb entity")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--smoke", action="store_true",
                        help="offline smoke run: tiny model, the data pool's shipped fixture, one short iteration")
    parser.add_argument("--override", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="set a config value, e.g. alg.args.learning_rate=1e-5 (repeatable; YAML-typed)")
    parser.add_argument("--validate_only", action="store_true",
                        help="check the config and its custom modules, then exit without loading any model")
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads (default: torch's, i.e. OMP_NUM_THREADS or the core count); "
                             "runs are bit-identical only for the same seed and thread count")
    return parser.parse_args(argv)


def default_experiment_name(config_path: Path, smoke: bool) -> str:
    """``<config folder>_<config stem>`` (plus ``_smoke``): RL4LMs repeats file names across task
    folders (``t5_ppo.yml`` in six of them), so the stem alone would send them to one run folder.
    A relative path counts from the working folder: ``my.yml`` there is ``<its name>_my``."""
    folder = config_path.resolve().parent.name
    return (f"{folder}_{config_path.stem}" if folder else config_path.stem) + ("_smoke" if smoke else "")


def format_summary(summary: Dict[str, Any]) -> str:
    """The before/after table printed at the end of a run."""
    rows = [("split", "metric", "before", "after")]
    for split in ("val", "test"):
        scores = summary.get(split) or {}
        for name, before in (scores.get("before") or {}).items():
            rows.append((split, name, f"{before:.4f}", f"{scores['after'].get(name, float('nan')):.4f}"))
    reward = summary.get("train_ep_rew") or {}
    if reward:
        rows.append(("train", "rollout_info/ep_rew (first -> last iteration)",
                     f"{reward['first_iteration']:.4f}", f"{reward['last_iteration']:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.describe is not None:
        return describe(args.describe)
    if args.config_path is None:
        print("error: --config_path is required (or --describe <key path or id>)", file=sys.stderr)
        return 2
    from rl4lms.config import load_config
    from rl4lms.errors import ConfigError

    if args.num_threads is not None and args.num_threads < 1:
        print(f"error: --num_threads must be >= 1, got {args.num_threads}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config_path, args.override, smoke=args.smoke)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.validate_only:
        print(f"{args.config_path}: valid (alg {config['alg']['id']}, policy {config['alg']['policy']['id']}, "
              f"datapool {config['datapool']['id']}); no model was loaded")
        return 0
    return train(args, config)


MAIN_PROCESS_EXIT_WAIT_S = 30.0
"""How long the other processes of a failed multi-process run wait for the launcher to stop them."""


def failed(error: BaseException, status: int, prefix: str = "", launcher_alive: bool = True) -> int:
    """Print ``error`` as the command's one ``error:`` line and return ``status``.

    In a multi-process run, an error the main process reports for all (see
    :func:`rl4lms.training.distributed.share_main_failure`) is not printed again by the others:
    they wait for the launcher, which stops every process once the first one has exited, so the
    main process exits first. A stop request from then on ends a process with ``status``: every
    process exits alike.
    """
    from rl4lms.training.distributed import world_size  # imported by train() already

    if world_size() > 1:
        signal.signal(signal.SIGTERM, lambda *_: (sys.stderr.flush(), os._exit(status)))
    if not getattr(error, "reported_by_main_process", False):
        print(f"error: {prefix}{error}", file=sys.stderr)
    elif launcher_alive:
        time.sleep(MAIN_PROCESS_EXIT_WAIT_S)
    return status


def describe(target: str) -> int:
    """``--describe``: the config reference of ``target`` on stdout."""
    from rl4lms.config.reference import describe as reference_of
    from rl4lms.errors import DescribeError

    try:
        print(reference_of(target), end="")
    except DescribeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def train(args: argparse.Namespace, config: Dict[str, Any]) -> int:
    """Train (or finish) the run of a validated config; the exit status of the command."""
    import torch

    from rl4lms.errors import LauncherGoneError, RunStoppedError, SetupError
    from rl4lms.training.trainer import OnPolicyTrainer

    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    config_path = Path(args.config_path)
    experiment = args.experiment_name or default_experiment_name(config_path, args.smoke)
    run_dir = Path(args.base_path_to_store_results) / experiment
    try:
        trainer = OnPolicyTrainer(config, experiment, args.base_path_to_store_results, args.log_to_wandb,
                                  args.project_name, args.entity_name, args.device)
    except SetupError as error:
        return failed(error, error.exit_status)
    try:
        summary = trainer.train_and_eval()
    except SetupError as error:
        return failed(error, error.exit_status)
    except RunStoppedError as error:
        return failed(error, error.exit_status, "training stopped: ",
                      launcher_alive=not isinstance(error, LauncherGoneError))
    finally:
        trainer.close()
    if trainer.is_main:
        print(f"\nResults of {run_dir}:\n{format_summary(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
