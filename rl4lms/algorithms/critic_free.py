"""Base class of the critic-free, group-sampled algorithms (GRPO, RLOO, REINFORCE++).

These algorithms train the policy alone: no value head or critic, and a reference model only when a
KL term needs one. Each prompt is answered ``num_generations`` times, and the completions of one
prompt (a *group*) are compared with each other instead of with a learned value.

How the config maps onto a rollout:

* ``env.n_envs`` prompts are drawn per generation batch; each is repeated ``num_generations``
  times, so one ``generate`` call samples ``n_envs * num_generations`` completions. A group's
  completions are consecutive rows of the rollout and stay together: in the buffer, in the
  minibatches, and in one process under ``accelerate launch`` (each process draws its own prompts).
* A rollout keeps drawing generation batches until it holds ``n_steps * n_envs`` generated tokens
  (RL4LMs' meaning of ``n_steps``, as for PPO).
* The update makes ``num_iterations`` passes (TRL's mu) over the rollout in minibatches of
  ``batch_size`` completions (whole groups). The ratio's old log-probs are the rollout's, taken from
  the logits ``generate`` computed while sampling. An engine that returns no logits (vLLM) would
  need a forward of the actor for them; without a reference model the rollout leaves them to the
  update instead. When the update is one optimizer step (``num_iterations: 1`` and every minibatch
  in one gradient accumulation) they are the update forward's own, detached (the ratio is 1, as in
  TRL); otherwise a forward computes them before the first step. When the update is surely one
  step (:meth:`CriticFreeAlgorithm.update_is_one_step`), ``generate`` is not asked for its logits
  either.

The KL to the reference comes in two places, either or both: ``alg.args.beta`` weighs GRPO's ``k3``
estimate ``exp(ref - logp) - (ref - logp) - 1`` added to each token's loss; ``alg.kl_div.coeff`` puts
RL4LMs' per-token penalty ``-coeff * (logp - ref)`` into the rewards (with ``target_kl`` adapting
it). ``alg.kl_div`` may be left out (no KL in the reward). With ``beta: 0`` and no ``kl_div`` (or
``coeff: 0``) no reference model is loaded: the policy holds the actor's weights only.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import numpy as np
import torch

from rl4lms.algorithms.advantages import flat_groups, masked_mean, token_kl
from rl4lms.algorithms.buffer import GroupRolloutBuffer, RolloutBatch, TextRolloutBuffer, concat_batches
from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.losses import (IMPORTANCE_SAMPLING_LEVELS, LOSS_TYPES, aggregate_token_losses,
                                     clipped_surrogate, importance_ratio)
from rl4lms.algorithms.on_policy import LMOnPolicyAlgorithm
from rl4lms.algorithms.rollout import engine_log_diffs, engine_mismatch_stats, with_trainer_log_probs
from rl4lms.data_pools.text_gen_pool import Sample
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.policies.base import LMActorCriticPolicy, ended_with_eos
from rl4lms.policies.maskable import MaskablePolicyMixin


@dataclass
class GroupSampling:
    """Counters of one rollout's generation batches (for DAPO's dynamic sampling)."""

    generated_tokens: int = 0
    refill_batches: int = 0
    """Batches drawn after the rollout had generated its token budget, to replace dropped groups."""
    groups_dropped: int = 0
    last_batch: Optional[RolloutBatch] = None


def per_token(advantages: torch.Tensor, data: RolloutBatch) -> torch.Tensor:
    """One advantage per episode ``[N]`` given to each of its tokens ``[N, T]`` (0 on padding)."""
    return advantages[:, None] * data.token_mask()


SHARED_ARGS = """\
        n_steps: generated tokens per rollout, per prompt of a generation batch (the rollout holds
            at least ``n_steps * env.n_envs`` tokens).
        num_generations: completions sampled per prompt (a group).
        batch_size: completions per minibatch (one optimizer step); a multiple of ``num_generations``.
        num_iterations: passes over the rollout per update (TRL's ``num_iterations``, mu).
        learning_rate: AdamW's learning rate; lr_scheduler_type: its schedule over the run.
        loss_type: how token losses are averaged: "grpo" (per sequence, then over sequences),
            "bnpo" (over the minibatch's tokens), "dr_grpo" (token sum / (sequences x max completion
            length)) or "dapo" (token sum / tokens of the minibatch over all processes).
        epsilon: the ratio's lower clip ``1 - epsilon``; epsilon_high: its upper clip ``1 + epsilon_high``
            (DAPO's clip-higher; None: ``epsilon``).
        importance_sampling_level: "token" (one ratio per token) or "sequence" (GSPO: one ratio per
            completion, ``exp`` of its mean token log-ratio).
        beta: weight of the ``k3`` KL to the reference in the loss (0: no KL term in the loss).
        ent_coef: weight of an entropy bonus, averaged like the loss.
        mask_truncated_completions: completions that did not end with EOS (cut at the length limit)
            contribute no loss; needs ``env.args.terminate_on_eos``.
        dynamic_sampling: DAPO's dynamic sampling: groups whose task rewards are all equal (zero
            advantages) are dropped and more prompts are drawn to fill the rollout.
        max_dynamic_sampling_rounds: the most generation batches a rollout draws beyond its token
            budget to replace dropped groups; if none was kept by then, the last batch is kept.
        max_grad_norm: gradient clipping.
        seed, device, verbose, policy_kwargs: as in stable-baselines3.
