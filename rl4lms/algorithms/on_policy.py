"""Base class of the LM on-policy algorithms: an SB3 ``OnPolicyAlgorithm`` with batched rollouts."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Type

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from rl4lms.algorithms.advantages import masked_mean, masked_var, value_statistics
from rl4lms.algorithms.buffer import RolloutBatch, TextRolloutBuffer
from rl4lms.algorithms.gradient_step import check_finite, clipped_step
from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.lr_schedule import check_schedule, lr_multiplier
from rl4lms.algorithms.rollout import RolloutCollector, RolloutStats
from rl4lms.data_pools.text_gen_pool import Sample
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.errors import DistributedSetupError
from rl4lms.policies.base import LMActorCriticPolicy, PolicyOutput

if TYPE_CHECKING:  # accelerate and the sharding code are imported by the runs that use them (rl4lms.training)
    from accelerate import Accelerator

    from rl4lms.training.sharding import ShardedPolicy


class LMOnPolicyAlgorithm(OnPolicyAlgorithm):
    """Shared machinery of PPO-style algorithms on text: rollouts, KL control, stats.

    ``n_steps`` keeps RL4LMs' meaning: each rollout collects at least ``n_steps * n_envs``
    generated tokens, in generation batches of ``n_envs`` prompts. Subclasses implement
    :meth:`train` (one update on ``self.rollout_buffer``) and put their stats in
    ``self.train_stats``.
    """

    policy: LMActorCriticPolicy
    needs_reward_function = True
    """False for algorithms that learn without rollouts (``supervised``)."""
    supports_multiprocess = True
    """False when the update cannot run under DDP (TRPO's second-order actor step)."""
    needs_kl_div = True
    """Whether a config must give ``alg.kl_div`` (critic-free algorithms may carry their KL in the loss instead)."""
    accelerator: Optional[Accelerator] = None
    sharded: Optional[ShardedPolicy] = None
    """The FSDP2-sharded policy of an ``accelerator.sharding: fsdp`` run, else None."""

    def __init__(self, policy: Type[LMActorCriticPolicy], env: TextGenEnv, kl_controller: KLController,
                 n_envs: int = 1, learning_rate: float = 1e-5, n_steps: int = 128, gamma: float = 0.99,
                 gae_lambda: float = 0.95, ent_coef: float = 0.0, vf_coef: float = 0.5, max_grad_norm: float = 0.5,
                 normalize_advantage: bool = True, lr_scheduler_type: Optional[str] = "constant",
                 policy_kwargs: Optional[Dict[str, Any]] = None, verbose: int = 0,
                 seed: Optional[int] = None, device: str = "auto", _init_setup_model: bool = True) -> None:
        if n_steps < 1 or n_envs < 1:
            raise ValueError(f"alg.args.n_steps and env.n_envs must be >= 1, got {n_steps} and {n_envs}")
        if lr_scheduler_type is not None:  # None: the optimizer's learning rate is someone else's to set
            check_schedule(lr_scheduler_type, 0)
        self.lr_scheduler_type = lr_scheduler_type
        self.iterations_done = 0
        """Rollout + update iterations finished so far (restored from checkpoints)."""
        self._no_callback: Optional[CallbackList] = None
        self.text_env = env
        self.kl_controller = kl_controller
        self.n_generation_envs = n_envs
        self.normalize_advantage = normalize_advantage
        self.rollout_stats: Dict[str, float] = {}
        self.train_stats: Dict[str, float] = {}
        self._pending_micro_steps = 0
        self.planned_iterations: Optional[int] = None
        """Iterations the run will have (set by the trainer); learning-rate schedules span them."""
        super().__init__(policy=policy, env=env, learning_rate=learning_rate, n_steps=n_steps, gamma=gamma,
                         gae_lambda=gae_lambda, ent_coef=ent_coef, vf_coef=vf_coef, max_grad_norm=max_grad_norm,
                         use_sde=False, sde_sample_freq=-1, monitor_wrapper=False, policy_kwargs=policy_kwargs,
                         verbose=verbose, seed=seed, device=device, _init_setup_model=False)
        # SB3's default logger (and its configure()) writes to stdout and /tmp/SB3-*; the trainer
        # keeps its own logs, so SB3 gets a logger with no outputs.
        self.set_logger(Logger(folder=None, output_formats=[]))
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule,
                                        **self.policy_kwargs).to(self.device)
        self.policy.observation_layout = self.text_env.observation_layout
        self.policy.entropy_needs_grad = bool(self.ent_coef)
        self.rollout_buffer = self.make_rollout_buffer()
        self.collector = RolloutCollector(self.policy, self.text_env, self.seed)

    def make_rollout_buffer(self) -> TextRolloutBuffer:
        """The buffer rollouts go to: episodes with GAE advantages (whitened with ``normalize_advantage``)."""
        return TextRolloutBuffer(self.text_env.tokenizer.pad_token_id, self.gamma, self.gae_lambda,
                                 self.whiten_advantages_in_buffer, self.kl_controller.norm_reward,
                                 self.text_env.observation_layout)

    @property
    def whiten_advantages_in_buffer(self) -> bool:
        """Whether the buffer whitens advantages over the whole rollout (``normalize_advantage``)."""
        return self.normalize_advantage

    @property
    def tokens_per_rollout(self) -> int:
        return self.n_steps * self.n_generation_envs

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: TextRolloutBuffer,
                         n_rollout_steps: int) -> bool:
        """Fill ``rollout_buffer`` with whole episodes until ``n_steps * n_envs`` tokens were generated."""
        rollout_buffer.reset()
        callback.on_rollout_start()
        kl_coeff = self.kl_controller.kl_coeff
        stats = RolloutStats(kl_coeff, importance_sampling_cap=self.policy.engine.importance_sampling_cap)
        target_tokens = n_rollout_steps * self.n_generation_envs
        # Under DDP every process must collect the same number of batches (each update runs the
        # same number of synchronised backward passes), so a process goes on while any needs more.
        while self.any_process(self.rollout_needs_more(rollout_buffer, target_tokens)):
            batch, truncated = self.collector.collect(self.draw_prompts(), kl_coeff)
            self.store_batch(rollout_buffer, batch, target_tokens)
            stats.add(batch, truncated)
            self.num_timesteps += int(batch.response_mask.sum().item())
            callback.update_locals(locals())
            if not callback.on_step():
                return False
        self.finish_rollout(stats)
        callback.on_rollout_end()
        return True

    def rollout_needs_more(self, buffer: TextRolloutBuffer, target_tokens: int) -> bool:
        """Whether this process's rollout needs another generation batch."""
        return buffer.n_tokens < target_tokens

    def draw_prompts(self) -> List[Sample]:
        """The prompts of one generation batch: ``n_envs`` drawn from the env's samples."""
        return self.collector.draw_samples(self.n_generation_envs)

    def store_batch(self, buffer: TextRolloutBuffer, batch: RolloutBatch, target_tokens: int) -> None:
        """Put a generated batch into the rollout buffer."""
        buffer.add(batch)

    def finish_rollout(self, stats: RolloutStats) -> None:
        """Advantages of the buffered episodes, the rollout statistics and the KL controller's step."""
        self.finalize_buffer()
        summary = self.mean_across_processes(stats.summary())
        self.kl_controller.step(summary["rollout_info/kl_div_mean"],
                                round(summary["rollout_info/n_episodes"] * self.num_processes))
        self.rollout_stats = summary

    def finalize_buffer(self) -> None:
        """Join the rollout's episodes and compute their advantages."""
        self.rollout_buffer.finalize()

    def progress_stats(self) -> Dict[str, float]:
        """The few numbers shown on the progress bar after each iteration."""
        return {"reward": self.rollout_stats.get("rollout_info/ep_rew", float("nan")),
                "kl": self.rollout_stats.get("rollout_info/kl_div_mean", float("nan"))}

    def batch_outputs(self, batch: RolloutBatch) -> PolicyOutput:
        """The policy's log-probs, entropy and values of ``batch``'s episodes (one batched forward, with
        the action masks they were sampled under)."""
        return self.policy.evaluate_episodes(batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                                             batch.response_mask, batch.action_masks)

    def objective_stats(self) -> Dict[str, float]:
        """TRL's ``objective/*``, ``ppo/*`` and ``tokens/*`` rollout statistics of the buffered rollout,
        with TRL's definitions (``objective/entropy``: the mean summed negative log-probability of an
        episode's response; ``ppo/mean_non_score_reward``: the KL penalty per token)."""
        data = self.rollout_buffer.data
        assert data is not None
        mask = data.token_mask()
        episode_kl = data.kl.sum(1)
        kl_coeff = float(self.rollout_stats.get("rollout_info/kl_coeff", self.kl_controller.kl_coeff))
        query_lengths, response_lengths = data.prompt_mask.sum(1).float(), mask.sum(1)

        def std(values: torch.Tensor) -> float:
            return float(values.std()) if len(values) > 1 else 0.0

        return {
            "objective/kl": float(episode_kl.mean()),
            "objective/logprobs": float((data.log_probs.sum() / mask.sum()).item()),
            "objective/ref_logprobs": float((data.ref_log_probs.sum() / mask.sum()).item()),
            "objective/kl_coef": kl_coeff,
            "objective/entropy": float((-data.log_probs * mask).sum(1).mean()),
            "ppo/mean_scores": float(data.scores.mean()),
            "ppo/std_scores": std(data.scores),
            "ppo/mean_non_score_reward": -kl_coeff * masked_mean(data.kl, mask).item(),
            "tokens/queries_len_mean": float(query_lengths.mean()),
            "tokens/queries_len_std": std(query_lengths),
            "tokens/responses_len_mean": float(response_lengths.mean()),
            "tokens/responses_len_std": std(response_lengths),
        }

    def value_stats(self) -> Dict[str, float]:
        """Rollout-time value diagnostics: TRL's ``ppo/returns/*`` and ``ppo/val/*``."""
        data = self.rollout_buffer.data
        assert data is not None and data.returns is not None and data.advantages is not None
        mask = data.token_mask()
        stats = {key: value.item() for key, value in
                 value_statistics(data.returns, data.values, data.advantages, mask).items()}
        residual_var = masked_var(data.returns - data.values, mask)
        stats["ppo/val/var_explained"] = (1.0 - residual_var / max(stats["ppo/returns/var"], 1e-8)).item()
        return stats

    def check_finite(self, loss: torch.Tensor, name: str) -> None:
        check_finite(loss, f"{name} became {{value}} at timestep {self.num_timesteps}; lower alg.args.learning_rate, "
                     "check the reward function for NaN/inf, or raise alg.kl_div.coeff. The last checkpoint is intact.")

    def attach_accelerator(self, accelerator: Accelerator, sharded: Optional[ShardedPolicy] = None) -> None:
        """Train through ``accelerator``: DDP-wrapped trainable modules when several processes
        run, its mixed precision and its ``gradient_accumulation_steps``. Each process draws its
        own prompts (the sampler is seeded with the process index). ``sharded``: the policy already
        sharded with FSDP2 (:class:`rl4lms.training.sharding.ShardedPolicy`, built by the trainer for
        ``accelerator.sharding: fsdp``), whose modules and optimizer are then used as they are."""
        if accelerator.num_processes > 1 and not self.supports_multiprocess:
            raise DistributedSetupError(f"{type(self).__name__} cannot run in {accelerator.num_processes} processes; "
                                        "launch it as a single process")
        self.accelerator = accelerator
        if sharded is not None:
            self.sharded = sharded
            self.device = accelerator.device
        else:
            self.policy.wrap_trainable_modules(accelerator.prepare_model)
            self.policy.optimizer = accelerator.prepare_optimizer(self.policy.optimizer)
        if accelerator.num_processes > 1:
            self.collector.rng = np.random.default_rng([self.seed or 0, accelerator.process_index])

    @property
    def num_processes(self) -> int:
        """How many processes train together (1 without an accelerator)."""
        return 1 if self.accelerator is None else self.accelerator.num_processes

    def any_process(self, flag: bool) -> bool:
        """``flag`` or-ed over all processes (just ``flag`` in a single process)."""
        if self.num_processes == 1:
            return flag
        assert self.accelerator is not None
        votes = self.accelerator.gather(torch.tensor([float(flag)], device=self.accelerator.device))
        return bool(votes.max().item() > 0)

    def mean_across_processes(self, values: Dict[str, float]) -> Dict[str, float]:
        """Each value averaged over the processes, so every process logs and acts on the same numbers."""
        if self.num_processes == 1:
            return values
        assert self.accelerator is not None
        stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=self.accelerator.device)
        means = self.accelerator.reduce(stacked, reduction="mean")
        return dict(zip(values, means.tolist()))

    def optimization_step(self, loss: torch.Tensor, name: str) -> float:
        """Check ``loss`` is finite, back-propagate it, clip gradients to ``max_grad_norm`` and step.

        Every algorithm updates through this method, so gradient handling lives in one place.
        With an accelerator the backward pass goes through it (DDP all-reduce, mixed precision)
        and the optimizer steps every ``gradient_accumulation_steps`` calls (the loss is divided
        by that number). Returns the pre-clip gradient norm, or NaN for a call that only accumulated.
        """
        self.check_finite(loss, name)
        if self.accelerator is None:
            return clipped_step(loss, self.policy.optimizer, self.policy.parameters(), self.max_grad_norm)
        self.accelerator.backward(loss)
        self._pending_micro_steps += 1
        if self._pending_micro_steps < self.accelerator.gradient_accumulation_steps:
            return float("nan")
        return self.apply_accumulated_gradients()

    def apply_accumulated_gradients(self) -> float:
        """Clip and apply the gradients accumulated so far (at the end of an update, also a
        partial accumulation); returns the pre-clip norm, NaN when nothing was pending."""
        if self.accelerator is None or self._pending_micro_steps == 0:
            return float("nan")
        if self.sharded is not None:
            grad_norm = self.sharded.clip_grad_norm(self.max_grad_norm)
        else:
            grad_norm = self.accelerator.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()
        self.policy.optimizer.zero_grad()
        self._pending_micro_steps = 0
        return float(grad_norm)

    def run_iteration(self) -> None:
        """One training iteration, the trainer's unit: :meth:`rollout_and_update`, then any gradients
        still accumulating."""
        self.rollout_and_update()
        self.apply_accumulated_gradients()
        self.iterations_done += 1

    def rollout_and_update(self) -> None:
        """A rollout of at least ``n_steps * n_envs`` generated tokens into the episode buffer, then the
        update on it (``train``)."""
        self.collect_rollouts(self.env, self.no_callback, self.rollout_buffer, self.n_steps)
        self.train()

    def learn(self, total_timesteps: int, *args: Any, **sb3_options: Any) -> "LMOnPolicyAlgorithm":
        """SB3's entry point, for code that drives the algorithm as SB3 does: iterations
        (:meth:`run_iteration`) until ``total_timesteps`` more tokens were generated. SB3's other
        arguments (callback, logging, ``reset_num_timesteps``) are accepted and have no effect: the
        trainer's tracker logs, and the token counter runs over the whole run."""
        target = self.num_timesteps + total_timesteps
        while self.num_timesteps < target:
            self.run_iteration()
        return self

    @property
    def no_callback(self) -> BaseCallback:
        """The SB3 callback that ``collect_rollouts`` takes, doing nothing."""
        if self._no_callback is None:
            self._no_callback = CallbackList([])
            self._no_callback.init_callback(self)
        return self._no_callback

    def current_learning_rate(self) -> float:
        """The learning rate of this iteration's update: ``learning_rate`` times the factor of
        ``lr_scheduler_type`` after ``iterations_done`` of the run's ``planned_iterations``
        (``linear`` decays to 0 at the last iteration, CleanRL's ``anneal_lr``). Without a schedule
        (``lr_scheduler_type`` None, e.g. under a user's ``torch`` scheduler) it is the optimizer's own."""
        if self.lr_scheduler_type is None:
            return float(self.policy.optimizer.param_groups[0]["lr"])
        base = float(self.lr_schedule(1.0))
        if self.lr_scheduler_type in ("constant", "constant_with_warmup"):
            return base
        if self.planned_iterations is None:
            raise ValueError(f"alg.args.lr_scheduler_type {self.lr_scheduler_type!r} needs planned_iterations "
                             "(the trainer sets it to train_evaluation.n_iters)")
        return base * lr_multiplier(self.lr_scheduler_type, self.iterations_done, self.planned_iterations)

    def _update_learning_rate(self, optimizers: Any) -> None:
        """SB3's hook at the start of an update, here driven by :meth:`current_learning_rate`."""
        if self.lr_scheduler_type is None:
            return
        lr = self.current_learning_rate()
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in optimizer.param_groups:
                group["lr"] = lr

    def rng_state(self) -> Dict[str, Any]:
        """State of the rollout prompt sampler."""
        return {"prompt_sampler": self.collector.rng.bit_generator.state}

    def load_rng_state(self, state: Dict[str, Any], reseed: bool = False) -> None:
        """Restore the prompt sampler. With ``reseed`` (a checkpoint without this process's own
        state, e.g. written by another number of processes), a non-main process instead reseeds
        from its index and the restored step count, so it keeps drawing prompts of its own."""
        self.collector.rng.bit_generator.state = state["prompt_sampler"]
        if reseed and self.accelerator is not None and self.accelerator.process_index > 0:
            self.collector.rng = np.random.default_rng([self.seed or 0, self.accelerator.process_index,
                                                        self.num_timesteps])
