"""TRL's ``AutoModelForCausalLMWithValueHead`` / ``AutoModelForSeq2SeqLMWithValueHead``.

The project's value-head models (:mod:`rl4lms.models.value_head_models`) with TRL's behaviour:

* ``from_pretrained`` takes TRL's keyword arguments: ``summary_dropout_prob`` (dropout before the
  head, default 0.1 as in TRL), ``v_head_init_strategy`` (None: the head's own init, "normal":
  normal with std ``v_head_initializer_range``, default 0.2), ``peft_config`` (a ``peft`` config
  object or a dict of LoRA arguments); the others go to the LM's ``from_pretrained``;
* a plain LM gets a fresh head (TRL's behaviour; the project's own classes refuse instead);
* checkpoints go both ways: the head is read from ``value_head.safetensors`` (this project) or from
  the ``v_head.*`` keys inside the LM's weights file (TRL: ``model.safetensors``, its shards, or
  ``pytorch_model.bin``), and ``save_pretrained`` writes both, so TRL reads the folder with its head.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import torch
from safetensors import safe_open

from rl4lms.models.loading import load_model, resolve_model_name
from rl4lms.models.lora import add_lora_adapters
from rl4lms.models.value_head_models import AutoModelForCausalLMWithValueHead as _CausalWithValueHead
from rl4lms.models.value_head_models import AutoModelForSeq2SeqLMWithValueHead as _Seq2SeqWithValueHead
from rl4lms.models.value_head_models import _ModelWithValueHead
from rl4lms.policies.value_head import save_value_head

logger = logging.getLogger(__name__)

V_HEAD_PREFIX = "v_head."
VALUE_HEAD_ARGS = ("summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")


def trl_value_head_weights(folder: Path) -> Dict[str, torch.Tensor]:
    """The ``v_head.*`` tensors TRL stores inside a model folder's weights, keys without the prefix."""
    files = []
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index_name).is_file():
            weight_map = json.loads((folder / index_name).read_text())["weight_map"]
            files = sorted({folder / name for key, name in weight_map.items() if key.startswith(V_HEAD_PREFIX)})
            break
    else:
        files = [path for path in (folder / "model.safetensors", folder / "pytorch_model.bin") if path.is_file()][:1]
    weights: Dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                weights.update({key[len(V_HEAD_PREFIX):]: handle.get_tensor(key) for key in handle.keys()
                                if key.startswith(V_HEAD_PREFIX)})
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            weights.update({key[len(V_HEAD_PREFIX):]: value for key, value in state.items()
                            if key.startswith(V_HEAD_PREFIX)})
    return weights


class _ValueHeadKeysFilter(logging.Filter):
    """Drops transformers' load report when the only keys it reports are the ``v_head.*`` ones that a
    TRL folder keeps inside the LM's weights (they are read separately, not lost)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        reported = [line.split("|")[0].strip() for line in message.splitlines()
                    if line.count("|") >= 2 and line.split("|")[1].strip() in ("UNEXPECTED", "MISSING", "MISMATCH")]
        return not reported or not all(key.startswith(V_HEAD_PREFIX) for key in reported)


@contextlib.contextmanager
def _quiet_about_value_head_keys() -> Iterator[None]:
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    quiet = _ValueHeadKeysFilter()
    transformers_logger.addFilter(quiet)
    try:
        yield
    finally:
        transformers_logger.removeFilter(quiet)


class _TRLModelWithValueHead(_ModelWithValueHead):
    """TRL's loading and saving on top of the project's value-head model."""

    def __init__(self, pretrained_model: Any, summary_dropout_prob: Optional[float] = 0.1,
                 v_head_initializer_range: float = 0.2, v_head_init_strategy: Optional[str] = None) -> None:
        super().__init__(pretrained_model, summary_dropout_prob)
        if v_head_init_strategy == "normal":
            torch.nn.init.normal_(self.v_head.summary.weight, std=v_head_initializer_range)
            torch.nn.init.zeros_(self.v_head.summary.bias)
        elif v_head_init_strategy is not None:
            raise ValueError(f"v_head_init_strategy must be None or 'normal', got {v_head_init_strategy!r}")

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """The LM's gradient checkpointing (TRL's wrapper passes the call on)."""
        self.pretrained_model.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.pretrained_model.gradient_checkpointing_disable()

    @property
    def is_peft_model(self) -> bool:
        """Whether the LM carries ``peft`` adapters (TRL's attribute)."""
        return getattr(self.pretrained_model, "peft_config", None) is not None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any:
        """A hub id, folder or built LM with a value head: read from the folder when it has one
        (either format), a fresh one otherwise. See the module docstring for the arguments."""
        head_args = {name: kwargs.pop(name) for name in VALUE_HEAD_ARGS if name in kwargs}
        peft_config = kwargs.pop("peft_config", None)
        if isinstance(pretrained_model_name_or_path, torch.nn.Module):
            lm, folder = pretrained_model_name_or_path, None
        else:
            with _quiet_about_value_head_keys():
                lm = load_model(cls.transformers_parent_class, str(pretrained_model_name_or_path), **kwargs)
            folder = Path(resolve_model_name(str(pretrained_model_name_or_path)))
        if peft_config is not None:
            lm = add_lora_adapters(lm, peft_config, key="peft_config")
        model = cls(lm, **head_args)
        model.v_head.to(next(lm.parameters()).device)
        if folder is not None and model.load_saved_value_head(folder):
            return model
        weights = trl_value_head_weights(folder) if folder is not None and folder.is_dir() else {}
        if weights:
            model.v_head.load_state_dict(weights)
        else:
            logger.info("%s has no value head weights; starting a new value head", pretrained_model_name_or_path)
        return model

    def state_dict(self, *args: Any, **kwargs: Any) -> Dict[str, torch.Tensor]:
        """TRL's layout: the LM's keys (no ``pretrained_model.`` prefix) plus ``v_head.*``."""
        state = self.pretrained_model.state_dict(*args, **kwargs)
        state.update({V_HEAD_PREFIX + key: value for key, value in self.v_head.state_dict().items()})
        return state

    def save_pretrained(self, out_dir: Any, **kwargs: Any) -> None:
        """The LM's folder with ``v_head.*`` inside its weights file (TRL reads it) and
        ``value_head.safetensors`` (this project reads it)."""
        out_dir = Path(out_dir)
        if getattr(self.pretrained_model, "peft_config", None):
            super().save_pretrained(out_dir, **kwargs)  # adapters + head file; TRL keeps a PEFT head apart too
            return
        kwargs.setdefault("state_dict", self.state_dict())
        self.pretrained_model.save_pretrained(out_dir, **kwargs)
        save_value_head(self.v_head, out_dir)


class AutoModelForCausalLMWithValueHead(_TRLModelWithValueHead, _CausalWithValueHead):
    """TRL's causal LM with a value head (``v_head``, ``pretrained_model``); ``forward`` returns
    ``(lm_logits, loss, value)``."""


class AutoModelForSeq2SeqLMWithValueHead(_TRLModelWithValueHead, _Seq2SeqWithValueHead):
    """TRL's encoder-decoder LM with a value head on the decoder's last hidden state."""


__all__ = ["AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead"]
