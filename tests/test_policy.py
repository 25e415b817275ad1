"""Actor-critic LM policies on the tiny GPT-2 (causal) and T5 (seq2seq) models."""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, GenerationConfig, LogitsProcessor,
                          LogitsProcessorList)

from rl4lms.data_pools.text_gen_pool import Sample
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.policies import causal
from rl4lms.policies.base import (REFERENCE_PREFIX, LMActorCriticPolicy, entropy_from_logits, log_probs_and_entropy,
                                   masked_log_probs, response_mask_after_eos, with_fused_default)
from rl4lms.models.value_head import VALUE_HEAD_FILE
from rl4lms.policies.causal import CausalLMActorCriticPolicy
from rl4lms.policies.seq2seq import Seq2SeqLMActorCriticPolicy
from rl4lms.rewards.synthetic import IncreasingNumbersReward

MAX_NEW_TOKENS = 6
PROMPTS = ["1 2 3 4 5", "7", "the meeting is"]  # different lengths -> left padding in the batch

KINDS = {
    "causal": (CausalLMActorCriticPolicy, "rl4lms/tiny-gpt2", AutoModelForCausalLM),
    "seq2seq": (Seq2SeqLMActorCriticPolicy, "rl4lms/tiny-t5", AutoModelForSeq2SeqLM),
}


@pytest.fixture(scope="module")
def env(tiny_tokenizer: Any) -> TextGenEnv:
    return TextGenEnv(tiny_tokenizer, IncreasingNumbersReward(min_tokens=10),
                      [Sample(id="s", prompt_or_input_text="1 2")], max_episode_length=MAX_NEW_TOKENS,
                      max_prompt_length=8, terminate_on_eos=True)


def _build(kind: str, env: TextGenEnv, tokenizer: Any, **kwargs: Any) -> LMActorCriticPolicy:
    cls, model_name, _ = KINDS[kind]
    torch.manual_seed(0)
    return cls(env.observation_space, env.action_space, lambda _: 1e-3, model_name, tokenizer,
               generation_kwargs={"do_sample": True, "max_new_tokens": MAX_NEW_TOKENS}, **kwargs)


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def policy(kind: str, env: TextGenEnv, tiny_tokenizer: Any) -> LMActorCriticPolicy:
    """A shared policy that tests must not update (use ``_build`` for one to train)."""
    return _build(kind, env, tiny_tokenizer)


def _prompt_batch(tokenizer: Any) -> Tuple[torch.Tensor, torch.Tensor, List[List[int]]]:
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens):] = torch.tensor(tokens)
        mask[row, width - len(tokens):] = 1
    assert len({len(t) for t in encoded}) == len(encoded), "prompts should have different lengths"
    return ids, mask, encoded


class _ForceEosInRow0(LogitsProcessor):
    """Row 0 emits EOS as its 3rd generated token; every other sampled token avoids EOS and pad."""

    def __init__(self, eos: int, pad: int, start_len: int) -> None:
        self.eos = eos
        self.pad = pad
        self.start_len = start_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        step = input_ids.shape[1] - self.start_len
        scores[:, self.eos] = -float("inf")
        scores[:, self.pad] = -float("inf")
        if step == 2:
            scores[0, :] = -float("inf")
            scores[0, self.eos] = 0.0
        return scores


def _force_eos(policy: LMActorCriticPolicy, monkeypatch: pytest.MonkeyPatch, start_len: int) -> None:
    processor = _ForceEosInRow0(policy.tokenizer.eos_token_id, policy.tokenizer.pad_token_id, start_len)
    monkeypatch.setattr(policy.model, "generate",
                        functools.partial(policy.model.generate, logits_processor=LogitsProcessorList([processor])))


def test_response_mask_after_eos_hand_example() -> None:
    eos = 1
    response = torch.tensor([[5, 1, 7, 1],
                             [5, 6, 7, 8],
                             [1, 9, 9, 9],
                             [4, 4, 4, 1]])
    mask = response_mask_after_eos(response, eos, terminate_on_eos=True)
    # 1 up to and including the first EOS, 0 after it (a second EOS is also after the first)
    assert mask.tolist() == [[1, 1, 0, 0],
                             [1, 1, 1, 1],
                             [1, 0, 0, 0],
                             [1, 1, 1, 1]]
    assert response_mask_after_eos(response, eos, terminate_on_eos=False).tolist() == [[1] * 4] * 4
    assert response_mask_after_eos(response, None, terminate_on_eos=True).tolist() == [[1] * 4] * 4


