"""rl4lms.trl value-head models as TRL 0.11 builds and stores them: head init and dropout, LM-head check,
8-bit flags, the reward adapter, and LoRA folders in both libraries' layouts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from rl4lms.models.loading import load_model
from rl4lms.trl import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, PPOConfig

peft = pytest.importorskip("peft")


def _lora(task_type: str = "CAUSAL_LM", **kwargs) -> "peft.LoraConfig":
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, task_type=task_type,
                           **kwargs)


def test_the_default_head_is_torchs_linear_init_with_a_random_bias(isolated_home: Path) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2")
    bound = 1.0 / model.config.n_embd ** 0.5  # torch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert model.v_head.summary.bias.abs().item() > 0 and model.v_head.summary.weight.abs().max() <= bound
    assert isinstance(model.v_head.dropout, torch.nn.Dropout) and model.v_head.dropout.p == 0.1  # TRL's default


def test_summary_dropout_prob_in_the_lm_config_wins(isolated_home: Path) -> None:
    lm = load_model(AutoModelForCausalLM, "rl4lms/tiny-gpt2")
    lm.config.summary_dropout_prob = 0.5
    assert AutoModelForCausalLMWithValueHead.from_pretrained(lm, summary_dropout_prob=0.2).v_head.dropout.p == 0.5


@pytest.mark.parametrize("cls, tiny, base", [
    (AutoModelForCausalLMWithValueHead, "rl4lms/tiny-gpt2", lambda m: m.transformer),
    (AutoModelForSeq2SeqLMWithValueHead, "rl4lms/tiny-t5", lambda m: m),
])
def test_a_model_without_an_lm_head_is_refused(cls: type, tiny: str, base, isolated_home: Path) -> None:
    assert cls.lm_head_namings[0] == "lm_head"
    lm = base(load_model(AutoModel if cls is AutoModelForSeq2SeqLMWithValueHead else AutoModelForCausalLM, tiny))
    with pytest.raises(ValueError, match="has no language model head"):
        cls.from_pretrained(lm)


def test_load_in_8bit_is_one_clear_refusal_without_a_gpu(isolated_home: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("on a GPU load_in_8bit goes to bitsandbytes")
    with pytest.raises(ValueError, match=r"^load_in_8bit=True loads the model through bitsandbytes, which needs a CUDA"):
        AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2", load_in_8bit=True)


def _reward_adapter(folder: Path) -> torch.Tensor:
    """A LoRA sequence classifier (score head trained one step) saved to ``folder``; its logits."""
    torch.manual_seed(0)
    classifier = load_model(AutoModelForSequenceClassification, "rl4lms/tiny-sentiment-classifier")
    reward_model = peft.get_peft_model(classifier, _lora("SEQ_CLS", fan_in_fan_out=True))
    reward_model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    with torch.no_grad():
        for parameter in reward_model.parameters():
            if parameter.grad is not None:
                parameter -= 0.5 * parameter.grad
    reward_model.eval()
    reward_model.save_pretrained(folder)
    return reward_model(torch.tensor([[5, 6, 7, 8]])).logits.detach()


def test_the_reward_adapter_scores_with_its_own_head_and_hands_the_policy_back(tmp_path: Path,
                                                                              isolated_home: Path) -> None:
    expected = _reward_adapter(tmp_path / "rm")
    # The classifier is a 1-layer GPT-2 with its own width: a policy of the same shape carries the adapter.
    policy_lm = load_model(AutoModelForSequenceClassification, "rl4lms/tiny-sentiment-classifier")
    causal = AutoModelForCausalLM.from_config(policy_lm.config)
    causal.transformer.load_state_dict(policy_lm.transformer.state_dict())
    model = AutoModelForCausalLMWithValueHead.from_pretrained(peft.get_peft_model(causal, _lora(fan_in_fan_out=True)),
                                                              reward_adapter=str(tmp_path / "rm"))
    assert model.supports_rm_adapter and not model.score.weight.requires_grad
    before = model(input_ids=torch.tensor([[5, 6, 7, 8]]))[0]
    scores = model.compute_reward_score(input_ids=torch.tensor([[5, 6, 7, 8]]))
    assert scores.shape == (1, 4, 2) and torch.allclose(scores[:, -1], expected, atol=1e-5)
    assert model.pretrained_model.active_adapter == "default" and torch.equal(model(input_ids=torch.tensor(
        [[5, 6, 7, 8]]))[0], before)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora" in n or "v_head" in n) and "reward" not in n for n in trainable)


def test_reward_adapter_needs_a_peft_model_and_a_score_head(tmp_path: Path, isolated_home: Path) -> None:
    with pytest.raises(ValueError, match="reward_adapter needs a model with LoRA adapters"):
        AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2", reward_adapter=str(tmp_path))
    model = AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2")
    with pytest.raises(ValueError, match="this model has no reward adapter"):
        model.compute_reward_score(torch.tensor([[5, 6]]))


def test_a_lora_folder_saved_here_keeps_its_head_where_trl_reads_it(tmp_path: Path, isolated_home: Path) -> None:
    model = AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2", peft_config=_lora())
    model.save_pretrained(tmp_path / "lora")
    trl_head = torch.load(tmp_path / "lora" / "pytorch_model.bin", weights_only=True)
    assert set(trl_head) == {"v_head.summary.weight", "v_head.summary.bias"}  # all TRL keeps for a LoRA model
    assert torch.equal(trl_head["v_head.summary.bias"], model.v_head.summary.bias.detach())
    again = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "lora"))
    assert again.is_peft_model and torch.equal(again.v_head.summary.weight, model.v_head.summary.weight)


def test_a_lora_folder_saved_by_trls_trainer_loads_with_its_head(tmp_path: Path, isolated_home: Path) -> None:
    """TRL's ``PPOTrainer.save_pretrained`` on a LoRA model: the adapters, the head alone in
    ``pytorch_model.bin``, and its ``PPOConfig`` written as ``config.json``."""
    base = load_model(AutoModelForCausalLM, "rl4lms/tiny-gpt2")
    lora = peft.get_peft_model(base, _lora(fan_in_fan_out=True))
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    folder = tmp_path / "trl_lora"
    lora.save_pretrained(folder)
    head = {"v_head.summary.weight": torch.randn(1, base.config.n_embd), "v_head.summary.bias": torch.randn(1)}
    torch.save(head, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(PPOConfig(exp_name="trl").to_dict()))
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(folder), is_trainable=True)
    assert torch.equal(model.v_head.summary.weight, head["v_head.summary.weight"])
    assert model.is_peft_model and any(p.requires_grad for n, p in model.named_parameters() if "lora_B" in n)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.allclose(model(input_ids=ids)[0], lora(input_ids=ids).logits, atol=1e-5)
