"""Sharded training with PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``): ``accelerator.sharding: fsdp``.

In a run of N processes each process keeps 1/N of every parameter of the policy (the actor, its
value head or separate critic LM, the frozen reference, NLPO's mask model), of the gradients and
of the optimizer state. Each transformer block of a language model is one FSDP unit, the rest of
the model (embeddings, final norm, LM head, tied or not) is the model's root unit, and any other
module of the policy with parameters (the value head) is a unit of its own, kept in float32. A
unit's weights are all-gathered for its forward and backward and freed afterwards; gradients are
reduce-scattered, and each process steps the optimizer on its own shard.

Generation runs on gathered weights: :meth:`ShardedPolicy.gathered` all-gathers the actor (and
the mask model) once, the decoding loop then runs without collectives, so the processes may stop
at different lengths, and the weights are sharded again afterwards. Generating on the sharded
model instead all-gathers every layer at every generated token (``scripts/bench/sharding.py``
measures both; ``docs/performance.md`` has the numbers).

Checkpoints hold the full state, gathered on the main process, in the same ``trainer_state.pt``
layout as unsharded runs, so a run resumes with any number of processes, sharded or not.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from rl4lms.errors import DistributedSetupError
from rl4lms.policies.base import REFERENCE_PREFIX, LMActorCriticPolicy
from rl4lms.training.distributed import full_tensor, world_size

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GENERATION_MODULES = ("model", "mask_model")
"""The policy's modules that ``generate`` runs (NLPO's mask model from its logits processor)."""


@dataclass(frozen=True)
class FSDPSettings:
    """How the policy is sharded.

    Args (``accelerator.fsdp``):
        reshard_after_forward: free a unit's gathered weights after its forward and gather them
            again for the backward (less memory); false keeps them from forward to backward.
        cpu_offload: keep the sharded weights, gradients and optimizer state in CPU memory (GPU runs).
        param_dtype: dtype the weights are gathered and computed in ("bfloat16"); default: float32,
            or bfloat16 when ``accelerator.mixed_precision`` is bf16.
        reduce_dtype: dtype gradients are reduce-scattered in; default float32.
        activation_checkpointing: recompute each transformer block's activations in the backward
            pass instead of keeping them.
    """

    reshard_after_forward: bool = True
    cpu_offload: bool = False
    param_dtype: Optional[str] = None
    reduce_dtype: Optional[str] = None
    activation_checkpointing: bool = False

    def mixed_precision(self) -> MixedPrecisionPolicy:
        """FSDP's module-level mixed precision for the language models."""
        param = DTYPES[self.param_dtype] if self.param_dtype else None
        reduce = DTYPES[self.reduce_dtype] if self.reduce_dtype else (torch.float32 if param is not None else None)
        return MixedPrecisionPolicy(param_dtype=param, reduce_dtype=reduce)

    def offload(self) -> OffloadPolicy:
        return CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if self.cpu_offload else OffloadPolicy()


def fsdp_settings(accelerator: Dict[str, Any]) -> Optional[FSDPSettings]:
    """The settings of a config's (validated) ``accelerator`` section when it asks for FSDP in a
    run of several processes; None otherwise. A single process has nothing to shard across: it
    trains unsharded, with a warning."""
    if accelerator.get("sharding") != "fsdp":
        return None
    if world_size() == 1:
        logger.warning("accelerator.sharding is fsdp but this run has one process: it trains unsharded "
                       "(launch several processes with `accelerate launch` or `torchrun` to shard)")
        return None
    options = dict(accelerator.get("fsdp") or {})
    if options.get("param_dtype") is None and accelerator.get("mixed_precision") == "bf16":
        options["param_dtype"] = "bfloat16"
    return FSDPSettings(**options)


