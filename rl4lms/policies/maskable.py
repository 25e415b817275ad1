"""NLPO's maskable policies: sampling restricted to the tokens a periodically refreshed mask model allows.

Natural Language Policy Optimization (RL4LMs) keeps a frozen copy of the policy, the *mask
model*, and at every step only lets the policy choose among that model's top-k / top-p tokens.
The copy is refreshed from the policy every ``target_update_iterations`` updates.
"""
from __future__ import annotations

import copy
from typing import Any, List, Optional, Tuple

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from rl4lms.policies.base import DecodingState, LMActorCriticPolicy, SampledActions
from rl4lms.policies.causal import CausalLMActorCriticPolicy
from rl4lms.policies.seq2seq import Seq2SeqLMActorCriticPolicy

MASK_TYPES = ("learned_top_k", "learned_top_p", "topk")


def action_mask_from_logits(logits: torch.Tensor, mask_type: str, top_mask: float, min_tokens_to_keep: int,
                            always_allowed: List[int]) -> torch.Tensor:
    """Allowed tokens ``[B, V]`` under ``logits``: the top-k (``top_mask`` tokens) or the smallest
    top-p set (cumulative probability ``top_mask``), never fewer than ``min_tokens_to_keep``
    tokens, plus ``always_allowed`` (special tokens such as EOS)."""
    vocab = logits.shape[-1]
    keep = max(1, min(int(min_tokens_to_keep), vocab))
    order = torch.argsort(logits.float(), dim=-1, descending=True)
    if mask_type == "learned_top_p":
        probs = torch.softmax(logits.float(), dim=-1).gather(-1, order)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        in_sorted = mass_before < top_mask
        in_sorted[..., :keep] = True
    else:
        k = max(keep, min(int(top_mask), vocab))
        in_sorted = torch.zeros_like(order, dtype=torch.bool)
        in_sorted[..., :k] = True
    allowed = torch.zeros_like(in_sorted).scatter(-1, order, in_sorted)
    if always_allowed:
        allowed[..., always_allowed] = True
    return allowed


