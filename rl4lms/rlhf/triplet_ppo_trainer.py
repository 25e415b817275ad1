"""PPO on (query, response, score) triplets, for users who run their own generation loop (TRL's API).

``step`` scores the given episodes exactly as a rollout of the config trainer does (rollout-time
log-probs and values, reference log-probs, the score on the last action token, the KL penalty)
and then runs the same :meth:`rl4lms.algorithms.ppo.PPO.train`; it returns TRL-named statistics.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from transformers import PreTrainedTokenizerBase

from rl4lms.algorithms.advantages import KL_ESTIMATORS, terminal_rewards, token_kl
from rl4lms.algorithms.buffer import RolloutBatch
from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.ppo import PPO
from rl4lms.algorithms.rollout import RolloutStats, pad_token_lists, scored_batch
from rl4lms.data_pools.text_gen_pool import Sample
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.models.loading import default_device, load_tokenizer
from rl4lms.policies.base import LMActorCriticPolicy, PolicyOutput, module_device, response_tokens
from rl4lms.registry import PolicyRegistry

Tokens = Union[torch.Tensor, Sequence[int]]


def _as_list(tokens: Tokens) -> List[int]:
    return tokens.flatten().tolist() if isinstance(tokens, torch.Tensor) else [int(t) for t in tokens]


class TripletPPOTrainer:
    """Policy (with value head and reference) plus a PPO learner, driven by :meth:`step`.

    Args:
        model_name: hub id, folder or tiny-model name of the policy (with ``policy_args.model``: its name only).
        tokenizer: the tokenizer (default: the model's).
        policy_id: the registry id of the policy.
        policy_args: the policy's arguments (``peft_config``, ``generation_kwargs``, or built modules:
            ``model``, ``value_head``, ``ref_model``).
        ppo_args: the ``alg.args`` of a PPO config (``batch_size``, ``n_epochs``, ``learning_rate``,
            ``clip_range``, ...).
        kl_coeff, target_kl, kl_horizon: the KL controller (``alg.kl_div``'s ``coeff``, ``target_kl``, ``horizon``).
        kl_penalty: the per-token KL penalty in the reward (:data:`rl4lms.algorithms.advantages.KL_ESTIMATORS`).
        max_length: bounds queries and responses.
        seed: seed of the policy's initialisation and of the minibatch order.
        device: where the policy runs (default: the GPU when there is one).
    """

    def __init__(self, model_name: str, tokenizer: Optional[PreTrainedTokenizerBase] = None,
                 policy_id: str = "causal_lm_actor_critic_policy", policy_args: Optional[Dict[str, Any]] = None,
                 ppo_args: Optional[Dict[str, Any]] = None, kl_coeff: float = 0.1, target_kl: Optional[float] = None,
                 kl_horizon: Optional[float] = None, kl_penalty: str = "kl", max_length: int = 256, seed: int = 0,
                 device: Optional[str] = None) -> None:
        if kl_penalty not in KL_ESTIMATORS:
            raise ValueError(f"kl_penalty {kl_penalty!r} is not one of {', '.join(KL_ESTIMATORS)}")
        self.kl_penalty = kl_penalty
        self.tokenizer = tokenizer or load_tokenizer(model_name)
        # The env only defines the spaces here: episodes come from the caller.
        env = TextGenEnv(self.tokenizer, None, [Sample(id="caller", prompt_or_input_text="")],
                         max_episode_length=max_length, max_prompt_length=max_length)
        policy_kwargs = {**(policy_args or {}), "model_name": model_name, "tokenizer": self.tokenizer,
                         "terminate_on_eos": True}
        self.ppo = PPO(policy=PolicyRegistry.get(policy_id), env=env, kl_controller=KLController(kl_coeff, target_kl, horizon=kl_horizon),
                       policy_kwargs=policy_kwargs, seed=seed, device=device or default_device(), **(ppo_args or {}))
        self.max_length = max_length
        self.timings: Dict[str, float] = {}
        """Seconds the last :meth:`step` spent in each phase, under TRL's ``time/ppo/*`` names."""

    @property
    def policy(self) -> LMActorCriticPolicy:
        return self.ppo.policy

    @torch.no_grad()
    def generate(self, queries: Sequence[Tokens], max_new_tokens: int = 32,
                 **generation_kwargs: Any) -> List[torch.Tensor]:
        """Responses (up to and including EOS) for ``queries``, sampled with the policy's generation settings."""
        if float(generation_kwargs.get("temperature", self.policy.temperature)) != self.policy.temperature:
            raise ValueError("generate(temperature=...) differs from the policy's, so step() would score the "
                             "responses under another distribution; set policy_args.generation_kwargs.temperature")
        query_lists = [_as_list(q) for q in queries]
        for ix, query in enumerate(query_lists):
            self._check_fits(f"queries[{ix}] + max_new_tokens", len(query), max_new_tokens)
        device = module_device(self.policy)
        prompt_ids, prompt_mask = pad_token_lists(query_lists, self.tokenizer.pad_token_id, device, left=True)
        config = self.policy.generation_config(generation_kwargs, max_new_tokens=max_new_tokens)
        response, mask = self.policy.generate(prompt_ids, prompt_mask, config)
        return [torch.tensor(tokens, dtype=torch.long) for tokens in response_tokens(response.cpu(), mask.cpu())]

    def _check(self, queries: List[List[int]], responses: List[List[int]], scores: Sequence[Any],
               masks: Optional[List[List[int]]]) -> None:
        if not (len(queries) == len(responses) == len(scores)) or not queries:
            raise ValueError(f"step() needs as many queries, responses and scores, and at least one: got "
                             f"{len(queries)}, {len(responses)}, {len(scores)}")
        for ix, (query, response) in enumerate(zip(queries, responses)):
            if not query or not response:
                raise ValueError(f"queries[{ix}] and responses[{ix}] must not be empty")
            if len(query) > self.max_length or len(response) > self.max_length:
                raise ValueError(f"queries[{ix}]/responses[{ix}] are longer than max_length={self.max_length}")
            self._check_fits(f"queries[{ix}] + responses[{ix}]", len(query), len(response))
            if not math.isfinite(float(scores[ix])):
                raise ValueError(f"scores[{ix}] is {float(scores[ix])}; scores must be finite")
            if masks is not None and (len(masks[ix]) != len(response) or not any(masks[ix])):
                raise ValueError(f"response_masks[{ix}] must have one 0/1 entry per response token and "
                                 "at least one 1")

    def _check_fits(self, what: str, query_length: int, response_length: int) -> None:
        needed, limit = self.policy.positions_needed(query_length, response_length)
        if limit is not None and needed > limit:
            raise ValueError(f"{what} take {needed} positions; the model has {limit}")

    def step(self, queries: Sequence[Tokens], responses: Sequence[Tokens], scores: Sequence[Any],
             response_masks: Optional[Sequence[Tokens]] = None) -> Dict[str, float]:
        """One PPO update on the triplets; returns the statistics (``ppo/...``, ``objective/...``).

        ``response_masks`` marks the response tokens that the policy wrote (1) and those it only
        read, such as tool output (0): those are seen by the model but left out of the loss.
        """
        started = time.perf_counter()
        self.score_episodes(queries, responses, scores, response_masks)
        stats = self.update()
        self.timings["time/ppo/total"] = time.perf_counter() - started
        return {**stats, **self.timings}

    def score_episodes(self, queries: Sequence[Tokens], responses: Sequence[Tokens], scores: Sequence[Any],
                       response_masks: Optional[Sequence[Tokens]] = None, forward_batch_size: Optional[int] = None,
                       sampled: Optional[Sequence[Tuple[torch.Tensor, torch.Tensor]]] = None) -> None:
        """Fill the rollout buffer with the triplets, scored as a rollout is: the policy's log-probs
        and values and the reference's log-probs (``forward_batch_size`` episodes per forward, by
        default all), the score on the last action token and the KL penalty. ``sampled`` are the
        policy's per-token log-probs and values of each response as computed while generating it
        (with the current weights): given, they replace the policy's forward."""
        query_lists, response_lists = [_as_list(q) for q in queries], [_as_list(r) for r in responses]
        mask_lists = None if response_masks is None else [_as_list(m) for m in response_masks]
        self._check(query_lists, response_lists, scores, mask_lists)
        self.ppo.rollout_buffer.reset()
        self.timings = {"time/ppo/forward_pass": 0.0, "time/ppo/compute_rewards": 0.0}
        step = forward_batch_size or len(query_lists)
        for start in range(0, len(query_lists), step):
            chunk = slice(start, start + step)
            self.ppo.rollout_buffer.add(self._scored_chunk(query_lists[chunk], response_lists[chunk], scores[chunk],
                                                           None if mask_lists is None else mask_lists[chunk],
                                                           None if sampled is None else sampled[chunk]))

    def _scored_chunk(self, query_lists: List[List[int]], response_lists: List[List[int]], scores: Sequence[Any],
                      mask_lists: Optional[List[List[int]]],
                      sampled: Optional[Sequence[Tuple[torch.Tensor, torch.Tensor]]]) -> RolloutBatch:
        policy, pad = self.policy, self.tokenizer.pad_token_id
        device = module_device(policy)
        prompt_ids, prompt_mask = pad_token_lists(query_lists, pad, device, left=True)
        response_ids, response_mask = pad_token_lists(response_lists, pad, device, left=False)
        loss_mask = None if mask_lists is None else pad_token_lists(mask_lists, 0, device, left=False)[0]
        actions = (loss_mask if loss_mask is not None else response_mask).float()
        task_rewards = terminal_rewards([float(s) for s in scores], actions)
        started = time.perf_counter()
        with torch.no_grad():
            policy.set_training_mode(False)
            if sampled is None:
                out = policy.evaluate_episodes(prompt_ids, prompt_mask, response_ids, response_mask)
            else:
                log_probs, values = (torch.nn.utils.rnn.pad_sequence([part[k].to(device) for part in sampled],
                                                                     batch_first=True) for k in (0, 1))
                out = PolicyOutput(log_probs=log_probs, entropy=None, values=values, unmasked_log_probs=log_probs)
            ref_log_probs = policy.reference_log_probs(prompt_ids, prompt_mask, response_ids, response_mask)
            logits = ref_logits = None
            if self.kl_penalty == "full":
                logits = policy.response_logits(prompt_ids, prompt_mask, response_ids, response_mask)
                ref_logits = policy.reference_logits(prompt_ids, prompt_mask, response_ids, response_mask)
        self.timings["time/ppo/forward_pass"] += time.perf_counter() - started
        started = time.perf_counter()
        with torch.no_grad():
            kl = token_kl(out.unmasked_log_probs, ref_log_probs, self.kl_penalty, logits, ref_logits)
            batch = scored_batch(prompt_ids, prompt_mask, response_ids, response_mask, out, ref_log_probs,
                                 task_rewards, self.ppo.kl_controller.kl_coeff, loss_mask=loss_mask, kl=kl)
        self.timings["time/ppo/compute_rewards"] += time.perf_counter() - started
        return batch

    def update(self) -> Dict[str, float]:
        """Advantages of the buffered episodes (:meth:`score_episodes`), the KL controller's step and
        one PPO update; returns the statistics."""
        buffer = self.ppo.rollout_buffer
        stats = RolloutStats(self.ppo.kl_controller.kl_coeff)
        for chunk in buffer.chunks:
            stats.add(chunk, truncated=0)
        started = time.perf_counter()
        self.ppo.finish_rollout(stats)
        self.timings["time/ppo/compute_advantages"] = time.perf_counter() - started
        self.ppo.num_timesteps += buffer.n_tokens
        started = time.perf_counter()
        self.ppo.train()
        self.ppo.apply_accumulated_gradients()
        self.timings["time/ppo/optimize_step"] = time.perf_counter() - started
        return {**self.ppo.train_stats, **self.ppo.rollout_stats}

    def save_pretrained(self, out_dir: Union[str, Path]) -> None:
        """The policy's Hugging Face folder with its value head (loads with ``AutoModelFor*WithValueHead``)."""
        self.policy.save_pretrained(Path(out_dir))
