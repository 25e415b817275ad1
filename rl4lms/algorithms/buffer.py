"""Episode-level rollout storage: padded token tensors instead of per-token transitions (with a
per-transition view for stable-baselines3-style code)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Iterator, List, Optional

import numpy as np
import torch
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples

from rl4lms.algorithms.advantages import compute_gae, normalize_rewards, whiten
from rl4lms.envs.observation import ObservationLayout


@dataclass
class RolloutBatch:
    """A batch of finished episodes. Prompts are left-padded ``[B, P]``, responses right-padded ``[B, T]``.

    ``rewards`` are per-token totals (task reward + KL penalty); ``scores`` are each
    episode's summed task reward ``[B]``. ``advantages``/``returns`` are filled by
    :meth:`TextRolloutBuffer.finalize`.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    log_probs: Optional[torch.Tensor]
    """The trainer's log-probs of the sampled tokens when the rollout was collected (the ratio's old
    log-probs). None (with ``ref_log_probs``) while a critic-free update has still to compute them
    (:attr:`rl4lms.algorithms.rollout.RolloutCollector.defer_log_probs`)."""
    ref_log_probs: Optional[torch.Tensor]
    values: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor
    scores: torch.Tensor
    action_masks: Optional[torch.Tensor] = None
    """NLPO: the allowed tokens ``[B, T, V]`` each response token was sampled from."""
    loss_mask: Optional[torch.Tensor] = None
    """Response tokens that are the policy's actions ``[B, T]``, when some are not (e.g. tool output
    inside a tool-using episode): the model reads every token of ``response_mask``, but losses,
    KL and advantages count only these. ``None``: every response token is an action."""
    engine_log_probs: Optional[torch.Tensor] = None
    """Log-probs ``[B, T]`` of the sampled tokens under the engine that sampled them, when that engine
    is not the trainer's own model (vLLM); ``log_probs`` are always the trainer's."""
    importance_weights: Optional[torch.Tensor] = None
    """Truncated importance weights ``min(pi_trainer / pi_engine, cap)`` ``[B, T]`` of tokens sampled by
    another engine (1 on padding); :meth:`TextRolloutBuffer.finalize` scales the advantages by them."""
    advantages: Optional[torch.Tensor] = None
    returns: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    def token_mask(self) -> torch.Tensor:
        """Float mask of the action tokens: the loss mask if any, else the response mask."""
        return (self.loss_mask if self.loss_mask is not None else self.response_mask).float()

    def select(self, index: torch.Tensor) -> "RolloutBatch":
        """The episodes at ``index``, trimmed to the longest prompt and response among them."""
        picked = {f.name: getattr(self, f.name)[index] for f in fields(self) if getattr(self, f.name) is not None}
        prompt_keep = picked["prompt_mask"].sum(0) > 0
        response_len = int(picked["response_mask"].sum(1).max().item())
        for name, tensor in picked.items():
            if name.startswith("prompt"):
                picked[name] = tensor[:, prompt_keep]
            elif tensor.dim() >= 2:
                picked[name] = tensor[:, :max(response_len, 1)]
        return replace(self, **picked)


