"""Learning-rate schedules by optimizer step, with the names and shapes of Hugging Face's
``lr_scheduler_type`` (what RL4LMs' supervised configs set).

The rate is a function of the step count, not the state of a torch ``LRScheduler``
(``transformers.get_scheduler``), so a run resumed from a checkpoint needs no scheduler state and an
RL algorithm can ask for the rate of any iteration; ``tests/test_algorithms.py`` checks every
schedule against ``transformers.get_scheduler`` step by step."""
from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")


def check_schedule(schedule: str, warmup_steps: int, key: str = "alg.args") -> None:
    """Raise on an unknown schedule name or a warmup the schedule does not have."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"{key}.lr_scheduler_type {schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
    if warmup_steps < 0:
        raise ValueError(f"{key}.warmup_steps must be >= 0, got {warmup_steps}")
    if schedule == "constant" and warmup_steps:
        raise ValueError(f"{key}.warmup_steps needs lr_scheduler_type constant_with_warmup, linear or cosine")


def lr_multiplier(schedule: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Factor on the base learning rate for the optimizer step after ``step`` steps were taken, out of
    ``total_steps``: a linear warmup from 0 over ``warmup_steps``, then constant, a linear decay to
    0 (``linear``) or a half cosine to 0 (``cosine``) at ``total_steps``."""
    if step < warmup_steps:
        return step / warmup_steps
    if schedule in ("constant", "constant_with_warmup"):
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))
