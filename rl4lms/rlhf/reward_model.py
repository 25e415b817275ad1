"""Pairwise reward models (TRL's reward-modelling stage): a one-output sequence classifier trained on
(prompt, chosen, rejected) so that r(prompt + chosen) > r(prompt + rejected).

The loss is ``-log sigmoid(r_chosen - r_rejected)``, averaged over pairs; pairwise accuracy is the share
of pairs ranked right. The saved folder plugs into ``reward_fn: {id: learned_reward, args:
{model_name: <folder>, label_ix: 0}}``, which reads the same prompt + text input and returns the raw score.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from rl4lms.algorithms.teacher_forcing import minibatches
from rl4lms.models.classifier import load_classifier_tokenizer
from rl4lms.models.loading import default_device, load_model
from rl4lms.models.lora import add_lora_adapters, save_model
from rl4lms.rlhf.supervised_stage import GradientStepper, read_records, run_epochs


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred and a dispreferred continuation."""

    prompt: str
    chosen: str
    rejected: str


def load_preference_pairs(path: Union[str, Path]) -> List[PreferencePair]:
    """``.jsonl`` records with string fields ``prompt``, ``chosen`` and ``rejected``."""
    return [PreferencePair(r["prompt"], r["chosen"], r["rejected"])
            for r in read_records(path, ["prompt", "chosen", "rejected"], "preference data")]


def pairwise_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss ``mean(-log sigmoid(r_chosen - r_rejected))``."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """Share of pairs whose chosen text scores strictly higher."""
    return float((chosen_rewards > rejected_rewards).float().mean())


class RewardModelTrainer:
    """Trains ``model_name`` with a fresh one-output head (or an existing reward model) on preference pairs."""

    def __init__(self, model_name: str, pairs: Sequence[PreferencePair],
                 eval_pairs: Optional[Sequence[PreferencePair]] = None, max_length: int = 128,
                 learning_rate: float = 1e-4, batch_size: int = 8, num_epochs: int = 1, max_grad_norm: float = 1.0,
                 seed: int = 0, peft_config: Optional[Dict] = None, device: Optional[str] = None) -> None:
        if not pairs:
            raise ValueError("reward_model: no training pairs")
        if batch_size < 1 or max_length < 2:
            raise ValueError(f"reward_model: batch_size must be >= 1 and max_length >= 2, got {batch_size}, {max_length}")
        torch.manual_seed(seed)  # the new head's initialisation
        self.device = device or default_device()
        self.tokenizer = load_classifier_tokenizer(model_name)  # as learned_reward will read the texts
        self.model = load_model(AutoModelForSequenceClassification, model_name, num_labels=1)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if peft_config is not None:
            self.model = add_lora_adapters(self.model, {"modules_to_save": ["score"], **peft_config}, "SEQ_CLS",
                                           key="reward_model.peft_config")
        self.model.to(self.device)
        self.pairs, self.eval_pairs = list(pairs), list(eval_pairs or [])
        self.max_length, self.batch_size, self.num_epochs = max_length, batch_size, num_epochs
        self.stepper = GradientStepper(self.model, learning_rate, max_grad_norm, "rm/loss")
        self.rng = np.random.default_rng(seed)

    def rewards(self, texts: Sequence[str]) -> torch.Tensor:
        """Scalar rewards ``[len(texts)]`` (with gradients when the model is in training mode)."""
        encoded = self.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length).to(self.device)
        return self.model(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask).logits[:, 0].float()

    def _pair_rewards(self, pairs: Sequence[PreferencePair]) -> tuple:
        scores = self.rewards([p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs])
        return scores[:len(pairs)], scores[len(pairs):]

    @torch.no_grad()
    def evaluate(self, pairs: Sequence[PreferencePair]) -> Dict[str, float]:
        """Loss and pairwise accuracy on ``pairs`` (dropout off)."""
        self.model.eval()
        chosen, rejected = self._pair_rewards(pairs)
        return {"loss": float(pairwise_loss(chosen, rejected)), "accuracy": pairwise_accuracy(chosen, rejected)}

    def _epoch(self, _: int) -> Dict[str, float]:
        self.model.train()
        losses, accuracies = [], []
        for batch in minibatches(self.pairs, self.batch_size, self.rng):
            chosen, rejected = self._pair_rewards(batch)
            losses.append(self.stepper.step(pairwise_loss(chosen, rejected)))
            accuracies.append(pairwise_accuracy(chosen.detach(), rejected.detach()))
        stats = {"rm/loss": float(np.mean(losses)), "rm/accuracy": float(np.mean(accuracies))}
        if self.eval_pairs:
            evaluation = self.evaluate(self.eval_pairs)
            stats.update({"rm/eval_loss": evaluation["loss"], "rm/eval_accuracy": evaluation["accuracy"]})
        return stats

    def train(self) -> List[Dict[str, float]]:
        """``num_epochs`` passes over the pairs; per-epoch loss and accuracy (and eval loss/accuracy)."""
        return run_epochs(self.num_epochs, self._epoch)

    def save_pretrained(self, out_dir: Union[str, Path]) -> None:
        save_model(self.model, Path(out_dir))
        self.tokenizer.save_pretrained(Path(out_dir))
