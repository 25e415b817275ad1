"""A gymnasium environment in which each action appends one token to the generated text."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from transformers import PreTrainedTokenizerBase

from rl4lms.data_pools.text_gen_pool import Sample
from rl4lms.envs.observation import Observation, ObservationLayout
from rl4lms.errors import EmptyDataPoolError
from rl4lms.models.chat_template import ChatPrompt
from rl4lms.rewards.base import AnyRewardFunction, BatchedRewardFunction, reward_value, reward_values


class TextGenEnv(gym.Env):
    """Token-level text generation MDP (RL4LMs' ``TextGenEnv`` on the gymnasium API).

    ``reset`` draws a prompt from ``samples`` (or takes ``options={"sample": Sample}``);
    ``step(token_id)`` appends the token. The episode ends when ``max_episode_length``
    tokens were generated or, with ``terminate_on_eos``, on the EOS token; both count as
    ``terminated`` because the finished text is final (there is nothing to bootstrap).
    Per-step reward functions are called every step; batched ones once, at the end.
    With ``chat_template`` every prompt is the user turn of a chat written by the tokenizer's chat
    template (after ``system_prompt``, if given), as instruct models expect.
    """

    metadata = {"render_modes": []}

    def __init__(self, tokenizer: PreTrainedTokenizerBase, reward_function: Optional[AnyRewardFunction],
                 samples: Sequence[Sample], max_episode_length: int = 512, max_prompt_length: Optional[int] = None,
                 terminate_on_eos: bool = False, context_start_token: Optional[int] = None,
                 prompt_truncation_side: str = "left", chat_template: bool = False,
                 system_prompt: Optional[str] = None) -> None:
        super().__init__()
        if len(samples) == 0:
            raise EmptyDataPoolError("TextGenEnv needs at least one sample; the data pool split is empty")
        if max_episode_length < 1:
            raise ValueError(f"env.args.max_episode_length must be at least 1, got {max_episode_length}")
        if prompt_truncation_side not in ("left", "right"):
            raise ValueError(f"env.args.prompt_truncation_side must be 'left' or 'right', got {prompt_truncation_side!r}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token_as_eos_token or use a "
                             "tokenizer with a pad token")
        self.tokenizer = tokenizer
        self.reward_function = reward_function
        self.samples = list(samples)
        self.max_episode_length = max_episode_length
        self.max_prompt_length = max_prompt_length or tokenizer.model_max_length
        self.terminate_on_eos = terminate_on_eos
        self.context_start_token = context_start_token
        self.prompt_truncation_side = prompt_truncation_side
        if system_prompt is not None and not chat_template:
            raise ValueError("env.args.system_prompt needs env.args.chat_template: true")
        self.chat_prompt = ChatPrompt(tokenizer, system_prompt) if chat_template else None
        # The context holds the optional start token followed by up to max_episode_length actions.
        self.context_length = max_episode_length + (context_start_token is not None)
        vocab = len(tokenizer)
        prompt_box = spaces.Box(0, vocab - 1, (self.max_prompt_length,), dtype=np.int64)
        context_box = spaces.Box(0, vocab - 1, (self.context_length,), dtype=np.int64)
        input_box = spaces.Box(0, vocab - 1, (self.max_prompt_length + self.context_length,), dtype=np.int64)

        def mask_like(box: spaces.Box) -> spaces.Box:
            return spaces.Box(0, 1, box.shape, dtype=np.int64)

        self.observation_space = spaces.Dict({
            "prompt_or_input_encoded_pt": prompt_box,
            "prompt_or_input_attention_mask_pt": mask_like(prompt_box),
            "context_encoded_pt": context_box,
            "context_attention_mask_pt": mask_like(context_box),
            "input_encoded_pt": input_box,
            "input_attention_mask_pt": mask_like(input_box),
        })
        self.action_space = spaces.Discrete(vocab)
        self._sample: Optional[Sample] = None
        self._prompt_ids: List[int] = []
        self._actions: List[int] = []
        self._observation: Optional[Observation] = None
        self._done = True

    @property
    def observation_layout(self) -> ObservationLayout:
        return ObservationLayout(self.max_prompt_length, self.context_length, self.context_start_token,
                                 self.tokenizer.pad_token_id)

    def tokenize_prompt(self, text: str, truncation_side: Optional[str] = None) -> Tuple[List[int], bool]:
        """Token ids of a prompt with the special tokens the tokenizer adds (T5's closing ``</s>``;
        none for GPT-2), as RL4LMs encodes prompts, or written by the chat template, cut to
        ``max_prompt_length`` on ``truncation_side`` (default: ``prompt_truncation_side``; the text is
        cut, not the special tokens or the template); and whether it was cut."""
        if self.chat_prompt is not None:
            return self.chat_prompt.encode(text, self.max_prompt_length, truncation_side or self.prompt_truncation_side)
        ids = self.tokenizer(text)["input_ids"]
        if len(ids) <= self.max_prompt_length:
            return ids, False
        side = self.tokenizer.truncation_side
        self.tokenizer.truncation_side = truncation_side or self.prompt_truncation_side
        try:
            return self.tokenizer(text, truncation=True, max_length=self.max_prompt_length)["input_ids"], True
        finally:
            self.tokenizer.truncation_side = side

    def encode_prompt(self, text: str) -> List[int]:
        """Token ids of a prompt as the episode sees it (see :meth:`tokenize_prompt`)."""
        return self.tokenize_prompt(text)[0]

    def _build_observation(self) -> Observation:
        assert self._sample is not None
        pad = self.tokenizer.pad_token_id
        prompt = np.full(self.max_prompt_length, pad, dtype=np.int64)
        prompt_mask = np.zeros(self.max_prompt_length, dtype=np.int64)
        if self._prompt_ids:
            prompt[-len(self._prompt_ids):] = self._prompt_ids
            prompt_mask[-len(self._prompt_ids):] = 1
        start = [self.context_start_token] if self.context_start_token is not None else []
        context_ids = start + self._actions
        context = np.full(self.context_length, pad, dtype=np.int64)
        context_mask = np.zeros(self.context_length, dtype=np.int64)
        context[:len(context_ids)] = context_ids
        context_mask[:len(context_ids)] = 1
        joined = self._prompt_ids + context_ids
        width = self.max_prompt_length + self.context_length
        inputs = np.full(width, pad, dtype=np.int64)
        input_mask = np.zeros(width, dtype=np.int64)
        if joined:
            inputs[-len(joined):] = joined
            input_mask[-len(joined):] = 1
        return Observation(
            prompt_or_input_encoded_pt=prompt, prompt_or_input_attention_mask_pt=prompt_mask,
            prompt_or_input_text=self._sample.prompt_or_input_text,
            context_encoded_pt=context, context_attention_mask_pt=context_mask,
            context_text=self.tokenizer.decode(self._actions, skip_special_tokens=True),
            target_or_reference_texts=list(self._sample.references),
            input_encoded_pt=inputs, input_attention_mask_pt=input_mask,
            action_history=list(self._actions), meta_info=dict(self._sample.meta_data))

    def reset(self, *, seed: Optional[int] = None,
              options: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        super().reset(seed=seed)
        sample = (options or {}).get("sample")
        if sample is None:
            sample = self.samples[int(self.np_random.integers(len(self.samples)))]
        self._sample = sample
        self._prompt_ids = self.encode_prompt(sample.prompt_or_input_text)
        self._actions = []
        self._done = False
        self._observation = self._build_observation()
        return self._observation.to_dict(), {"sample_id": sample.id}

    def step(self, action: int) -> Tuple[Dict[str, np.ndarray], float, bool, bool, Dict[str, Any]]:
        if self._done or self._observation is None:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        action = int(action)
        if not self.action_space.contains(action):
            raise ValueError(f"action {action} is outside the vocabulary (size {self.action_space.n})")
        previous = self._observation
        self._actions.append(action)
        self._done = (len(self._actions) >= self.max_episode_length
                      or (self.terminate_on_eos and action == self.tokenizer.eos_token_id))
        self._observation = self._build_observation()
        reward = self._reward(previous, action, self._observation, self._done)
        info: Dict[str, Any] = {"output": self._observation.context_text} if self._done else {}
        return self._observation.to_dict(), reward, self._done, False, info

    def _reward(self, previous: Observation, action: int, current: Observation, done: bool) -> float:
        if isinstance(self.reward_function, BatchedRewardFunction):
            if not done:
                return 0.0
            return reward_values(self.reward_function, self.reward_function(
                [current.prompt_or_input_text], [current.context_text], [current.target_or_reference_texts], [True],
                [current.meta_info]), 1)[0]
        return reward_value(self.reward_function, self.reward_function(previous, action, current, done,
                                                                       current.meta_info))

    @property
    def observation(self) -> Optional[Observation]:
        """The full :class:`Observation` (with texts) of the current step."""
        return self._observation
