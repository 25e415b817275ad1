"""Tool-using text episodes (TRL's ``TextEnvironment`` idea): the model may write a tool call, the
environment runs the tool and appends its output, and the model continues, for up to ``max_turns``.

By default a call is ``<call>name(argument)</call>`` and the environment appends
``<result>output</result>`` (``TagCallSyntax``); ``RequestCallSyntax`` is TRL's
``<request><Name>argument<call>``, answered with ``output<response>``. Tool output is part of what
the model reads but not of what it wrote, so each episode comes with a ``response_mask`` (1 for the
model's tokens, 0 for tool output) for ``PPOTrainer.step``. Tools are plain callables ``str -> str``;
a failing or unknown tool and a malformed call come back as text in the syntax's words and never end
the run.

``ToolEpisodeLoop`` is the one turn loop: ``ToolEnvironment`` runs it on token queries with a
``generate`` function, ``rl4lms.trl.TextEnvironment`` on TRL's ``TextHistory``.
"""
from __future__ import annotations

import ast
import operator
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from rl4lms.errors import ToolCallError

CALL_OPEN, CALL_CLOSE = "<call>", "</call>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
_CALL = re.compile(r"<call>\s*([A-Za-z_]\w*)\s*\((.*)\)\s*</call>\s*$", re.S)

Tool = Callable[[str], str]
GenerateFn = Callable[[List[torch.Tensor]], List[torch.Tensor]]


@dataclass(frozen=True)
class ToolCall:
    name: str
    argument: str


def parse_tool_call(text: str) -> Optional[ToolCall]:
    """The call that ``text`` ends with (up to its first ``</call>``), or None when it makes none."""
    end = text.find(CALL_CLOSE)
    if end < 0:
        return None
    segment = text[:end + len(CALL_CLOSE)]
    start = segment.rfind(CALL_OPEN)
    match = _CALL.search(segment[start:]) if start >= 0 else None
    if match is None:
        raise ToolCallError(f"malformed tool call {segment[max(start, 0):]!r}; expected <call>name(argument)</call>")
    return ToolCall(match.group(1), match.group(2).strip())


MAX_INTEGER_BITS = 4096
"""The calculator refuses integer results longer than this (about 1,200 digits) before computing them."""

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large (at most 64)")
        _check_integer_size(node.op, left, right)
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"unsupported expression element {type(node).__name__}")


def _check_integer_size(op: ast.operator, left: float, right: float) -> None:
    """Refuse a product or power of integers whose result would exceed ``MAX_INTEGER_BITS``, so
    nested powers such as ``((9**64)**64)**64`` fail at once instead of running for hours."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return  # floats overflow to an error by themselves
    if isinstance(op, ast.Pow) and right > 0:
        bits = abs(left).bit_length() * right
    elif isinstance(op, ast.Mult):
        bits = abs(left).bit_length() + abs(right).bit_length()
    else:
        return
    if bits > MAX_INTEGER_BITS:
        raise ValueError(f"result too large (over {MAX_INTEGER_BITS} bits)")


def calculator(expression: str) -> str:
    """Arithmetic on numbers with + - * / // % ** and parentheses (no names, no calls)."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from error
    value = _evaluate(tree.body)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 6) if isinstance(value, float) else value)


class CallSyntax(ABC):
    """How a model's turn asks for a tool, and how the tool's answer is written back into the text."""

    @property
    @abstractmethod
    def stop_strings(self) -> Tuple[str, ...]:
        """A model's turn ends with the first of these (generation is cut after it)."""

    @abstractmethod
    def makes_call(self, text: str) -> bool:
        """Whether the turn ``text`` asks for a tool; a turn that does not is the model's answer."""

    @abstractmethod
    def parse(self, text: str) -> ToolCall:
        """The call of a turn that makes one; ``ToolCallError`` when it is malformed."""

    @abstractmethod
    def result(self, output: str) -> str:
        """The text appended after a call: the tool's (possibly cut) ``output``."""

    @abstractmethod
    def truncate(self, output: str, limit: int) -> str:
        """``output``, which is longer than ``limit`` characters, cut and marked as cut."""

    @abstractmethod
    def unknown_tool(self, name: str, tools: Iterable[str]) -> str:
        """The output for a call of ``name``, which is not among ``tools``."""

    @abstractmethod
    def tool_failed(self, error: Exception) -> str:
        """The output for a tool that raised ``error``."""

    @abstractmethod
    def malformed(self, text: str, error: ToolCallError) -> str:
        """The output for the turn ``text``, whose call could not be parsed."""


