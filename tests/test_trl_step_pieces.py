"""rl4lms.trl.PPOTrainer's public pieces of TRL's step (prepare_model_inputs, batched_forward_pass,
compute_rewards, compute_advantages, loss, _step_safety_checker) and TRL's minibatch statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rl4lms.algorithms.advantages import masked_mean, masked_var
from rl4lms.trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer


@pytest.fixture()
def tokenizer(eos_padded_tokenizer):
    return eos_padded_tokenizer


def _trainer(tokenizer, **config) -> PPOTrainer:
    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2", summary_dropout_prob=0.0)
    settings = {"batch_size": 2, "mini_batch_size": 1, "seed": 1, **config}
    with pytest.warns(UserWarning, match="No dataset is provided"):
        return PPOTrainer(PPOConfig(**settings), model, None, tokenizer)


QUERIES = [torch.tensor([5, 6, 7, 8]), torch.tensor([5, 6, 7, 8, 9, 10, 11])]
RESPONSES = [torch.tensor([12, 13, 14, 15, 16]), torch.tensor([17, 18, 19, 20, 21, 22])]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_forward_pass_gives_the_policys_numbers_whatever_the_padding(tokenizer, padding_side: str) -> None:
    trainer = _trainer(tokenizer)
    tokenizer.padding_side = padding_side
    try:
        inputs = trainer.prepare_model_inputs(QUERIES, RESPONSES)
        logprobs, logits, values, mask = trainer.batched_forward_pass(trainer.model, QUERIES, RESPONSES, inputs,
                                                                      return_logits=True)
    finally:
        tokenizer.padding_side = "left"
    assert logprobs.shape == values.shape == mask.shape == (2, 12) and logits.shape[:2] == (2, 12)
    assert mask.sum(1).tolist() == [5, 6]  # one prediction per response token
    trainer.core.score_episodes(QUERIES, RESPONSES, [0.0, 1.0])  # the PPO core's own forward of the triplets
    (data,) = trainer.core.ppo.rollout_buffer.chunks
    for row in range(2):
        assert torch.allclose(logprobs[row][mask[row] > 0], data.log_probs[row][data.response_mask[row] > 0], atol=1e-5)
        assert torch.allclose(values[row][mask[row] > 0], data.values[row][data.response_mask[row] > 0], atol=1e-5)


def test_rewards_advantages_and_loss_follow_trls_definitions(tokenizer) -> None:
    trainer = _trainer(tokenizer, gamma=1.0, lam=1.0, init_kl_coef=0.5)
    logprobs = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    ref_logprobs = logprobs - torch.tensor([[0.0, 0.1, 0.2, 0.3]])
    mask = torch.tensor([[0, 1, 1, 0]])
    rewards, non_score, kls = trainer.compute_rewards(torch.tensor([2.0]), logprobs, ref_logprobs, mask)
    assert torch.allclose(kls, torch.tensor([[0.0, 0.1, 0.2, 0.0]]))
    assert torch.allclose(non_score, -0.5 * kls) and torch.allclose(rewards, torch.tensor([[0.0, -0.05, 1.9, 0.0]]))
    values = torch.tensor([[9.0, 0.5, 0.25, 9.0]])
    masked_values, advantages, returns = trainer.compute_advantages(values, rewards, mask)
    assert torch.allclose(returns[0, 1:3], torch.tensor([1.85, 1.9]))  # gamma = lambda = 1: rewards to go
    assert torch.allclose(masked_values, values * mask) and torch.allclose(advantages[0, 1:3], torch.tensor([-0.7071, 0.7071]), atol=1e-4)
    vpreds = masked_values + 0.1
    logits = torch.randn(1, 4, 7)
    pg_loss, vf_loss, stats = trainer.loss(logprobs, masked_values, logits, vpreds, logprobs, mask, advantages, returns)
    assert pg_loss.item() == pytest.approx(0.0, abs=1e-6)  # ratio 1: minus the mean of whitened advantages
    expected_value_loss = 0.5 * float(((vpreds - returns)[0, 1:3] ** 2).mean())
    assert vf_loss.item() == pytest.approx(trainer.config.vf_coef * expected_value_loss, rel=1e-5)
    assert stats["returns/mean"].item() == pytest.approx(1.875) and stats["val/clipfrac"].item() == 0.0
    assert set(stats) >= {"loss/policy", "loss/value", "loss/total", "policy/entropy", "policy/approxkl",
                          "policy/policykl", "policy/clipfrac", "policy/advantages", "policy/advantages_mean",
                          "policy/ratio", "returns/var", "val/vpred", "val/error", "val/mean", "val/var"}


def test_step_safety_checker_moves_and_squeezes_as_trl_does(tokenizer) -> None:
    trainer = _trainer(tokenizer)
    queries, responses, scores, masks = trainer._step_safety_checker(2, QUERIES, RESPONSES,
                                                                     [torch.tensor([1.0]), torch.tensor(0.0)])
    assert [s.shape for s in scores] == [torch.Size([]), torch.Size([])] and masks is None
    assert queries[1].shape == (7,) and responses[0].shape == (5,)
    with pytest.raises(ValueError, match="Scores must be 1-dimensional"):
        trainer._step_safety_checker(2, QUERIES, RESPONSES, [torch.tensor([[1.0]]), torch.tensor([[0.0]])])
    with pytest.raises(ValueError, match=r"Batch size \(3\) does not match"):
        trainer._step_safety_checker(3, QUERIES, RESPONSES, [torch.tensor(1.0)] * 2)


def test_value_statistics_are_means_over_minibatches_as_trl_logs_them(tokenizer) -> None:
    trainer = _trainer(tokenizer, batch_size=4, mini_batch_size=2, ppo_epochs=1)
    queries, responses = QUERIES * 2, RESPONSES + [torch.tensor([30, 31]), torch.tensor([40, 41, 42, 43, 44, 45, 46])]
    np.random.seed(3)
    stats = trainer.step(queries, responses, [torch.tensor(float(s)) for s in (1, -2, 3, 0)])
    np.random.seed(3)
    order = np.random.permutation(4)  # the minibatch order, drawn as the trainer draws it
    data = trainer.core.ppo.rollout_buffer.data
    mask = data.response_mask.float()
    for name, values in (("ppo/returns/mean", data.returns), ("ppo/val/mean", data.values)):
        per_minibatch = [masked_mean(values[ix], mask[ix]).item() for ix in (order[:2], order[2:])]
        assert stats[name] == pytest.approx(np.mean(per_minibatch), rel=1e-5)
        assert stats[name] != pytest.approx(masked_mean(values, mask).item(), rel=1e-3)  # not the whole batch's
    per_minibatch_var = [masked_var(data.returns[ix], mask[ix]).item() for ix in (order[:2], order[2:])]
    assert stats["ppo/returns/var"] == pytest.approx(np.mean(per_minibatch_var), rel=1e-5)
    assert stats["ppo/val/var_explained"] == pytest.approx(1 - stats["ppo/val/error"] / stats["ppo/returns/var"])


def test_a_pad_token_may_be_set_after_the_trainer_is_built(tiny_tokenizer) -> None:
    tokenizer = type(tiny_tokenizer).from_pretrained(tiny_tokenizer.name_or_path)
    tokenizer.pad_token = None
    trainer = _trainer(tokenizer)
    assert tokenizer.pad_token is None
    with pytest.raises(ValueError, match="the tokenizer has no pad token"):
        trainer.generate(QUERIES, max_new_tokens=2)
    tokenizer.pad_token = tokenizer.eos_token
    assert len(trainer.generate(QUERIES, max_new_tokens=2, do_sample=False)) == 2
