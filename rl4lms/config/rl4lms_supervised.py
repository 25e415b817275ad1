"""RL4LMs' supervised config form, translated onto this project's ``supervised`` algorithm.

RL4LMs runs ``alg.id: supervised`` through Hugging Face's ``Trainer``: no ``env``, no
``alg.policy``, no ``train_evaluation.n_iters``; instead ``alg.training_args`` (``TrainingArguments``
keys), ``alg.model_type`` (causal or seq2seq), ``alg.model_name``, ``alg.generation_kwargs`` (for
evaluation) and ``tokenizer.max_length`` (the prompt length). Here the same run goes through the
project's supervised algorithm, so that it gets the run folder, evaluation, exact resume and the
``model/`` folder of every other run. One trainer iteration is one epoch, so:

====================================  ==========================================================
RL4LMs                                here
====================================  ==========================================================
``training_args.num_train_epochs``    ``train_evaluation.n_iters`` (evaluation and a checkpoint
                                      after every epoch)
``per_device_train_batch_size``       ``alg.args.batch_size``
``learning_rate``, ``max_grad_norm``,  ``alg.args`` of the same names (Hugging Face's defaults:
``lr_scheduler_type``,                5e-5, 1.0, linear, 0)
``warmup_steps``
``weight_decay``, ``adam_beta1/2``,   ``alg.policy.args.weight_decay`` and ``optimizer_kwargs``
``adam_epsilon``                      (AdamW; no decay on biases and norms, as the Trainer does)
``gradient_accumulation_steps``,      ``accelerator.gradient_accumulation_steps`` and
``fp16`` / ``bf16``                   ``accelerator.mixed_precision``
``save_total_limit``                  ``train_evaluation.save_checkpoints_to_keep``
``seed``                              ``seed``, unless the config has one (RL4LMs draws a random seed)
``model_type``, ``model_name``        ``alg.policy`` (the causal or seq2seq policy)
``generation_kwargs``                 ``alg.policy.args.generation_kwargs``
``tokenizer.max_length``              ``env.args.max_prompt_length`` (default 512); references are
                                      cut to ``generation_kwargs.max_new_tokens`` tokens
====================================  ==========================================================

Keys that only steer the Trainer's own logging and saving (``logging_steps``, ``output_dir``,
``save_steps``, ...) have no counterpart, because the run folder keeps its own logs and
checkpoints; each is named in a warning. Other ``TrainingArguments`` keys are refused with the list
of those that are supported.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List

from rl4lms.errors import ConfigError

logger = logging.getLogger(__name__)

POLICIES = {"causal": "causal_lm_actor_critic_policy", "seq2seq": "seq2seq_lm_actor_critic_policy"}
DEFAULT_PROMPT_LENGTH = 512
DEFAULT_EPISODE_LENGTH = 128
ALG_ARGS = {"per_device_train_batch_size": "batch_size", "learning_rate": "learning_rate",
            "max_grad_norm": "max_grad_norm", "lr_scheduler_type": "lr_scheduler_type", "warmup_steps": "warmup_steps"}
HF_DEFAULTS = {"learning_rate": 5e-5, "lr_scheduler_type": "linear", "per_device_train_batch_size": 8,
               "num_train_epochs": 3, "weight_decay": 0.0}
OPTIMIZER_ARGS = ("weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon")
OTHER_MAPPED = ("num_train_epochs", "gradient_accumulation_steps", "fp16", "bf16", "save_total_limit", "seed")
BOOKKEEPING = ("output_dir", "overwrite_output_dir", "logging_dir", "logging_steps", "logging_strategy",
               "logging_first_step", "save_steps", "save_strategy", "eval_steps", "evaluation_strategy",
               "eval_strategy", "per_device_eval_batch_size", "report_to", "run_name", "disable_tqdm",
               "do_train", "do_eval", "dataloader_num_workers", "push_to_hub")
SUPPORTED = tuple(ALG_ARGS) + OPTIMIZER_ARGS + OTHER_MAPPED + BOOKKEEPING
FORM_KEYS = ("training_args", "model_type", "model_name", "generation_kwargs")


def is_rl4lms_supervised(raw: Dict[str, Any]) -> bool:
    """Whether ``raw`` uses RL4LMs' supervised form (``alg.id: supervised`` with ``training_args``,
    ``model_type`` or ``model_name`` and no ``alg.policy``)."""
    alg = raw.get("alg")
    return (isinstance(alg, dict) and alg.get("id") == "supervised" and "policy" not in alg
            and any(key in alg for key in FORM_KEYS))


def _required(alg: Dict[str, Any], key: str, errors: List[str]) -> Any:
    if key not in alg:
        errors.append(f"alg.{key}: required key is missing (RL4LMs' supervised form: alg.training_args, "
                      "alg.model_type, alg.model_name, alg.generation_kwargs)")
    return alg.get(key)


def _epochs(value: Any, errors: List[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or int(value) != value:
        errors.append(f"alg.training_args.num_train_epochs: must be a whole number >= 1 (one trainer iteration is "
                      f"one epoch), got {value!r}")
        return 1
    return int(value)


def translate_rl4lms_supervised(raw: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``raw`` in this project's form (see the module docstring); unchanged if it is not
    RL4LMs' supervised form."""
    if not is_rl4lms_supervised(raw):
        return raw
    config = copy.deepcopy(raw)
    alg = config["alg"]
    errors: List[str] = []
    model_type, model_name = _required(alg, "model_type", errors), _required(alg, "model_name", errors)
    if model_type is not None and model_type not in POLICIES:
        errors.append(f"alg.model_type: {model_type!r} is not one of {', '.join(map(repr, POLICIES))}")
    training = dict(HF_DEFAULTS, **(alg.get("training_args") or {}))
    unknown = sorted(set(training) - set(SUPPORTED))
    for key in unknown:
        errors.append(f"alg.training_args.{key}: not supported in RL4LMs' supervised form; supported: "
                      f"{', '.join(SUPPORTED)}")
    generation = dict(alg.get("generation_kwargs") or {})
    if generation.pop("post_processing_fn", None) is not None:
        errors.append("alg.generation_kwargs.post_processing_fn: only null is supported (RL4LMs' "
                      "three_sentence_summary post-processor is not implemented)")
    n_iters = _epochs(training["num_train_epochs"], errors)
    if errors:
        raise ConfigError(errors)
    ignored = [key for key in BOOKKEEPING if key in training]
    if ignored:
        logger.warning("alg.training_args: %s steer Hugging Face Trainer's own logging and saving; this run "
                       "evaluates and saves a checkpoint after every epoch instead", ", ".join(ignored))

    tokenizer = config.setdefault("tokenizer", {})
    truncation_side = tokenizer.get("truncation_side", "left")
    policy_args: Dict[str, Any] = {"model_name": model_name, "generation_kwargs": generation,
                                   "weight_decay": training["weight_decay"], "prompt_truncation_side": truncation_side}
    optimizer = {name: training[key] for key, name in (("adam_epsilon", "eps"),) if key in training}
    if "adam_beta1" in training or "adam_beta2" in training:
        optimizer["betas"] = [training.get("adam_beta1", 0.9), training.get("adam_beta2", 0.999)]
    if optimizer:
        policy_args["optimizer_kwargs"] = optimizer
    config["alg"] = {"id": "supervised", "policy": {"id": POLICIES[model_type], "args": policy_args},
                     "args": {name: training[key] for key, name in ALG_ARGS.items() if key in training}}
    config["env"] = {"n_envs": 1, "args": {
        "max_prompt_length": tokenizer.pop("max_length", DEFAULT_PROMPT_LENGTH),
        "max_episode_length": generation.get("max_new_tokens", DEFAULT_EPISODE_LENGTH),
        "terminate_on_eos": True, "prompt_truncation_side": truncation_side}}
    evaluation = config.setdefault("train_evaluation", {})
    evaluation.update(n_iters=n_iters, eval_every=1, save_every=1)
    if "save_total_limit" in training:
        evaluation["save_checkpoints_to_keep"] = training["save_total_limit"]
    accelerator = {}
    if "gradient_accumulation_steps" in training:
        accelerator["gradient_accumulation_steps"] = training["gradient_accumulation_steps"]
    if training.get("bf16") or training.get("fp16"):
        accelerator["mixed_precision"] = "bf16" if training.get("bf16") else "fp16"
    if accelerator:
        config["accelerator"] = {**config.get("accelerator", {}), **accelerator}
    if "seed" in training:
        config.setdefault("seed", training["seed"])
    return config
