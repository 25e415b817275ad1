"""NLPO: the action mask (top-p / top-k sets, special tokens, min_tokens_to_keep), masked rollouts and refresh."""
from __future__ import annotations

import pytest
import torch

from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.nlpo import NLPO
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.policies.causal import CausalLMActorCriticPolicy
from rl4lms.policies.maskable import MaskableCausalLMActorCriticPolicy, MaskableSeq2SeqLMActorCriticPolicy, \
    action_mask_from_logits
from rl4lms.rewards.synthetic import IncreasingNumbersReward

from test_rollout import SAMPLES

# Probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 for tokens 0..4 (written in a shuffled order).
PROBS = torch.tensor([[0.0625, 0.5, 0.125, 0.0625, 0.25]])
LOGITS = PROBS.log()


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    # 0.5 + 0.25 = 0.75 < 0.8, so the 0.125 token is needed too; nothing else.
    allowed = action_mask_from_logits(LOGITS, "learned_top_p", 0.8, 1, [])
    assert allowed.tolist() == [[False, True, True, False, True]]
    allowed = action_mask_from_logits(LOGITS, "learned_top_p", 0.5, 1, [])
    assert allowed.tolist() == [[False, True, False, False, False]]


def test_min_tokens_to_keep_widens_the_set() -> None:
    allowed = action_mask_from_logits(LOGITS, "learned_top_p", 0.5, 3, [])
    assert allowed.tolist() == [[False, True, True, False, True]]
    allowed = action_mask_from_logits(LOGITS, "learned_top_k", 1, 2, [])
    assert allowed.tolist() == [[False, True, False, False, True]]


def test_top_k_and_special_tokens_are_always_allowed() -> None:
    allowed = action_mask_from_logits(LOGITS, "topk", 2, 1, always_allowed=[0, 3])
    assert allowed.tolist() == [[True, True, False, True, True]]


def _nlpo(tokenizer, **policy_args) -> NLPO:
    env = TextGenEnv(tokenizer, IncreasingNumbersReward(min_tokens=2), SAMPLES, max_episode_length=6,
                     max_prompt_length=8, terminate_on_eos=True)
    args = dict(top_mask=0.5, mask_type="learned_top_p", min_tokens_to_keep=3, target_update_iterations=2)
    args.update(policy_args)
    return NLPO(MaskableCausalLMActorCriticPolicy, env, KLController(0.1), n_envs=4, n_steps=6, batch_size=4,
                n_epochs=1, learning_rate=1e-2, seed=0, device="cpu",
                policy_kwargs=dict(model_name="rl4lms/tiny-gpt2", tokenizer=tokenizer, terminate_on_eos=True,
                                   generation_kwargs={"do_sample": True, "top_k": 0}, **args))


