"""rl4lms.trl, TRL's classic API: config, core helpers, value-head models and their checkpoints, reference models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, HfArgumentParser

from rl4lms.models.loading import load_model
from rl4lms.trl import (AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, LengthSampler,
                        PPOConfig, create_reference_model, respond_to_batch, set_seed)
from rl4lms.trl.core import masked_mean, masked_var, masked_whiten, stats_to_np, whiten


def test_ppo_config_has_trl_defaults_and_derived_fields() -> None:
    config = PPOConfig()
    assert (config.learning_rate, config.init_kl_coef, config.target, config.horizon) == (1.41e-5, 0.2, 6.0, 10000.0)
    assert (config.gamma, config.lam, config.cliprange, config.cliprange_value, config.vf_coef) == (1.0, 0.95, 0.2, 0.2, 0.1)
    assert (config.batch_size, config.mini_batch_size, config.ppo_epochs, config.kl_penalty) == (128, 128, 4, "kl")
    assert config.adap_kl_ctrl and config.max_grad_norm is None and config.ratio_threshold == 10.0
    assert config.backward_batch_size == 128 and config.total_ppo_epochs == 157
    assert PPOConfig(forward_batch_size=16, batch_size=32).mini_batch_size == 16


def test_ppo_config_parses_like_trls_example_script() -> None:
    (config,) = HfArgumentParser(PPOConfig).parse_args_into_dataclasses(
        ["--model_name", "rl4lms/tiny-gpt2", "--batch_size", "8", "--mini_batch_size", "2",
         "--gradient_accumulation_steps", "2", "--log_with", "wandb", "--kl_penalty", "full"])
    assert (config.batch_size, config.backward_batch_size, config.log_with, config.kl_penalty) == (8, 4, "wandb", "full")
    assert config.to_dict()["model_name"] == "rl4lms/tiny-gpt2"


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 6, "mini_batch_size": 4}, "must be a multiple of `mini_batch_size \\* gradient_accumulation_steps`"),
    ({"kl_penalty": "l2"}, "kl_penalty must be one of kl, abs, mse, full"),
    ({"log_with": "mlflow"}, "log_with must be one of wandb, tensorboard"),
])
def test_ppo_config_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PPOConfig(**kwargs)


def test_core_helpers() -> None:
    set_seed(3)
    first = [LengthSampler(4, 8)() for _ in range(20)]
    set_seed(3)
    assert first == [LengthSampler(4, 8)() for _ in range(20)] and set(first) <= {4, 5, 6, 7}
    values = torch.tensor([1.0, 2.0, 3.0, 10.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert masked_mean(values, mask) == pytest.approx(2.0) and masked_var(values, mask) == pytest.approx(1.0)
    assert masked_var(values, mask, unbiased=False) == pytest.approx(2 / 3)
    assert whiten(values).mean() == pytest.approx(0.0, abs=1e-6)
    assert masked_whiten(values, mask)[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-4)
    stats = stats_to_np({"a": torch.tensor(2.0), "b": torch.tensor([1.0, 2.0])})
    assert stats["a"] == 2.0 and isinstance(stats["b"], np.ndarray)


def test_respond_to_batch_samples_new_tokens(isolated_home: Path) -> None:
    model = AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2")
    queries = torch.tensor([[5, 6, 7], [8, 9, 10]])
    response = respond_to_batch(model, queries, txt_len=4, top_k=5)
    assert response.shape == (2, 4)


def test_plain_lm_gets_a_fresh_head_with_trls_arguments(isolated_home: Path) -> None:
    model = AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2", summary_dropout_prob=0.3,
                                                              v_head_init_strategy="normal",
                                                              v_head_initializer_range=0.5)
    assert isinstance(model.v_head.dropout, torch.nn.Dropout) and model.v_head.dropout.p == 0.3
    assert 0.2 < float(model.v_head.summary.weight.std()) < 1.0 and not model.v_head.summary.bias.any()
    logits, loss, values = model(input_ids=torch.tensor([[5, 6, 7]]))
    assert logits.shape[:2] == (1, 3) and values.shape == (1, 3) and loss is None
    with pytest.raises(ValueError, match="v_head_init_strategy must be None or 'normal'"):
        AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2", v_head_init_strategy="xavier")


@pytest.mark.parametrize("cls, tiny", [(AutoModelForCausalLMWithValueHead, "rl4lms/tiny-gpt2"),
                                       (AutoModelForSeq2SeqLMWithValueHead, "rl4lms/tiny-t5")])
def test_saved_folder_reloads_its_head_in_both_formats(cls: type, tiny: str, tmp_path: Path) -> None:
    model = cls.from_pretrained(tiny, v_head_init_strategy="normal")
    model.save_pretrained(tmp_path / "saved")
    trl_keys = {key for key in load_file(str(tmp_path / "saved" / "model.safetensors")) if key.startswith("v_head.")}
    assert trl_keys == {"v_head.summary.weight", "v_head.summary.bias"}  # TRL finds its head in the weights file
    (tmp_path / "saved" / "value_head.safetensors").unlink()  # as TRL itself saves: only the weights file
    again = cls.from_pretrained(str(tmp_path / "saved"))
    assert torch.equal(again.v_head.summary.weight, model.v_head.summary.weight)
    assert set(model.state_dict()) >= trl_keys and not any(k.startswith("pretrained_model.") for k in model.state_dict())


def test_a_trl_sharded_folder_loads_its_head(tmp_path: Path, isolated_home: Path) -> None:
    model = AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2", v_head_init_strategy="normal")
    model.pretrained_model.save_pretrained(tmp_path / "sharded", state_dict=model.state_dict(), max_shard_size="100KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert "v_head.summary.weight" in index["weight_map"]
    again = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "sharded"))
    assert torch.equal(again.v_head.summary.bias, model.v_head.summary.bias)


def test_create_reference_model_freezes_a_copy(isolated_home: Path) -> None:
    model = AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2")
    reference = create_reference_model(model)
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    assert all(p.requires_grad for p in model.parameters())
    assert reference.v_head.summary.weight.data_ptr() != model.v_head.summary.weight.data_ptr()


def test_create_reference_model_shares_the_first_layers(isolated_home: Path) -> None:
    model = load_model(AutoModelForCausalLM, "rl4lms/tiny-gpt2")
    reference = create_reference_model(model, num_shared_layers=1)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert "transformer.wte.weight" in frozen and "transformer.h.0.attn.c_attn.weight" in frozen
    assert not any(name.startswith("transformer.h.1.") for name in frozen)
    shared = dict(reference.named_parameters())
    assert shared["transformer.h.0.attn.c_attn.weight"] is dict(model.named_parameters())[
        "transformer.h.0.attn.c_attn.weight"]  # held once in memory
    assert shared["transformer.h.1.attn.c_attn.weight"].data_ptr() != dict(model.named_parameters())[
        "transformer.h.1.attn.c_attn.weight"].data_ptr()
    with pytest.raises(ValueError, match="Layer pattern could not be matched"):
        create_reference_model(model, num_shared_layers=1, pattern="decoder.block.{layer}")
