"""Teacher-forced training: the one supervised (SFT) loss and epoch of the project.

Both supervised paths train through :func:`teacher_forced_epoch`: the ``supervised`` algorithm
(:class:`rl4lms.algorithms.supervised.Supervised`, a config's prompt/reference pairs scored by the
policy's ``evaluate_episodes``, causal or seq2seq) and the RLHF pipeline's SFT stage
(:class:`rl4lms.rlhf.sft.SFTTrainer`, causal-LM rows whose ``labels`` are -100 where nothing is
learned, scored by :func:`next_token_log_probs`). The loss (:func:`target_nll`) is the mean negative
log-likelihood of a minibatch's target tokens; each minibatch ends in the caller's gradient step,
which ends in :func:`rl4lms.algorithms.gradient_step.clipped_step`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, List, Sequence, Tuple, TypeVar

import numpy as np
import torch

from rl4lms.algorithms.advantages import masked_mean
from rl4lms.policies.base import masked_log_probs

IGNORE_INDEX = -100
"""The label of a token that is read but not learned (prompt or padding), as in Hugging Face's losses."""

T = TypeVar("T")


def next_token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Causal-LM scoring of ``labels`` ``[B, T]`` under ``logits`` ``[B, T, V]`` (position t predicts
    label t + 1): the log-probs ``[B, T - 1]`` and the mask of the labels that are learned (not
    :data:`IGNORE_INDEX`)."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return masked_log_probs(logits[:, :-1], targets.masked_fill(~mask, 0)), mask


def target_nll(log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The supervised loss: the mean negative log-likelihood of the target tokens (``mask`` 1)."""
    return -masked_mean(log_probs, mask.float())


def minibatches(items: Sequence[T], batch_size: int, rng: np.random.Generator) -> Iterator[List[T]]:
    """``items`` in a fresh random order, ``batch_size`` at a time."""
    order = rng.permutation(len(items))
    for start in range(0, len(items), batch_size):
        yield [items[int(ix)] for ix in order[start:start + batch_size]]


@dataclass
class EpochLosses:
    """What one :func:`teacher_forced_epoch` learned from, per minibatch.

    Args:
        losses: each minibatch's loss (:func:`target_nll`).
        tokens: each minibatch's number of target tokens.
    """

    losses: List[float] = field(default_factory=list)
    tokens: List[int] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        """Target tokens of the epoch."""
        return sum(self.tokens)

    @property
    def mean_loss(self) -> float:
        """The minibatch losses' mean."""
        return float(np.mean(self.losses))

    @property
    def token_mean_loss(self) -> float:
        """The mean negative log-likelihood per target token of the epoch."""
        return sum(loss * n for loss, n in zip(self.losses, self.tokens)) / max(self.n_tokens, 1)


def teacher_forced_epoch(batches: Iterable[T], target_log_probs: Callable[[T], Tuple[torch.Tensor, torch.Tensor]],
                         step: Callable[[torch.Tensor], Any]) -> EpochLosses:
    """One pass over ``batches``: for each, ``target_log_probs(batch)`` gives the log-probs of its
    target tokens and their mask (teacher-forced: the model reads the reference, not its own
    samples), and ``step`` takes one gradient step on their :func:`target_nll` (``step`` checks the
    loss is finite)."""
    epoch = EpochLosses()
    for batch in batches:
        log_probs, mask = target_log_probs(batch)
        loss = target_nll(log_probs, mask)
        step(loss)
        epoch.losses.append(loss.item())
        epoch.tokens.append(int(mask.sum()))
    return epoch
