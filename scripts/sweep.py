"""Run a benchmark sweep: base configs x variants x a grid of overrides x seeds, on this machine or a Ray cluster.

    python scripts/sweep.py --sweep_config sweeps/synthetic.yml [--num_workers 2] [--report]
    python scripts/sweep.py --sweep_config sweeps/grue_smoke.yml --executor ray [--ray_address HOST:PORT]
    python scripts/sweep.py --sweep_config sweeps/grue_smoke.yml --dry_run

Rerunning the same command skips finished runs and resumes interrupted ones from their
checkpoints; a run is never trained by two processes at once.
"""
import argparse
import sys
from pathlib import Path

from rl4lms.errors import SetupError
from rl4lms.sweep.executors import EXECUTORS, make_executor
from rl4lms.sweep.grid import load_sweep
from rl4lms.sweep.report import write_report
from rl4lms.sweep.runner import SUMMARY_FILE, SweepRunner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep_config", required=True, help="the sweep YAML file")
    parser.add_argument("--executor", default="local", choices=EXECUTORS,
                        help="local: worker processes on this machine (default); ray: Ray tasks on a cluster")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="local executor: runs trained at the same time (default 1)")
    parser.add_argument("--ray_address", default=None,
                        help="ray executor: the cluster's HOST:PORT (default: start a local cluster for the sweep)")
    parser.add_argument("--max_retries", type=int, default=3,
                        help="ray executor: retries of a run whose node or worker died (it resumes from its checkpoint)")
    parser.add_argument("--base_path_to_store_results", default=None, help="overrides the sweep file's folder")
    parser.add_argument("--dry_run", action="store_true", help="validate every run's config and list the runs")
    parser.add_argument("--report", action="store_true", help="write the results table and plots at the end")
    args = parser.parse_args()
    try:
        sweep = load_sweep(Path(args.sweep_config))
        if args.base_path_to_store_results:
            sweep.base_path = Path(args.base_path_to_store_results)
        if args.dry_run:
            print("\n".join(spec.name for spec in sweep.runs))
            print(f"sweep '{sweep.name}': {len(sweep.runs)} valid runs under {sweep.base_path}")
            return 0
        executor = make_executor(args.executor, sweep, args.num_workers, args.ray_address, args.max_retries)
        print(f"sweep '{sweep.name}': {len(sweep.runs)} runs under {sweep.base_path} on {executor.describe()}")
        all_complete = SweepRunner(sweep, executor).run()
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"outcomes: {sweep.base_path / SUMMARY_FILE}")
    if args.report:
        report = write_report(sweep.base_path, sweep.base_path / "report")
        print(report["markdown"])
    return 0 if all_complete else 1


if __name__ == "__main__":
    sys.exit(main())
