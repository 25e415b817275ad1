"""Evaluation: batched generation over a split and metric computation (RL4LMs' ``evaluate_on_samples``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from rl4lms.algorithms.rollout import encode_prompts
from rl4lms.data_pools.text_gen_pool import Sample
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.errors import MetricOutputError
from rl4lms.metrics.base import BaseMetric
from rl4lms.policies.base import LMActorCriticPolicy, module_device, response_tokens


@dataclass
class EvaluationResult:
    """Corpus-level scores and one prediction record per sample."""

    corpus_scores: Dict[str, float]
    predictions: List[Dict[str, Any]]


@torch.no_grad()
def generate_texts(policy: LMActorCriticPolicy, env: TextGenEnv, samples: Sequence[Sample], batch_size: int,
                   generation_kwargs: Optional[Dict[str, Any]] = None) -> List[str]:
    """Generated text for every sample, ``batch_size`` prompts per ``generate`` call; non-empty
    ``generation_kwargs`` replace the policy's, and over-long prompts are cut on the policy's
    ``prompt_truncation_side`` (both as RL4LMs' evaluation does)."""
    config = policy.generation_config(generation_kwargs, max_new_tokens=env.max_episode_length,
                                      replace_policy_kwargs=True)
    device = module_device(policy)
    texts: List[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        prompt_ids, prompt_mask, _ = encode_prompts(env, chunk, device, policy.prompt_truncation_side)
        response, mask = policy.generate(prompt_ids, prompt_mask, config)
        texts += env.tokenizer.batch_decode(response_tokens(response, mask), skip_special_tokens=True)
    return texts


def evaluate_samples(policy: LMActorCriticPolicy, env: TextGenEnv, samples: Sequence[Sample],
                     metrics: Sequence[BaseMetric], batch_size: int, split_name: str,
                     generation_kwargs: Optional[Dict[str, Any]] = None) -> EvaluationResult:
    """Generate for ``samples`` and score them with every metric."""
    samples = list(samples)
    generated = generate_texts(policy, env, samples, batch_size, generation_kwargs)
    prompts = [s.prompt_or_input_text for s in samples]
    references = [list(s.references) for s in samples]
    meta_infos = [dict(s.meta_data) for s in samples]
    predictions = [{"sample_id": s.id, "prompt_text": p, "generated_text": g, "ref_text": r}
                   for s, p, g, r in zip(samples, prompts, generated, references)]
    corpus: Dict[str, float] = {}
    for metric in metrics:
        results = metric.compute(prompts, generated, references, meta_infos, policy.model, split_name)
        for name, (per_sample, score) in results.items():
            corpus[name] = float(score)
            if per_sample is not None and len(per_sample) != len(samples):
                raise MetricOutputError(
                    f"metric {type(metric).__name__} returned {len(per_sample)} per-sample scores for '{name}' on "
                    f"the {len(samples)} samples of split '{split_name}'; return one score per sample, or None "
                    "for a corpus-only metric")
            if per_sample is not None:
                for record, value in zip(predictions, per_sample):
                    record[name] = value
    return EvaluationResult(corpus, predictions)
