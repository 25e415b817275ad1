"""Actor-critic policy for encoder-decoder models (``AutoModelForSeq2SeqLM``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Tuple

import torch

from rl4lms.models.loading import TransformersClass
from rl4lms.policies.base import DecodingState, LMActorCriticPolicy

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class Seq2SeqLMActorCriticPolicy(LMActorCriticPolicy):
    """The prompt feeds the encoder; the decoder sees the start token followed by the response."""

    model_class = TransformersClass("AutoModelForSeq2SeqLM")
    prompt_and_response_share_positions = False

    def _decoder_start(self) -> int:
        start = self.model.config.decoder_start_token_id
        return int(start if start is not None else self.tokenizer.pad_token_id)

    def _start_column(self, like: torch.Tensor) -> torch.Tensor:
        """The decoder start token ``[B, 1]`` for a batch of ``like``'s rows, dtype and device."""
        return torch.full((like.shape[0], 1), self._decoder_start(), dtype=like.dtype, device=like.device)

    def _forward(self, model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 response_ids: torch.Tensor, response_mask: torch.Tensor,
                 want_hidden: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        start = self._start_column(response_ids)
        decoder_ids = torch.cat([start, response_ids[:, :-1]], dim=1)
        decoder_mask = torch.cat([torch.ones_like(start), response_mask[:, :-1]], dim=1)
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, decoder_input_ids=decoder_ids,
                    decoder_attention_mask=decoder_mask, output_hidden_states=want_hidden)
        hidden = out.decoder_hidden_states[-1] if want_hidden else None
        return out.logits, hidden

    def start_decoding(self, model: PreTrainedModel, prompt_ids: torch.Tensor,
                       prompt_mask: torch.Tensor) -> Tuple[torch.Tensor, DecodingState]:
        encoded = model.get_encoder()(input_ids=prompt_ids, attention_mask=prompt_mask)
        state = DecodingState(cache=None, attention_mask=prompt_mask, encoder_outputs=encoded)
        return self.continue_decoding(model, state, self._start_column(prompt_ids)), state

    def continue_decoding(self, model: PreTrainedModel, state: DecodingState, tokens: torch.Tensor) -> torch.Tensor:
        out = model(encoder_outputs=state.encoder_outputs, attention_mask=state.attention_mask,
                    decoder_input_ids=tokens, cache=state.cache, use_cache=True)
        state.cache = out.cache
        return out.logits[:, -1]

    def next_token_logits(self, observation: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Needs the context to start with the decoder start token (``env.args.context_start_token``)."""
        context_mask = observation["context_attention_mask_pt"].long()
        if bool((context_mask.sum(dim=1) == 0).any()):
            raise ValueError("seq2seq observations need env.args.context_start_token set to the decoder start "
                             f"token id ({self._decoder_start()}) so the decoder has an input")
        out = self.model(input_ids=observation["prompt_or_input_encoded_pt"].long(),
                         attention_mask=observation["prompt_or_input_attention_mask_pt"].long(),
                         decoder_input_ids=observation["context_encoded_pt"].long(), decoder_attention_mask=context_mask)
        last = context_mask.sum(dim=1) - 1
        return out.logits[torch.arange(out.logits.shape[0]), last]

    def _response_from_sequences(self, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
        return sequences[:, 1:]