def _pad_to(tensor: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
    """Pad dimension 1 of ``tensor`` to ``width`` with ``value``."""
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = torch.full((tensor.shape[0], missing, *tensor.shape[2:]), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)


PAD_VALUES = {"action_masks": True, "importance_weights": 1.0}
"""Values of the padded positions of joined batches (other fields: 0, token ids: the pad id)."""


def with_advantages(data: RolloutBatch, advantages: torch.Tensor, returns: Optional[torch.Tensor] = None) -> RolloutBatch:
    """``data`` with its advantages (scaled token by token by its ``importance_weights``, when another
    engine sampled it: truncated importance sampling, as verl's and TRL's) and returns."""
    if data.importance_weights is not None:
        advantages = advantages * data.importance_weights
    return replace(data, advantages=advantages, returns=returns)


def concat_batches(batches: List[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Join batches, left-padding prompts and right-padding responses to common widths."""
    prompt_width = max(b.prompt_ids.shape[1] for b in batches)
    response_width = max(b.response_ids.shape[1] for b in batches)
    joined = {}
    for f in fields(RolloutBatch):
        parts = [getattr(b, f.name) for b in batches]
        if parts[0] is None:
            joined[f.name] = None
            continue
        if parts[0].dim() == 1:
            joined[f.name] = torch.cat(parts)
            continue
        is_prompt = f.name.startswith("prompt")
        # Padded positions are outside the response mask; masks there allow every token.
        value = pad_token_id if f.name.endswith("_ids") else PAD_VALUES.get(f.name, 0)
        width = prompt_width if is_prompt else response_width
        joined[f.name] = torch.cat([_pad_to(p, width, value, left=is_prompt) for p in parts])
    return RolloutBatch(**joined)


class TextRolloutBuffer:
    """Collects :class:`RolloutBatch` chunks of one rollout, then serves shuffled minibatches."""

    def __init__(self, pad_token_id: int, gamma: float, gae_lambda: float, normalize_advantage: bool = True,
                 norm_reward: bool = False, observation_layout: Optional[ObservationLayout] = None,
                 whiten_rewards: bool = False) -> None:
        if norm_reward and whiten_rewards:
            raise ValueError("norm_reward and whiten_rewards both rescale the rewards: choose one")
        self.pad_token_id = pad_token_id
        self.observation_layout = observation_layout
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.normalize_advantage = normalize_advantage
        self.norm_reward = norm_reward
        self.whiten_rewards = whiten_rewards
        self.permutation: Callable[[int], torch.Tensor] = torch.randperm
        """The episode order of :meth:`minibatches` for ``n`` episodes (torch's generator by default)."""
        self._chunks: List[RolloutBatch] = []
        self.n_tokens = 0
        self.data: Optional[RolloutBatch] = None

    def reset(self) -> None:
        self._chunks = []
        self.n_tokens = 0
        self.data = None

    @property
    def chunks(self) -> List[RolloutBatch]:
        """The batches added since the last :meth:`reset`."""
        return list(self._chunks)

    def add(self, batch: RolloutBatch) -> None:
        self._chunks.append(batch)
        self.n_tokens += int(batch.response_mask.sum().item())

    def finalize(self) -> RolloutBatch:
        """Join the chunks (standardizing the per-token rewards with ``norm_reward``, RL4LMs, or
        scaling them to unit variance with ``whiten_rewards``, TRL) and compute (optionally whitened)
        GAE advantages and returns."""
        data = self._joined()
        mask = data.token_mask()
        if self.norm_reward:
            data = replace(data, rewards=normalize_rewards(data.rewards, mask))
        elif self.whiten_rewards:
            data = replace(data, rewards=whiten(data.rewards, mask, shift_mean=False))
        advantages, returns = compute_gae(data.rewards, data.values, mask, self.gamma, self.gae_lambda)
        if self.normalize_advantage and mask.sum() > 1:
            advantages = whiten(advantages, mask)
        self.data = with_advantages(data, advantages, returns)
        return self.data

    def _joined(self) -> RolloutBatch:
        """The added chunks as one batch."""
        if not self._chunks:
            raise RuntimeError("finalize() called on an empty rollout buffer")
        return concat_batches(self._chunks, self.pad_token_id)

    def episode_order(self, n_episodes: int) -> torch.Tensor:
        """The order in which :meth:`minibatches` serves the episodes: a random :attr:`permutation`."""
        return self.permutation(n_episodes)

    def minibatch_indices(self, batch_size: int) -> List[torch.Tensor]:
        """The rows of each minibatch: :meth:`episode_order`, ``batch_size`` at a time (the last may
        be smaller)."""
        data = self._finalized()
        order = self.episode_order(len(data)).to(data.prompt_ids.device)
        return list(order.split(batch_size))

    def minibatches(self, batch_size: int) -> Iterator[RolloutBatch]:
        """The episodes of each of :meth:`minibatch_indices`."""
        data = self._finalized()
        for index in self.minibatch_indices(batch_size):
            yield data.select(index)

    # --- stable-baselines3's per-transition view (RL4LMs-style algorithms) ------------------------
    def get(self, batch_size: Optional[int] = None) -> Iterator[DictRolloutBufferSamples]:
        """SB3's ``DictRolloutBuffer.get``: the rollout as one transition per generated token, in
        random order, ``batch_size`` at a time (all at once without it), with RL4LMs' fields
        ``observations`` (the env's observation before the token), ``actions``, ``old_values``,
        ``old_log_prob``, ``advantages`` and ``returns``. Each call builds the observations anew."""
        data = self._with_log_probs()
        if self.observation_layout is None:
            raise RuntimeError("this rollout buffer has no observation layout; it cannot serve transitions")
        obs, actions, rows, cols = self.observation_layout.transitions(data.prompt_ids, data.prompt_mask,
                                                                       data.response_ids, data.token_mask().long())
        assert data.advantages is not None and data.returns is not None
        per_token = (data.values[rows, cols], data.log_probs[rows, cols], data.advantages[rows, cols],
                     data.returns[rows, cols])
        order = torch.randperm(len(actions)).to(actions.device)
        step = batch_size or len(actions)
        for start in range(0, len(order), step):
            index = order[start:start + step]
            yield DictRolloutBufferSamples({key: value[index] for key, value in obs.items()}, actions[index],
                                           *(values[index] for values in per_token))

    def _finalized(self) -> RolloutBatch:
        if self.data is None:
            raise RuntimeError("the rollout buffer holds no finished rollout")
        return self.data

    def _with_log_probs(self) -> RolloutBatch:
        """The finished rollout, whose old log-probs must be known (not left to the update)."""
        data = self._finalized()
        if data.log_probs is None:
            raise RuntimeError("this rollout's old log-probs are computed by the update's forward "
                               "(RolloutCollector.defer_log_probs); read them after train()")
        return data

    def _token_values(self, name: str) -> np.ndarray:
        data = self._with_log_probs()
        return getattr(data, name)[data.token_mask() > 0].detach().cpu().numpy()

    # Flat arrays of every generated token's rollout value, return, advantage and log-prob, as
    # SB3 code reads them (``explained_variance(rollout_buffer.values, rollout_buffer.returns)``).
    values = property(lambda self: self._token_values("values"))
    returns = property(lambda self: self._token_values("returns"))
    advantages = property(lambda self: self._token_values("advantages"))
    log_probs = property(lambda self: self._token_values("log_probs"))

    @property
    def full(self) -> bool:
        return self.data is not None


class GroupRolloutBuffer(TextRolloutBuffer):
    """The rollout of a group-sampled algorithm: each prompt's ``group_size`` completions are
    consecutive rows, whole groups are added and served together, and the advantages come from the
    algorithm's estimator (no values, no GAE)."""

    def __init__(self, pad_token_id: int, group_size: int, estimate_advantages: Callable[[RolloutBatch], torch.Tensor],
                 observation_layout: Optional[ObservationLayout] = None) -> None:
        super().__init__(pad_token_id, gamma=1.0, gae_lambda=1.0, normalize_advantage=False,
                         observation_layout=observation_layout)
        self.group_size = group_size
        self.estimate_advantages = estimate_advantages
        """``RolloutBatch -> [B, T]`` per-token advantages of the joined rollout."""

    @property
    def n_groups(self) -> int:
        """Groups added since the last :meth:`reset` (:meth:`add` takes whole groups only)."""
        return sum(len(chunk) for chunk in self._chunks) // self.group_size

    def add(self, batch: RolloutBatch) -> None:
        if len(batch) % self.group_size:
            raise ValueError(f"a batch of {len(batch)} episodes is not whole groups of {self.group_size}")
        super().add(batch)

    def finalize(self, n_groups: Optional[int] = None) -> RolloutBatch:
        """Join the chunks, keep the first ``n_groups`` groups (all by default) and attach the
        estimator's advantages."""
        data = self._joined()
        if n_groups is not None and n_groups < self.n_groups:
            data = data.select(torch.arange(n_groups * self.group_size, device=data.prompt_ids.device))
        self.data = with_advantages(data, self.estimate_advantages(data))
        return self.data

    def episode_order(self, n_episodes: int) -> torch.Tensor:
        """Whole groups in random order (:attr:`permutation` of the groups), so a minibatch of a
        multiple of the group size holds whole groups (the last minibatch may be smaller)."""
        groups = self.permutation(n_episodes // self.group_size)
        return (groups[:, None] * self.group_size + torch.arange(self.group_size)).reshape(-1)
