"""Run every task config of an RL4LMs checkout, unchanged, through this project's training script.

    git clone https://github.com/allenai/RL4LMs /tmp/RL4LMs
    python scripts/compat/rl4lms_configs.py --rl4lms_root /tmp/RL4LMs --smoke
    python scripts/compat/rl4lms_configs.py --rl4lms_root /tmp/RL4LMs          # offline: hub access fails

Each config under ``<rl4lms_root>/scripts/training/task_configs/<task>/*.yml`` runs in its own
process (``--smoke`` shrinks it to the tiny models and shipped fixtures). The script prints a
Markdown table (config, exit code, seconds, the first ``error:`` line) and writes it as JSON to
``<out>/rl4lms_configs.json``. Exit code 0 means every run finished (with ``--smoke``) or stopped
only at hub access (without it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "training" / "train_text_generation.py"
HUB_ACCESS_MARKERS = ("cannot be reached", "cannot be downloaded", "offline")


def first_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    if lines:
        return lines[0][len("error:"):].strip()
    tail = [line for line in stderr.splitlines() if line.strip()]
    return tail[-1].strip() if tail else ""


def run_config(path: Path, out: Path, smoke: bool, timeout: float) -> Dict[str, Any]:
    name = f"{path.parent.name}/{path.name}"
    command = [sys.executable, str(TRAIN_SCRIPT), "--config_path", str(path),
               "--base_path_to_store_results", str(out / "runs"), "--num_threads", "2"]
    if smoke:
        command.append("--smoke")
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        code, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as expired:
        code, stderr = -1, f"error: timed out after {timeout:.0f} s\n{expired.stderr or ''}"
    seconds = time.perf_counter() - start
    log = out / "logs" / f"{path.parent.name}_{path.stem}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(stderr)
    error = first_error_line(stderr) if code else ""
    if smoke:
        ok = code == 0
    else:
        ok = code == 0 or any(marker in error for marker in HUB_ACCESS_MARKERS)
    return {"config": name, "exit_code": code, "seconds": round(seconds, 1), "ok": ok, "error": error}


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| config | exit | s | ok | first error line |", "|---|---|---|---|---|"]
    for row in rows:
        error = row["error"].replace("|", "\\|")[:160]
        lines.append(f"| {row['config']} | {row['exit_code']} | {row['seconds']} | {'yes' if row['ok'] else 'NO'} "
                     f"| {error} |")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rl4lms_root", required=True, type=Path, help="a checkout of allenai/RL4LMs")
    parser.add_argument("--smoke", action="store_true", help="run each config with --smoke (offline, seconds)")
    parser.add_argument("--out", type=Path, default=Path("rl4lms_compat"), help="run folders, logs and the JSON")
    parser.add_argument("--only", default="", help="only configs whose '<task>/<file>' contains this text")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per config")
    args = parser.parse_args(argv)
    folder = args.rl4lms_root / "scripts" / "training" / "task_configs"
    configs = sorted(p for p in folder.glob("*/*.yml") if args.only in f"{p.parent.name}/{p.name}")
    if not configs:
        print(f"error: no task configs under {folder}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in configs:
        rows.append(run_config(path, args.out, args.smoke, args.timeout))
        print(f"{'ok ' if rows[-1]['ok'] else 'BAD'} {rows[-1]['config']} ({rows[-1]['seconds']} s) {rows[-1]['error']}",
              flush=True)
    table = markdown(rows)
    print(table)
    passed = sum(row["ok"] for row in rows)
    print(f"\n{passed}/{len(rows)} {'finished' if args.smoke else 'finished or stopped at hub access'}")
    (args.out / "rl4lms_configs.json").write_text(json.dumps({"smoke": args.smoke, "rows": rows}, indent=2))
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
