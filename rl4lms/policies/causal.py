"""Actor-critic policy for decoder-only models (``AutoModelForCausalLM``)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from rl4lms.policies.base import DecodingState, LMActorCriticPolicy
from rl4lms.registry import PolicyRegistry


@PolicyRegistry.register("causal_lm_actor_critic_policy")
class CausalLMActorCriticPolicy(LMActorCriticPolicy):
    """Prompt (left-padded) and response are one sequence; positions come from the attention mask."""

    model_class = AutoModelForCausalLM
    prompt_and_response_share_positions = True

    def _forward(self, model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 response_ids: torch.Tensor, response_mask: torch.Tensor,
                 want_hidden: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        input_ids = torch.cat([prompt_ids, response_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    output_hidden_states=want_hidden)
        start, stop = prompt_ids.shape[1] - 1, input_ids.shape[1] - 1
        hidden = out.hidden_states[-1][:, start:stop] if want_hidden else None
        return out.logits[:, start:stop], hidden

    def start_decoding(self, model: PreTrainedModel, prompt_ids: torch.Tensor,
                       prompt_mask: torch.Tensor) -> Tuple[torch.Tensor, DecodingState]:
        positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
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
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits[:, -1]

    def _response_from_sequences(self, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
        return sequences[:, prompt_len:]
