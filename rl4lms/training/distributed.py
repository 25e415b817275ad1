"""Multi-process and mixed-precision training through Hugging Face ``accelerate``.

A run uses an ``Accelerator`` only when it needs one: launched in several processes
(``accelerate launch`` / ``torchrun`` set ``WORLD_SIZE``), or asking for mixed precision or
gradient accumulation in the config's ``accelerator`` section. Otherwise training runs
exactly as a plain single process does.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from rl4lms.policies.base import LMActorCriticPolicy


def world_size() -> int:
    """Number of processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(settings: Dict[str, Any], device: Optional[str]) -> Optional[Accelerator]:
    """An ``Accelerator`` for the config's ``accelerator`` section, or None when a plain process will do."""
    mixed_precision = settings.get("mixed_precision", "no")
    accumulation = int(settings.get("gradient_accumulation_steps", 1))
    if world_size() == 1 and mixed_precision == "no" and accumulation == 1:
        return None
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("accelerator.mixed_precision: fp16 needs a GPU; use bf16 on CPU")
    # Every trainable parameter is used in each update, but the value head is idle in supervised
    # runs; buffers are not broadcast, so a forward pass is never a collective operation.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision,
                       gradient_accumulation_steps=accumulation, kwargs_handlers=[ddp])


def rank_checksums(accelerator: Accelerator, policy: LMActorCriticPolicy) -> List[float]:
    """Every process's sum of its trainable weights (float64), gathered: equal values mean the
    processes hold the same model, i.e. the gradients really were all-reduced."""
    total = sum(float(t.double().sum()) for t in policy.trainable_state_dict().values() if t.is_floating_point())
    local = torch.tensor([total], dtype=torch.float64, device=accelerator.device)
    return accelerator.gather(local).tolist()


def gather_from_processes(accelerator: Optional[Accelerator], value: Any) -> Optional[List[Any]]:
    """Every process's ``value`` (picklable), in process order; None in a single process."""
    if accelerator is None or accelerator.num_processes == 1:
        return None
    from accelerate.utils import gather_object

    return gather_object([value])
