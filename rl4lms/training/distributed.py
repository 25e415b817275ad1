"""Multi-process and mixed-precision training through Hugging Face ``accelerate``.

A run uses an ``Accelerator`` only when it needs one: launched in several processes
(``accelerate launch`` / ``torchrun`` set ``WORLD_SIZE``), or asking for mixed precision or
gradient accumulation in the config's ``accelerator`` section. Otherwise training runs
exactly as a plain single process does. With ``accelerator.sharding: fsdp`` the accelerator only
provides the process group and its collectives; ``rl4lms.training.sharding`` shards the policy.
"""
from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Dict, List, Optional

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import DistributedDataParallelKwargs, str_to_bool
from torch.distributed.tensor import DTensor

from rl4lms.errors import DistributedSetupError
from rl4lms.generation.engine import close_engines
from rl4lms.policies.base import LMActorCriticPolicy

logger = logging.getLogger(__name__)


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
        raise DistributedSetupError("accelerator.mixed_precision: fp16 needs a GPU; use bf16 on CPU")
    if device == "cpu" and str_to_bool(os.environ.get("ACCELERATE_USE_FSDP", "false")):
        raise DistributedSetupError("accelerate's FSDP plugin (`accelerate launch --use_fsdp`) does not run CPU "
                                    "processes: launch with --multi_gpu or torchrun and set accelerator.sharding: "
                                    "fsdp (rl4lms shards with FSDP2 itself)")
    if settings.get("sharding") == "fsdp" and world_size() > 1:
        # FSDP's own mixed-precision policy casts the weights (rl4lms.training.sharding); no autocast.
        return Accelerator(cpu=device == "cpu", gradient_accumulation_steps=accumulation)
    # Every trainable parameter is used in each update, but the value head is idle in supervised
    # runs; buffers are not broadcast, so a forward pass is never a collective operation.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision,
                       gradient_accumulation_steps=accumulation, kwargs_handlers=[ddp])


def check_launch(accelerator: Accelerator, sharded: bool) -> None:
    """Refuse launches that would not train as configured: DeepSpeed, and accelerate's FSDP plugin
    (``accelerate launch --use_fsdp``) without ``sharded``."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise DistributedSetupError("DeepSpeed is not supported: rollouts generate with the actor between ZeRO "
                                    "steps; shard with FSDP2 instead (accelerator.sharding: fsdp) or use DDP "
                                    "(`accelerate launch --multi_gpu`)")
    plugin = accelerator.distributed_type == DistributedType.FSDP
    if plugin and not sharded and accelerator.num_processes > 1:
        raise DistributedSetupError("launched with accelerate's FSDP plugin (--use_fsdp), but accelerator.sharding "
                                    "is not fsdp: set accelerator.sharding: fsdp (rl4lms shards with FSDP2 itself, "
                                    "options under accelerator.fsdp), or launch DDP with --multi_gpu")
    if plugin and sharded:
        logger.info("rl4lms shards with FSDP2 from accelerator.fsdp; the options of accelerate's FSDP plugin are "
                    "not used")


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a DTensor is all-gathered: every process must call this)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def weights_checksum(policy: LMActorCriticPolicy) -> float:
    """Sum of the policy's whole trainable weights (float64; sharded ones gathered, so every process
    must call it): equal in every process when the gradients really were all-reduced."""
    return sum(float(full_tensor(t).double().sum()) for t in policy.trainable_state_dict().values()
               if t.is_floating_point())


def gather_from_processes(accelerator: Optional[Accelerator], value: Any) -> Optional[List[Any]]:
    """Every process's ``value`` (picklable), in process order; None in a single process."""
    if accelerator is None or accelerator.num_processes == 1:
        return None
    from accelerate.utils import gather_object

    return gather_object([value])


def main_process_value(accelerator: Optional[Accelerator], value: Any) -> Any:
    """The main process's ``value`` (picklable), in every process."""
    if accelerator is None or accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def share_main_failure(accelerator: Optional[Accelerator], failure: Optional[BaseException]) -> None:
    """Raise in every process the error the main process met (``failure``; None: it met none).

    Checks that only the main process makes (the run lock, the run folder's config) then stop all
    processes alike, with the same exit status: the process group is taken down first, and the
    other processes' copy of the error is marked ``reported_by_main_process`` (the main process prints it).
    Every process must call this at the same point.
    """
    if accelerator is None or accelerator.num_processes == 1:
        if failure is not None:
            raise failure
        return
    shared = failure
    if failure is not None:
        try:
            pickle.dumps(failure)
        except Exception:  # an error object that cannot travel: send its text
            shared = RuntimeError(f"{type(failure).__name__}: {failure}")
    shared = main_process_value(accelerator, shared)
    if shared is None:
        return
    end_process_group(accelerator)
    if failure is not None:
        raise failure
    shared.reported_by_main_process = True
    raise shared


class LauncherWatch:
    """Notices that the process that started this one is gone: ``torchrun`` starts each worker in a
    session of its own, so killing the launcher's process group leaves the workers running."""

    def __init__(self) -> None:
        self.parent = os.getppid()

    def gone(self) -> bool:
        return os.getppid() != self.parent


def any_launcher_gone(accelerator: Accelerator, watch: LauncherWatch) -> bool:
    """Whether any process of the run has lost its launcher (every process must call this)."""
    return any(gather_from_processes(accelerator, watch.gone()) or [watch.gone()])


def end_process_group(accelerator: Accelerator) -> None:
    """Take a multi-process run's process group down while the interpreter is whole (gloo's threads left
    to interpreter shutdown can abort a process), the generation engines first. Every process calls it
    together, after its last collective."""
    close_engines()
    accelerator.end_training()
