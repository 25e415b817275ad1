"""Supervised fine-tuning of a causal LM on text or prompt/completion records (TRL's SFT stage).

* **Packing** concatenates the tokenized examples, each ending with EOS, into one stream and cuts it
  into blocks of ``max_seq_length`` tokens, so no compute goes to padding. The last, partial block
  is padded and its padding is left out of the loss. Attention crosses example boundaries inside a
  block, as in TRL's constant-length packing.
* **Completion-only loss** leaves the prompt tokens out of the loss (labels -100), so the model
  learns to write completions, not to repeat prompts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from rl4lms.algorithms.teacher_forcing import IGNORE_INDEX, minibatches, next_token_log_probs, teacher_forced_epoch
from rl4lms.models.loading import default_device, load_model, load_tokenizer
from rl4lms.models.lora import add_lora_adapters, save_model
from rl4lms.rlhf.supervised_stage import GradientStepper, read_records, run_epochs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTExample:
    """A training text: ``prompt`` (maybe empty) followed by ``completion``."""

    prompt: str
    completion: str


def load_sft_examples(path: Union[str, Path]) -> List[SFTExample]:
    """``.jsonl`` records with either ``text`` or ``prompt`` and ``completion``."""
    rows = read_records(path, [], "sft data")
    examples = []
    for ix, row in enumerate(rows, 1):
        if isinstance(row.get("text"), str):
            examples.append(SFTExample("", row["text"]))
        elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            examples.append(SFTExample(row["prompt"], row["completion"]))
        else:
            raise ValueError(f"sft data: {path} row {ix} needs 'text', or 'prompt' and 'completion'; "
                             f"fields: {', '.join(row)}")
    return examples


def tokenize_example(tokenizer: PreTrainedTokenizerBase, example: SFTExample,
                     completion_only: bool) -> Tuple[List[int], List[int]]:
    """(token ids ending with EOS, labels): labels copy the ids, with the prompt set to -100 when
    ``completion_only``."""
    prompt = tokenizer(example.prompt, add_special_tokens=False).input_ids if example.prompt else []
    completion = tokenizer(example.completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    labels = ([IGNORE_INDEX] * len(prompt) if completion_only else list(prompt)) + completion
    return prompt + completion, labels


def has_trained_tokens(labels: Sequence[int]) -> bool:
    """Whether a row's labels leave any token in the loss (the first label never is: it has no
    preceding position to predict it)."""
    return any(label != IGNORE_INDEX for label in labels[1:])


Batch = Dict[str, torch.Tensor]


def pack_examples(examples: Sequence[Tuple[List[int], List[int]]], max_seq_length: int, pad_token_id: int) -> Batch:
    """All examples in one stream, cut into ``[N, max_seq_length]`` blocks (see the module docstring)."""
    ids = [token for tokens, _ in examples for token in tokens]
    labels = [label for _, example_labels in examples for label in example_labels]
    n_blocks = max(1, -(-len(ids) // max_seq_length))
    pad = n_blocks * max_seq_length - len(ids)
    attention = [1] * len(ids) + [0] * pad
    ids += [pad_token_id] * pad
    labels += [IGNORE_INDEX] * pad
    shape = (n_blocks, max_seq_length)
    return {"input_ids": torch.tensor(ids).view(shape), "attention_mask": torch.tensor(attention).view(shape),
            "labels": torch.tensor(labels).view(shape)}


def pad_examples(examples: Sequence[Tuple[List[int], List[int]]], max_seq_length: int, pad_token_id: int) -> Batch:
    """One row per example, cut to ``max_seq_length`` and right-padded (no packing)."""
    width = min(max_seq_length, max(len(tokens) for tokens, _ in examples))
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for tokens, labels in examples:
        tokens, labels = tokens[:width], labels[:width]
        pad = width - len(tokens)
        rows["input_ids"].append(tokens + [pad_token_id] * pad)
        rows["attention_mask"].append([1] * len(tokens) + [0] * pad)
        rows["labels"].append(labels + [IGNORE_INDEX] * pad)
    return {key: torch.tensor(value) for key, value in rows.items()}


class SFTTrainer:
    """Fine-tunes ``model_name`` (a causal LM) on ``examples``; ``save_pretrained`` writes a model folder
    that RL configs can start from (``tokenizer.model_name`` / ``alg.policy.args.model_name``).

    The loss and the epoch are :mod:`rl4lms.algorithms.teacher_forcing`'s (those of the ``supervised``
    algorithm), on the rows' ``labels``; the step is :class:`rl4lms.rlhf.supervised_stage.GradientStepper`'s.

    Args (the pipeline's ``sft`` section, less ``data``):
        model_name: hub id, folder or tiny-model name of a causal LM.
        examples: the training texts (:func:`load_sft_examples`).
        max_seq_length: tokens per packed block, or the cut of an unpacked example.
        packing: concatenate the examples into blocks (see the module docstring); False: one padded row each.
        completion_only_loss: leave the prompt tokens out of the loss.
        learning_rate: AdamW's learning rate (constant).
        batch_size: rows (blocks or examples) per minibatch and optimizer step.
        num_epochs: passes over the rows (:meth:`train`).
        max_grad_norm: gradient clipping.
        seed: seed of the minibatch order (and of torch, for dropout and LoRA's initialisation).
        peft_config: LoRA adapters' arguments (:func:`rl4lms.models.lora.add_lora_adapters`); None: full fine-tuning.
        pad_token_as_eos_token: use EOS as the pad token (for tokenizers without one).
        device: where the model trains (default: the GPU when there is one).
    """

    def __init__(self, model_name: str, examples: Sequence[SFTExample], max_seq_length: int = 128,
                 packing: bool = True, completion_only_loss: bool = False, learning_rate: float = 5e-5,
                 batch_size: int = 8, num_epochs: int = 1, max_grad_norm: float = 1.0, seed: int = 0,
                 peft_config: Optional[Dict] = None, pad_token_as_eos_token: bool = False,
                 device: Optional[str] = None) -> None:
        if not examples:
            raise ValueError("sft: no training examples")
        if max_seq_length < 2 or batch_size < 1:
            raise ValueError(f"sft: max_seq_length must be >= 2 and batch_size >= 1, got {max_seq_length}, {batch_size}")
        torch.manual_seed(seed)
        self.device = device or default_device()
        self.tokenizer = load_tokenizer(model_name, padding_side="right", pad_token_as_eos_token=pad_token_as_eos_token)
        self.model = load_model(AutoModelForCausalLM, model_name)
        if self.model.config.is_encoder_decoder:
            raise ValueError(f"sft: '{model_name}' is an encoder-decoder model; SFT here trains causal LMs "
                             "(use alg 'supervised' for seq2seq models)")
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions and max_seq_length > positions:
            raise ValueError(f"sft: max_seq_length={max_seq_length} exceeds the {positions} positions of '{model_name}'")
        if peft_config is not None:
            self.model = add_lora_adapters(self.model, peft_config, key="sft.peft_config")
        self.model.to(self.device).train()
        tokenized = [tokenize_example(self.tokenizer, e, completion_only_loss) for e in examples]
        self.pad_token_id = self.tokenizer.pad_token_id
        self.max_seq_length = max_seq_length
        if packing:
            packed = pack_examples(tokenized, max_seq_length, self.pad_token_id)
            rows: List = [{k: v[i] for k, v in packed.items()} for i in range(len(packed["input_ids"]))]
            learnable = [has_trained_tokens(row["labels"].tolist()) for row in rows]
        else:
            rows = tokenized
            learnable = [has_trained_tokens(labels[:max_seq_length]) for _, labels in tokenized]
        self.rows = [row for row, keep in zip(rows, learnable) if keep]
        kind = "block" if packing else "example"
        if not self.rows:
            raise ValueError(f"sft: no {kind} has a token to learn within max_seq_length={max_seq_length} "
                             "(with completion_only_loss the prompts fill it)")
        if len(self.rows) < len(rows):
            logger.warning("sft: %d of %d %ss have no token to learn within max_seq_length=%d and are skipped",
                           len(rows) - len(self.rows), len(rows), kind, max_seq_length)
        self.batch_size, self.num_epochs, self.packing = batch_size, num_epochs, packing
        self.stepper = GradientStepper(self.model, learning_rate, max_grad_norm, "sft/loss")
        self.rng = np.random.default_rng(seed)

    def _collate(self, rows: List) -> Batch:
        if self.packing:
            batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        else:
            batch = pad_examples(rows, self.max_seq_length, self.pad_token_id)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _target_log_probs(self, rows: List) -> Tuple[torch.Tensor, torch.Tensor]:
        batch = self._collate(rows)
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return next_token_log_probs(logits, batch["labels"])

    def _epoch(self, _: int) -> Dict[str, float]:
        epoch = teacher_forced_epoch(minibatches(self.rows, self.batch_size, self.rng), self._target_log_probs,
                                     self.stepper.step)
        return {"sft/loss": epoch.mean_loss, "sft/trained_tokens": float(epoch.n_tokens)}

    def train(self) -> List[Dict[str, float]]:
        """``num_epochs`` passes over the (packed) rows; per-epoch mean loss and trained tokens."""
        return run_epochs(self.num_epochs, self._epoch)

    def save_pretrained(self, out_dir: Union[str, Path]) -> None:
        save_model(self.model, Path(out_dir))
        self.tokenizer.save_pretrained(Path(out_dir))
