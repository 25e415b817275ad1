"""Tool-using text episodes (TRL's ``TextEnvironment`` idea): the model may write a tool call, the
environment runs the tool and appends its output, and the model continues, for up to ``max_turns``.

A call is ``<call>name(argument)</call>``; the environment appends ``<result>output</result>``.
Tool output is part of what the model reads but not of what it wrote, so each episode comes with a
``response_mask`` (1 for the model's tokens, 0 for tool output) for ``PPOTrainer.step``. Tools are
plain callables ``str -> str``; a failing or unknown tool and a malformed call come back as
``error: ...`` text and never end the run.
"""
from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from transformers import PreTrainedTokenizerBase

CALL_OPEN, CALL_CLOSE = "<call>", "</call>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
_CALL = re.compile(r"<call>\s*([A-Za-z_]\w*)\s*\((.*)\)\s*</call>\s*$", re.S)

Tool = Callable[[str], str]
GenerateFn = Callable[[List[torch.Tensor]], List[torch.Tensor]]


class ToolCallError(ValueError):
    """The text closes a tool call that does not have the ``<call>name(argument)</call>`` form."""


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


def run_tool(tools: Dict[str, Tool], call: ToolCall) -> str:
    """The tool's output, or ``error: ...`` when the tool is unknown or fails."""
    if call.name not in tools:
        return f"error: unknown tool '{call.name}'; available: {', '.join(sorted(tools))}"
    try:
        return str(tools[call.name](call.argument))
    except Exception as error:  # any tool failure is reported to the model, not raised
        return f"error: {type(error).__name__}: {error}"


@dataclass
class ToolEpisode:
    """One episode: the query, everything after it, and which of those tokens the model wrote."""

    query: torch.Tensor
    response: List[int] = field(default_factory=list)
    response_mask: List[int] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    finished: bool = False

    def extend(self, tokens: Sequence[int], written_by_model: bool) -> None:
        self.response += list(tokens)
        self.response_mask += [int(written_by_model)] * len(tokens)


class ToolEnvironment:
    """Runs batches of tool-using episodes with a ``generate`` function (e.g. ``PPOTrainer.generate``).

    A tool's output is cut to ``max_result_chars``; an episode whose query + response reaches
    ``max_context_tokens`` (say, the model's position limit minus the new tokens of a turn) ends.
    """

    def __init__(self, generate: GenerateFn, tokenizer: PreTrainedTokenizerBase, tools: Dict[str, Tool],
                 max_turns: int = 3, max_result_chars: int = 256, max_context_tokens: Optional[int] = None) -> None:
        if max_turns < 1 or max_result_chars < 1:
            raise ValueError(f"max_turns and max_result_chars must be at least 1, got {max_turns}, {max_result_chars}")
        if not tools:
            raise ValueError("a tool environment needs at least one tool")
        self.generate = generate
        self.tokenizer = tokenizer
        self.tools = dict(tools)
        self.max_turns = max_turns
        self.max_result_chars = max_result_chars
        self.max_context_tokens = max_context_tokens

    def _out_of_room(self, episode: ToolEpisode) -> bool:
        """The episode's context has reached ``max_context_tokens``: the model cannot continue it."""
        return self.max_context_tokens is not None and \
            len(episode.query) + len(episode.response) >= self.max_context_tokens

    def _until_call_end(self, tokens: List[int]) -> List[int]:
        """The shortest prefix of ``tokens`` whose text closes a tool call (all of them if none does)."""
        for end in range(1, len(tokens) + 1):
            if CALL_CLOSE in self.tokenizer.decode(tokens[:end], skip_special_tokens=True):
                return tokens[:end]
        return tokens

    def _turn(self, episode: ToolEpisode, generated: List[int], last_turn: bool) -> None:
        written = self._until_call_end(generated)
        episode.extend(written, written_by_model=True)
        episode.turns += 1
        text = self.tokenizer.decode(written, skip_special_tokens=True)
        try:
            call = parse_tool_call(text)
        except ToolCallError as error:
            output: Optional[str] = f"error: {error}"
        else:
            output = run_tool(self.tools, call) if call is not None else None
        if output is None:  # no call: the model has answered
            episode.finished = True
            return
        episode.tool_calls += 1
        if len(output) > self.max_result_chars:
            output = output[:self.max_result_chars] + " [truncated]"
        result = self.tokenizer(f"{RESULT_OPEN}{output}{RESULT_CLOSE}", add_special_tokens=False).input_ids
        episode.extend(result, written_by_model=False)
        episode.finished = last_turn

    def run(self, queries: Sequence[torch.Tensor]) -> List[ToolEpisode]:
        """Episodes for ``queries``: generate, run the tool a turn ends with, append its result, repeat."""
        episodes = [ToolEpisode(query=torch.as_tensor(q, dtype=torch.long).flatten()) for q in queries]
        for turn in range(self.max_turns):
            for episode in episodes:
                episode.finished = episode.finished or self._out_of_room(episode)
            active = [e for e in episodes if not e.finished]
            if not active:
                break
            contexts = [torch.cat([e.query, torch.tensor(e.response, dtype=torch.long)]) for e in active]
            for episode, generated in zip(active, self.generate(contexts)):
                self._turn(episode, torch.as_tensor(generated).flatten().tolist(), last_turn=turn == self.max_turns - 1)
        return episodes

    def text(self, episode: ToolEpisode) -> str:
        """The episode's response as text (model turns and tool results)."""
        return self.tokenizer.decode(episode.response, skip_special_tokens=True)
