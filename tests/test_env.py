"""TextGenEnv: gymnasium API conformance, termination, rewards, truncation and observation layout."""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rl4lms.data_pools.text_gen_pool import Sample
from rl4lms.envs.observation import OBSERVATION_KEYS, Observation
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.errors import EmptyDataPoolError
from rl4lms.rewards.base import RewardFunction
from rl4lms.rewards.synthetic import IncreasingNumbersReward
from rl4lms.scoring.synthetic import increasing_numbers_score

SAMPLES = [
    Sample(id="s0", prompt_or_input_text="1 2", references=["3 4 5"]),
    Sample(id="s1", prompt_or_input_text="10", references=["11 12"], meta_data={"k": 1}),
    Sample(id="s2", prompt_or_input_text="the meeting is on", references=["x"]),
]


def _ids(tokenizer: Any, text: str) -> List[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _make_env(tokenizer: Any, **kwargs: Any) -> TextGenEnv:
    defaults: Dict[str, Any] = dict(reward_function=IncreasingNumbersReward(min_tokens=10), samples=SAMPLES,
                                    max_episode_length=6, max_prompt_length=8)
    defaults.update(kwargs)
    return TextGenEnv(tokenizer, **defaults)


def _non_special_token(tokenizer: Any) -> int:
    token = _ids(tokenizer, "5")[0]
    assert token not in (tokenizer.eos_token_id, tokenizer.pad_token_id)
    return token


def test_tokenizer_assumptions(tiny_tokenizer: Any) -> None:
    # The tests below rely on distinct pad and eos ids of the embedded tokenizer.
    assert tiny_tokenizer.pad_token_id is not None
    assert tiny_tokenizer.eos_token_id is not None
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id


def test_passes_gymnasium_env_checker(tiny_tokenizer: Any) -> None:
    env = _make_env(tiny_tokenizer, max_episode_length=4, terminate_on_eos=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    # The checker reports soft problems (e.g. non-deterministic reset) as warnings.
    assert [str(w.message) for w in caught if "WARN:" in str(w.message)] == []


def test_spaces(tiny_tokenizer: Any) -> None:
    env = _make_env(tiny_tokenizer, max_episode_length=5, max_prompt_length=7)
    vocab = len(tiny_tokenizer)
    assert env.action_space.n == vocab
    space = env.observation_space
    assert set(space.spaces) == set(OBSERVATION_KEYS)
    assert space["prompt_or_input_encoded_pt"].shape == (7,)
    assert space["context_encoded_pt"].shape == (5,)
    assert space["input_encoded_pt"].shape == (12,)
    assert space["input_attention_mask_pt"].high.max() == 1
    assert space["input_encoded_pt"].high.max() == vocab - 1
    obs, _ = env.reset(seed=0)
    assert space.contains(obs)


def test_episode_ends_after_max_episode_length(tiny_tokenizer: Any) -> None:
    env = _make_env(tiny_tokenizer, max_episode_length=4, terminate_on_eos=False)
    env.reset(seed=0)
    token = _non_special_token(tiny_tokenizer)
    dones = []
    for _ in range(4):
        _, _, terminated, truncated, info = env.step(token)
        dones.append(terminated)
        assert truncated is False
    assert dones == [False, False, False, True]
    assert info["output"] == tiny_tokenizer.decode([token] * 4)


def test_eos_ignored_without_terminate_on_eos(tiny_tokenizer: Any) -> None:
    env = _make_env(tiny_tokenizer, max_episode_length=3, terminate_on_eos=False)
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(tiny_tokenizer.eos_token_id)
    assert terminated is False


def test_terminate_on_eos(tiny_tokenizer: Any) -> None:
    env = _make_env(tiny_tokenizer, max_episode_length=6, terminate_on_eos=True)
    env.reset(seed=0)
    token = _non_special_token(tiny_tokenizer)
    _, _, terminated, _, _ = env.step(token)
    assert terminated is False
    _, _, terminated, _, info = env.step(tiny_tokenizer.eos_token_id)
    assert terminated is True
    assert env.observation.action_history == [token, tiny_tokenizer.eos_token_id]
    # The EOS is a special token and is not part of the decoded output.
    assert info["output"] == tiny_tokenizer.decode([token])


def test_reward_zero_before_done_and_score_at_done(tiny_tokenizer: Any) -> None:
    actions = _ids(tiny_tokenizer, "1 2 3 foo")
    env = _make_env(tiny_tokenizer, reward_function=IncreasingNumbersReward(min_tokens=10),
                    max_episode_length=len(actions))
    env.reset(seed=0)
    rewards, terminated = [], False
    for action in actions:
        _, reward, terminated, _, info = env.step(action)
        rewards.append(reward)
    assert terminated
    assert info["output"] == "1 2 3 foo"
    assert rewards[:-1] == [0.0] * (len(actions) - 1)
    # Hand computation: tokens "1 2 3 foo" -> 4 words, numbers 1 < 2 < 3 -> run 3;
    # denominator max(4, 10 / 2) = 5 -> 3 / 5 = 0.6.
    assert rewards[-1] == pytest.approx(0.6)
    assert rewards[-1] == pytest.approx(increasing_numbers_score(info["output"], 10))


def test_prompt_truncation_left_and_right(tiny_tokenizer: Any) -> None:
    text = "1 2 3 foo"
    ids = _ids(tiny_tokenizer, text)
    assert len(ids) > 3
    sample = Sample(id="long", prompt_or_input_text=text)
    pad = tiny_tokenizer.pad_token_id

    left = _make_env(tiny_tokenizer, samples=[sample], max_prompt_length=3, prompt_truncation_side="left")
    assert left.encode_prompt(text) == ids[-3:]
    obs, _ = left.reset(seed=0)
    assert obs["prompt_or_input_encoded_pt"].tolist() == ids[-3:]
    assert obs["prompt_or_input_attention_mask_pt"].tolist() == [1, 1, 1]

    right = _make_env(tiny_tokenizer, samples=[sample], max_prompt_length=3, prompt_truncation_side="right")
    assert right.encode_prompt(text) == ids[:3]
    obs, _ = right.reset(seed=0)
    assert obs["prompt_or_input_encoded_pt"].tolist() == ids[:3]

    # A short prompt is not truncated, only padded.
    wide = _make_env(tiny_tokenizer, samples=[sample], max_prompt_length=len(ids) + 2)
    obs, _ = wide.reset(seed=0)
    assert obs["prompt_or_input_encoded_pt"].tolist() == [pad, pad] + ids


def test_prompts_keep_the_special_tokens_the_tokenizer_adds(isolated_home) -> None:
    """T5 tokenizers close every input with </s>; RL4LMs' prompts keep it, also when cut."""
    from tokenizers.processors import TemplateProcessing

    from rl4lms.models.loading import load_tokenizer

    tokenizer = load_tokenizer("rl4lms/tiny-t5")
    eos = tokenizer.eos_token_id
    plain = tokenizer("1 2 3 foo", add_special_tokens=False)["input_ids"]
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single=f"$A {tokenizer.eos_token}",
                                                                    special_tokens=[(tokenizer.eos_token, eos)])
    sample = Sample(id="long", prompt_or_input_text="1 2 3 foo")
    own_side = tokenizer.truncation_side
    wide = _make_env(tokenizer, samples=[sample], max_prompt_length=len(plain) + 1)
    assert wide.tokenize_prompt("1 2 3 foo") == (plain + [eos], False)
    for side, kept in (("left", plain[-2:]), ("right", plain[:2])):
        env = _make_env(tokenizer, samples=[sample], max_prompt_length=3, prompt_truncation_side=side)
        assert env.tokenize_prompt("1 2 3 foo") == (kept + [eos], True)
        assert tokenizer.truncation_side == own_side  # restored after cutting


def test_invalid_truncation_side_raises(tiny_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="prompt_truncation_side"):
        _make_env(tiny_tokenizer, prompt_truncation_side="middle")


def test_invalid_max_episode_length_raises(tiny_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="max_episode_length"):
        _make_env(tiny_tokenizer, max_episode_length=0)


def test_reset_with_sample_option(tiny_tokenizer: Any) -> None:
    env = _make_env(tiny_tokenizer)
    chosen = Sample(id="custom", prompt_or_input_text="7 8 9", references=["10"], meta_data={"tag": "x"})
    obs, info = env.reset(seed=0, options={"sample": chosen})
    assert info == {"sample_id": "custom"}
    assert env.observation.prompt_or_input_text == "7 8 9"
    assert env.observation.target_or_reference_texts == ["10"]
    assert env.observation.meta_info == {"tag": "x"}
    ids = _ids(tiny_tokenizer, "7 8 9")
    assert obs["prompt_or_input_encoded_pt"][-len(ids):].tolist() == ids


def test_reset_draws_from_samples_deterministically(tiny_tokenizer: Any) -> None:
    env = _make_env(tiny_tokenizer)
    ids = {s.id for s in SAMPLES}
    first = [env.reset(seed=123)[1]["sample_id"]] + [env.reset()[1]["sample_id"] for _ in range(9)]
    second = [env.reset(seed=123)[1]["sample_id"]] + [env.reset()[1]["sample_id"] for _ in range(9)]
    assert first == second
    assert set(first) <= ids


def test_step_after_done_raises(tiny_tokenizer: Any) -> None:
    env = _make_env(tiny_tokenizer, max_episode_length=1)
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(_non_special_token(tiny_tokenizer))
    assert terminated
    with pytest.raises(RuntimeError, match="reset"):
        env.step(_non_special_token(tiny_tokenizer))


def test_step_before_reset_raises(tiny_tokenizer: Any) -> None:
    env = _make_env(tiny_tokenizer)
    with pytest.raises(RuntimeError):
        env.step(_non_special_token(tiny_tokenizer))


def test_action_outside_vocab_raises(tiny_tokenizer: Any) -> None:
    env = _make_env(tiny_tokenizer)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        env.step(len(tiny_tokenizer))


def test_empty_samples_raise(tiny_tokenizer: Any) -> None:
    with pytest.raises(EmptyDataPoolError):
        _make_env(tiny_tokenizer, samples=[])
    assert issubclass(EmptyDataPoolError, ValueError)


class _RecordingReward(RewardFunction):
    """Per-step reward: +1 per step, +10 at the end; records what it was called with."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []

    def __call__(self, prev_observation: Observation, action: int, current_observation: Observation,
                 done: bool, meta_info: Optional[Dict[str, Any]] = None) -> float:
        self.calls.append(dict(prev=prev_observation, action=action, current=current_observation, done=done,
                               meta=meta_info))
        return 1.0 + (10.0 if done else 0.0)


def test_per_step_reward_called_every_step(tiny_tokenizer: Any) -> None:
    reward_fn = _RecordingReward()
    actions = _ids(tiny_tokenizer, "1 2 3 foo")
    sample = Sample(id="m", prompt_or_input_text="0", meta_data={"who": "me"})
    env = _make_env(tiny_tokenizer, reward_function=reward_fn, samples=[sample], max_episode_length=len(actions))
    env.reset(seed=0)
    rewards = [env.step(a)[1] for a in actions]
    assert rewards == [1.0] * (len(actions) - 1) + [11.0]
    assert len(reward_fn.calls) == len(actions)
    for t, call in enumerate(reward_fn.calls):
        assert isinstance(call["prev"], Observation)
        assert isinstance(call["current"], Observation)
        assert call["action"] == actions[t]
        assert call["done"] == (t == len(actions) - 1)
        assert call["meta"] == {"who": "me"}
        assert call["prev"].action_history == actions[:t]
        assert call["current"].action_history == actions[:t + 1]
        assert call["current"].context_text == tiny_tokenizer.decode(actions[:t + 1])
        assert call["prev"].context_text == tiny_tokenizer.decode(actions[:t])
    texts = [call["current"].context_text for call in reward_fn.calls]
    # The generated text grows with every step and ends as the full text.
    for shorter, longer in zip(texts, texts[1:]):
        assert longer.startswith(shorter) and len(longer) > len(shorter)
    assert texts[-1] == "1 2 3 foo"
    assert reward_fn.calls[0]["prev"].context_text == ""


def test_observation_padding_layout(tiny_tokenizer: Any) -> None:
    pad = tiny_tokenizer.pad_token_id
    prompt = _ids(tiny_tokenizer, "1 2")
    sample = Sample(id="p", prompt_or_input_text="1 2")
    env = _make_env(tiny_tokenizer, samples=[sample], max_prompt_length=5, max_episode_length=4)
    obs, _ = env.reset(seed=0)
    n = len(prompt)
    assert obs["prompt_or_input_encoded_pt"].tolist() == [pad] * (5 - n) + prompt
    assert obs["prompt_or_input_attention_mask_pt"].tolist() == [0] * (5 - n) + [1] * n
    assert obs["context_encoded_pt"].tolist() == [pad] * 4
    assert obs["context_attention_mask_pt"].tolist() == [0] * 4
    assert obs["input_encoded_pt"].tolist() == [pad] * (9 - n) + prompt
    for value in obs.values():
        assert value.dtype == np.int64

    a, b = _ids(tiny_tokenizer, "7")[0], _ids(tiny_tokenizer, "9")[0]
    env.step(a)
    obs, *_ = env.step(b)
    # Context: right-padded.
    assert obs["context_encoded_pt"].tolist() == [a, b, pad, pad]
    assert obs["context_attention_mask_pt"].tolist() == [1, 1, 0, 0]
    # Prompt unchanged, still left-padded.
    assert obs["prompt_or_input_encoded_pt"].tolist() == [pad] * (5 - n) + prompt
    # Input: prompt + context, left-padded to max_prompt_length + max_episode_length.
    joined = prompt + [a, b]
    assert obs["input_encoded_pt"].tolist() == [pad] * (9 - len(joined)) + joined
    assert obs["input_attention_mask_pt"].tolist() == [0] * (9 - len(joined)) + [1] * len(joined)
    assert env.observation.to_dict().keys() == set(OBSERVATION_KEYS)


def test_context_start_token(tiny_tokenizer: Any) -> None:
    pad = tiny_tokenizer.pad_token_id
    start = tiny_tokenizer.eos_token_id
    env = _make_env(tiny_tokenizer, samples=[Sample(id="p", prompt_or_input_text="1")], max_episode_length=3,
                    max_prompt_length=2, context_start_token=start)
    # The context holds the start token plus up to max_episode_length actions.
    assert env.observation_space["context_encoded_pt"].shape == (4,)
    assert env.observation_space["input_encoded_pt"].shape == (6,)
    obs, _ = env.reset(seed=0)
    prompt = _ids(tiny_tokenizer, "1")
    assert obs["context_encoded_pt"].tolist() == [start, pad, pad, pad]
    assert obs["context_attention_mask_pt"].tolist() == [1, 0, 0, 0]
    assert obs["input_encoded_pt"].tolist() == [pad] * (6 - len(prompt) - 1) + prompt + [start]
    token = _non_special_token(tiny_tokenizer)
    obs, *_ = env.step(token)
    assert obs["context_encoded_pt"].tolist() == [start, token, pad, pad]
    assert env.observation.context_text == tiny_tokenizer.decode([token])
    env.step(token)
    obs, _, terminated, _, info = env.step(token)
    assert terminated
    # The start token is still there after max_episode_length actions.
    assert obs["context_encoded_pt"].tolist() == [start, token, token, token]
    assert obs["context_attention_mask_pt"].tolist() == [1, 1, 1, 1]
    assert env.observation_space.contains(obs)
    # The start token is not part of the generated text or the action history.
    assert env.observation.action_history == [token] * 3
    assert info["output"] == tiny_tokenizer.decode([token] * 3)


def test_tokenizer_without_pad_token_rejected(tiny_tokenizer: Any) -> None:
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    with pytest.raises(ValueError, match="pad token"):
        _make_env(tokenizer)