"""
"""The arguments every critic-free algorithm takes (``alg.args``), for the classes' docstrings."""


class CriticFreeAlgorithm(LMOnPolicyAlgorithm):
    __doc__ = """Group sampling, the clipped surrogate without a critic, KL in the loss or the reward,
    DAPO's dynamic sampling; subclasses give the advantage estimator (:meth:`estimate_advantages`).

    Args (``alg.args``, shared by ``grpo``, ``rloo`` and ``reinforce_plus_plus``):
""" + SHARED_ARGS

    needs_kl_div = False
    min_generations = 2
    """The fewest completions per prompt the advantage estimator works with."""
    short_name = "critic_free"
    """The registry id: the prefix of the training statistics and the name in error messages."""

    def __init__(self, policy: Type[LMActorCriticPolicy], env: TextGenEnv, kl_controller: KLController,
                 n_envs: int = 1, learning_rate: float = 1e-6, n_steps: int = 128, batch_size: int = 64,
                 num_generations: int = 8, num_iterations: int = 1, loss_type: str = "dapo", epsilon: float = 0.2,
                 epsilon_high: Optional[float] = None, importance_sampling_level: str = "token", beta: float = 0.0,
                 ent_coef: float = 0.0, mask_truncated_completions: bool = False, dynamic_sampling: bool = False,
                 max_dynamic_sampling_rounds: int = 4, max_grad_norm: float = 1.0,
                 lr_scheduler_type: Optional[str] = "constant", policy_kwargs: Optional[Dict[str, Any]] = None,
                 verbose: int = 0, seed: Optional[int] = None, device: str = "auto",
                 _init_setup_model: bool = True) -> None:
        self._check_arguments(env, kl_controller, num_generations, batch_size, num_iterations, loss_type, epsilon,
                              epsilon_high, importance_sampling_level, beta, mask_truncated_completions,
                              dynamic_sampling, max_dynamic_sampling_rounds)
        self.batch_size = batch_size
        self.num_generations = num_generations
        self.num_iterations = num_iterations
        self.loss_type = loss_type
        self.epsilon = epsilon
        self.epsilon_high = epsilon if epsilon_high is None else epsilon_high
        self.importance_sampling_level = importance_sampling_level
        self.beta = beta
        self.mask_truncated_completions = mask_truncated_completions
        self.dynamic_sampling = dynamic_sampling
        self.max_dynamic_sampling_rounds = max_dynamic_sampling_rounds
        self.sampling = GroupSampling()
        self.max_completion_length = 0
        """Most tokens a completion may have (``dr_grpo``'s constant), set with the policy."""
        self.min_completion_length = 1
        """Fewest tokens a completion has (all of ``max_completion_length`` without EOS stopping)."""
        super().__init__(policy=policy, env=env, kl_controller=kl_controller, n_envs=n_envs,
                         learning_rate=learning_rate, n_steps=n_steps, gamma=1.0, gae_lambda=1.0, ent_coef=ent_coef,
                         vf_coef=0.0, max_grad_norm=max_grad_norm, normalize_advantage=False,
                         lr_scheduler_type=lr_scheduler_type, policy_kwargs=policy_kwargs, verbose=verbose,
                         seed=seed, device=device, _init_setup_model=_init_setup_model)

    def _check_arguments(self, env: TextGenEnv, kl_controller: KLController, num_generations: int, batch_size: int,
                         num_iterations: int, loss_type: str, epsilon: float, epsilon_high: Optional[float],
                         importance_sampling_level: str, beta: float, mask_truncated_completions: bool,
                         dynamic_sampling: bool, max_dynamic_sampling_rounds: int) -> None:
        """One clear error per bad argument, before any model is built."""
        name = self.short_name
        if num_generations < self.min_generations:
            raise ValueError(f"alg.args.num_generations must be >= {self.min_generations} for {name} (its baseline "
                             f"compares the completions of one prompt), got {num_generations}")
        if batch_size < 1 or num_iterations < 1:
            raise ValueError(f"alg.args.batch_size and num_iterations must be >= 1, got {batch_size} and {num_iterations}")
        if batch_size % num_generations:
            raise ValueError(f"alg.args.batch_size ({batch_size}) must be a multiple of num_generations "
                             f"({num_generations}): minibatches hold whole groups")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"alg.args.loss_type {loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(f"alg.args.importance_sampling_level {importance_sampling_level!r} is not one of "
                             f"{', '.join(IMPORTANCE_SAMPLING_LEVELS)}")
        if not epsilon > 0 or (epsilon_high is not None and not epsilon_high > 0):
            raise ValueError(f"alg.args.epsilon and epsilon_high must be > 0, got {epsilon} and {epsilon_high}")
        if beta < 0:
            raise ValueError(f"alg.args.beta must be >= 0, got {beta}")
        if dynamic_sampling and num_generations < 2:
            raise ValueError("alg.args.dynamic_sampling compares the rewards within a group: it needs "
                             f"num_generations >= 2, got {num_generations}")
        if max_dynamic_sampling_rounds < 0:
            raise ValueError(f"alg.args.max_dynamic_sampling_rounds must be >= 0, got {max_dynamic_sampling_rounds}")
        if mask_truncated_completions and not env.terminate_on_eos:
            raise ValueError("alg.args.mask_truncated_completions needs env.args.terminate_on_eos: true (without it "
                             "every completion runs to the length limit)")
        if kl_controller.norm_reward:
            raise ValueError(f"alg.kl_div.norm_reward standardizes per-token rewards before GAE; {name} has no GAE "
                             "(its advantages are normalised by the algorithm): set it to false")

    @property
    def needs_reference(self) -> bool:
        """Whether a KL term needs the reference model: ``beta`` in the loss or ``kl_div`` in the reward."""
        return self.beta > 0 or self.kl_controller.kl_coeff > 0

    def _setup_model(self) -> None:
        # The policy is built without a value head, and without a reference when no KL term needs one.
        self.policy_kwargs = {**self.policy_kwargs, "with_value_head": False, "with_reference": self.needs_reference}
        super()._setup_model()
        config = self.policy.generation_config(max_new_tokens=self.text_env.max_episode_length)
        self.max_completion_length = int(config.max_new_tokens)
        self.min_completion_length = self.max_completion_length if not self.policy.terminate_on_eos \
            else min(max(int(config.min_new_tokens or 0), 1), self.max_completion_length)
        self.collector.defer_log_probs = True

    def make_rollout_buffer(self) -> TextRolloutBuffer:
        return GroupRolloutBuffer(self.text_env.tokenizer.pad_token_id, self.num_generations, self.estimate_advantages,
                                  self.text_env.observation_layout)

    @abstractmethod
    def estimate_advantages(self, data: RolloutBatch) -> torch.Tensor:
        """Per-token advantages ``[N, T]`` of the joined rollout (groups are consecutive rows).
        ``data.rewards`` are the per-token rewards (task reward plus the KL penalty of ``kl_div``),
        ``data.scores`` each episode's task reward."""

    # --- rollouts ---------------------------------------------------------------------------------
    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        self.sampling = GroupSampling()
        self.collector.skip_step_outputs = self.update_is_one_step()
        return super().collect_rollouts(*args, **kwargs)

    def update_is_one_step(self) -> bool:
        """Whether the coming update is surely one optimizer step: no dynamic sampling, and one
        generation batch both reaches the rollout's token budget (each completion has at least
        ``min_completion_length`` tokens) and, over ``num_iterations`` passes, fits one gradient
        accumulation. Its forward then gives the old log-probs, and the rollout need not compute them."""
        completions = self.n_generation_envs * self.num_generations
        return (not self.dynamic_sampling and completions * self.min_completion_length >= self.tokens_per_rollout
                and self.optimizer_steps_per_update(math.ceil(completions / self.batch_size)) == 1)

    def rollout_needs_more(self, buffer: TextRolloutBuffer, target_tokens: int) -> bool:
        """Kept tokens below the budget, and (with dynamic sampling) refill batches left."""
        budget_reached = self.sampling.generated_tokens >= target_tokens
        return buffer.n_tokens < target_tokens and (
            not budget_reached or self.sampling.refill_batches < self.max_dynamic_sampling_rounds)

    def draw_prompts(self) -> List[Sample]:
        """``n_envs`` prompts, each repeated ``num_generations`` times (a group's rows are consecutive)."""
        prompts = self.collector.draw_samples(self.n_generation_envs)
        return [sample for sample in prompts for _ in range(self.num_generations)]

    def store_batch(self, buffer: TextRolloutBuffer, batch: RolloutBatch, target_tokens: int) -> None:
        """Add the batch's groups; with dynamic sampling only those whose task rewards differ."""
        sampling = self.sampling
        sampling.refill_batches += sampling.generated_tokens >= target_tokens
        sampling.generated_tokens += int(batch.response_mask.sum().item())
        sampling.last_batch = batch
        if self.dynamic_sampling:
            informative = ~flat_groups(batch.scores, self.num_generations)
            sampling.groups_dropped += int((~informative).sum())
            if not informative.any():
                return
            batch = batch.select(informative.repeat_interleave(self.num_generations).nonzero().flatten())
        buffer.add(batch)

    def finalize_buffer(self) -> None:
        """Advantages of the rollout's groups. Every process keeps as many groups as the one with the
        fewest, so all run the same number of synchronised minibatches."""
        buffer = self.rollout_buffer
        assert isinstance(buffer, GroupRolloutBuffer)
        if buffer.n_groups == 0 and self.sampling.last_batch is not None:
            buffer.add(self.sampling.last_batch)  # the refills found no group with differing rewards
        buffer.finalize(self.min_across_processes(buffer.n_groups))

    def finish_rollout(self, stats: Any) -> None:
        super().finish_rollout(stats)
        if self.dynamic_sampling:
            self.rollout_stats.update(self.mean_across_processes({
                "dynamic_sampling/groups_dropped": float(self.sampling.groups_dropped),
                "dynamic_sampling/refill_batches": float(self.sampling.refill_batches),
                "dynamic_sampling/groups_kept": float(self.rollout_buffer.n_groups),
            }))

    # --- several processes ------------------------------------------------------------------------
    def min_across_processes(self, value: int) -> int:
        if self.num_processes == 1:
            return value
        assert self.accelerator is not None
        gathered = self.accelerator.gather(torch.tensor([value], device=self.accelerator.device))
        return int(gathered.min().item())

    def on_global_batch(self, estimate: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        """``estimate`` applied to the rollouts of all processes joined (rows in process order; each
        process holds as many episodes), and this process's rows of its result: a batch-wide
        normalisation sees every process's episodes, as in a single process. ``[N, T]`` tensors are
        padded with zeros to the widest process and cut back afterwards."""
        if self.num_processes == 1:
            return estimate(*tensors)
        accelerator = self.accelerator
        assert accelerator is not None
        joined = [accelerator.gather(accelerator.pad_across_processes(t, dim=1) if t.dim() > 1 else t)
                  for t in tensors]
        rows = len(tensors[0])
        own = estimate(*joined)[accelerator.process_index * rows:(accelerator.process_index + 1) * rows]
        return own[:, :tensors[0].shape[1]] if own.dim() > 1 else own

    def tokens_per_process(self, mask: torch.Tensor) -> torch.Tensor:
        """The valid tokens of a minibatch over all processes, divided by the number of processes
        (``dapo``'s normaliser)."""
        tokens = mask.sum()
        if self.num_processes == 1:
            return tokens
        assert self.accelerator is not None
        return self.accelerator.reduce(tokens, reduction="sum") / self.num_processes

    # --- the update -------------------------------------------------------------------------------
    def loss_mask(self, batch: RolloutBatch) -> torch.Tensor:
        """The tokens that count in the loss: the actions, without truncated completions when
        ``mask_truncated_completions`` is set."""
        mask = batch.token_mask()
        if self.mask_truncated_completions:
            finished = ended_with_eos(batch.response_ids, batch.response_mask, self.text_env.tokenizer.eos_token_id)
            mask = mask * finished[:, None].to(mask.dtype)
        return mask

    def minibatch_loss(self, batch: RolloutBatch) -> Tuple[torch.Tensor, Dict[str, float], RolloutBatch]:
        """The loss of one minibatch, its statistics (TRL's names where TRL has them) and the batch
        with its old log-probs (this forward's own, detached, when the rollout left them out)."""
        out = self.batch_outputs(batch)
        if batch.log_probs is None:
            batch = with_trainer_log_probs(batch, out, self.policy.engine.importance_sampling_cap)
        mask = self.loss_mask(batch)
        assert batch.advantages is not None
        advantages = batch.advantages
        ratio = importance_ratio(out.log_probs, batch.log_probs, mask, self.importance_sampling_level)
        surrogate = clipped_surrogate(ratio, advantages, self.epsilon, self.epsilon_high)
        losses = surrogate
        if self.beta > 0:
            kl = token_kl(out.unmasked_log_probs, batch.ref_log_probs, "k3")
            losses = losses + self.beta * kl
        if self.ent_coef:
            losses = losses - self.ent_coef * out.entropy
        tokens = self.tokens_per_process(mask) if self.loss_type == "dapo" else None
        total = aggregate_token_losses(losses, mask, self.loss_type, self.max_completion_length, tokens)
        with torch.no_grad():
            low = (ratio < 1.0 - self.epsilon) & (advantages < 0)
            high = (ratio > 1.0 + self.epsilon_high) & (advantages > 0)
            stats = {
                f"{self.short_name}/loss/policy": aggregate_token_losses(
                    surrogate, mask, self.loss_type, self.max_completion_length, tokens).item(),
                f"{self.short_name}/loss/total": total.item(),
                "entropy": masked_mean(out.entropy, mask).item(),
                "clip_ratio/low_mean": masked_mean(low.float(), mask).item(),
                "clip_ratio/high_mean": masked_mean(high.float(), mask).item(),
                "clip_ratio/region_mean": masked_mean((low | high).float(), mask).item(),
            }
            if self.beta > 0:
                stats["kl"] = masked_mean(kl, mask).item()
        return total, stats, batch

    def optimizer_steps_per_update(self, n_minibatches: int) -> int:
        """How many optimizer steps an update over ``n_minibatches`` minibatches takes (with any
        micro-steps still accumulating from before it)."""
        accumulation = 1 if self.accelerator is None else self.accelerator.gradient_accumulation_steps
        return math.ceil((self._pending_micro_steps + self.num_iterations * n_minibatches) / accumulation)

    def train(self) -> None:
        """``num_iterations`` passes of minibatch updates over the buffered rollout."""
        self._update_learning_rate(self.policy.optimizer)
        buffer = self.rollout_buffer
        deferred = buffer.data is not None and buffer.data.log_probs is None
        if deferred and self.optimizer_steps_per_update(math.ceil(len(buffer.data) / self.batch_size)) > 1:
            self.fill_rollout_log_probs()  # the policy changes before the last minibatch's forward
            deferred = False
        self.policy.set_training_mode(True)
        records: Dict[str, List[float]] = {}
        completed: List[Tuple[torch.Tensor, RolloutBatch]] = []
        for iteration in range(self.num_iterations):
            for index in buffer.minibatch_indices(self.batch_size):
                total, stats, batch = self.minibatch_loss(buffer.data.select(index))
                grad_norm = self.optimization_step(total, f"{self.short_name}/loss/total")
                if not math.isnan(grad_norm):  # NaN: this call only accumulated gradients
                    stats[f"{self.short_name}/grad_norm"] = grad_norm
                for name, value in stats.items():
                    records.setdefault(name, []).append(value)
                if deferred and iteration == 0:
                    completed.append((index, batch))
        if deferred:
            self.completed_rollout(completed)
        self._n_updates += self.num_iterations
        if isinstance(self.policy, MaskablePolicyMixin):
            self.policy.after_update()
        self.train_stats = {name: float(np.mean(values)) for name, values in records.items()}
        self.train_stats.update(self.reward_stats())
        self.train_stats.update(self.objective_stats())
        self.train_stats[f"{self.short_name}/learning_rate"] = self.current_learning_rate()

    @torch.no_grad()
    def fill_rollout_log_probs(self) -> None:
        """The old log-probs the rollout left out, from a forward without gradient over its episodes
        (``batch_size`` at a time)."""
        buffer = self.rollout_buffer
        data = buffer.data
        assert data is not None
        rows = torch.arange(len(data), device=data.prompt_ids.device)
        completed = []
        for index in rows.split(self.batch_size):
            batch = data.select(index)
            completed.append((index, with_trainer_log_probs(batch, self.batch_outputs(batch),
                                                            self.policy.engine.importance_sampling_cap)))
        self.completed_rollout(completed)

    def completed_rollout(self, completed: List[Tuple[torch.Tensor, RolloutBatch]]) -> None:
        """Put the minibatches that got their old log-probs (their rows in the rollout and the batch)
        back into the buffer in rollout order, and add the engine-trainer mismatch of the rollout to
        its statistics."""
        buffer = self.rollout_buffer
        rows = torch.cat([index for index, _ in completed])
        joined = concat_batches([batch for _, batch in completed], buffer.pad_token_id)
        buffer.data = joined.select(torch.argsort(rows))
        diffs = engine_log_diffs(buffer.data)
        if diffs is not None:
            cap = self.policy.engine.importance_sampling_cap
            self.rollout_stats.update(self.mean_across_processes(engine_mismatch_stats(*diffs, cap)))

    def reward_stats(self) -> Dict[str, float]:
        """TRL's ``reward``, ``reward_std`` (of the task rewards) and ``frac_reward_zero_std`` (the
        share of groups whose task rewards are all equal) over the rollout that was trained on."""
        data = self.rollout_buffer.data
        assert data is not None
        scores = data.scores
        stats = {"reward": float(scores.mean()), "reward_std": float(scores.std()) if len(scores) > 1 else 0.0}
        if self.num_generations > 1:
            stats["frac_reward_zero_std"] = float(flat_groups(scores, self.num_generations).float().mean())
        return stats
