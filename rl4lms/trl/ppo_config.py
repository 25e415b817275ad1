"""``PPOConfig`` of TRL's classic API, with TRL 0.11's fields and defaults (``HfArgumentParser``-able)."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

from rl4lms.trl.core import flatten_dict

KL_PENALTIES = ("kl", "abs", "mse", "full")
TRACKERS = ("wandb", "tensorboard")


def _script_name() -> str:
    return os.path.splitext(os.path.basename(sys.argv[0]))[0]


@dataclass
class PPOConfig:
    """Settings of :class:`rl4lms.trl.PPOTrainer`, named and defaulted as in TRL 0.11.

    Args:
        exp_name: experiment name (default: the script's file name).
        seed: seed of python, numpy and torch (``PPOTrainer`` calls :func:`set_seed`).
        log_with: "wandb" or "tensorboard" (accelerate's trackers), or None.
        task_name, model_name, query_dataset, reward_model: recorded with the tracker's config only.
        remove_unused_columns: drop dataset columns the data collator does not use.
        tracker_kwargs, accelerator_kwargs, project_kwargs: passed to ``init_trackers``, ``Accelerator``
            and its ``ProjectConfiguration``; tracker_project_name: the tracker's project.
        push_to_hub_if_best_kwargs: accepted for TRL's scripts (no hub here).
        steps: total samples to train on; ``total_ppo_epochs = ceil(steps / batch_size)``.
        learning_rate: Adam's learning rate when ``PPOTrainer`` builds the optimizer.
        adap_kl_ctrl, init_kl_coef, target, horizon: adaptive KL control toward ``target`` over
            ``horizon`` samples (fixed coefficient ``init_kl_coef`` without ``adap_kl_ctrl``).
        kl_penalty: per-token penalty: "kl" (log-ratio), "abs", "mse" (half squared log-ratio), "full"
            (the KL of the whole next-token distributions).
        gamma, lam: GAE's discount and lambda.
        cliprange, cliprange_value: PPO's ratio clip and value clip; vf_coef: value-loss weight.
        batch_size: samples per ``step``; mini_batch_size: samples per gradient computation;
            gradient_accumulation_steps: mini batches per optimizer step; ppo_epochs: passes per ``step``.
        forward_batch_size: deprecated alias of ``mini_batch_size``.
        max_grad_norm: gradient clipping (None: none).
        optimize_device_cache, optimize_cuda_cache: free the device cache between phases.
        early_stopping, target_kl: stop the epochs of a ``step`` once the policy KL exceeds 1.5 x ``target_kl``.
        compare_steps: accepted for TRL's scripts.
        ratio_threshold: skip a mini batch whose mean ratio exceeds it (loss spikes).
        use_score_scaling, use_score_norm, score_clip: divide scores by their running std (and
            subtract the running mean with ``use_score_norm``), then clip to +-``score_clip``.
        whiten_rewards: whiten the per-token rewards before GAE.
        gradient_checkpointing: turn on the model's gradient checkpointing.
        is_encoder_decoder, is_peft_model, world_size, backward_batch_size, global_backward_batch_size,
            global_batch_size: set by the trainer.
        dataset_num_proc: accepted for TRL's scripts.
    """

    exp_name: str = field(default_factory=_script_name)
    seed: int = 0
    log_with: Optional[str] = None
    task_name: Optional[str] = None
    model_name: str = "gpt2"
    query_dataset: str = "stanfordnlp/imdb"
    reward_model: str = "sentiment-analysis:lvwerra/distilbert-imdb"
    remove_unused_columns: bool = True
    tracker_kwargs: Dict[str, Any] = field(default_factory=dict)
    accelerator_kwargs: Dict[str, Any] = field(default_factory=dict)
    project_kwargs: Dict[str, Any] = field(default_factory=dict)
    tracker_project_name: str = "trl"
    push_to_hub_if_best_kwargs: Dict[str, Any] = field(default_factory=dict)
    steps: int = 20000
    learning_rate: float = 1.41e-5
    adap_kl_ctrl: bool = True
    init_kl_coef: float = 0.2
    kl_penalty: str = "kl"
    target: float = 6.0
    horizon: float = 10000.0
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    batch_size: int = 128
    forward_batch_size: Optional[int] = None
    mini_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    world_size: Optional[int] = None
    ppo_epochs: int = 4
    max_grad_norm: Optional[float] = None
    optimize_cuda_cache: Optional[bool] = None
    optimize_device_cache: bool = False
    early_stopping: bool = False
    target_kl: float = 1.0
    compare_steps: int = 1
    ratio_threshold: float = 10.0
    use_score_scaling: bool = False
    use_score_norm: bool = False
    score_clip: Optional[float] = None
    whiten_rewards: bool = False
    gradient_checkpointing: bool = False
    is_encoder_decoder: Optional[bool] = None
    is_peft_model: Optional[bool] = None
    backward_batch_size: Optional[int] = None
    global_backward_batch_size: Optional[int] = None
    global_batch_size: Optional[int] = None
    dataset_num_proc: Optional[int] = None

    def __post_init__(self) -> None:
        if self.optimize_cuda_cache is not None:
            if self.optimize_device_cache:
                raise ValueError("set optimize_device_cache or its old name optimize_cuda_cache, not both")
            self.optimize_device_cache = bool(self.optimize_cuda_cache)
        if self.forward_batch_size is not None:
            self.mini_batch_size = self.forward_batch_size
        if self.kl_penalty not in KL_PENALTIES:
            raise ValueError(f"kl_penalty must be one of {', '.join(KL_PENALTIES)}, got {self.kl_penalty!r}")
        if self.log_with is not None and self.log_with not in TRACKERS:
            raise ValueError(f"log_with must be one of {', '.join(TRACKERS)} or None, got {self.log_with!r}")
        for name in ("batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.backward_batch_size = self.mini_batch_size * self.gradient_accumulation_steps
        if self.batch_size % self.backward_batch_size:
            raise ValueError(f"`batch_size` must be a multiple of `mini_batch_size * gradient_accumulation_steps`: "
                             f"{self.batch_size} is not a multiple of {self.backward_batch_size}")
        self.total_ppo_epochs = int(math.ceil(self.steps / self.batch_size))

    def to_dict(self) -> Dict[str, Any]:
        """The settings as one flat dict (``tracker_kwargs/wandb/name`` style keys)."""
        return flatten_dict({**asdict(self), "total_ppo_epochs": self.total_ppo_epochs})
