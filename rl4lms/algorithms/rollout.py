"""Batched rollout collection: one ``generate`` and one batched forward per batch of prompts."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from rl4lms.algorithms.advantages import kl_penalized_rewards, token_kl
from rl4lms.algorithms.buffer import RolloutBatch
from rl4lms.data_pools.text_gen_pool import Sample
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.errors import RewardOutputError
from rl4lms.policies.base import LMActorCriticPolicy, PolicyOutput, SampledActions, module_device, response_tokens
from rl4lms.rewards.base import BatchedRewardFunction, reward_values


def pad_token_lists(token_lists: Sequence[Sequence[int]], pad_token_id: int, device: torch.device,
                    left: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token lists as one padded ``[B, L]`` tensor and its mask (left padding for prompts)."""
    width = max(1, max((len(tokens) for tokens in token_lists), default=0))
    ids = torch.full((len(token_lists), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        if len(tokens):
            span = slice(width - len(tokens), width) if left else slice(0, len(tokens))
            ids[row, span] = torch.as_tensor(list(tokens), dtype=torch.long)
            mask[row, span] = 1
    return ids.to(device), mask.to(device)


def encode_prompts(env: TextGenEnv, samples: Sequence[Sample], device: torch.device,
                   truncation_side: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Left-padded prompt ids and mask for ``samples``, plus how many prompts were truncated (on
    ``truncation_side``, by default the env's ``prompt_truncation_side``)."""
    tokenized = [env.tokenize_prompt(s.prompt_or_input_text, truncation_side) for s in samples]
    ids, mask = pad_token_lists([ids for ids, _ in tokenized], env.tokenizer.pad_token_id, device, left=True)
    return ids, mask, sum(cut for _, cut in tokenized)


def scored_batch(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                 response_mask: torch.Tensor, out: PolicyOutput, ref_log_probs: torch.Tensor,
                 task_rewards: torch.Tensor, kl_coeff: float, action_masks: Optional[torch.Tensor] = None,
                 loss_mask: Optional[torch.Tensor] = None, kl: Optional[torch.Tensor] = None,
                 engine_log_probs: Optional[torch.Tensor] = None,
                 importance_sampling_cap: Optional[float] = None) -> RolloutBatch:
    """Episodes with their rollout-time log-probs and values and per-token rewards including the KL
    penalty. The KL compares the unmasked policy with the reference (the log-ratio, unless another
    per-token penalty ``kl`` of :func:`token_kl` is given); the PPO ratio uses the (possibly masked)
    distribution the tokens were sampled from. ``engine_log_probs``: the sampling engine's own
    log-probs, when it is not the trainer's model; with ``importance_sampling_cap`` they give the
    batch's truncated importance weights (:func:`truncated_importance_weights`)."""
    mask = (loss_mask if loss_mask is not None else response_mask).float()
    if kl is None:
        kl = token_kl(out.unmasked_log_probs, ref_log_probs)
    rewards, kl = kl_penalized_rewards(task_rewards, kl, mask, kl_coeff)
    weights = None
    if engine_log_probs is not None and importance_sampling_cap is not None:
        weights = truncated_importance_weights(out.log_probs, engine_log_probs, mask, importance_sampling_cap)
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                        response_mask=response_mask, log_probs=out.log_probs * mask, ref_log_probs=ref_log_probs * mask,
                        values=out.values * mask, rewards=rewards, kl=kl, scores=task_rewards.sum(1),
                        action_masks=action_masks, loss_mask=loss_mask,
                        engine_log_probs=None if engine_log_probs is None else engine_log_probs * mask,
                        importance_weights=weights)


def batch_without_log_probs(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampled: SampledActions,
                            task_rewards: torch.Tensor) -> RolloutBatch:
    """Episodes of a policy that is its own reference (no KL term), whose log-probs the update will
    compute in its own forward (:attr:`RolloutCollector.defer_log_probs`): ``log_probs``,
    ``ref_log_probs`` and ``importance_weights`` stay None until :func:`with_trainer_log_probs`."""
    mask = sampled.response_mask.float()
    zeros = torch.zeros_like(mask)
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=sampled.response_ids,
                        response_mask=sampled.response_mask, log_probs=None, ref_log_probs=None, values=zeros,
                        rewards=task_rewards * mask, kl=zeros, scores=task_rewards.sum(1),
                        action_masks=sampled.action_masks, engine_log_probs=sampled.engine_log_probs)


def with_trainer_log_probs(batch: RolloutBatch, out: PolicyOutput,
                           importance_sampling_cap: Optional[float]) -> RolloutBatch:
    """A batch of :func:`batch_without_log_probs` completed with the trainer's log-probs from ``out``
    (a forward over its episodes, computed without gradient or detached): the old log-probs, the
    reference's (the policy is its own), and the truncated importance weights, which also scale
    the advantages when the batch already has them."""
    mask = batch.token_mask()
    log_probs = out.log_probs.detach()
    weights = None
    if batch.engine_log_probs is not None and importance_sampling_cap is not None:
        weights = truncated_importance_weights(log_probs, batch.engine_log_probs, mask, importance_sampling_cap)
    advantages = batch.advantages
    if advantages is not None and weights is not None:
        advantages = advantages * weights
    return replace(batch, log_probs=log_probs * mask, ref_log_probs=out.unmasked_log_probs.detach() * mask,
                   importance_weights=weights, advantages=advantages)


def truncated_importance_weights(log_probs: torch.Tensor, engine_log_probs: torch.Tensor, mask: torch.Tensor,
                                 cap: float) -> torch.Tensor:
    """``min(pi_trainer / pi_engine, cap)`` per token ``[B, T]`` (1 outside ``mask``): the correction for
    tokens sampled by an engine whose probabilities differ slightly from the trainer's (truncated
    importance sampling, as verl's ``tis_imp_ratio_cap`` and TRL's ``vllm_importance_sampling_cap``)."""
    ratio = torch.exp(log_probs - engine_log_probs).clamp(max=cap)
    return torch.where(mask > 0, ratio, torch.ones_like(ratio))


def engine_log_diffs(batch: RolloutBatch) -> Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """The trainer-minus-engine log-prob of each action token of ``batch`` and its importance weight
    (None without a correction); None when the trainer's model sampled the batch or its log-probs
    are not computed yet."""
    if batch.engine_log_probs is None or batch.log_probs is None:
        return None
    tokens = batch.token_mask() > 0
    weights = None if batch.importance_weights is None else batch.importance_weights[tokens].float().cpu()
    return (batch.log_probs - batch.engine_log_probs)[tokens].float().cpu(), weights


def engine_mismatch_stats(log_diffs: torch.Tensor, weights: Optional[torch.Tensor], cap: Optional[float]) -> Dict[str, float]:
    """How far the sampling engine's log-probs are from the trainer's, over the tokens of a rollout:
    ``log_diffs`` are ``log pi_trainer - log pi_engine`` of each sampled token, ``weights`` their
    truncated importance weights (None without a correction). ``engine_kl`` is the ``k3`` estimate
    of KL(engine || trainer) (the tokens were sampled from the engine)."""
    if not len(log_diffs):
        return {}
    stats = {"rollout_info/engine_logprob_abs_diff_mean": float(log_diffs.abs().mean()),
             "rollout_info/engine_logprob_abs_diff_max": float(log_diffs.abs().max()),
             "rollout_info/engine_kl": float((torch.expm1(log_diffs) - log_diffs).mean())}
    if weights is not None and cap is not None:
        stats["rollout_info/engine_is_weight_mean"] = float(weights.mean())
        stats["rollout_info/engine_is_capped_frac"] = float((weights >= cap).float().mean())
    return stats


@dataclass
class RolloutStats:
    """Per-episode numbers of one rollout, aggregated into ``rollout_info/*`` records."""

    kl_coeff: float
    scores: List[float] = field(default_factory=list)
    kl: List[float] = field(default_factory=list)
    lengths: List[int] = field(default_factory=list)
    prompts_truncated: int = 0
    importance_sampling_cap: Optional[float] = None
    engine_log_diffs: List[torch.Tensor] = field(default_factory=list)
    """Per token of a batch sampled by a separate engine: trainer minus engine log-prob."""
    importance_weights: List[torch.Tensor] = field(default_factory=list)

    def add(self, batch: RolloutBatch, truncated: int) -> None:
        self.scores += batch.scores.tolist()
        self.kl += batch.kl.sum(1).tolist()
        self.lengths += batch.token_mask().sum(1).tolist()
        self.prompts_truncated += truncated
        diffs = engine_log_diffs(batch)
        if diffs is not None:
            self.engine_log_diffs.append(diffs[0])
            if diffs[1] is not None:
                self.importance_weights.append(diffs[1])

    def summary(self) -> Dict[str, float]:
        kl_reward = -self.kl_coeff * float(np.mean(self.kl))
        return {
            "rollout_info/ep_rew": float(np.mean(self.scores)),
            "rollout_info/ep_kl_rew": kl_reward,
            "rollout_info/ep_total_rew": float(np.mean(self.scores)) + kl_reward,
            "rollout_info/ep_lens": float(np.mean(self.lengths)),
            "rollout_info/kl_div_mean": float(np.mean(self.kl)),
            "rollout_info/n_episodes": float(len(self.scores)),
            "rollout_info/prompts_truncated": float(self.prompts_truncated),
            "rollout_info/kl_coeff": self.kl_coeff,
            **(engine_mismatch_stats(torch.cat(self.engine_log_diffs),
                                     torch.cat(self.importance_weights) if self.importance_weights else None,
                                     self.importance_sampling_cap) if self.engine_log_diffs else {}),
        }


class RolloutCollector:
    """Turns prompts drawn from the env's samples into scored, KL-penalised episodes."""

    def __init__(self, policy: LMActorCriticPolicy, env: TextGenEnv, seed: Optional[int] = None) -> None:
        self.policy = policy
        self.env = env
        self.defer_log_probs = False
        """Set by an algorithm whose update computes the old log-probs itself when the rollout has
        none (critic-free algorithms): a policy without reference whose sampling engine returned no
        logits (vLLM) then skips the rollout's forward (:func:`batch_without_log_probs`)."""
        self.skip_step_outputs = False
        """With :attr:`defer_log_probs`, leave the log-probs to the update even when the engine could
        return its logits with the tokens (set for an update known to be one optimizer step, whose
        forward gives them anyway): the logits are then neither kept nor turned into log-probs."""
        # The prompt sampler has its own generator (saved with checkpoints): SB3 reseeds the env
        # on reset, which must not replay the same prompts after a resume.
        self.rng = np.random.default_rng(seed)

    def draw_samples(self, n: int) -> List[Sample]:
        """``n`` prompts drawn uniformly from the env's samples."""
        picks = self.rng.integers(len(self.env.samples), size=n)
        return [self.env.samples[int(i)] for i in picks]

    @torch.no_grad()
    def collect(self, samples: Sequence[Sample], kl_coeff: float) -> Tuple[RolloutBatch, int]:
        """Generate for ``samples`` and return the scored batch and the number of truncated prompts."""
        policy, env = self.policy, self.env
        device = module_device(policy)
        prompt_ids, prompt_mask, truncated = encode_prompts(env, samples, device)
        config = policy.generation_config(max_new_tokens=env.max_episode_length)
        deferring = self.defer_log_probs and not policy.has_reference
        sampled = policy.sample_actions(prompt_ids, prompt_mask, config,
                                        step_outputs=not (deferring and self.skip_step_outputs))
        response_ids, response_mask = sampled.response_ids, sampled.response_mask
        if deferring and policy.rollout_needs_forward(sampled):
            task_rewards = self.task_rewards(samples, response_ids, response_mask).to(device)
            return batch_without_log_probs(prompt_ids, prompt_mask, sampled, task_rewards), truncated
        out = policy.rollout_outputs(prompt_ids, prompt_mask, sampled)
        # A policy built without a reference (no KL term needs one) is its own: the KL is zero.
        ref_log_probs = policy.reference_log_probs(prompt_ids, prompt_mask, response_ids, response_mask) \
            if policy.has_reference else out.unmasked_log_probs
        task_rewards = self.task_rewards(samples, response_ids, response_mask).to(device)
        return scored_batch(prompt_ids, prompt_mask, response_ids, response_mask, out, ref_log_probs, task_rewards,
                            kl_coeff, sampled.action_masks, engine_log_probs=sampled.engine_log_probs,
                            importance_sampling_cap=policy.engine.importance_sampling_cap), truncated

    def task_rewards(self, samples: Sequence[Sample], response_ids: torch.Tensor,
                     response_mask: torch.Tensor) -> torch.Tensor:
        """Per-token task rewards ``[B, T]``: batched functions score the last token of each episode,
        per-step functions are replayed through the env (no model calls)."""
        tokens = response_tokens(response_ids, response_mask)
        rewards = torch.zeros(response_ids.shape, dtype=torch.float32)
        reward_fn = self.env.reward_function
        if isinstance(reward_fn, BatchedRewardFunction):
            texts = self.env.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            scores = reward_values(reward_fn, reward_fn([s.prompt_or_input_text for s in samples], texts,
                                                        [list(s.references) for s in samples], [True] * len(samples),
                                                        [dict(s.meta_data) for s in samples]), len(samples))
            for row, (episode, score) in enumerate(zip(tokens, scores)):
                rewards[row, max(len(episode) - 1, 0)] = score
        else:
            for row, (sample, actions) in enumerate(zip(samples, tokens)):
                self.env.reset(options={"sample": sample})
                for t, action in enumerate(actions):
                    _, reward, done, _, _ = self.env.step(action)
                    rewards[row, t] = reward
                    if done:
                        break
        bad = (~torch.isfinite(rewards)).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise RewardOutputError(f"reward function {type(reward_fn).__name__} returned a non-finite reward for "
                             f"sample ids {[samples[i].id for i in bad]}")
        return rewards
