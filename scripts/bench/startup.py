"""Start-up time of the training command: ``--help`` and validating a config, against importing torch.

    python scripts/bench/startup.py [--config task_configs/.../tiny_gpt2_ppo.yml] [--repeats 7]

Each measurement is a fresh Python process (the operating system's file cache is warm after the
first round). The commands take turns, round after round, so that a machine whose speed wanders
slows them alike; the table reports the median wall-clock and CPU seconds of each. It also checks,
in one more process each, which modules ``--help`` and the validation import: ``--help`` must not
import torch, and validation only the component modules the config names.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "training" / "train_text_generation.py"
DEFAULT_CONFIG = REPO / "task_configs" / "synthetic_increasing_numbers" / "tiny_gpt2_ppo.yml"
TARGETS = {"help seconds": 0.5, "validate / import torch+transformers": 1.3}


def commands(config: Path) -> Dict[str, List[str]]:
    return {
        "help": [sys.executable, str(SCRIPT), "--help"],
        "validate": [sys.executable, str(SCRIPT), "--config_path", str(config), "--validate_only"],
        "import torch+transformers": [sys.executable, "-c", "import torch, transformers"],
        "python": [sys.executable, "-c", "pass"],
    }


def timed_run(command: List[str], env: Dict[str, str]) -> Dict[str, float]:
    """Wall-clock and CPU (user + system) seconds of one run of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def imported_modules(arguments: List[str], env: Dict[str, str]) -> List[str]:
    """The modules a run of the training command with ``arguments`` has imported when it exits."""
    probe = ("import atexit, json, runpy, sys\n"
             "atexit.register(lambda: print('\\nMODULES ' + json.dumps(sorted(sys.modules))))\n"
             f"sys.argv = [{str(SCRIPT)!r}, *{arguments!r}]\n"
             f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=REPO)
    line = next(row for row in result.stdout.splitlines() if row.startswith("MODULES "))
    return json.loads(line[len("MODULES "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the config to validate")
    parser.add_argument("--repeats", type=int, default=7, help="rounds; each runs every command once")
    parser.add_argument("--json", default="bench_startup.json")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    runs = commands(args.config.resolve())
    samples: Dict[str, List[Dict[str, float]]] = {name: [] for name in runs}
    for name, command in runs.items():  # a warm-up round: file cache, tiny-model folders
        timed_run(command, env)
    for _ in range(args.repeats):
        for name, command in runs.items():
            samples[name].append(timed_run(command, env))
    medians = {name: {kind: statistics.median(s[kind] for s in values) for kind in ("wall", "cpu")}
               for name, values in samples.items()}
    help_modules = imported_modules(["--help"], env)
    validate_modules = imported_modules(["--config_path", str(args.config.resolve()), "--validate_only"], env)
    components = sorted(m for m in validate_modules
                        if m.startswith(("rl4lms.algorithms.", "rl4lms.policies.", "rl4lms.data_pools.",
                                         "rl4lms.rewards.", "rl4lms.metrics.")))
    baseline = medians["import torch+transformers"]
    ratios = {f"validate / import torch+transformers ({kind})": medians["validate"][kind] / baseline[kind]
              for kind in ("wall", "cpu")}
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    result = {"machine": machine, "config": str(args.config), "repeats": args.repeats, "targets": TARGETS,
              "median_seconds": medians, "ratios": ratios, "help_imports_torch": "torch" in help_modules,
              "validate_imports_components": components, "samples": samples}
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"{machine}; {args.repeats} rounds, medians; config {args.config}\n")
    print("| command | wall s | CPU s |\n|---|---|---|")
    for name, values in medians.items():
        print(f"| {name} | {values['wall']:.2f} | {values['cpu']:.2f} |")
    print(f"\n--help imports torch: {'yes' if result['help_imports_torch'] else 'no'} "
          f"(target: no, under {TARGETS['help seconds']} s)")
    print(f"validate / import torch+transformers: {ratios['validate / import torch+transformers (wall)']:.2f} wall, "
          f"{ratios['validate / import torch+transformers (cpu)']:.2f} CPU (target <= "
          f"{TARGETS['validate / import torch+transformers']})")
    print(f"component modules the validation imported: {', '.join(components)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
