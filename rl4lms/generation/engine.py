"""The generation engine interface and its default, Hugging Face ``generate`` on the actor itself.

A policy samples through one :class:`GenerationEngine`. The default (``policy.args.generation_engine:
hf``) runs the actor's own ``generate`` and also returns the logits and hidden states it computed
while sampling, so a rollout needs no second forward. Another engine (``vllm``,
:mod:`rl4lms.generation.vllm_engine`) holds its own copy of the actor's weights: it returns the
sampled tokens and its own log-probs of them, and the trainer computes the rollout's log-probs and
values with one batched forward of its own.
"""
from __future__ import annotations

import copy
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Optional, Protocol

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedTokenizerBase

if TYPE_CHECKING:
    from torch import nn

ENGINE_CHOICES = ("hf", "vllm")


@dataclass
class GeneratedTokens:
    """An engine's answer for a batch of left-padded prompts.

    ``response_ids`` ``[B, T]`` are the generated tokens (pad ids after a sequence that ended early),
    before the policy cuts them after EOS. ``step_logits`` ``[B, T, V]`` and ``step_hidden``
    ``[B, T, H]`` are the actor's raw logits and last hidden states at the positions that predicted
    each token (Hugging Face engine, when asked); ``sampled_log_probs`` ``[B, T]`` are a separate
    engine's own log-probs of the tokens it sampled (after temperature, top-k and top-p).
    """

    response_ids: torch.Tensor
    step_logits: Optional[torch.Tensor] = None
    step_hidden: Optional[torch.Tensor] = None
    sampled_log_probs: Optional[torch.Tensor] = None


class EnginePolicy(Protocol):
    """What an engine reads from the policy it serves (:class:`rl4lms.policies.base.LMActorCriticPolicy`)."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    samples_with_logits_processor: bool
    generation_context: Callable[[], ContextManager[None]]

    def _response_from_sequences(self, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor: ...


class GenerationEngine(ABC):
    """Samples responses for the policy's actor; built once per policy.

    ``importance_sampling_cap``: for an engine whose numbers differ from the trainer's (another
    implementation or dtype), the cap of the truncated importance weight
    ``min(pi_trainer / pi_engine, cap)`` that scales each token's advantage; None: no correction.
    """

    name = "engine"
    importance_sampling_cap: Optional[float] = None

    @abstractmethod
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, config: GenerationConfig,
                 logits: bool = False, hidden: bool = False,
                 logits_processor: Optional[LogitsProcessorList] = None) -> GeneratedTokens:
        """Sample (or decode greedily) with ``config``'s settings; ``logits`` / ``hidden`` ask for the
        actor's step outputs, which an engine may not have (then None)."""

    def refresh_weights(self) -> None:
        """Bring the engine's copy of the actor's weights up to date (nothing for an engine that samples
        with the actor itself); :meth:`generate` does it first, so calling it is only needed to time or
        schedule the copy apart from sampling."""

    def close(self) -> None:
        """Release what the engine holds (nothing for the default engine)."""


_OPEN_ENGINES: "weakref.WeakSet[GenerationEngine]" = weakref.WeakSet()
"""Engines holding resources that must be released before a multi-process run takes its process group down."""


def track_open_engine(engine: GenerationEngine) -> None:
    """Have :func:`close_engines` close ``engine`` (until it is collected; closing twice does nothing)."""
    _OPEN_ENGINES.add(engine)


def close_engines() -> None:
    """Close every open engine of this process. A multi-process run calls it in every process together,
    after its last collective and before it takes the process group down: vLLM's engine takes its own
    process groups (and the default one) down as it shuts down, and fails if they are gone already."""
    for engine in list(_OPEN_ENGINES):
        engine.close()


class HFGenerateEngine(GenerationEngine):
    """Hugging Face ``generate`` on the policy's actor (the default engine): sampling uses torch's
    global generator, which checkpoints save and restore."""

    name = "hf"

    def __init__(self, policy: EnginePolicy) -> None:
        self.policy = policy

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, config: GenerationConfig,
                 logits: bool = False, hidden: bool = False,
                 logits_processor: Optional[LogitsProcessorList] = None) -> GeneratedTokens:
        policy = self.policy
        step_outputs = logits or hidden
        if step_outputs:
            config = copy.deepcopy(config)
            config.update(return_dict_in_generate=True, output_logits=True, output_hidden_states=hidden)
        extra: dict[str, Any] = {"logits_processor": logits_processor} if logits_processor is not None else {}
        # Each process decodes on its own: a sharded model is gathered first (``generation_context``),
        # so the processes need not run the same number of steps (Hugging Face's ``synced_gpus``).
        with policy.generation_context():
            out = policy.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config,
                                        synced_gpus=False, **extra)
        sequences = out.sequences if step_outputs else out
        response = policy._response_from_sequences(sequences, prompt_ids.shape[1])
        if not step_outputs:
            return GeneratedTokens(response)
        step_logits, step_hidden = generation_step_outputs(out, policy.model.config.is_encoder_decoder)
        return GeneratedTokens(response, step_logits=step_logits, step_hidden=step_hidden if hidden else None)


def generation_step_outputs(out: Any, is_encoder_decoder: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The raw logits ``[B, T, V]`` and last-layer hidden states ``[B, T, H]`` at each generated
    position of a ``generate(return_dict_in_generate=True, output_logits=True,
    output_hidden_states=...)`` result: what the actor computed while sampling (no hidden states
    when they were not asked for)."""
    steps = out.decoder_hidden_states if is_encoder_decoder else out.hidden_states
    hidden = None if steps is None else torch.stack([layers[-1][:, -1] for layers in steps], dim=1)
    return torch.stack(out.logits, dim=1), hidden


def build_engine(policy: EnginePolicy, kind: str, options: Optional[dict[str, Any]] = None) -> GenerationEngine:
    """The engine ``policy.args.generation_engine`` names, with ``policy.args.vllm``'s options."""
    if kind not in ENGINE_CHOICES:
        raise ValueError(f"policy.args.generation_engine {kind!r} is not one of {', '.join(ENGINE_CHOICES)}")
    if kind == "hf":
        if options:
            raise ValueError("policy.args.vllm is set but policy.args.generation_engine is 'hf'; set it to 'vllm' "
                             "or drop the vllm options")
        return HFGenerateEngine(policy)
    from rl4lms.generation.vllm_engine import VLLMEngine, VLLMOptions

    return VLLMEngine(policy, VLLMOptions.from_config(options or {}))
