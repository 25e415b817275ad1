"""A value head on a language model's hidden states, and language models that carry one.

:class:`ValueHead` is the critic of the actor-critic policies (``rl4lms.policies``) and of the
TRL-style models below; a saved policy or model keeps it as ``value_head.safetensors`` next to the
LM's own files.

:class:`AutoModelForCausalLMWithValueHead` / :class:`AutoModelForSeq2SeqLMWithValueHead` (TRL's
names) save and load as one Hugging Face folder: ``save_pretrained`` writes the LM's folder plus
``value_head.safetensors``, the same layout as a training run's ``model/`` folder, so a trained
policy loads here with its value head. ``from_pretrained`` refuses a folder without value-head
weights unless a new head is asked for explicitly: a silently re-initialised critic would look
trained and is not. (``rl4lms.trl.modeling_value_head`` adds TRL's own loading flags on top.)
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rl4lms.errors import ValueHeadMissingError
from rl4lms.models.loading import TransformersClass, load_model, resolve_model_name

if TYPE_CHECKING:  # transformers' model classes are imported on first use: validation need not pay for them
    from transformers import PreTrainedModel

VALUE_HEAD_FILE = "value_head.safetensors"
"""The value head's weights inside a ``save_pretrained`` folder, next to the LM's own files."""
CRITIC_DIR = "critic"
"""Sub-folder of a saved policy with a separate critic LM: that LM and the value head it feeds."""


def hidden_size(config: Any) -> int:
    """Width of a model's hidden states, whatever its config calls it."""
    for attribute in ("hidden_size", "d_model", "n_embd"):
        if getattr(config, attribute, None):
            return int(getattr(config, attribute))
    raise ValueError(f"cannot tell the hidden size of a {type(config).__name__} model config")


class ValueHead(nn.Module):
    """Linear map from a hidden state to a value estimate, computed in float32 (parameter names as
    TRL's ``v_head``: ``summary.weight``, ``summary.bias``), with optional dropout before it (TRL's
    ``summary_dropout_prob``; active in training mode only)."""

    def __init__(self, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(self.dropout(hidden.float())).squeeze(-1)


def save_value_head(head: nn.Module, out_dir: Path, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """``head``'s weights (or ``state_dict``, a gathered copy of them) as ``out_dir/value_head.safetensors``."""
    state = head.state_dict() if state_dict is None else state_dict
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / VALUE_HEAD_FILE))


logger = logging.getLogger(__name__)


class _ModelWithValueHead(nn.Module):
    """An LM (``pretrained_model``) plus ``v_head`` on its last (decoder) hidden state."""

    transformers_parent_class: TransformersClass
    hidden_states_field: str
    """The output field whose last entry the value head reads."""
    lm_head_namings: Tuple[str, ...]
    """Names of the LM head (TRL's attribute): a model with none of them is refused."""

    def __init__(self, pretrained_model: PreTrainedModel, summary_dropout_prob: Optional[float] = 0.0) -> None:
        super().__init__()
        if not self.has_lm_head(pretrained_model):
            raise ValueError(f"{type(pretrained_model).__name__} has no language model head (none of "
                             f"{', '.join(self.lm_head_namings)}): load it with {self.transformers_parent_class.__name__}")
        self.pretrained_model = pretrained_model
        self.v_head = ValueHead(hidden_size(pretrained_model.config), dropout=summary_dropout_prob or 0.0)

    @classmethod
    def has_lm_head(cls, model: nn.Module) -> bool:
        """Whether ``model`` (or a ``peft`` wrapper of it) has a module named as an LM head."""
        return any(name.split(".")[-1] in cls.lm_head_namings for name, _ in model.named_modules())

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
        folder = Path(resolve_model_name(name_or_path))
        if model.load_saved_value_head(folder):
            return model
        if allow_new_value_head:
            logger.info("%s has no %s; starting a new value head", name_or_path, VALUE_HEAD_FILE)
        elif (folder / CRITIC_DIR / VALUE_HEAD_FILE).is_file():
            raise ValueHeadMissingError(
                f"'{name_or_path}' is a policy with a separate critic LM: its value head reads that LM's hidden "
                f"states, not this one's. Load '{folder / CRITIC_DIR}' for the critic with its value head.")
        else:
            raise ValueHeadMissingError(
                f"'{name_or_path}' has no {VALUE_HEAD_FILE}: it holds a plain language model, not one saved "
                f"with a value head. Pass allow_new_value_head=True to start a new (untrained) value head.")
        return model

    def load_saved_value_head(self, folder: Path) -> bool:
        """Read ``folder/value_head.safetensors`` into ``v_head`` when there is one; True if it was read."""
        if not (folder / VALUE_HEAD_FILE).is_file():
            return False
        self.v_head.load_state_dict(load_file(str(folder / VALUE_HEAD_FILE)))
        return True

    def save_pretrained(self, out_dir: str | Path, **kwargs: Any) -> None:
        """The LM's ``save_pretrained`` folder plus ``value_head.safetensors``."""
        out_dir = Path(out_dir)
        self.pretrained_model.save_pretrained(out_dir, **kwargs)
        save_value_head(self.v_head, out_dir)

    def forward(self, input_ids: Optional[torch.Tensor] = None, past_key_values: Any = None,
                attention_mask: Optional[torch.Tensor] = None, return_past_key_values: bool = False,
                **kwargs: Any) -> Tuple[Any, ...]:
        """TRL's signature: ``(lm_logits, loss, value)``, plus the cache with ``return_past_key_values``.
        (Its parameter names are also what TRL's ``PPOTrainer`` keeps of a dataset's columns.)"""
        kwargs["output_hidden_states"] = True
        if past_key_values is not None:
            kwargs["cache"] = past_key_values  # the name current transformers uses
        output = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        value = self.v_head(getattr(output, self.hidden_states_field)[-1])
        if return_past_key_values:
            return output.logits, getattr(output, "loss", None), value, getattr(output, "cache", None)
        return output.logits, getattr(output, "loss", None), value

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.pretrained_model.generate(*args, **kwargs)


class AutoModelForCausalLMWithValueHead(_ModelWithValueHead):
    """A decoder-only LM with a value head."""

    transformers_parent_class = TransformersClass("AutoModelForCausalLM")
    hidden_states_field = "hidden_states"
    lm_head_namings = ("lm_head", "embed_out")


class AutoModelForSeq2SeqLMWithValueHead(_ModelWithValueHead):
    """An encoder-decoder LM with a value head on the decoder's hidden states."""

    transformers_parent_class = TransformersClass("AutoModelForSeq2SeqLM")
    hidden_states_field = "decoder_hidden_states"
    lm_head_namings = ("lm_head", "embed_out", "output_projection")