class TagCallSyntax(CallSyntax):
    """This project's calls: ``<call>name(argument)</call>``, answered with ``<result>output</result>``;
    errors read ``error: ...`` and a long output is cut to the limit and marked `` [truncated]``."""

    @property
    def stop_strings(self) -> Tuple[str, ...]:
        return (CALL_CLOSE,)

    def makes_call(self, text: str) -> bool:
        return CALL_CLOSE in text

    def parse(self, text: str) -> ToolCall:
        call = parse_tool_call(text)
        if call is None:
            raise ToolCallError(f"no {CALL_CLOSE} in {text!r}")
        return call

    def result(self, output: str) -> str:
        return f"{RESULT_OPEN}{output}{RESULT_CLOSE}"

    def truncate(self, output: str, limit: int) -> str:
        return output[:limit] + " [truncated]"

    def unknown_tool(self, name: str, tools: Iterable[str]) -> str:
        return f"error: unknown tool '{name}'; available: {', '.join(sorted(tools))}"

    def tool_failed(self, error: Exception) -> str:
        return f"error: {type(error).__name__}: {error}"

    def malformed(self, text: str, error: ToolCallError) -> str:
        return f"error: {error}"


_TOOL_TAG = re.compile(r"<([^>\n]*)>(.*)", re.S)


@dataclass(frozen=True)
class RequestCallSyntax(CallSyntax):
    """TRL's calls: ``<request><Name>argument<call>``, answered with ``output<response>``. A turn that
    holds ``submit`` or one of ``end_strings`` (say, the tokenizer's EOS) is an answer, even with a
    call in it. Errors read ``Unknown tool ...`` / ``Tool error: ...``, and a long output is cut so
    that with its ``...`` mark it is exactly the limit.

    Args:
        request: opens a call (TRL's ``request_token``).
        call: closes it and ends the model's turn (``call_token``).
        response: closes the tool's output (``response_token``).
        submit: ends the model's turn and the episode (``submit_token``).
        end_strings: further strings that make a turn an answer.
    """

    request: str = "<request>"
    call: str = "<call>"
    response: str = "<response>"
    submit: str = "<submit>"
    end_strings: Tuple[str, ...] = ()

    @property
    def stop_strings(self) -> Tuple[str, ...]:
        return (self.call, self.submit)

    def makes_call(self, text: str) -> bool:
        return self.request in text and self.call in text and \
            not any(mark in text for mark in (self.submit, *self.end_strings))

    def parse(self, text: str) -> ToolCall:
        """The tool is the first ``<Name>`` tag after the last ``request`` before the first ``call``;
        the argument is the rest of that span, unstripped."""
        end = text.find(self.call)
        start = text.rfind(self.request, 0, max(end, 0))
        if end < 0 or start < 0:
            raise ToolCallError(f"no {self.request}...{self.call} span in {text!r}")
        match = _TOOL_TAG.search(text[start + len(self.request):end])
        if match is None:
            raise ToolCallError(f"no <ToolName> tag after {self.request} in {text!r}")
        return ToolCall(match.group(1), match.group(2))

    def result(self, output: str) -> str:
        return output + self.response

    def truncate(self, output: str, limit: int) -> str:
        mark = "..."
        return (output[:max(limit - len(mark), 0)] + mark)[:limit]

    def unknown_tool(self, name: str, tools: Iterable[str]) -> str:
        return f"Unknown tool {name}."

    def tool_failed(self, error: Exception) -> str:
        return f"Tool error: {error}"

    def malformed(self, text: str, error: ToolCallError) -> str:
        return f"Unknown tool call: {text}"


TAG_CALLS = TagCallSyntax()


def run_tool(tools: Dict[str, Tool], call: ToolCall, syntax: CallSyntax = TAG_CALLS) -> str:
    """The tool's output, or the syntax's error text when the tool is unknown or fails."""
    if call.name not in tools:
        return syntax.unknown_tool(call.name, tools)
    try:
        return str(tools[call.name](call.argument))
    except Exception as error:  # any tool failure is reported to the model, not raised
        return syntax.tool_failed(error)


