"""TRL's classic tool-use API (``trl.TextEnvironment``, ``trl.TextHistory``, TRL 0.7-0.11) on the
project's tool loop (:class:`rl4lms.envs.tool_env.ToolEpisodeLoop`) with TRL's call syntax
(:class:`~rl4lms.envs.tool_env.RequestCallSyntax`).

The model calls a tool by writing ``<request><ToolName>argument<call>``; the environment appends
``output<response>`` (system text, mask 0), and the model goes on, until it writes ``<submit>``, EOS
or a turn without a call, the episode grows past ``max_length`` tokens (truncated), or ``max_turns``
turns have passed. ``run`` returns the query, response and response-mask tensors that
``PPOTrainer.step(queries, responses, rewards, masks)`` takes, with the rewards of ``reward_fn``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import PreTrainedTokenizerBase

from rl4lms.envs.tool_env import RequestCallSyntax, Tool, ToolEpisodeLoop
from rl4lms.errors import ToolCallError
from rl4lms.models.chat_template import ChatPrompt

try:  # rich is optional: without it the histories print as plain text with [prompt]/[system]/[model] marks
    from rich import print as rich_print
    from rich.text import Text
except ImportError:
    rich_print = Text = None

Piece = Tuple[Optional[str], str]
"""A piece of a rendered history: its kind (``prompt``, ``system``, ``model``, ``reward``; None:
unmarked) and its text."""


class TextHistory:
    """One episode as segments of text and tokens: the query, then the model's turns and the system's
    (tools') answers. ``token_masks`` is 1 on the model's tokens and 0 on the system's.

    Args:
        text: the first segment's text (usually prompt + task).
        tokens: its token ids, a 1-D tensor; the history's tensors stay on its device.
        system: whether the first segment is system text (mask 0) rather than the model's (mask 1).
    """

    prompt_color = "black on grey85"
    system_color = "black on cyan3"
    model_color = "black on deep_sky_blue1"
    reward_color = "black on plum1"

    def __init__(self, text: str, tokens: torch.Tensor, system: bool = True) -> None:
        self.system_spans: List[bool] = []
        self.text_spans: List[Tuple[int, int]] = []
        self.token_spans: List[Tuple[int, int]] = []
        self.text = ""
        self.tokens = torch.empty(0, dtype=torch.long, device=tokens.device)
        self.token_masks = torch.empty(0, dtype=torch.long, device=tokens.device)
        self.completed = False
        self.truncated = False
        self.reward: Any = 0.0
        self.append_segment(text, tokens, system=system)

    def append_segment(self, text: str, tokens: torch.Tensor, system: bool = True) -> None:
        """Add a segment: ``text`` and its ``tokens`` (both non-empty), system text or the model's."""
        if not text or len(tokens) == 0:
            raise ValueError(f"a history segment needs text and tokens, got {text!r} and {len(tokens)} tokens")
        tokens = tokens.to(self.tokens.device)
        self.text_spans.append((len(self.text), len(self.text) + len(text)))
        self.text += text
        self.system_spans.append(system)
        self.token_spans.append((len(self.tokens), len(self.tokens) + len(tokens)))
        self.tokens = torch.cat([self.tokens, tokens])
        self.token_masks = torch.cat([self.token_masks, torch.full_like(tokens, int(not system))])

    def complete(self, truncated: bool = False) -> None:
        """Mark the episode as ended (``truncated``: by the length limit)."""
        self.completed = True
        self.truncated = truncated

    @property
    def last_text_segment(self) -> str:
        """The text of the latest segment."""
        start, end = self.text_spans[-1]
        return self.text[start:end]

    def split_query_response_tokens(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(query, response, response_mask)``: the first segment's tokens, all later tokens, and
        their mask (1 where the model wrote them)."""
        split = self.token_spans[0][1]
        return self.tokens[:split], self.tokens[split:], self.token_masks[split:]

    def show_text(self, show_legend: bool = False) -> None:
        """Print the text with the prompt, system and model segments told apart, then the reward."""
        pieces: List[Piece] = [("prompt" if ix == 0 else "system" if system else "model", self.text[start:end])
                               for ix, ((start, end), system) in enumerate(zip(self.text_spans, self.system_spans))]
        self._print(pieces + self._reward_pieces())
        if show_legend:
            self.show_colour_legend()

    def show_tokens(self, tokenizer: PreTrainedTokenizerBase, show_legend: bool = False) -> None:
        """Print the tokens (``tokenizer``'s token strings) marked prompt, system (mask 0) or model."""
        prompt_end = self.token_spans[0][1]
        pieces: List[Piece] = [("prompt" if ix < prompt_end else "model" if mask else "system",
                                tokenizer.convert_ids_to_tokens(int(token)) + " ")
                               for ix, (token, mask) in enumerate(zip(self.tokens.tolist(), self.token_masks.tolist()))]
        self._print(pieces + self._reward_pieces())
        if show_legend:
            self.show_colour_legend()

    def show_colour_legend(self) -> None:
        """Print which colour (or, without ``rich``, which mark) is which kind of segment."""
        pieces: List[Piece] = [(None, "\n\n(Colour Legend: ")]
        for kind in ("prompt", "system", "model", "reward"):
            pieces += [(kind, kind.capitalize()), (None, "|")]
        self._print(pieces[:-1] + [(None, ")")])

    def _reward_pieces(self) -> List[Piece]:
        return [(None, "\n\n"), ("reward", f"Reward: {self.reward}")]

    def _print(self, pieces: List[Piece]) -> None:
        if Text is None:  # a mark where a run of one kind starts
            marked = (piece if kind is None or kind == previous else f"[{kind}]{piece}"
                      for (previous, _), (kind, piece) in zip([(None, "")] + pieces, pieces))
            print("".join(marked))
            return
        text = Text()
        for kind, piece in pieces:
            text.append(piece, style=getattr(self, f"{kind}_color") if kind else None)
        rich_print(text)


def _named_tools(tools: Union[Dict[str, Tool], Sequence[Tool]]) -> Dict[str, Tool]:
    """A dict as it is; a list named by each tool's ``__name__`` (functions) or class name (TRL)."""
    if isinstance(tools, dict):
        return dict(tools)
    return {getattr(tool, "__name__", type(tool).__name__): tool for tool in tools}


class TextEnvironment(ToolEpisodeLoop):
    """Lets a causal LM use tools in TRL's syntax; ``run`` plays a batch of tasks to their ends.

    Args:
        model: a causal LM with ``generate``: ``rl4lms.trl.AutoModelForCausalLMWithValueHead`` or a
            plain transformers model (also wrapped by ``accelerate``).
        tokenizer: its tokenizer, with a pad token (TRL's scripts set ``pad_token = eos_token``).
        tools: name -> callable ``str -> str``, or a list of them named by ``__name__`` (functions
            such as ``rl4lms.envs.tool_env.calculator``) or, as in TRL, by their class name.
        reward_fn: ``reward_fn(last_segments, **rewards_kwargs)`` -> one reward per episode, given
            the last text segment of each (the model's answer when it submitted).
        prompt: put before every task.
        max_turns: model turns per episode.
        max_tool_response: a longer tool output is cut to this many characters, ``...`` included.
        max_length: an episode of more tokens ends, marked truncated (None: no limit).
        generation_kwargs: for ``model.generate`` (``stop_strings`` and ``tokenizer`` are set here).
        max_tool_reponse: TRL 0.11's spelling of ``max_tool_response``, for its scripts.
        chat_template: write ``prompt + task`` as the user turn of the tokenizer's chat template (an
            instruct model's reading), as ``env.args.chat_template`` does for config runs.
        system_prompt: a system turn before it (with ``chat_template``).
    """

    runs_tool_when_full = False
    syntax: RequestCallSyntax

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                 tools: Union[Dict[str, Tool], Sequence[Tool]], reward_fn: Callable[..., Sequence[Any]], prompt: str,
                 max_turns: int = 4, max_tool_response: int = 100, max_length: Optional[int] = None,
                 generation_kwargs: Optional[Dict[str, Any]] = None, max_tool_reponse: Optional[int] = None,
                 chat_template: bool = False, system_prompt: Optional[str] = None) -> None:
        if max_tool_reponse is not None:
            if max_tool_response != 100:
                raise ValueError("pass max_tool_response or TRL's spelling max_tool_reponse, not both")
            max_tool_response = max_tool_reponse
        end_strings = (tokenizer.eos_token,) if tokenizer.eos_token else ()
        super().__init__(tokenizer, _named_tools(tools), max_turns, max_tool_response, None,
                         RequestCallSyntax(end_strings=end_strings))
        self.model = model
        self.reward_fn = reward_fn
        self.prompt = prompt
        self.max_length = max_length
        self.generation_kwargs = dict(generation_kwargs or {})
        if system_prompt is not None and not chat_template:
            raise ValueError("system_prompt needs chat_template=True")
        self.chat_prompt = ChatPrompt(tokenizer, system_prompt) if chat_template else None
        if getattr(self._language_model.config, "is_encoder_decoder", False):
            raise ValueError("TextEnvironment needs a causal LM: an encoder-decoder model cannot read its "
                             "own turns and the tool output back as one sequence")

    @property
    def max_tool_response(self) -> int:
        return self.max_result_chars

    @max_tool_response.setter
    def max_tool_response(self, value: int) -> None:
        self.max_result_chars = value

    @property
    def max_length(self) -> Optional[int]:
        return None if self.max_context_tokens is None else self.max_context_tokens - 1

    @max_length.setter
    def max_length(self, value: Optional[int]) -> None:
        self.max_context_tokens = None if value is None else value + 1  # TRL ends episodes *over* max_length

    @property
    def request_token(self) -> str:
        return self.syntax.request

    @property
    def call_token(self) -> str:
        return self.syntax.call

    @property
    def response_token(self) -> str:
        return self.syntax.response

    @property
    def submit_token(self) -> str:
        return self.syntax.submit

    @property
    def _language_model(self) -> torch.nn.Module:
        model = extract_model_from_parallel(self.model)
        return getattr(model, "pretrained_model", model)

    @property
    def current_device(self) -> torch.device:
        return next(self._language_model.parameters()).device

    def _history(self, text: str) -> TextHistory:
        """A new episode's history: ``text`` as it is, or as the user turn of the chat template."""
        if self.chat_prompt is not None:
            text, ids = self.chat_prompt.format(text), self.chat_prompt.tokens(text)
        else:
            ids = self.tokenizer(text)["input_ids"]
        return TextHistory(text, torch.tensor(ids, dtype=torch.long, device=self.current_device))

    def run(self, queries: Sequence[str], **rewards_kwargs: Any) -> Tuple[
            List[torch.Tensor], List[torch.Tensor], List[torch.Tensor], List[Any], List[TextHistory]]:
        """Play ``prompt + task`` for each task in ``queries``; returns the query tokens, response
        tokens, response masks and rewards (``reward_fn(..., **rewards_kwargs)``) per task, and the
        histories."""
        histories = [self._history(self.prompt + task) for task in queries]
        self.compute_reward(self.play(histories), **rewards_kwargs)
        splits = [history.split_query_response_tokens() for history in histories]
        return ([query for query, _, _ in splits], [response for _, response, _ in splits],
                [mask for _, _, mask in splits], [history.reward for history in histories], histories)

    def write_turns(self, episodes: List[TextHistory]) -> List[str]:
        self.generate(episodes)
        return [history.last_text_segment for history in episodes]

    def generate(self, histories: List[TextHistory]) -> List[TextHistory]:
        """Append the model's next turn to each open history (in batches); returns ``histories``."""
        active = [history for history in histories if not history.completed]
        for history, response in zip(active, self._generate_batched([history.tokens for history in active])):
            history.append_segment(self.tokenizer.decode(response), response, system=False)
        return histories

    def step(self, history: TextHistory) -> TextHistory:
        """After the model's turn: end the history, or append the output of the tool its last segment
        calls (``Unknown tool ...`` / ``Tool error: ...`` on failure, cut to ``max_tool_response``)."""
        if not history.completed:
            self.respond(history, history.last_text_segment)
        return history

    def parse_tool_call(self, text: str) -> Tuple[Optional[str], Optional[str]]:
        """``(tool_name, argument)`` of ``<request><tool_name>argument<call>`` in ``text``, or ``(None, None)``."""
        try:
            call = self.syntax.parse(text)
        except ToolCallError:
            return None, None
        return call.name, call.argument

    def compute_reward(self, histories: List[TextHistory], **reward_kwargs: Any) -> List[TextHistory]:
        """Set each history's ``reward`` from ``reward_fn`` on the last text segments."""
        rewards = self.reward_fn([history.last_text_segment for history in histories], **reward_kwargs)
        for history, reward in zip(histories, rewards):
            history.reward = reward
        return histories

    def tasks_end_check(self, histories: List[TextHistory], model_turn: bool = True) -> List[TextHistory]:
        """Complete each open history that has ended (see ``task_end_check``); returns ``histories``."""
        for history in histories:
            truncated, ended = self.task_end_check(history, model_turn=model_turn)
            if ended:
                history.complete(truncated=truncated)
        return histories

    def task_end_check(self, history: TextHistory, model_turn: bool = True) -> Tuple[bool, bool]:
        """``(truncated, ended)`` of an open history: over ``max_length`` (truncated), or, after the
        model's turn (``model_turn``), a last segment without a call, with ``<submit>`` or with EOS."""
        if history.completed:
            return False, False
        return self.end_check(history, history.last_text_segment if model_turn else None)

    def _generate_batched(self, query_tensors: List[torch.Tensor], batch_size: int = 16,
                          pad_to_multiple_of: Optional[int] = None) -> List[torch.Tensor]:
        """The model's next turn for each of ``query_tensors``, ``batch_size`` at a time (left-padded,
        to a multiple of ``pad_to_multiple_of``): up to and including the first ``<call>``,
        ``<submit>`` or EOS, on the model's device."""
        model, device = extract_model_from_parallel(self.model), self.current_device
        kwargs = {**self.generation_kwargs, "stop_strings": list(self.syntax.stop_strings), "tokenizer": self.tokenizer}
        outputs = []
        for start in range(0, len(query_tensors), batch_size):
            batch = [query.tolist() for query in query_tensors[start:start + batch_size]]
            padded = self.tokenizer.pad({"input_ids": batch, "attention_mask": [[1] * len(ids) for ids in batch]},
                                        padding=True, pad_to_multiple_of=pad_to_multiple_of, padding_side="left",
                                        return_tensors="pt").to(device)
            generated = model.generate(**padded, **kwargs)[:, padded["input_ids"].shape[1]:]
            outputs += [torch.tensor(self.cut_turn(row), dtype=torch.long, device=device) for row in generated.tolist()]
        return outputs


__all__ = ["TextEnvironment", "TextHistory"]
