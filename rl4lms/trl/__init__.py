"""TRL's classic API (``trl`` 0.4-0.11) on this project's PPO core: import from ``rl4lms.trl``
where a script imported from ``trl``.

Here so far: ``PPOConfig``, the value-head models with TRL's checkpoint format, ``create_reference_model``
and ``rl4lms.trl.core``. ``PPOTrainer`` and ``TextEnvironment`` follow (issue 16).
"""
from rl4lms.trl.core import LengthSampler, respond_to_batch, set_seed
from rl4lms.trl.modeling_value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
from rl4lms.trl.ppo_config import PPOConfig
from rl4lms.trl.reference import create_reference_model

__all__ = ["AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead", "LengthSampler", "PPOConfig",
           "create_reference_model", "respond_to_batch", "set_seed"]