def test_generate_pads_after_first_eos(kind: str, env: TextGenEnv, tiny_tokenizer: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _build(kind, env, tiny_tokenizer)
    prompt_ids, prompt_mask, _ = _prompt_batch(tiny_tokenizer)
    start_len = prompt_ids.shape[1] if kind == "causal" else 1  # seq2seq: decoder starts with one token
    _force_eos(policy, monkeypatch, start_len)
    torch.manual_seed(0)
    response, mask = policy.generate(prompt_ids, prompt_mask, policy.generation_config())
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    assert response.shape == mask.shape == (len(PROMPTS), MAX_NEW_TOKENS)
    # Row 0 ended with EOS as its 3rd token: pad after it, mask covers the EOS.
    assert response[0, 2].item() == eos
    assert response[0, 3:].tolist() == [pad] * (MAX_NEW_TOKENS - 3)
    assert mask[0].tolist() == [1, 1, 1, 0, 0, 0]
    # The other rows never emit EOS and run to max_new_tokens.
    assert mask[1:].tolist() == [[1] * MAX_NEW_TOKENS] * (len(PROMPTS) - 1)
    assert (response[1:] != eos).all()
    assert (response[1:] != pad).all()


def test_generate_without_terminate_on_eos_keeps_tokens(kind: str, env: TextGenEnv, tiny_tokenizer: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _build(kind, env, tiny_tokenizer, terminate_on_eos=False)
    prompt_ids, prompt_mask, _ = _prompt_batch(tiny_tokenizer)
    config = policy.generation_config()
    assert not config.eos_token_id  # None (or an empty list): no stop token
    start_len = prompt_ids.shape[1] if kind == "causal" else 1
    _force_eos(policy, monkeypatch, start_len)
    torch.manual_seed(0)
    response, mask = policy.generate(prompt_ids, prompt_mask, config)
    # EOS is an ordinary token: generation goes on after it and everything is masked in.
    assert response[0, 2].item() == tiny_tokenizer.eos_token_id
    assert mask.tolist() == [[1] * MAX_NEW_TOKENS] * len(PROMPTS)
    assert response.shape == (len(PROMPTS), MAX_NEW_TOKENS)
    assert (response[0, 3:] != tiny_tokenizer.pad_token_id).all()
    # The tokens after EOS are those the model generated, not replaced by padding.
    torch.manual_seed(0)
    raw = policy.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    assert response.tolist() == policy._response_from_sequences(raw, prompt_ids.shape[1]).tolist()


def test_generation_config_merges_overrides(policy: LMActorCriticPolicy, tiny_tokenizer: Any) -> None:
    config = policy.generation_config({"do_sample": False, "top_k": 3}, max_new_tokens=4)
    assert config.do_sample is False
    assert config.top_k == 3
    assert config.max_new_tokens == 4  # min(6 from generation_kwargs, 4)
    assert policy.generation_config(max_new_tokens=10).max_new_tokens == MAX_NEW_TOKENS
    assert config.pad_token_id == tiny_tokenizer.pad_token_id
    assert config.eos_token_id == tiny_tokenizer.eos_token_id


def test_evaluation_kwargs_replace_the_policy_s(policy: LMActorCriticPolicy) -> None:
    """RL4LMs evaluates with train_evaluation.generation_kwargs alone: beam search must not inherit sampling."""
    config = policy.generation_config({"num_beams": 2, "max_new_tokens": 3}, max_new_tokens=5,
                                      replace_policy_kwargs=True)
    assert config.num_beams == 2 and config.max_new_tokens == 3
    assert not config.do_sample  # the policy samples (do_sample: true); the evaluation does not say so
    assert policy.generation_config({}, replace_policy_kwargs=True).do_sample is True  # none given: the policy's


def test_evaluate_episodes_matches_generate_scores(policy: LMActorCriticPolicy, tiny_tokenizer: Any) -> None:
    """Log-probs of one batched forward equal those of HF's incremental generation (position ids,
    left padding of the prompts and right padding after EOS are handled the same way)."""
    prompt_ids, prompt_mask, _ = _prompt_batch(tiny_tokenizer)
    config = GenerationConfig(**{**policy.generation_config().to_dict(), "do_sample": False,
                                 "output_scores": True, "return_dict_in_generate": True})
    out = policy.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    response = policy._response_from_sequences(out.sequences, prompt_ids.shape[1])
    mask = response_mask_after_eos(response, tiny_tokenizer.eos_token_id, True)
    assert response.shape[1] == len(out.scores) > 0
    scores = torch.stack(out.scores, dim=1).float()
    expected = torch.log_softmax(scores, dim=-1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        result = policy.evaluate_episodes(prompt_ids, prompt_mask, response, mask)
    valid = mask.bool()
    assert valid.sum() > 0
    torch.testing.assert_close(result.log_probs[valid], expected[valid], atol=1e-4, rtol=0)
    # Greedy decoding picked the arg-max, whose log-prob is the row maximum.
    torch.testing.assert_close(expected, torch.log_softmax(scores, -1).max(-1).values, atol=1e-6, rtol=0)
    assert result.values.shape == response.shape
    assert result.entropy.shape == response.shape
    assert bool((result.entropy >= 0).all())


def test_rollout_outputs_from_generate_equal_a_batched_forward(policy: LMActorCriticPolicy,
                                                              tiny_tokenizer: Any) -> None:
    """The rollout reuses generate's logits and hidden states; they match evaluate_episodes (log-probs,
    entropy and values) at every valid position, for causal and seq2seq policies."""
    prompt_ids, prompt_mask, _ = _prompt_batch(tiny_tokenizer)
    torch.manual_seed(0)
    sampled = policy.sample_actions(prompt_ids, prompt_mask, policy.generation_config(max_new_tokens=6))
    assert sampled.step_logits.shape[:2] == sampled.response_ids.shape == sampled.step_hidden.shape[:2]
    fast = policy.rollout_outputs(prompt_ids, prompt_mask, sampled)
    with torch.no_grad():
        slow = policy.evaluate_episodes(prompt_ids, prompt_mask, sampled.response_ids, sampled.response_mask)
    valid = sampled.response_mask.bool()
    for name in ("log_probs", "entropy", "values", "unmasked_log_probs"):
        torch.testing.assert_close(getattr(fast, name)[valid], getattr(slow, name)[valid], atol=1e-4, rtol=1e-4)


def _whole_sequence_forward(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                            response_ids: torch.Tensor, response_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The causal policy's former computation: the whole prompt + response through the model, all
    positions' logits, then the positions that predict the response tokens."""
    ids = torch.cat([prompt_ids, response_ids], 1)
    mask = torch.cat([prompt_mask, response_mask], 1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                output_hidden_states=True)
    start, stop = prompt_ids.shape[1] - 1, ids.shape[1] - 1
    return out.logits[:, start:stop], out.hidden_states[-1][:, start:stop]


@pytest.mark.parametrize("with_logits_to_keep", [True, False])
@pytest.mark.parametrize("response_len", [1, 4])
@pytest.mark.slow
def test_causal_forward_equals_the_whole_sequence_forward(env: TextGenEnv, tiny_tokenizer: Any,
                                                         monkeypatch: pytest.MonkeyPatch, with_logits_to_keep: bool,
                                                         response_len: int) -> None:
    """The causal forward leaves the last response token out of the input and computes the LM head at
    the response positions only; logits, hidden states and gradients equal those of the whole
    sequence's forward (left-padded prompts, a right-padded response), with or without the model's
    ``logits_to_keep``."""
    policy = _build("causal", env, tiny_tokenizer)
    monkeypatch.setattr(causal, "accepts_logits_to_keep", lambda model: with_logits_to_keep)
    prompt_ids, prompt_mask, _ = _prompt_batch(tiny_tokenizer)
    torch.manual_seed(2)
    response = torch.randint(3, len(tiny_tokenizer), (len(PROMPTS), response_len))
    response_mask = torch.ones_like(response)
    response_mask[0, response_len // 2 + 1:] = 0
    results = []
    for forward in (policy._forward, None):
        policy.model.zero_grad(set_to_none=True)
        if forward is None:
            logits, hidden = _whole_sequence_forward(policy.model, prompt_ids, prompt_mask, response, response_mask)
        else:
            logits, hidden = forward(policy.model, prompt_ids, prompt_mask, response, response_mask, want_hidden=True)
        assert logits.shape[:2] == hidden.shape[:2] == response.shape
        (logits.logsumexp(-1).mean() + hidden.square().mean()).backward()
        results.append((logits.detach(), hidden.detach(), [p.grad.clone() for p in policy.model.parameters()]))
    (logits, hidden, grads), (expected_logits, expected_hidden, expected_grads) = results
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden, expected_hidden, atol=1e-5, rtol=1e-5)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)


def test_temperature_scales_the_update_s_logits(kind: str, env: TextGenEnv, tiny_tokenizer: Any) -> None:
    """At temperature 1 the logits are used as they are (no copy); at another temperature log-probs
    and entropy are those of ``logits / temperature``, from generate's logits as from a forward."""
    policy = _build(kind, env, tiny_tokenizer)
    logits = torch.randn(2, 3, 5)
    assert policy.temperature == 1.0 and policy.temperature_scaled(logits) is logits
    policy.temperature = 2.0
    assert torch.equal(policy.temperature_scaled(logits), logits / 2.0)
    prompt_ids, prompt_mask, _ = _prompt_batch(tiny_tokenizer)
    torch.manual_seed(0)
    sampled = policy.sample_actions(prompt_ids, prompt_mask, policy.generation_config(max_new_tokens=4))
    with torch.no_grad():
        raw, _ = policy._forward(policy.model, prompt_ids, prompt_mask, sampled.response_ids, sampled.response_mask,
                                 want_hidden=False)
        out = policy.evaluate_episodes(prompt_ids, prompt_mask, sampled.response_ids, sampled.response_mask)
    log_p = torch.log_softmax(raw / 2.0, -1)
    valid = sampled.response_mask.bool()
    expected = log_p.gather(-1, sampled.response_ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out.log_probs[valid], expected[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.entropy[valid], -(log_p.exp() * log_p).sum(-1)[valid], atol=1e-5, rtol=0)
    fast = policy.rollout_outputs(prompt_ids, prompt_mask, sampled)
    torch.testing.assert_close(fast.log_probs[valid], out.log_probs[valid], atol=1e-4, rtol=1e-4)


def test_log_probs_and_entropy_equal_the_separate_functions_with_and_without_entropy_grad() -> None:
    """One log-softmax gives both: the same values as ``masked_log_probs`` and ``entropy_from_logits``,
    bit for bit whether the entropy is differentiated or a statistic (computed in place)."""
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(0), requires_grad=True)
    tokens = torch.tensor([[1, 5, 10], [0, 2, 7]])
    differentiable = log_probs_and_entropy(logits, tokens, entropy_grad=True)
    statistic = log_probs_and_entropy(logits, tokens, entropy_grad=False)
    assert differentiable[1].requires_grad and not statistic[1].requires_grad and statistic[0].requires_grad
    for log_probs, entropy in (differentiable, statistic):
        assert torch.equal(log_probs, masked_log_probs(logits, tokens))
        assert torch.equal(entropy, entropy_from_logits(logits))
    uniform = log_probs_and_entropy(torch.zeros(1, 1, 4), torch.tensor([[2]]), entropy_grad=False)
    torch.testing.assert_close(uniform[1], torch.tensor([[torch.log(torch.tensor(4.0)).item()]]))
    torch.testing.assert_close(uniform[0], torch.tensor([[-torch.log(torch.tensor(4.0)).item()]]))


@pytest.mark.slow
def test_fused_adamw_is_the_default_and_steps_like_the_loop(env: TextGenEnv, tiny_tokenizer: Any) -> None:
    """The policy's AdamW is torch's fused one unless ``optimizer_kwargs`` choose; a step with it equals
    a step of the per-parameter loop up to float rounding."""
    weight = torch.zeros(2, requires_grad=True)
    assert with_fused_default([weight], {"eps": 1e-6}) == {"eps": 1e-6, "fused": True}
    assert with_fused_default([weight], {"fused": False}) == {"fused": False}
    assert with_fused_default([weight], {"foreach": True}) == {"foreach": True}
    assert with_fused_default([torch.zeros(2, dtype=torch.long)], {}) == {}
    fused = _build("causal", env, tiny_tokenizer)
    loop = _build("causal", env, tiny_tokenizer, optimizer_kwargs={"fused": False})
    assert fused.optimizer.param_groups[0]["fused"] is True and not loop.optimizer.param_groups[0]["fused"]
    prompt_ids, prompt_mask, _ = _prompt_batch(tiny_tokenizer)
    response = torch.randint(3, len(tiny_tokenizer), (len(PROMPTS), 4), generator=torch.Generator().manual_seed(3))
    start = [p.detach().clone() for p in loop.model.parameters()]
    for policy in (fused, loop):
        out = policy.evaluate_episodes(prompt_ids, prompt_mask, response, torch.ones_like(response))
        policy.optimizer.zero_grad()
        (-out.log_probs.mean() + out.values.square().mean()).backward()
        policy.optimizer.step()
    moved = 0.0
    for (name, a), b, before in zip(fused.model.named_parameters(), loop.model.parameters(), start):
        # Adam's first step is lr * g / (|g| + eps): equal up to the rounding of the last bits.
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6, msg=name)
        moved = max(moved, (a - before).abs().max().item())
    assert moved > 5e-4  # the step at lr 1e-3 did move the weights


def test_evaluate_episodes_batch_equals_single(policy: LMActorCriticPolicy, tiny_tokenizer: Any) -> None:
    """Padding a prompt into a batch does not change its log-probs or values."""
    prompt_ids, prompt_mask, encoded = _prompt_batch(tiny_tokenizer)
    torch.manual_seed(1)
    response = torch.randint(3, len(tiny_tokenizer), (len(PROMPTS), 4))
    response_mask = torch.ones_like(response)
    with torch.no_grad():
        batched = policy.evaluate_episodes(prompt_ids, prompt_mask, response, response_mask)
        for row, tokens in enumerate(encoded):
            ids = torch.tensor([tokens])
            single = policy.evaluate_episodes(ids, torch.ones_like(ids), response[row:row + 1], response_mask[row:row + 1])
            torch.testing.assert_close(batched.log_probs[row], single.log_probs[0], atol=1e-4, rtol=0)
            torch.testing.assert_close(batched.values[row], single.values[0], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_reference_log_probs_track_until_update(kind: str, env: TextGenEnv, tiny_tokenizer: Any) -> None:
    policy = _build(kind, env, tiny_tokenizer)
    prompt_ids, prompt_mask, _ = _prompt_batch(tiny_tokenizer)
    torch.manual_seed(0)
    response, mask = policy.generate(prompt_ids, prompt_mask, policy.generation_config())
    with torch.no_grad():
        before = policy.evaluate_episodes(prompt_ids, prompt_mask, response, mask).log_probs
    reference = policy.reference_log_probs(prompt_ids, prompt_mask, response, mask)
    torch.testing.assert_close(before, reference, atol=1e-6, rtol=0)

    out = policy.evaluate_episodes(prompt_ids, prompt_mask, response, mask)
    loss = -(out.log_probs * mask).sum() / mask.sum() + (out.values ** 2).mean()
    policy.optimizer.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in policy.ref_model.parameters())
    policy.optimizer.step()

    with torch.no_grad():
        after = policy.evaluate_episodes(prompt_ids, prompt_mask, response, mask).log_probs
    reference_after = policy.reference_log_probs(prompt_ids, prompt_mask, response, mask)
    # The frozen reference is unchanged; the policy moved (towards the sampled tokens).
    torch.testing.assert_close(reference_after, reference, atol=1e-6, rtol=0)
    valid = mask.bool()
    assert (after[valid] - reference[valid]).abs().max().item() > 1e-3
    assert (after[valid] * 1.0).sum() > (before[valid] * 1.0).sum()


def test_reference_model_frozen_and_not_optimised(policy: LMActorCriticPolicy) -> None:
    optimised = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    reference = list(policy.ref_model.parameters())
    assert reference and all(not p.requires_grad for p in reference)
    assert not optimised & {id(p) for p in reference}
    # Everything else (actor LM and value head) is optimised.
    trainable = {id(p) for name, p in policy.named_parameters() if not name.startswith(REFERENCE_PREFIX)}
    assert trainable == optimised
    assert {id(p) for p in policy.value_head.parameters()} <= optimised
    # The reference is a copy, not the same tensors as the actor.
    assert not {id(p) for p in policy.model.parameters()} & {id(p) for p in reference}


def test_trainable_state_dict_excludes_reference(policy: LMActorCriticPolicy) -> None:
    state = policy.trainable_state_dict()
    assert state
    assert not [k for k in state if k.startswith(REFERENCE_PREFIX)]
    assert any(k.startswith("model.") for k in state)
    assert {"value_head.summary.weight", "value_head.summary.bias"} <= set(state)
    full = policy.state_dict()
    assert any(k.startswith(REFERENCE_PREFIX) for k in full)
    assert set(state) == {k for k in full if not k.startswith(REFERENCE_PREFIX)}


def test_load_trainable_state_dict_round_trip(kind: str, env: TextGenEnv, tiny_tokenizer: Any,
                                              policy: LMActorCriticPolicy) -> None:
    other = _build(kind, env, tiny_tokenizer)
    with torch.no_grad():
        other.value_head.summary.bias.fill_(3.0)
    other.load_trainable_state_dict(policy.trainable_state_dict())
    torch.testing.assert_close(other.value_head.summary.bias, policy.value_head.summary.bias)
    with pytest.raises(RuntimeError, match="does not match"):
        other.load_trainable_state_dict({**policy.trainable_state_dict(), "bogus.weight": torch.zeros(1)})


def test_save_pretrained_loadable(kind: str, policy: LMActorCriticPolicy, tmp_path: Path, tiny_tokenizer: Any) -> None:
    out_dir = tmp_path / "saved"
    policy.save_pretrained(out_dir)
    auto_cls = KINDS[kind][2]
    loaded = auto_cls.from_pretrained(out_dir)
    assert type(loaded) is type(policy.model)
    reloaded_state = loaded.state_dict()
    for name, tensor in policy.model.state_dict().items():
        torch.testing.assert_close(reloaded_state[name], tensor, atol=0, rtol=0)
    head = load_file(str(out_dir / VALUE_HEAD_FILE))
    assert set(head) == {"summary.weight", "summary.bias"}
    torch.testing.assert_close(head["summary.weight"], policy.value_head.summary.weight.detach())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert len(tokenizer) == len(tiny_tokenizer)
    assert tokenizer("1 2 3")["input_ids"] == tiny_tokenizer("1 2 3")["input_ids"]


def test_vocab_mismatch_raises(kind: str, env: TextGenEnv, tiny_tokenizer: Any) -> None:
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(10)])
    assert len(tokenizer) > len(tiny_tokenizer)
    with pytest.raises(ValueError, match="tokenizer has"):
        _build(kind, env, tokenizer)


