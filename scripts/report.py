"""Aggregate finished runs into GRUE-style tables, statistics across tasks and plots.

    python scripts/report.py --runs_dir rl4lms_sweeps/synthetic [--output_dir DIR]
        [--score_metric TASK=METRIC ...] [--bootstrap_reps 50000]

Writes ``results.md`` (task x algorithm, mean ± std over seeds of each final test and val metric;
then per algorithm the IQM and mean of normalized scores across tasks with 95% stratified bootstrap
confidence intervals, and the probability of improvement of each pair), ``results.csv`` (long
format), ``aggregate.json`` and PNG plots (reward and KL curves with bands over seeds, metric bars
per task, performance profiles).
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List

from rl4lms.sweep.report import write_report
from rl4lms.sweep.statistics import REPS


def parse_score_metrics(pairs: List[str]) -> Dict[str, str]:
    """``TASK=METRIC`` pairs as a mapping."""
    chosen = {}
    for pair in pairs:
        task, _, metric = pair.partition("=")
        if not task or not metric:
            raise ValueError(f"--score_metric '{pair}': expected TASK=METRIC, e.g. imdb=semantic/learned_reward")
        chosen[task] = metric
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs_dir", required=True, help="folder searched (recursively) for finished runs")
    parser.add_argument("--output_dir", default=None, help="where to write the report (default: <runs_dir>/report)")
    parser.add_argument("--score_metric", action="append", default=[], metavar="TASK=METRIC",
                        help="the test metric that scores TASK across algorithms (default: the task's first metric)")
    parser.add_argument("--bootstrap_reps", type=int, default=REPS, help="bootstrap resamples per interval")
    args = parser.parse_args()
    runs_dir = Path(args.runs_dir)
    try:
        if args.bootstrap_reps < 100:
            raise ValueError(f"--bootstrap_reps must be >= 100, got {args.bootstrap_reps}")
        report = write_report(runs_dir, Path(args.output_dir) if args.output_dir else runs_dir / "report",
                              parse_score_metrics(args.score_metric), args.bootstrap_reps)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report["markdown"])
    print("\nplots:\n" + "\n".join(f"  {p}" for p in report["plots"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