class Episode(Protocol):
    """What the turn loop reads and writes on an episode: ``ToolEpisode`` here, TRL's ``TextHistory``."""

    @property
    def completed(self) -> bool: ...

    @property
    def tokens(self) -> torch.Tensor: ...

    def append_segment(self, text: str, tokens: torch.Tensor, system: bool = True) -> None: ...

    def complete(self, truncated: bool = False) -> None: ...


EpisodeT = TypeVar("EpisodeT", bound=Episode)


@dataclass
class ToolEpisode:
    """One episode: the query, everything after it, and which of those tokens the model wrote."""

    query: torch.Tensor
    response: List[int] = field(default_factory=list)
    response_mask: List[int] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    finished: bool = False
    truncated: bool = False
    """The episode ended because its context reached ``max_context_tokens``."""

    def extend(self, tokens: Sequence[int], written_by_model: bool) -> None:
        self.response += list(tokens)
        self.response_mask += [int(written_by_model)] * len(tokens)

    @property
    def completed(self) -> bool:
        return self.finished

    @property
    def tokens(self) -> torch.Tensor:
        """Query and response: what the model reads next."""
        return torch.cat([self.query, torch.tensor(self.response, dtype=torch.long)])

    def append_segment(self, text: str, tokens: torch.Tensor, system: bool = True) -> None:
        """Add a model turn (``system=False``) or a tool result; the text is not kept."""
        self.extend(torch.as_tensor(tokens).tolist(), written_by_model=not system)
        if system:
            self.tool_calls += 1
        else:
            self.turns += 1

    def complete(self, truncated: bool = False) -> None:
        """Mark the episode as ended (``truncated``: by ``max_context_tokens``)."""
        self.finished, self.truncated = True, truncated


class ToolEpisodeLoop(ABC):
    """The turn loop of tool-using episodes. Each turn the model writes to every open episode; a
    turn that makes a call gets the tool's output appended as system text. An episode ends when a
    turn makes no call, or (truncated) when its tokens reach ``max_context_tokens``: checked before
    the first turn, after each tool result, and after each model turn unless ``runs_tool_when_full``
    (then the limit is on what the model reads next: a call that fills the context still gets its
    result). After ``max_turns`` turns the loop stops and leaves the open episodes not completed.

    Args:
        tokenizer: tokenizes tool results and decodes the model's turns.
        tools: name -> callable ``str -> str``.
        max_turns: model turns per episode, at least 1.
        max_result_chars: a longer tool output is cut by ``syntax.truncate``.
        max_context_tokens: end an episode whose tokens reach this many (None: no limit).
        syntax: how calls are written and answered.
    """

    runs_tool_when_full = True
    """Whether a call whose turn reaches ``max_context_tokens`` is still answered (TRL's loop: no)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, tools: Dict[str, Tool], max_turns: int,
                 max_result_chars: int, max_context_tokens: Optional[int], syntax: CallSyntax) -> None:
        if max_turns < 1 or max_result_chars < 1:
            raise ValueError(f"max_turns and max_result_chars must be at least 1, got {max_turns}, {max_result_chars}")
        if not tools:
            raise ValueError("a tool environment needs at least one tool")
        self.tokenizer = tokenizer
        self.tools = dict(tools)
        self.max_turns = max_turns
        self.max_result_chars = max_result_chars
        self.max_context_tokens = max_context_tokens
        self.syntax = syntax

    @abstractmethod
    def write_turns(self, episodes: List[EpisodeT]) -> List[str]:
        """Have the model write the next turn of each episode, append it (``system=False``) and
        return the turns' texts."""

    def play(self, episodes: List[EpisodeT]) -> List[EpisodeT]:
        """Run the episodes to their end or to ``max_turns`` turns."""
        for episode in episodes:
            self._settle(episode)
        for _ in range(self.max_turns):
            active = [episode for episode in episodes if not episode.completed]
            if not active:
                break
            for episode, text in zip(active, self.write_turns(active)):
                self.respond(episode, text)
        return episodes

    def end_check(self, episode: Episode, turn_text: Optional[str] = None) -> Tuple[bool, bool]:
        """``(truncated, ended)``: both when the episode has reached ``max_context_tokens`` (right
        after a model turn, ``turn_text``, only without ``runs_tool_when_full``); ended when
        ``turn_text``, the model's turn just written (None elsewhere), makes no call."""
        full = self.max_context_tokens is not None and len(episode.tokens) >= self.max_context_tokens
        if full and (turn_text is None or not self.runs_tool_when_full):
            return True, True
        return False, turn_text is not None and not self.syntax.makes_call(turn_text)

    def _settle(self, episode: Episode, turn_text: Optional[str] = None) -> None:
        truncated, ended = self.end_check(episode, turn_text)
        if ended:
            episode.complete(truncated=truncated)

    def respond(self, episode: Episode, turn_text: str) -> None:
        """After the model's turn ``turn_text``: end the episode, or append the output of the tool it
        calls (``system=True``)."""
        self._settle(episode, turn_text)
        if episode.completed:
            return
        result = self.syntax.result(self.tool_output(turn_text))
        ids = self.tokenizer(result, add_special_tokens=False).input_ids
        episode.append_segment(result, torch.tensor(ids, dtype=torch.long, device=episode.tokens.device), system=True)
        self._settle(episode)

    def tool_output(self, turn_text: str) -> str:
        """The output of the call that ``turn_text`` makes, cut to ``max_result_chars``; errors as text."""
        try:
            call = self.syntax.parse(turn_text)
        except ToolCallError as error:
            output = self.syntax.malformed(turn_text, error)
        else:
            output = run_tool(self.tools, call, self.syntax)
        return output if len(output) <= self.max_result_chars else self.syntax.truncate(output, self.max_result_chars)

    def cut_turn(self, tokens: List[int]) -> List[int]:
        """Generated ``tokens`` up to the end of the turn: through the first EOS, and then the
        shortest prefix whose text holds a stop string (all of them if none does)."""
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos in tokens:
            tokens = tokens[:tokens.index(eos) + 1]
        if not self._stops(tokens):
            return tokens
        return next(tokens[:end] for end in range(1, len(tokens) + 1) if self._stops(tokens[:end]))

    def _stops(self, tokens: List[int]) -> bool:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return any(stop in text for stop in self.syntax.stop_strings)