class _ActionMaskProcessor(LogitsProcessor):
    """Masks the policy's next-token scores during ``generate`` and records each step's mask.

    With one row per prompt (sampling, greedy) the mask model decodes alongside ``generate`` with
    its own KV cache, one token per step. Beam search reorders its rows between steps, so there the
    mask model re-reads each row's whole prefix.
    """

    def __init__(self, policy: "MaskablePolicyMixin", prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        self.policy = policy
        self.prompt_ids = prompt_ids
        self.prompt_mask = prompt_mask
        self.masks: List[torch.Tensor] = []
        self.decoding: Optional[DecodingState] = None

    def _mask_model_logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        policy = self.policy
        if input_ids.shape[0] == self.prompt_ids.shape[0]:
            if self.decoding is None:
                logits, self.decoding = policy.start_decoding(policy.mask_model, self.prompt_ids, self.prompt_mask)
            else:
                logits = policy.continue_decoding(policy.mask_model, self.decoding, input_ids[:, -1:])
            return policy.temperature_scaled(logits)
        # Beam search runs num_beams rows per prompt, beams of one prompt next to each other.
        beams = input_ids.shape[0] // self.prompt_ids.shape[0]
        generated = policy._response_from_sequences(input_ids, self.prompt_ids.shape[1])
        return policy.mask_model_next_logits(self.prompt_ids.repeat_interleave(beams, dim=0),
                                             self.prompt_mask.repeat_interleave(beams, dim=0), generated)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        source = scores if self.policy.mask_type == "topk" else self._mask_model_logits(input_ids)
        allowed = action_mask_from_logits(source, self.policy.mask_type, self.policy.top_mask,
                                          self.policy.min_tokens_to_keep, self.policy.always_allowed_ids)
        self.masks.append(allowed)
        return scores.masked_fill(~allowed, float("-inf"))


class MaskablePolicyMixin(LMActorCriticPolicy):
    """Adds the mask model, masked generation and the periodic mask-model refresh to a policy."""

    samples_with_logits_processor = True

    def __init__(self, *args: Any, top_mask: float = 0.9, mask_type: str = "learned_top_p",
                 min_tokens_to_keep: int = 100, target_update_iterations: int = 20, **kwargs: Any) -> None:
        if mask_type not in MASK_TYPES:
            raise ValueError(f"policy.args.mask_type {mask_type!r} is not one of {', '.join(MASK_TYPES)}")
        if mask_type == "learned_top_p" and not 0 < top_mask <= 1:
            raise ValueError(f"policy.args.top_mask must be in (0, 1] for learned_top_p, got {top_mask}")
        if mask_type != "learned_top_p" and top_mask < 1:
            raise ValueError(f"policy.args.top_mask is a token count for {mask_type}; got {top_mask}")
        if target_update_iterations < 1 or min_tokens_to_keep < 1:
            raise ValueError("policy.args.target_update_iterations and min_tokens_to_keep must be >= 1")
        self.top_mask = top_mask
        self.mask_type = mask_type
        self.min_tokens_to_keep = min_tokens_to_keep
        self.target_update_iterations = target_update_iterations
        super().__init__(*args, **kwargs)
        self.mask_model = copy.deepcopy(self.model).requires_grad_(False)
        self.mask_model.eval()
        # A buffer, so checkpoints carry it together with the mask model's weights.
        self.register_buffer("updates_since_mask_refresh", torch.zeros((), dtype=torch.long))
        pad = self.tokenizer.pad_token_id
        self.always_allowed_ids = sorted({i for i in self.tokenizer.all_special_ids if i != pad}
                                         | {self.tokenizer.eos_token_id} - {None})

    @torch.no_grad()
    def mask_model_next_logits(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                               generated: torch.Tensor) -> torch.Tensor:
        """The mask model's logits ``[B, V]`` for the token after ``generated`` (one forward over
        prompt + generated tokens; a placeholder stands for the token being predicted)."""
        placeholder = torch.full((generated.shape[0], 1), self.tokenizer.pad_token_id, dtype=generated.dtype,
                                 device=generated.device)
        response = torch.cat([generated, placeholder], dim=1)
        logits, _ = self._forward(self.mask_model, prompt_ids, prompt_mask, response, torch.ones_like(response),
                                  want_hidden=False)
        return self.temperature_scaled(logits[:, -1])

    @torch.no_grad()
    def sample_actions(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                       generation_config: GenerationConfig, logits_processor: Optional[LogitsProcessorList] = None,
                       step_outputs: bool = True) -> SampledActions:
        """Generation restricted to the mask at every step; the masks are returned with the tokens."""
        processor = _ActionMaskProcessor(self, prompt_ids, prompt_mask)
        processors = LogitsProcessorList([processor, *(logits_processor or [])])
        sampled = super().sample_actions(prompt_ids, prompt_mask, generation_config, processors, step_outputs)
        sampled.action_masks = torch.stack(processor.masks, dim=1)[:, :sampled.response_ids.shape[1]]
        return sampled

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 generation_config: GenerationConfig) -> Tuple[torch.Tensor, torch.Tensor]:
        """Masked generation, also at evaluation time (the policy only knows the masked action space)."""
        processor = _ActionMaskProcessor(self, prompt_ids, prompt_mask)
        return super().generate(prompt_ids, prompt_mask, generation_config, LogitsProcessorList([processor]))

    def after_update(self) -> None:
        """Count one policy update; refresh the mask model every ``target_update_iterations``."""
        self.updates_since_mask_refresh += 1
        if int(self.updates_since_mask_refresh) >= self.target_update_iterations:
            self.mask_model.load_state_dict(self.model.state_dict())
            self.updates_since_mask_refresh.zero_()


class MaskableCausalLMActorCriticPolicy(MaskablePolicyMixin, CausalLMActorCriticPolicy):
    """NLPO policy over a decoder-only LM."""


class MaskableSeq2SeqLMActorCriticPolicy(MaskablePolicyMixin, Seq2SeqLMActorCriticPolicy):
    """NLPO policy over an encoder-decoder LM."""
