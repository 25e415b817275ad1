"""Tiny random-init GPT-2 and T5 models with a tokenizer trained here, for offline use.

``model_name: rl4lms/tiny-gpt2`` (or ``rl4lms/tiny-t5``) in a config resolves to a
folder under ``$RL4LMS_CACHE`` (default ``~/.cache/rl4lms``) that is built once,
deterministically, and then loaded with the ordinary ``from_pretrained``.
``scripts/make_tiny_models.py`` writes the same folders to any path.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:  # transformers' model code is imported when a model is built: it takes seconds to import
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
VOCAB_SIZE = 512
_WORDS = ("the a one two three four five six seven eight nine ten date on in at is was were and or then "
          "meeting born deadline store opened posted flight leaves happened count numbers up next after before "
          "she he we it they year month day today tomorrow list of good bad movie film great story").split()


def _corpus(seed: int = 0, n_lines: int = 4000) -> Iterator[str]:
    rng = np.random.default_rng(seed)
    for _ in range(n_lines):
        kind = rng.integers(3)
        if kind == 0:
            start = int(rng.integers(0, 200))
            yield " ".join(str(start + int(x)) for x in np.cumsum(rng.integers(0, 12, size=10)))
        elif kind == 1:
            year, month, day = int(rng.integers(1950, 2040)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
            yield f"{' '.join(rng.choice(_WORDS, size=3))} {year}-{month:02d}-{day:02d}."
        else:
            yield " ".join(rng.choice(_WORDS, size=int(rng.integers(4, 12))))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of ``VOCAB_SIZE`` tokens with distinct pad/eos/unk tokens; like GPT-2's
    it returns no ``token_type_ids`` (older transformers would otherwise add them, and GPT-2 embeds them)."""
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[PAD, EOS, UNK],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   bos_token=EOS, padding_side="left", truncation_side="left",
                                   model_max_length=256, model_input_names=["input_ids", "attention_mask"])


def _seeded(build: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def build_tiny_gpt2(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    return _seeded(lambda: GPT2LMHeadModel(config))


def build_tiny_t5(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    return _seeded(lambda: T5ForConditionalGeneration(config))


def build_tiny_classifier(tokenizer: PreTrainedTokenizerFast, num_labels: int) -> PreTrainedModel:
    """A tiny GPT-2 sequence classifier (random init): stands in for reward/intent classifiers offline."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=1, n_head=2,
                        num_labels=num_labels, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return _seeded(lambda: GPT2ForSequenceClassification(config))


TINY_MODELS: Dict[str, Callable[[PreTrainedTokenizerFast], PreTrainedModel]] = {
    "rl4lms/tiny-gpt2": build_tiny_gpt2,
    "rl4lms/tiny-t5": build_tiny_t5,
    "rl4lms/tiny-sentiment-classifier": lambda tokenizer: build_tiny_classifier(tokenizer, num_labels=2),
    "rl4lms/tiny-intent-classifier": lambda tokenizer: build_tiny_classifier(tokenizer, num_labels=4),
}


def write_tiny_model(name: str, out_dir: Path) -> Path:
    """Build the tiny model ``name`` with its tokenizer and ``save_pretrained`` both into ``out_dir``."""
    tokenizer = build_tokenizer()
    model = TINY_MODELS[name](tokenizer)
    if model.can_generate():
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def cache_dir() -> Path:
    return Path(os.environ.get("RL4LMS_CACHE", Path.home() / ".cache" / "rl4lms"))


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, written by ``build(folder)`` into a staging folder and renamed into place unless a
    complete one (with ``config.json``) is there. Processes started together (e.g. the ranks of a
    distributed run) take turns: the first builds, the others find it built."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists():
            return target
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
        try:
            build(staging)
            shutil.rmtree(target, ignore_errors=True)  # a leftover without config.json is incomplete
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_tiny_model(name: str) -> Path:
    """Folder of the tiny model ``name``, building it into the cache on first use (atomically)."""
    return build_once(cache_dir() / name.replace("/", "--"), lambda folder: write_tiny_model(name, folder))
