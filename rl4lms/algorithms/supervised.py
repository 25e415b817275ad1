"""Supervised fine-tuning on a data pool's references (RL4LMs' ``supervised``).

Runs inside the same trainer loop as the RL algorithms, so evaluation, checkpoints, resume
and the final ``model/`` folder are shared: one trainer iteration is one epoch over every
(prompt, reference) pair of the train split. The output folder warm-starts RL runs
(``*_on_supervised`` configs set ``alg.policy.args.model_name`` to it).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.lr_schedule import check_schedule, lr_multiplier
from rl4lms.algorithms.on_policy import LMOnPolicyAlgorithm
from rl4lms.algorithms.rollout import encode_prompts
from rl4lms.algorithms.teacher_forcing import minibatches, teacher_forced_epoch
from rl4lms.data_pools.text_gen_pool import Sample
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.policies.base import LMActorCriticPolicy, module_device


def encode_targets(env: TextGenEnv, texts: Sequence[str], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Right-padded target ids (each ending with EOS, cut to ``max_episode_length``) and their mask."""
    tokenizer = env.tokenizer
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encoded = [(tokenizer.encode(text, add_special_tokens=False) + eos)[:env.max_episode_length] for text in texts]
    width = max(1, max(len(ids) for ids in encoded))
    ids = torch.full((len(texts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, :len(tokens)] = 1
    return ids.to(device), mask.to(device)


def exempt_biases_and_norms_from_decay(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Regroup ``optimizer``'s parameters so that biases and normalization weights get no weight
    decay (what Hugging Face's Trainer, behind RL4LMs' supervised runs, does)."""
    exempt = {id(p) for module in model.modules() if "norm" in type(module).__name__.lower()
              for p in module.parameters(recurse=False)}
    exempt |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.param_groups.clear()
    optimizer.add_param_group({"params": [p for p in params if id(p) not in exempt]})
    optimizer.add_param_group({"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0})


def reference_pairs(samples: Sequence[Sample]) -> List[Tuple[Sample, str]]:
    """One (sample, reference) training pair per reference text."""
    return [(sample, reference) for sample in samples for reference in sample.references]


class Supervised(LMOnPolicyAlgorithm):
    """Teacher-forced cross-entropy on the references; each iteration (``run_iteration``) is one shuffled epoch.

    The loss and the epoch are :mod:`rl4lms.algorithms.teacher_forcing`'s, which the RLHF pipeline's
    SFT stage runs too; here the policy's ``evaluate_episodes`` scores each reference after its prompt
    (causal and seq2seq alike) and :meth:`optimization_step` steps.

    Args (``alg.args``; the policy, env and KL controller are built from the config):
        policy: the policy class (``alg.policy.id``); the env's train samples give the (prompt, reference) pairs.
        env: the train split's :class:`rl4lms.envs.text_gen_env.TextGenEnv` (samples, tokenizer, lengths).
        kl_controller: accepted because the trainer gives every algorithm one; unused (no KL term).
        n_envs: as in the RL algorithms (``env.n_envs``); no effect on the epoch.
        learning_rate: AdamW's peak learning rate; lr_scheduler_type, warmup_steps: its Hugging Face
            schedule over the run's optimizer steps (``planned_iterations`` epochs).
        batch_size: (prompt, reference) pairs per minibatch and optimizer step.
        max_grad_norm: gradient clipping.
        seed, device, verbose, policy_kwargs, _init_setup_model: as in stable-baselines3.
    """

    needs_reward_function = False

    def __init__(self, policy: Type[LMActorCriticPolicy], env: TextGenEnv, kl_controller: KLController,
                 n_envs: int = 1, learning_rate: float = 1e-4, batch_size: int = 16, max_grad_norm: float = 1.0,
                 lr_scheduler_type: str = "constant", warmup_steps: int = 0,
                 policy_kwargs: Optional[Dict[str, Any]] = None, verbose: int = 0, seed: Optional[int] = None,
                 device: str = "auto", _init_setup_model: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"alg.args.batch_size must be >= 1, got {batch_size}")
        check_schedule(lr_scheduler_type, warmup_steps)
        self.batch_size = batch_size
        self.warmup_steps = warmup_steps
        super().__init__(policy=policy, env=env, kl_controller=kl_controller, n_envs=n_envs,
                         learning_rate=learning_rate, n_steps=1, max_grad_norm=max_grad_norm,
                         lr_scheduler_type=lr_scheduler_type, policy_kwargs=policy_kwargs, verbose=verbose,
                         seed=seed, device=device, _init_setup_model=_init_setup_model)
        self.pairs = reference_pairs(self.text_env.samples)
        if not self.pairs:
            raise ValueError("alg 'supervised' needs references: the train split's samples have none")

    def _setup_model(self) -> None:
        super()._setup_model()
        exempt_biases_and_norms_from_decay(self.policy.optimizer, self.policy)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.pairs) // self.batch_size)

    def _set_learning_rate(self, step: int) -> float:
        """Apply the schedule's learning rate for optimizer step ``step`` of the whole run."""
        if self.lr_scheduler_type == "constant":
            multiplier = 1.0
        elif self.planned_iterations is None:
            raise ValueError(f"lr_scheduler_type {self.lr_scheduler_type!r} needs planned_iterations (the "
                             "trainer sets it to train_evaluation.n_iters)")
        else:
            multiplier = lr_multiplier(self.lr_scheduler_type, step, self.planned_iterations * self.steps_per_epoch,
                                       self.warmup_steps)
        lr = float(self.lr_schedule(1.0)) * multiplier
        for group in self.policy.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _target_log_probs(self, pairs: List[Tuple[Sample, str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The policy's log-probs of the references' tokens after their prompts, and the tokens' mask."""
        device = module_device(self.policy)
        prompt_ids, prompt_mask, _ = encode_prompts(self.text_env, [sample for sample, _ in pairs], device)
        target_ids, target_mask = encode_targets(self.text_env, [reference for _, reference in pairs], device)
        return self.policy.evaluate_episodes(prompt_ids, prompt_mask, target_ids, target_mask).log_probs, target_mask

    def run_iteration(self) -> None:
        """One epoch over the (prompt, reference) pairs."""
        self.policy.set_training_mode(True)
        first_step = self._n_updates * self.steps_per_epoch  # one update per finished epoch
        learning_rates: List[float] = []

        def step(loss: torch.Tensor) -> None:
            learning_rates.append(self._set_learning_rate(first_step + len(learning_rates)))
            self.optimization_step(loss, "supervised/loss")

        epoch = teacher_forced_epoch(minibatches(self.pairs, self.batch_size, self.collector.rng),
                                     self._target_log_probs, step)
        self.apply_accumulated_gradients()
        self.num_timesteps += epoch.n_tokens
        self._n_updates += 1
        mean_nll = epoch.token_mean_loss
        self.rollout_stats = {}
        self.train_stats = {"supervised/loss": mean_nll, "supervised/perplexity": math.exp(min(mean_nll, 50.0)),
                            "supervised/n_pairs": float(len(self.pairs)), "supervised/tokens": float(epoch.n_tokens),
                            "supervised/learning_rate": learning_rates[-1]}

    def progress_stats(self) -> Dict[str, float]:
        return {"loss": self.train_stats.get("supervised/loss", float("nan"))}
