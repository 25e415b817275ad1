"""Run a benchmark sweep: base configs x a grid of overrides x seeds, in parallel worker processes.

    python scripts/sweep.py --sweep_config sweeps/synthetic.yml [--num_workers 2] [--report]

Rerunning the same command skips finished runs and resumes interrupted ones from their
checkpoints; a run is never trained by two processes at once.
"""
import argparse
import sys
from pathlib import Path

from rl4lms.config import ConfigError
from rl4lms.sweep.grid import load_sweep
from rl4lms.sweep.report import write_report
from rl4lms.sweep.runner import SUMMARY_FILE, SweepRunner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep_config", required=True, help="the sweep YAML file")
    parser.add_argument("--num_workers", type=int, default=1, help="runs trained at the same time")
    parser.add_argument("--base_path_to_store_results", default=None, help="overrides the sweep file's folder")
    parser.add_argument("--report", action="store_true", help="write the results table and plots at the end")
    args = parser.parse_args()
    try:
        sweep = load_sweep(Path(args.sweep_config))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.base_path_to_store_results:
        sweep.base_path = Path(args.base_path_to_store_results)
    print(f"sweep '{sweep.name}': {len(sweep.runs)} runs under {sweep.base_path}, {args.num_workers} workers")
    all_complete = SweepRunner(sweep, args.num_workers).run()
    print(f"outcomes: {sweep.base_path / SUMMARY_FILE}")
    if args.report:
        report = write_report(sweep.base_path, sweep.base_path / "report")
        print(report["markdown"])
    return 0 if all_complete else 1


if __name__ == "__main__":
    sys.exit(main())
