"""Language models with a value head that save and load as one Hugging Face folder (TRL's
``AutoModelForCausalLMWithValueHead`` / ``AutoModelForSeq2SeqLMWithValueHead``).

``save_pretrained`` writes the LM's folder plus ``value_head.safetensors``. This is the same layout
as a training run's ``model/`` folder, so a trained policy loads here with its value head.
``from_pretrained`` refuses a folder without value-head weights unless a new head is asked for
explicitly: a silently re-initialised critic would look trained and is not.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Tuple, Type

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel

from rl4lms.models.loading import load_model, resolve_model_name
from rl4lms.policies.value_head import CRITIC_DIR, VALUE_HEAD_FILE, ValueHead, hidden_size, save_value_head

logger = logging.getLogger(__name__)


class ValueHeadMissingError(FileNotFoundError):
    """The folder has LM weights but no ``value_head.safetensors``."""


class _ModelWithValueHead(nn.Module):
    """An LM (``pretrained_model``) plus ``v_head`` on its last (decoder) hidden state."""

    transformers_parent_class: Type[Any]
    hidden_states_field: str
    """The output field whose last entry the value head reads."""

    def __init__(self, pretrained_model: PreTrainedModel) -> None:
        super().__init__()
        self.pretrained_model = pretrained_model
        self.v_head = ValueHead(hidden_size(pretrained_model.config))

    @property
    def config(self) -> Any:
        return self.pretrained_model.config

    @classmethod
    def from_pretrained(cls, name_or_path: str, allow_new_value_head: bool = False,
                        **kwargs: Any) -> "_ModelWithValueHead":
        """Load the LM and its value head from ``name_or_path`` (a folder, hub id or tiny-model name).

        Without ``value_head.safetensors`` there, it raises :class:`ValueHeadMissingError`, unless
        ``allow_new_value_head`` is set: then the head starts from a fresh initialisation.
        """
        model = cls(load_model(cls.transformers_parent_class, name_or_path, **kwargs))
        model.v_head.to(next(model.pretrained_model.parameters()).device)  # where device_map put the LM
        head_file = Path(resolve_model_name(name_or_path)) / VALUE_HEAD_FILE
        if head_file.is_file():
            model.v_head.load_state_dict(load_file(str(head_file)))
        elif allow_new_value_head:
            logger.info("%s has no %s; starting a new value head", name_or_path, VALUE_HEAD_FILE)
        elif (head_file.parent / CRITIC_DIR / VALUE_HEAD_FILE).is_file():
            raise ValueHeadMissingError(
                f"'{name_or_path}' is a policy with a separate critic LM: its value head reads that LM's hidden "
                f"states, not this one's. Load '{head_file.parent / CRITIC_DIR}' for the critic with its value head.")
        else:
            raise ValueHeadMissingError(
                f"'{name_or_path}' has no {VALUE_HEAD_FILE}: it holds a plain language model, not one saved "
                f"with a value head. Pass allow_new_value_head=True to start a new (untrained) value head.")
        return model

    def save_pretrained(self, out_dir: str | Path, **kwargs: Any) -> None:
        """The LM's ``save_pretrained`` folder plus ``value_head.safetensors``."""
        out_dir = Path(out_dir)
        self.pretrained_model.save_pretrained(out_dir, **kwargs)
        save_value_head(self.v_head, out_dir)

    def forward(self, *args: Any, **kwargs: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """``(logits, loss, values)`` as TRL returns them; ``values`` has one entry per position."""
        kwargs["output_hidden_states"] = True
        output = self.pretrained_model(*args, **kwargs)
        return output.logits, getattr(output, "loss", None), self.v_head(getattr(output, self.hidden_states_field)[-1])

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.pretrained_model.generate(*args, **kwargs)


class AutoModelForCausalLMWithValueHead(_ModelWithValueHead):
    """A decoder-only LM with a value head."""

    transformers_parent_class = AutoModelForCausalLM
    hidden_states_field = "hidden_states"


class AutoModelForSeq2SeqLMWithValueHead(_ModelWithValueHead):
    """An encoder-decoder LM with a value head on the decoder's hidden states."""

    transformers_parent_class = AutoModelForSeq2SeqLM
    hidden_states_field = "decoder_hidden_states"