def transformer_blocks(model: nn.Module) -> List[nn.Module]:
    """The repeated layers of a language model, outermost first: the modules whose class the model
    lists in ``_no_split_modules`` (GPT-2's ``transformer.h``, T5's encoder and decoder ``block``,
    Llama's ``model.layers``), else the entries of its longest ``ModuleList``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks: List[nn.Module] = []
    if names:
        inside: set = set()
        for module in model.modules():
            if id(module) in inside:
                continue
            if type(module).__name__ in names:
                blocks.append(module)
                inside.update(id(m) for m in module.modules())
        if blocks:
            return blocks
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def _checkpointed_forward(forward: Any, *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    # A training forward decodes nothing incrementally; a KV cache filled in the forward would be
    # filled again by the recomputation, so the block gets none.
    args = tuple(None if isinstance(a, Cache) else a for a in args)
    kwargs = {k: None if isinstance(v, Cache) else v for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute each transformer block's activations in the backward pass (generation, without
    gradients, is unchanged). The blocks' ``forward`` is wrapped in place, so parameter names stay.

    Not transformers' ``gradient_checkpointing_enable``: it recomputes only modules in training mode,
    and the policies keep their modules in eval mode (no dropout in RL updates). Not torch's
    ``apply_activation_checkpointing`` either: it lives in a private module and renames every
    parameter under ``_checkpoint_wrapped_module``, which checkpoints and saved models would carry."""
    for block in transformer_blocks(model):
        block.forward = functools.partial(_checkpointed_forward, block.forward)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes the tensors take in this process (a DTensor: its local shard)."""
    total = 0
    for tensor in tensors:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        total += local.numel() * local.element_size()
    return total


def memory_footprint(policy: LMActorCriticPolicy) -> Dict[str, int]:
    """Bytes of the policy's parameters (all, and the trainable ones) and of its optimizer state
    held by this process, and the bytes of the whole (unsharded) parameters."""
    params = list(policy.parameters())
    state = [v for s in policy.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {"parameter_bytes": tensor_bytes(params),
            "trainable_parameter_bytes": tensor_bytes(p for p in params if p.requires_grad),
            "optimizer_state_bytes": tensor_bytes(state),
            "full_parameter_bytes": sum(p.numel() * p.element_size() for p in params)}


def initialize_root(module: FSDPModule) -> None:
    """Make a sharded module an FSDP root now rather than at its first forward: generation may first
    call a submodule (a seq2seq model's encoder), which FSDP would otherwise take for the root.
    Local work, no collectives (private torch API, as of torch 2.13)."""
    module._get_fsdp_state()._lazy_init()


def tie_shared_parameters(module: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Point the keys of a parameter that several submodules share (GPT-2's LM head and input
    embeddings) at one tensor of ``state``, as in ``module.state_dict()``, so it is saved once."""
    first: Dict[int, str] = {}
    for key, param in module.named_parameters(remove_duplicate=False):
        if id(param) not in first:
            first[id(param)] = key
        elif key in state:
            state[key] = state[first[id(param)]]


class ShardedPolicy:
    """A policy sharded in place across all processes, with its optimizer rebuilt over the shards.

    Every process must call the methods that gather or scatter (:meth:`gathered`,
    :meth:`full_state`, :meth:`load_full_state`) at the same point.
    """

    def __init__(self, policy: LMActorCriticPolicy, settings: FSDPSettings, device: torch.device) -> None:
        if getattr(policy.model, "peft_config", None) is not None:
            raise DistributedSetupError("accelerator.sharding fsdp does not shard LoRA policies "
                                        "(policy.args.peft_config); train them with DDP (accelerator.sharding: ddp)")
        self.policy = policy
        self.settings = settings
        self.mesh: DeviceMesh = init_device_mesh(device.type, (dist.get_world_size(),))
        self._reshard_after_forward: Dict[FSDPModule, bool] = {}
        self._gather_depth = 0
        names = {id(p): name for name, p in policy.named_parameters()}
        groups = [[names[id(p)] for p in group["params"]] for group in policy.optimizer.param_groups]
        roots = [module for module in policy.children() if any(True for _ in module.parameters())]
        for module in roots:
            self._shard(module)
        for name, buffer in policy.named_buffers(recurse=False):  # e.g. NLPO's refresh counter
            setattr(policy, name, buffer.to(device))
        for root in roots:
            initialize_root(root)
        self._rebuild_optimizer(groups)
        policy.generation_context = self.gathered
        # The policy's losses never modify a module's output in place, which is what this warns about
        # (the 2-process tests check that sharded and DDP updates agree).
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")

    # --- sharding -------------------------------------------------------------------------------
    def _shard(self, module: nn.Module) -> None:
        """Language models: each block, then the root, in the mixed precision of the settings;
        other modules (value heads): one unit in float32. Frozen modules free their gathered
        weights after every forward (they have no backward to wait for)."""
        trainable = any(p.requires_grad for p in module.parameters())
        reshard = self.settings.reshard_after_forward or not trainable
        if isinstance(module, PreTrainedModel):
            if trainable and self.settings.activation_checkpointing:
                checkpoint_activations(module)
            units = [*transformer_blocks(module), module]
            precision = self.settings.mixed_precision()
        else:
            units, precision = [module], MixedPrecisionPolicy()
        for unit in units:
            fully_shard(unit, mesh=self.mesh, reshard_after_forward=reshard, mp_policy=precision,
                        offload_policy=self.settings.offload())
            self._reshard_after_forward[unit] = reshard

    def _rebuild_optimizer(self, groups: List[List[str]]) -> None:
        """The same optimizer (class, settings, parameter groups) over the sharded parameters."""
        old = self.policy.optimizer
        params = dict(self.policy.named_parameters())
        new_groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": [params[n] for n in names]}
                      for group, names in zip(old.param_groups, groups)]
        accepted = inspect.signature(type(old)).parameters
        self.policy.optimizer = type(old)(new_groups, **{k: v for k, v in old.defaults.items() if k in accepted})

    # --- generation -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Inside: the actor and mask model hold their full weights on every process, and their
        forwards run without collectives (``generate``, evaluation metrics that run the model).
        Re-entrant; every process must enter it together."""
        if self._gather_depth:
            self._gather_depth += 1
            try:
                yield
            finally:
                self._gather_depth -= 1
            return
        units = [unit for name in GENERATION_MODULES if getattr(self.policy, name, None) is not None
                 for unit in getattr(self.policy, name).modules() if isinstance(unit, FSDPModule)]
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        self._gather_depth = 1
        try:
            yield
        finally:
            self._gather_depth = 0
            for unit in units:
                unit.reshard()
                unit.set_reshard_after_forward(self._reshard_after_forward[unit], recurse=False)

    # --- gradients ------------------------------------------------------------------------------
    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip the sharded gradients to a total norm of ``max_norm``; the pre-clip norm."""
        params = [p for p in self.policy.parameters() if p.grad is not None]
        return float(full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm)))

    # --- state ----------------------------------------------------------------------------------
    def _trainable_children(self) -> List[Tuple[str, nn.Module]]:
        return [(name, module) for name, module in self.policy.named_children()
                if not f"{name}.".startswith(REFERENCE_PREFIX) and any(True for _ in module.parameters())]

    def _parameter_names(self) -> List[str]:
        """The optimizer's parameters by name, in its own (index) order."""
        names = {id(p): name for name, p in self.policy.named_parameters()}
        return [names[id(p)] for group in self.policy.optimizer.param_groups for p in group["params"]]

    def full_weights(self) -> Dict[str, torch.Tensor]:
        """The trainable weights (the keys of ``trainable_state_dict``), whole and on the CPU of the
        main process; the other processes get an empty dict. A collective: every process calls it."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        main = dist.get_rank() == 0
        weights: Dict[str, torch.Tensor] = {}
        for name, module in self._trainable_children():
            state = get_model_state_dict(module, options=options)
            if main:
                tie_shared_parameters(module, state)
            weights.update({f"{name}.{key}": value for key, value in state.items()})
        if main:
            weights.update({name: buffer.cpu() for name, buffer in self.policy.named_buffers(recurse=False)})
        return weights

    def full_state(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        """The trainable weights (the keys of ``trainable_state_dict``) and the optimizer state in
        the layout of ``optimizer.state_dict()``, whole and on the CPU of the main process; the other
        processes get empty dicts. A collective: every process calls it."""
        weights = self.full_weights()
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        by_name = get_optimizer_state_dict(self.policy, self.policy.optimizer, options=options)
        if dist.get_rank() != 0:
            return {}, {}
        index = {name: i for i, name in enumerate(self._parameter_names())}
        groups, start = [], 0
        for group in by_name["param_groups"]:
            groups.append({**group, "params": list(range(start, start + len(group["params"])))})
            start += len(group["params"])
        return weights, {"state": {index[name]: state for name, state in by_name["state"].items()},
                         "param_groups": groups}

    def load_full_state(self, weights: Dict[str, torch.Tensor], optimizer: Dict[str, Any]) -> None:
        """Shard a full state (:meth:`full_state`'s layout, as every checkpoint has) into the policy
        and its optimizer. Every process calls it with the whole state."""
        options = StateDictOptions(full_state_dict=True, strict=False)
        expected = set(self.policy.trainable_state_dict())
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not match the policy: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
        for name, module in self._trainable_children():
            prefix = f"{name}."
            set_model_state_dict(module, {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)},
                                 options=options)
        for name, buffer in self.policy.named_buffers(recurse=False):
            buffer.copy_(weights[name])
        names = self._parameter_names()
        by_name = {"state": {names[int(i)]: state for i, state in optimizer["state"].items()},
                   "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                                    for group in optimizer["param_groups"]]}
        set_optimizer_state_dict(self.policy, self.policy.optimizer, by_name,
                                 options=StateDictOptions(full_state_dict=True))
        # torch 2.13 loads tuple settings (AdamW's betas) back as lists; checkpoints written after a
        # resume must hold the same bytes as those of an uninterrupted run.
        defaults = self.policy.optimizer.defaults
        for group in self.policy.optimizer.param_groups:
            for key, value in group.items():
                if isinstance(defaults.get(key), tuple) and isinstance(value, list):
                    group[key] = tuple(value)

