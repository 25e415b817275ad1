"""Aggregate finished runs into GRUE-style tables and plots.

    python scripts/report.py --runs_dir rl4lms_sweeps/synthetic [--output_dir DIR]

Writes ``results.md`` (task x algorithm, mean ± std over seeds of each final test and val
metric), ``results.csv`` (long format) and PNG plots (reward and KL curves, metric bars per task).
"""
import argparse
import sys
from pathlib import Path

from rl4lms.sweep.report import write_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs_dir", required=True, help="folder searched (recursively) for finished runs")
    parser.add_argument("--output_dir", default=None, help="where to write the report (default: <runs_dir>/report)")
    args = parser.parse_args()
    runs_dir = Path(args.runs_dir)
    try:
        report = write_report(runs_dir, Path(args.output_dir) if args.output_dir else runs_dir / "report")
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report["markdown"])
    print("\nplots:\n" + "\n".join(f"  {p}" for p in report["plots"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
