"""Loading tokenizers and models by hub id, local path or embedded tiny-model name."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Type, TypeVar

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from rl4lms.models.tiny import TINY_MODELS, resolve_tiny_model

M = TypeVar("M")


class ModelLoadError(OSError):
    """A model or tokenizer could not be loaded; the message says what to try instead."""


def resolve_model_name(name_or_path: str) -> str:
    """Map an embedded tiny-model name to its local folder; return anything else unchanged."""
    if name_or_path in TINY_MODELS:
        return str(resolve_tiny_model(name_or_path))
    return name_or_path


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pretrained(loader: Any, name_or_path: str, what: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` with tiny-name resolution; failures name ``what`` and what to try instead."""
    resolved = resolve_model_name(name_or_path)
    if resolved.startswith(("/", "./", "../", "~")) and not Path(resolved).expanduser().exists():
        raise ModelLoadError(f"could not load {what} '{name_or_path}': the folder does not exist")
    try:
        return loader.from_pretrained(resolved, **kwargs)
    except OSError as error:
        raise ModelLoadError(
            f"could not load {what} '{name_or_path}': {error}\n"
            f"If this is a hub id, the hub may be unreachable (offline machine?): pass a local folder made with "
            f"save_pretrained, or use an embedded tiny model ({', '.join(TINY_MODELS)}).") from error


def load_model(model_cls: Type[M], name_or_path: str, **kwargs: Any) -> M:
    """``model_cls.from_pretrained`` with tiny-name resolution and a clear offline error."""
    return load_pretrained(model_cls, name_or_path, "model", **kwargs)


def load_tokenizer(model_name: str, padding_side: str = "left", truncation_side: str = "left",
                   pad_token_as_eos_token: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer as the ``tokenizer`` config section describes (RL4LMs' keys)."""
    tokenizer = load_pretrained(AutoTokenizer, model_name, "tokenizer")
    if tokenizer.pad_token is None:
        if not pad_token_as_eos_token:
            raise ModelLoadError(f"tokenizer '{model_name}' has no pad token: set tokenizer.pad_token_as_eos_token: "
                                 "true, or use a tokenizer with a distinct pad token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    tokenizer.truncation_side = truncation_side
    return tokenizer
