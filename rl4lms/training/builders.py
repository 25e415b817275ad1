"""Assembling the parts of a run from a validated config through the registries."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List

from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.on_policy import LMOnPolicyAlgorithm
from rl4lms.algorithms.sb3_compat import is_sb3_algorithm, text_algorithm
from rl4lms.data_pools.text_gen_pool import TextGenPool
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.errors import ComponentBuildError, EmptyDataPoolError
from rl4lms.metrics.base import BaseMetric
from rl4lms.models.loading import load_tokenizer
from rl4lms.registry import AlgorithmRegistry, DataPoolRegistry, MetricRegistry, PolicyRegistry, RewardFunctionRegistry

SPLITS = ("train", "val", "test")


@contextmanager
def building(section: str, component_id: str) -> Iterator[None]:
    """Re-raise argument/data errors raised while building ``section`` with the section named."""
    try:
        yield
    except (ValueError, TypeError) as error:
        if isinstance(error, ComponentBuildError):
            raise
        raise ComponentBuildError(f"{section} '{component_id}': {error}") from error


@dataclass
class RunComponents:
    """Everything the trainer loop needs, built from one config."""

    pools: Dict[str, TextGenPool]
    env: TextGenEnv
    alg: LMOnPolicyAlgorithm
    metrics: List[BaseMetric]


def build_pools(datapool: Dict[str, Any]) -> Dict[str, TextGenPool]:
    """Prepare the train/val/test splits; an empty split is an error naming the pool."""
    cls = DataPoolRegistry.get(datapool["id"])
    with building("datapool", datapool["id"]):
        pools = {split: cls.prepare(split=split, **datapool["args"]) for split in SPLITS}
    for split, pool in pools.items():
        if len(pool) == 0:
            raise EmptyDataPoolError(f"datapool '{datapool['id']}' returned no samples for split '{split}' "
                                     f"(datapool.args: {datapool['args']})")
    return pools


def build_components(config: Dict[str, Any], device: str) -> RunComponents:
    """Tokenizer, data pools, reward, env, policy + algorithm and metrics, in that order."""
    alg_config = config["alg"]
    alg_class = AlgorithmRegistry.get(alg_config["id"])
    if is_sb3_algorithm(alg_class):
        alg_class = text_algorithm(alg_class)  # an RL4LMs-style stable-baselines3 subclass
    tokenizer = load_tokenizer(**config["tokenizer"])
    pools = build_pools(config["datapool"])
    reward_fn = None
    if "reward_fn" in config:
        with building("reward_fn", config["reward_fn"]["id"]):
            reward_fn = RewardFunctionRegistry.build(config["reward_fn"]["id"], config["reward_fn"]["args"])
    env_args = config["env"]["args"]
    with building("env", "text_gen_env"):
        env = TextGenEnv(tokenizer, reward_fn, list(pools["train"]), **env_args)
    policy_config = alg_config["policy"]
    policy_kwargs = {**policy_config["args"], "tokenizer": tokenizer, "terminate_on_eos": env_args["terminate_on_eos"]}
    kl_controller = KLController(**alg_config.get("kl_div", {"coeff": 0.0}))
    with building("alg", alg_config["id"]):
        alg = alg_class(
            policy=PolicyRegistry.get(policy_config["id"]), env=env, kl_controller=kl_controller,
            n_envs=config["env"]["n_envs"], policy_kwargs=policy_kwargs, seed=config["seed"], device=device,
            **alg_config["args"])
    with building("env", "text_gen_env"):
        alg.policy.check_lengths(env.max_prompt_length, env.max_episode_length)
    with building("train_evaluation", "generation_kwargs"):
        alg.policy.generation_config(config["train_evaluation"]["generation_kwargs"], replace_policy_kwargs=True)
    metrics = []
    for metric in config["train_evaluation"]["metrics"]:
        with building("metric", metric["id"]):
            metrics.append(MetricRegistry.build(metric["id"], metric["args"]))
    return RunComponents(pools=pools, env=env, alg=alg, metrics=metrics)