def test_masked_rollout_samples_inside_the_mask_and_kl_uses_unmasked_log_probs(tiny_tokenizer) -> None:
    alg = _nlpo(tiny_tokenizer)
    policy = alg.policy
    torch.manual_seed(0)
    batch, _ = alg.collector.collect(SAMPLES[:4], kl_coeff=0.1)
    assert batch.action_masks is not None and batch.action_masks.shape[:2] == batch.response_ids.shape
    valid = batch.response_mask.bool()
    chosen_allowed = batch.action_masks.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    assert chosen_allowed[valid].all()
    # Each step allowed the mask model's top-p set: at least min_tokens_to_keep, far fewer than the vocabulary.
    sizes = batch.action_masks.sum(-1)[valid]
    assert (sizes >= 3).all() and (sizes < len(tiny_tokenizer) // 2).all()
    assert batch.action_masks[..., tiny_tokenizer.eos_token_id][valid].all()

    out = policy.evaluate_episodes(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    ref = policy.reference_log_probs(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    expected_kl = (out.log_probs - ref) * batch.response_mask
    torch.testing.assert_close(batch.kl, expected_kl, atol=1e-5, rtol=1e-5)  # unmasked log-probs
    # The stored (ratio) log-probs are the masked distribution's: higher than the unmasked ones.
    assert (batch.log_probs[valid] >= out.log_probs[valid] - 1e-5).all()
    assert (batch.log_probs[valid] > out.log_probs[valid] + 1e-3).any()


def test_mask_model_refreshes_every_target_update_iterations(tiny_tokenizer) -> None:
    alg = _nlpo(tiny_tokenizer)
    mask_model, model = alg.policy.mask_model, alg.policy.model
    first = next(mask_model.parameters()).detach().clone()
    alg.run_iteration()
    assert torch.equal(next(mask_model.parameters()), first), "refreshed after one update, expected two"
    assert int(alg.policy.updates_since_mask_refresh) == 1
    alg.run_iteration()
    assert int(alg.policy.updates_since_mask_refresh) == 0
    for ours, theirs in zip(mask_model.parameters(), model.parameters()):
        assert torch.equal(ours, theirs)
    assert not torch.equal(next(mask_model.parameters()), first)
    assert not any(p.requires_grad for p in mask_model.parameters())
    # Checkpoints carry the mask model and the refresh counter.
    state = alg.policy.trainable_state_dict()
    assert "updates_since_mask_refresh" in state and any(k.startswith("mask_model.") for k in state)


def test_nlpo_refuses_an_unmaskable_policy(tiny_tokenizer) -> None:
    env = TextGenEnv(tiny_tokenizer, IncreasingNumbersReward(min_tokens=2), SAMPLES, max_episode_length=4)
    with pytest.raises(ValueError, match="maskable_causal_lm_actor_critic_policy"):
        NLPO(CausalLMActorCriticPolicy, env, KLController(0.1), n_envs=2, n_steps=2, device="cpu",
             policy_kwargs=dict(model_name="rl4lms/tiny-gpt2", tokenizer=tiny_tokenizer))


@pytest.mark.parametrize("args, message", [
    ({"mask_type": "top_p"}, "mask_type"),
    ({"top_mask": 1.5}, "top_mask"),
    ({"mask_type": "learned_top_k", "top_mask": 0.5}, "token count"),
])
def test_bad_mask_settings_are_named(tiny_tokenizer, args: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _nlpo(tiny_tokenizer, **args)


def test_seq2seq_mask_model_predicts_the_next_decoder_token() -> None:
    from rl4lms.models.loading import load_tokenizer

    tokenizer = load_tokenizer("rl4lms/tiny-t5")
    policy = MaskableSeq2SeqLMActorCriticPolicy(
        TextGenEnv(tokenizer, None, SAMPLES, max_episode_length=4).observation_space, None, lambda _: 1e-3,
        model_name="rl4lms/tiny-t5", tokenizer=tokenizer)
    prompt = torch.tensor([[5, 6, 7]])
    generated = torch.tensor([[8, 9]])
    decoder_ids = torch.tensor([[0, 8, 9]])
    with torch.no_grad():
        direct = policy.mask_model(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                   decoder_input_ids=decoder_ids).logits[:, -1]
    torch.testing.assert_close(policy.mask_model_next_logits(prompt, torch.ones_like(prompt), generated), direct)


def _maskable_policy(kind: str):
    from rl4lms.models.loading import load_tokenizer

    name = f"rl4lms/tiny-{kind}"
    tokenizer = load_tokenizer(name)
    cls = MaskableCausalLMActorCriticPolicy if kind == "gpt2" else MaskableSeq2SeqLMActorCriticPolicy
    return cls(TextGenEnv(tokenizer, None, SAMPLES, max_episode_length=4).observation_space, None, lambda _: 1e-3,
               model_name=name, tokenizer=tokenizer, generation_kwargs={"do_sample": True, "top_k": 0},
               top_mask=0.5, min_tokens_to_keep=3)


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
@pytest.mark.slow
def test_cached_mask_model_decoding_equals_rereading_the_prefix(kind: str) -> None:
    policy = _maskable_policy(kind)
    prompt = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    if kind == "t5":
        prompt, prompt_mask = prompt.flip(1), prompt_mask.flip(1)  # right-padded encoder input
    response = torch.tensor([[20, 21, 22], [23, 24, 25]])
    with torch.no_grad():
        logits, state = policy.start_decoding(policy.mask_model, prompt, prompt_mask)
        for t in range(response.shape[1] + 1):
            expected = policy.mask_model_next_logits(prompt, prompt_mask, response[:, :t]) * policy.temperature
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
            if t < response.shape[1]:
                logits = policy.continue_decoding(policy.mask_model, state, response[:, t:t + 1])


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
@pytest.mark.slow
def test_sampled_masks_are_the_mask_models_sets_at_every_step(kind: str) -> None:
    policy = _maskable_policy(kind)
    prompt = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    prompt_mask = (prompt != 0).long() if kind == "gpt2" else torch.ones_like(prompt)
    torch.manual_seed(0)
    sampled = policy.sample_actions(prompt, prompt_mask, policy.generation_config(max_new_tokens=5))
    assert sampled.action_masks is not None
    for t in range(sampled.response_ids.shape[1]):
        logits = policy.mask_model_next_logits(prompt, prompt_mask, sampled.response_ids[:, :t])
        expected = action_mask_from_logits(logits, "learned_top_p", 0.5, 3, policy.always_allowed_ids)
        assert torch.equal(sampled.action_masks[:, t], expected), f"step {t}"