class ToolEnvironment(ToolEpisodeLoop):
    """Runs batches of tool-using episodes with a ``generate`` function (e.g. ``PPOTrainer.generate``).

    A tool's output is cut to ``max_result_chars``; an episode whose query + response reaches
    ``max_context_tokens`` (say, the model's position limit minus the new tokens of a turn) ends.
    ``syntax`` is how calls are written (``TAG_CALLS``, or TRL's ``RequestCallSyntax()``).
    """

    def __init__(self, generate: GenerateFn, tokenizer: PreTrainedTokenizerBase, tools: Dict[str, Tool],
                 max_turns: int = 3, max_result_chars: int = 256, max_context_tokens: Optional[int] = None,
                 syntax: CallSyntax = TAG_CALLS) -> None:
        super().__init__(tokenizer, tools, max_turns, max_result_chars, max_context_tokens, syntax)
        self.generate = generate

    def write_turns(self, episodes: List[EpisodeT]) -> List[str]:
        texts = []
        for episode, generated in zip(episodes, self.generate([episode.tokens for episode in episodes])):
            written = self.cut_turn(torch.as_tensor(generated).flatten().tolist())
            text = self.tokenizer.decode(written, skip_special_tokens=True)
            episode.append_segment(text, torch.tensor(written, dtype=torch.long), system=False)
            texts.append(text)
        return texts

    def run(self, queries: Sequence[torch.Tensor]) -> List[ToolEpisode]:
        """Episodes for ``queries``: generate, run the tool a turn ends with, append its result, repeat."""
        episodes = self.play([ToolEpisode(query=torch.as_tensor(q, dtype=torch.long).flatten()) for q in queries])
        for episode in episodes:
            if not episode.finished:  # out of turns
                episode.complete()
        return episodes

    def text(self, episode: ToolEpisode) -> str:
        """The episode's response as text (model turns and tool results)."""
        return self.tokenizer.decode(episode.response, skip_special_tokens=True)
