"""Actor-critic policy for decoder-only models (``AutoModelForCausalLM``)."""
from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import torch

from rl4lms.models.loading import TransformersClass
from rl4lms.policies.base import DecodingState, LMActorCriticPolicy

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def forward_takes(model: torch.nn.Module, argument: str) -> bool:
    """Whether the ``forward`` of the model (under a DDP or ``peft`` wrapper) names ``argument``."""
    while hasattr(model, "module"):  # DDP
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes(type(base), argument)


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the causal LM computes logits for its last positions only when asked
    (``logits_to_keep``, most Hugging Face causal LMs)."""
    return forward_takes(model, "logits_to_keep")


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only attended tokens, so left padding does not shift them."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


@functools.lru_cache(maxsize=None)
def _forward_takes(model_class: type, argument: str) -> bool:
    return argument in inspect.signature(model_class.forward).parameters


class CausalLMActorCriticPolicy(LMActorCriticPolicy):
    """Prompt (left-padded) and response are one sequence; positions come from the attention mask."""

    model_class = TransformersClass("AutoModelForCausalLM")
    prompt_and_response_share_positions = True

    def _forward(self, model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 response_ids: torch.Tensor, response_mask: torch.Tensor,
                 want_hidden: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        # The last response token predicts nothing, so the input stops before it: its last T
        # positions are exactly those that predict the T response tokens, and only they need the
        # LM head (contiguous logits, no slice to copy or to back-propagate through).
        input_ids = torch.cat([prompt_ids, response_ids[:, :-1]], dim=1)
        attention_mask = torch.cat([prompt_mask, response_mask[:, :-1]], dim=1)
        position_ids = positions_from_mask(attention_mask)
        width = response_ids.shape[1]
        extra = {"logits_to_keep": width} if accepts_logits_to_keep(model) else {}
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    output_hidden_states=want_hidden, **extra)
        hidden = out.hidden_states[-1][:, -width:] if want_hidden else None
        # Sliced only when the model returned more positions (a slice of the whole would still cost
        # a [B, T, V] copy in the backward pass).
        logits = out.logits if out.logits.shape[1] == width else out.logits[:, -width:]
        return logits, hidden

    def start_decoding(self, model: PreTrainedModel, prompt_ids: torch.Tensor,
                       prompt_mask: torch.Tensor) -> Tuple[torch.Tensor, DecodingState]:
        positions = positions_from_mask(prompt_mask)
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True)
        return out.logits[:, -1], DecodingState(out.cache, prompt_mask, positions[:, -1:] + 1)

    def continue_decoding(self, model: PreTrainedModel, state: DecodingState, tokens: torch.Tensor) -> torch.Tensor:
        state.attention_mask = torch.cat([state.attention_mask, torch.ones_like(tokens)], dim=1)
        out = model(input_ids=tokens, attention_mask=state.attention_mask, position_ids=state.next_positions,
                    cache=state.cache, use_cache=True)
        state.cache, state.next_positions = out.cache, state.next_positions + 1
        return out.logits[:, -1]

    def next_token_logits(self, observation: Dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids = observation["input_encoded_pt"].long()
        attention_mask = observation["input_attention_mask_pt"].long()
        position_ids = positions_from_mask(attention_mask)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits[:, -1]

    def _response_from_sequences(self, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
        return sequences[:, prompt_len:]
