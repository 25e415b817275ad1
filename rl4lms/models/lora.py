"""LoRA adapters through ``peft`` and 4-/8-bit loading through ``bitsandbytes`` (GPU only).

With adapters, the frozen base model doubles as the reference model: the policy computes
reference log-probs with the adapters disabled instead of keeping a second copy of the weights.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

QUANTIZATION_CHOICES = ("4bit", "8bit")


def quantization_kwargs(quantization: Optional[str], key: str = "policy.args.quantization",
                        setting: Optional[str] = None) -> Dict[str, Any]:
    """``from_pretrained`` arguments that load the model in 4 or 8 bits, or a clear refusal on CPU.
    ``setting`` names the user's setting in the refusal (default: ``key`` and the value)."""
    if quantization is None:
        return {}
    if quantization not in QUANTIZATION_CHOICES:
        raise ValueError(f"{key} {quantization!r} is not one of {', '.join(QUANTIZATION_CHOICES)}")
    setting = setting or f"{key} '{quantization}'"
    if not torch.cuda.is_available():
        raise ValueError(f"{setting} loads the model through bitsandbytes, which needs a CUDA GPU, "
                         "and none is available here; leave it out (LoRA adapters alone work on CPU)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ValueError(f"{setting} needs the bitsandbytes package: pip install bitsandbytes") from error
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=quantization == "4bit", load_in_8bit=quantization == "8bit")
    return {"quantization_config": config, "device_map": {"": torch.cuda.current_device()}}


def add_lora_adapters(model: nn.Module, peft_config: Any, task_type: Optional[str] = None,
                      key: str = "policy.args.peft_config") -> nn.Module:
    """``model`` wrapped by ``peft.get_peft_model`` with a ``LoraConfig(**peft_config)`` (or with
    ``peft_config`` itself when it is a ``peft`` config object); only the adapters (and
    ``modules_to_save``) stay trainable."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers.pytorch_utils import Conv1D

    if task_type is None:
        task_type = "SEQ_2_SEQ_LM" if getattr(model.config, "is_encoder_decoder", False) else "CAUSAL_LM"
    # GPT-2-style Conv1D layers store their weight transposed; peft must know (it warns and fixes it).
    uses_conv1d = any(isinstance(module, Conv1D) for module in model.modules())
    try:
        config = peft_config if not isinstance(peft_config, dict) else \
            LoraConfig(task_type=task_type, **{"fan_in_fan_out": uses_conv1d, **peft_config})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{key}: {error}") from error
    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model)
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # e.g. target_modules that the model does not have
        raise ValueError(f"{key}: {error}") from error


LORA_ADAPTER_DIR = "lora_adapter"
"""Sub-folder of a saved model holding the LoRA adapters alone (``PeftModel.from_pretrained``)."""


def merged_model(model: nn.Module) -> nn.Module:
    """A LoRA (``peft``) model's copy with the adapters merged into the base weights (the model
    itself is left as it is); any other model as it is."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()


def save_model(model: nn.Module, out_dir: Path, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """``save_pretrained`` into ``out_dir``; a LoRA model is saved merged (what plain loaders read),
    with its adapters alone in ``out_dir/lora_adapter``. ``state_dict`` replaces the model's own
    weights (not for LoRA models)."""
    from peft import PeftModel

    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir / LORA_ADAPTER_DIR)
        merged_model(model).save_pretrained(out_dir)
    else:
        model.save_pretrained(out_dir, state_dict=state_dict)
