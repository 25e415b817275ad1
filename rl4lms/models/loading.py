"""Loading tokenizers and models by hub id, local path or embedded tiny-model name."""
from __future__ import annotations

import os
import socket
import urllib.parse
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Type, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from rl4lms.errors import DamagedArtifactError, GGUFError, ModelLoadError
from rl4lms.manifest import MANIFEST_FILE, verify_files
from rl4lms.models.gguf import PACKAGED_MODELS, resolve_gguf, resolve_packaged
from rl4lms.models.tiny import TINY_MODELS, resolve_tiny_model

M = TypeVar("M")


class TransformersClass:
    """A class attribute naming a ``transformers`` class (``AutoModelForCausalLM``), imported on first
    access: the auto classes take about half a second to import, which config validation need not pay."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: Optional[type] = None) -> Any:
        import transformers

        return getattr(transformers, self.name)


def resolve_model_name(name_or_path: str, gguf_file: Optional[str] = None) -> str:
    """Map an embedded tiny-model name, a packaged model's name or a GGUF checkpoint (``gguf_file`` in
    the folder ``name_or_path``, or a path ending in ``.gguf``) to its local folder; return anything else
    unchanged."""
    if name_or_path in TINY_MODELS:
        return str(resolve_tiny_model(name_or_path))
    if name_or_path in PACKAGED_MODELS:
        return resolve_packaged(name_or_path)
    if gguf_file or name_or_path.endswith(".gguf"):
        return resolve_gguf(name_or_path, gguf_file)
    return name_or_path


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@lru_cache(maxsize=None)
def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether the hub answers a TCP connection (False under ``HF_HUB_OFFLINE``); asked once per
    process, so that an offline machine fails at once instead of after the hub client's retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    address = urllib.parse.urlparse(endpoint)
    try:
        socket.create_connection((address.hostname or "", address.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def resolve_checkpoint(name_or_path: str, gguf_file: Optional[str] = None, what: str = "model") -> str:
    """:func:`resolve_model_name`, with a missing package or GGUF file reported as a :class:`ModelLoadError`."""
    try:
        return resolve_model_name(name_or_path, gguf_file)
    except GGUFError as error:
        raise ModelLoadError(f"could not load {what} '{name_or_path}': {error}") from None


def load_pretrained(loader: Any, name_or_path: str, what: str, gguf_file: Optional[str] = None, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` with tiny-name, packaged-model and GGUF resolution; failures name
    ``what`` and what to try instead. A hub id is read from the local cache when the hub cannot be reached."""
    resolved = resolve_checkpoint(name_or_path, gguf_file, what)
    local = Path(resolved).expanduser().exists()
    if local:
        verify_folder(Path(resolved).expanduser(), name_or_path, what)
    if resolved.startswith(("/", "./", "../", "~")) and not local:
        raise ModelLoadError(f"could not load {what} '{name_or_path}': the folder does not exist")
    alternatives = (f"pass a local folder made with save_pretrained, or use an embedded tiny model "
                    f"({', '.join(TINY_MODELS)}) or a packaged one ({', '.join(PACKAGED_MODELS)})")
    online = local or hub_reachable(hub_endpoint())
    try:
        return loader.from_pretrained(resolved, **kwargs, **({} if online else {"local_files_only": True}))
    except OSError as error:
        if not online:
            raise ModelLoadError(f"could not load {what} '{name_or_path}': it is not in the local cache and the hub "
                                 f"({hub_endpoint()}) cannot be reached (offline machine?); {alternatives}") from error
        raise ModelLoadError(f"could not load {what} '{name_or_path}': {error}\nIf this is a hub id, the hub may be "
                             f"unreachable (offline machine?): {alternatives}.") from error


@lru_cache(maxsize=None)
def _verified(folder: Path, mtime_ns: int) -> None:
    verify_files(folder)


def verify_folder(folder: Path, name_or_path: str, what: str) -> None:
    """Check a folder that rl4lms wrote (a final model, with ``manifest.json``) against its content
    hashes before anything loads from it; once per folder and process."""
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        return
    try:
        _verified(folder.resolve(), manifest.stat().st_mtime_ns)
    except DamagedArtifactError as error:
        raise ModelLoadError(f"could not load {what} '{name_or_path}': {error}; it changed after rl4lms wrote it "
                             f"(copy it again, or retrain)") from error


def load_model(model_cls: Type[M], name_or_path: str, **kwargs: Any) -> M:
    """``model_cls.from_pretrained`` with tiny-name resolution and a clear offline error."""
    return load_pretrained(model_cls, name_or_path, "model", **kwargs)


def load_tokenizer(model_name: str, padding_side: str = "left", truncation_side: str = "left",
                   pad_token_as_eos_token: bool = False, gguf_file: Optional[str] = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer as the ``tokenizer`` config section describes (RL4LMs' keys, and ``gguf_file``
    for a GGUF checkpoint)."""
    from transformers import AutoTokenizer

    tokenizer = load_pretrained(AutoTokenizer, model_name, "tokenizer", gguf_file)
    if tokenizer.pad_token is None:
        if not pad_token_as_eos_token:
            raise ModelLoadError(f"tokenizer '{model_name}' has no pad token: set tokenizer.pad_token_as_eos_token: "
                                 "true, or use a tokenizer with a distinct pad token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    tokenizer.truncation_side = truncation_side
    return tokenizer