def test_policy_stays_in_eval_mode(policy: LMActorCriticPolicy) -> None:
    policy.train(True)
    policy.set_training_mode(True)
    assert not policy.training
    assert not policy.model.training
    assert not any(m.training for m in policy.modules())


def test_predict_next_token(kind: str, policy: LMActorCriticPolicy, env: TextGenEnv, tiny_tokenizer: Any) -> None:
    """SB3-style ``_predict`` on env observations agrees with greedy generation's first token."""
    sample = Sample(id="p", prompt_or_input_text="1 2 3")
    kwargs: Dict[str, Any] = dict(max_episode_length=MAX_NEW_TOKENS, max_prompt_length=8, terminate_on_eos=True)
    if kind == "seq2seq":
        kwargs["context_start_token"] = policy.model.config.decoder_start_token_id
    text_env = TextGenEnv(tiny_tokenizer, IncreasingNumbersReward(10), [sample], **kwargs)
    obs, _ = text_env.reset(seed=0)
    batch = {k: torch.as_tensor(v).unsqueeze(0) for k, v in obs.items()}
    token = policy._predict(batch, deterministic=True)
    ids = torch.tensor([tiny_tokenizer("1 2 3", add_special_tokens=False)["input_ids"]])
    config = GenerationConfig(**{**policy.generation_config().to_dict(), "do_sample": False, "max_new_tokens": 1})
    generated = policy.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    first = policy._response_from_sequences(generated, ids.shape[1])[0, 0]
    assert token.tolist() == [first.item()]
