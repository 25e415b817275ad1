"""The shape of a training config: RL4LMs' top-level sections, their keys, types and defaults."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

_MISSING = object()


@dataclass(frozen=True)
class Key:
    """One config key: accepted Python types, default (``_MISSING`` = required) and allowed values."""

    types: Tuple[type, ...]
    default: Any = _MISSING
    choices: Optional[Tuple[Any, ...]] = None
    minimum: Optional[float] = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING


@dataclass(frozen=True)
class Section:
    """A mapping with a fixed set of keys (each a :class:`Key`, :class:`Section` or :class:`Component`)."""

    keys: Dict[str, Any]
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class Component:
    """``{id, args}`` naming a registered class; ``args`` are checked against its signature."""

    registry: str
    required: bool = True
    extra_keys: Dict[str, Any] = field(default_factory=dict)
    doc: str = ""


@dataclass(frozen=True)
class ComponentList:
    """A list of :class:`Component` entries (e.g. evaluation metrics)."""

    registry: str
    required: bool = False
    doc: str = ""


INT, FLOAT, BOOL, STR, DICT, LIST = (int,), (float, int), (bool,), (str,), (dict,), (list,)
NONE = type(None)

CONFIG_SCHEMA = Section({
    "tokenizer": Section({
        "model_name": Key(STR, doc="hub id, local folder, embedded tiny model (rl4lms/tiny-gpt2, rl4lms/tiny-t5) or "
                                   "packaged model (rl4lms/smollm2-135m-instruct)"),
        "padding_side": Key(STR, "left", choices=("left", "right"), doc="side of the pad tokens in a batch"),
        "truncation_side": Key(STR, "left", choices=("left", "right"),
                               doc="side the tokenizer cuts over-long texts from"),
        "pad_token_as_eos_token": Key(BOOL, True, doc="use EOS as pad when the tokenizer has no pad token (RL4LMs' default)"),
        "gguf_file": Key(STR + (NONE,), None, doc="a GGUF checkpoint's file name in the folder model_name (converted "
                                                  "once into $RL4LMS_CACHE)"),
    }),
    "reward_fn": Component("reward_fn", required=False, doc="required by every algorithm but supervised"),
    "datapool": Component("datapool", doc="the prompts (and references) of the train, val and test splits"),
    "env": Section({
        "n_envs": Key(INT, 1, minimum=1, doc="prompts per generation batch during rollouts"),
        "args": Section({
            "max_prompt_length": Key(INT, minimum=1, doc="prompt tokens kept (longer prompts are cut, and counted)"),
            "max_episode_length": Key(INT, minimum=1, doc="generated tokens per episode at most"),
            "terminate_on_eos": Key(BOOL, True,
                                    doc="an episode ends at the EOS token (else it runs max_episode_length)"),
            "prompt_truncation_side": Key(STR, "left", choices=("left", "right"),
                                          doc="side over-long prompts are cut from"),
            "context_start_token": Key(INT + (NONE,), None,
                                       doc="token id that starts the generated context (seq2seq: the decoder start "
                                           "token)"),
            "chat_template": Key(BOOL, False, doc="write each prompt as the user turn of the tokenizer's chat template "
                                                  "(instruct models), in rollouts and evaluation"),
            "system_prompt": Key(STR + (NONE,), None, doc="a system turn before each prompt (with chat_template)"),
        }),
    }),
    "alg": Component("alg", doc="the algorithm, its KL penalty (kl_div) and its policy", extra_keys={
        "kl_div": Section({
            "coeff": Key(FLOAT, minimum=0.0, doc="the KL penalty's coefficient (its start value with target_kl)"),
            "target_kl": Key(FLOAT + (NONE,), None, doc="adapt coeff so the rollouts' KL approaches this "
                                                    "target (null: a fixed coeff)"),
            "norm_reward": Key(BOOL, False, doc="standardize the per-token rewards of each rollout before GAE"),
        }, required=False, doc="required by the algorithms with a critic (not by supervised, grpo, rloo, "
                                "reinforce_plus_plus)"),
        "policy": Component("policy", doc="the language model being trained, its generation settings and value head"),
    }),
    "train_evaluation": Section({
        "n_iters": Key(INT, minimum=1, doc="training iterations (each a rollout and an update, or a supervised epoch)"),
        "eval_every": Key(INT, 10, minimum=1, doc="evaluate on the val split every N iterations (and after the last)"),
        "save_every": Key(INT, 10, minimum=1, doc="write a checkpoint every N iterations (and after the last)"),
        "eval_batch_size": Key(INT, 32, minimum=1, doc="prompts per generation batch in evaluation"),
        "metrics": ComponentList("metric", doc="metrics of the val and test evaluations"),
        "generation_kwargs": Key(DICT, {}, doc="generation settings of evaluation, over the policy's own (e.g. "
                                                "do_sample: false)"),
        "save_checkpoints_to_keep": Key(INT, 2, minimum=1, doc="newest checkpoints kept; older ones are pruned"),
    }),
    "accelerator": Section({
        "mixed_precision": Key(STR, "no", choices=("no", "bf16", "fp16"), doc="autocast of the training forwards"),
        "gradient_accumulation_steps": Key(INT, 1, minimum=1, doc="optimizer step every N loss backward passes"),
        "sharding": Key(STR + (NONE,), None, choices=(None, "ddp", "fsdp"),
                        doc="how several processes hold the policy: ddp (default) replicates it, fsdp shards "
                            "weights, gradients and optimizer state (FSDP2)"),
        "fsdp": Section({
            "reshard_after_forward": Key(BOOL, True, doc="free gathered weights after each forward"),
            "cpu_offload": Key(BOOL, False, doc="keep shards, gradients and optimizer state in CPU memory"),
            "param_dtype": Key(STR + (NONE,), None, choices=(None, "float32", "bfloat16"),
                               doc="dtype of the gathered weights (default: bfloat16 under mixed_precision bf16)"),
            "reduce_dtype": Key(STR + (NONE,), None, choices=(None, "float32", "bfloat16"),
                                doc="dtype of the gradient reduce-scatter (default float32)"),
            "activation_checkpointing": Key(BOOL, False, doc="recompute transformer blocks in the backward"),
        }, required=False, doc="options of accelerator.sharding: fsdp"),
    }, required=False, doc="accelerate settings; multi-process runs are started with `accelerate launch` or `torchrun`"),
    "seed": Key(INT, 0, doc="seeds python, numpy, torch and the prompt sampler"),
    "custom_modules": Key(LIST, [], doc="modules imported before validation so they can register components"),
})

# Arguments the trainer supplies itself, so they may not appear under ``args`` in a config.
INJECTED_ARGS = {
    "alg": {"policy", "env", "kl_controller", "n_envs", "policy_kwargs", "seed", "device", "_init_setup_model",
            "tracker"},
    "policy": {"observation_space", "action_space", "lr_schedule", "tokenizer", "terminate_on_eos", "with_value_head",
               "with_reference"},
    "datapool": {"split"},
    "reward_fn": set(),
    "metric": set(),
}

# Component arguments that must be > 0 whatever the component (checked before any model loads).
POSITIVE_ARGS = {
    "alg": {"learning_rate"},
    "policy": set(),
    "datapool": set(),
    "reward_fn": set(),
    "metric": set(),
}
