"""Value-head models: save/load round trip, a clear error when the head is missing, trained run folders."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl4lms.errors import ValueHeadMissingError
from rl4lms.models.value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead

from test_rollout import LengthReward, make_ppo

CASES = [(AutoModelForCausalLMWithValueHead, "rl4lms/tiny-gpt2"), (AutoModelForSeq2SeqLMWithValueHead, "rl4lms/tiny-t5")]


def _forward(model, cls) -> tuple:
    ids = torch.tensor([[5, 6, 7, 8]])
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if cls is AutoModelForSeq2SeqLMWithValueHead:
        kwargs["decoder_input_ids"] = torch.tensor([[0, 9, 10]])
    with torch.no_grad():
        logits, _, values = model(**kwargs)
    return logits, values


@pytest.mark.parametrize("cls, name", CASES, ids=["causal", "seq2seq"])
def test_save_and_load_round_trip_keeps_the_value_head(tmp_path: Path, cls, name: str) -> None:
    model = cls.from_pretrained(name, allow_new_value_head=True).eval()
    with torch.no_grad():
        model.v_head.summary.weight.normal_(generator=torch.Generator().manual_seed(1))
        model.v_head.summary.bias.fill_(0.25)
    model.save_pretrained(tmp_path / "saved")
    loaded = cls.from_pretrained(str(tmp_path / "saved")).eval()
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    (logits, values), (logits_2, values_2) = _forward(model, cls), _forward(loaded, cls)
    torch.testing.assert_close(logits, logits_2)
    torch.testing.assert_close(values, values_2)
    assert values.shape == logits.shape[:2]


@pytest.mark.parametrize("cls, name", CASES, ids=["causal", "seq2seq"])
def test_a_folder_without_value_head_is_an_error_not_a_silent_reinit(cls, name: str) -> None:
    with pytest.raises(ValueHeadMissingError, match="has no value_head.safetensors.*allow_new_value_head=True"):
        cls.from_pretrained(name)


def test_a_trained_policy_folder_loads_with_its_value_head(tmp_path: Path, tiny_tokenizer) -> None:
    policy = make_ppo(tiny_tokenizer, LengthReward()).policy
    policy.save_pretrained(tmp_path / "model")
    loaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "model"))
    for key, value in policy.value_head.state_dict().items():
        assert torch.equal(loaded.v_head.state_dict()[key], value)
    for ours, theirs in zip(policy.model.parameters(), loaded.pretrained_model.parameters()):
        assert torch.equal(ours, theirs)


def test_a_separate_critic_is_saved_with_its_value_head_and_the_actor_folder_refuses_it(tmp_path: Path,
                                                                                        tiny_tokenizer) -> None:
    from rl4lms.envs.text_gen_env import TextGenEnv
    from rl4lms.policies.causal import CausalLMActorCriticPolicy

    from test_rollout import SAMPLES

    policy = CausalLMActorCriticPolicy(TextGenEnv(tiny_tokenizer, None, SAMPLES, max_episode_length=4).observation_space,
                                       None, lambda _: 1e-3, model_name="rl4lms/tiny-gpt2", tokenizer=tiny_tokenizer,
                                       shared_backbone=False)
    with torch.no_grad():  # a critic that has drifted from the actor, as after training
        for param in policy.critic_model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    policy.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueHeadMissingError, match="separate critic LM.*critic"):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "model"))
    critic = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "model" / "critic")).eval()
    prompt, response = torch.tensor([[5, 6, 7]]), torch.tensor([[8, 9]])
    expected = policy.predict_values(prompt, torch.ones_like(prompt), response, torch.ones_like(response))
    with torch.no_grad():
        _, _, values = critic(input_ids=torch.cat([prompt, response], 1), attention_mask=torch.ones(1, 5, dtype=torch.long))
    torch.testing.assert_close(values[:, 2:4], expected)
