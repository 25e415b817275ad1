"""Assembling the parts of a run from a validated config through the registries."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch

from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.on_policy import LMOnPolicyAlgorithm
from rl4lms.data_pools.text_gen_pool import EmptyDataPoolError, TextGenPool
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.metrics.base import BaseMetric
from rl4lms.models.loading import load_tokenizer
from rl4lms.registry import AlgorithmRegistry, DataPoolRegistry, MetricRegistry, PolicyRegistry, RewardFunctionRegistry

SPLITS = ("train", "val", "test")


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
    pools = {split: cls.prepare(split=split, **datapool["args"]) for split in SPLITS}
    for split, pool in pools.items():
        if len(pool) == 0:
            raise EmptyDataPoolError(f"datapool '{datapool['id']}' returned no samples for split '{split}' "
                                     f"(datapool.args: {datapool['args']})")
    return pools


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_components(config: Dict[str, Any], device: str) -> RunComponents:
    """Tokenizer, data pools, reward, env, policy + algorithm and metrics, in that order."""
    tokenizer = load_tokenizer(**config["tokenizer"])
    pools = build_pools(config["datapool"])
    reward_fn = RewardFunctionRegistry.build(config["reward_fn"]["id"], config["reward_fn"]["args"])
    env_args = config["env"]["args"]
    env = TextGenEnv(tokenizer, reward_fn, list(pools["train"]), **env_args)
    env.reset(seed=config["seed"])
    alg_config = config["alg"]
    policy_config = alg_config["policy"]
    policy_kwargs = {**policy_config["args"], "tokenizer": tokenizer, "terminate_on_eos": env_args["terminate_on_eos"]}
    alg = AlgorithmRegistry.get(alg_config["id"])(
        policy=PolicyRegistry.get(policy_config["id"]), env=env, kl_controller=KLController(**alg_config["kl_div"]),
        n_envs=config["env"]["n_envs"], policy_kwargs=policy_kwargs, seed=config["seed"], device=device,
        **alg_config["args"])
    metrics = [MetricRegistry.build(m["id"], m["args"]) for m in config["train_evaluation"]["metrics"]]
    return RunComponents(pools=pools, env=env, alg=alg, metrics=metrics)
