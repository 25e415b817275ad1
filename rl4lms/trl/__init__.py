"""TRL's classic API (``trl`` 0.4-0.11) on this project's PPO core: import from ``rl4lms.trl``
where a script imported from ``trl``.

``PPOConfig`` and ``PPOTrainer``, the value-head models with TRL's checkpoint format,
``create_reference_model``, ``TextEnvironment``/``TextHistory`` and ``rl4lms.trl.core``.
"""
from rl4lms.trl.core import LengthSampler, respond_to_batch, set_seed
from rl4lms.trl.modeling_value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
from rl4lms.trl.ppo_config import PPOConfig
from rl4lms.trl.ppo_trainer import PPOTrainer
from rl4lms.trl.reference import create_reference_model
from rl4lms.trl.text_environment import TextEnvironment, TextHistory

__all__ = ["AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead", "LengthSampler", "PPOConfig",
           "PPOTrainer", "TextEnvironment", "TextHistory", "create_reference_model", "respond_to_batch", "set_seed"]
