"""rl4lms.trl's TextEnvironment and TextHistory: TRL 0.11's tool-use API on the project's tool loop."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Dict, List

import pytest
import torch

import rl4lms.trl.text_environment as text_environment
from rl4lms.envs.tool_env import RequestCallSyntax, ToolEnvironment, calculator
from rl4lms.trl import AutoModelForCausalLMWithValueHead, TextEnvironment, TextHistory

PROMPT = "I am a prompt!\n"
CALL = "<request><calculator>6*7<call>"


class EchoTool:
    def __call__(self, text: str) -> str:
        return text


@pytest.fixture(scope="module")
def tiny_model(isolated_home):
    return AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2")


def make_env(model, tokenizer, tools: Any = None, reward_fn: Callable = None, **kwargs: Any) -> TextEnvironment:
    return TextEnvironment(model, tokenizer, tools if tools is not None else {"calculator": calculator},
                           reward_fn or (lambda texts, **_: [float(len(t)) for t in texts]), PROMPT, **kwargs)


def script(env: TextEnvironment, turns: List[str], monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Make ``env.generate`` write ``turns`` (one per call, to every open history), as TRL's tests
    patch it; returns a list that counts the calls."""
    calls: List[int] = []

    def generate(histories: List[TextHistory]) -> List[TextHistory]:
        text = turns[len(calls)]
        calls.append(len(histories))
        for history in histories:
            history.append_segment(text, torch.tensor(env.tokenizer(text).input_ids), system=False)
        return histories

    monkeypatch.setattr(env, "generate", generate)
    return calls


# --- TextHistory ----------------------------------------------------------------------------------
def test_history_keeps_spans_masks_and_splits_query_from_response() -> None:
    history = TextHistory("Hello there!", torch.tensor([1, 2, 3]))
    assert history.text == "Hello there!" and torch.equal(history.token_masks, torch.tensor([0, 0, 0]))
    assert torch.equal(TextHistory("Hi", torch.tensor([1, 2]), system=False).token_masks, torch.tensor([1, 1]))
    history.append_segment("General Kenobi!", torch.tensor([4, 5, 6]), system=False)
    history.append_segment("Bold.", torch.tensor([7, 8]))
    assert history.text == "Hello there!General Kenobi!Bold."
    assert history.text_spans == [(0, 12), (12, 27), (27, 32)] and history.token_spans == [(0, 3), (3, 6), (6, 8)]
    assert history.system_spans == [True, False, True] and history.last_text_segment == "Bold."
    assert torch.equal(history.tokens, torch.arange(1, 9)) and history.token_masks.tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    query, response, mask = history.split_query_response_tokens()
    assert query.tolist() == [1, 2, 3] and response.tolist() == [4, 5, 6, 7, 8] and mask.tolist() == [1, 1, 1, 0, 0]
    assert (history.completed, history.truncated, history.reward) == (False, False, 0.0)
    history.complete(truncated=True)
    assert history.completed and history.truncated
    with pytest.raises(ValueError, match="needs text and tokens"):
        history.append_segment("", torch.tensor([9]))
    with pytest.raises(ValueError, match="needs text and tokens"):
        history.append_segment("x", torch.tensor([], dtype=torch.long))


@pytest.mark.parametrize("with_rich", [True, False])
def test_show_text_and_tokens_mark_prompt_system_and_model(tiny_tokenizer, capsys, monkeypatch, with_rich) -> None:
    if not with_rich:
        monkeypatch.setattr(text_environment, "Text", None)
    history = TextHistory(PROMPT, torch.tensor(tiny_tokenizer(PROMPT).input_ids))
    history.append_segment(CALL, torch.tensor(tiny_tokenizer(CALL).input_ids), system=False)
    history.append_segment("42<response>", torch.tensor(tiny_tokenizer("42<response>").input_ids))
    history.reward = 1.5
    history.show_text(show_legend=True)
    text = capsys.readouterr().out
    history.show_tokens(tiny_tokenizer)
    tokens = capsys.readouterr().out
    token_strings = " ".join(tiny_tokenizer.convert_ids_to_tokens(history.tokens.tolist()))
    if with_rich:  # rich's colours do not reach a captured stream: the text, the reward and the legend
        assert text.startswith(PROMPT + CALL + "42<response>\n\nReward: 1.5\n")
        assert "(Colour Legend: Prompt|System|Model|Reward)" in text
        assert tokens.split() == token_strings.split() + ["Reward:", "1.5"]
    else:
        assert text == (f"[prompt]{PROMPT}[model]{CALL}[system]42<response>\n\n[reward]Reward: 1.5\n"
                        "\n\n(Colour Legend: [prompt]Prompt|[system]System|[model]Model|[reward]Reward)\n")
        model_tokens = " ".join(tiny_tokenizer.convert_ids_to_tokens(tiny_tokenizer(CALL).input_ids))
        assert f"[model]{model_tokens} [system]" in tokens and tokens.startswith("[prompt]")
        assert tokens.endswith("\n\n[reward]Reward: 1.5\n")


# --- parsing and tools ----------------------------------------------------------------------------
def test_tool_calls_parse_in_trls_syntax(tiny_model, tiny_tokenizer) -> None:
    env = make_env(tiny_model, tiny_tokenizer, tools=[EchoTool()])
    assert list(env.tools) == ["EchoTool"] and isinstance(env.tools["EchoTool"], EchoTool)
    assert list(make_env(tiny_model, tiny_tokenizer, tools=[calculator]).tools) == ["calculator"]
    assert env.parse_tool_call("Something <request><Tool1>Hello there!<call>") == ("Tool1", "Hello there!")
    assert env.parse_tool_call("<request><T> spaced <call>") == ("T", " spaced ")  # TRL keeps the argument as written
    assert env.parse_tool_call("<request>x<request><T>2<call><request><U>3<call>") == ("T", "2")
    for invalid in ("Something <Tool1>Hello there!<call>", "Something <request><Tool1>Hello there!",
                    "Something <request>|Tool2|Hello there!<call>", "<>abcdefghijklm<>nopqrstuvwxyz<>",
                    "<call><request><T>x"):
        assert env.parse_tool_call(invalid) == (None, None), invalid
    syntax = env.syntax
    assert syntax.makes_call(CALL) and not syntax.makes_call("Result=42<submit>")
    assert not syntax.makes_call(CALL + "<submit>") and not syntax.makes_call(CALL + tiny_tokenizer.eos_token)
    assert (env.request_token, env.call_token, env.response_token, env.submit_token) == (
        "<request>", "<call>", "<response>", "<submit>")


def test_step_appends_the_tool_response_as_system_text(tiny_model, tiny_tokenizer) -> None:
    def broken(_: str) -> str:
        raise RuntimeError("no network")

    env = make_env(tiny_model, tiny_tokenizer, tools={"calculator": calculator, "broken": broken})
    history = env.step(TextHistory(PROMPT + CALL, torch.tensor(tiny_tokenizer(PROMPT + CALL).input_ids)))
    assert history.last_text_segment == "42<response>" and history.system_spans == [True, True]
    response_ids = tiny_tokenizer("42<response>", add_special_tokens=False).input_ids
    assert history.tokens[-len(response_ids):].tolist() == response_ids and not history.token_masks.any()
    assert not history.completed
    for turn, answer in [("<request><search>x<call>", "Unknown tool search.<response>"),
                         ("<request><broken>x<call>", "Tool error: no network<response>"),
                         ("<request>calculator 1<call>", "Unknown tool call: <request>calculator 1<call><response>"),
                         ("<request><calculator>1/0<call>", "Tool error: division by zero<response>")]:
        assert env.step(TextHistory(turn, torch.tensor([5]))).last_text_segment == answer
    finished = env.step(TextHistory("Result=42<submit>", torch.tensor([5])))  # no call: ends, nothing appended
    assert finished.completed and not finished.truncated and finished.text == "Result=42<submit>"


@pytest.mark.parametrize("limit, length, end", [(100, 100, "a..."), (500, 500, "a..."), (1001, 1000, "aaaa"),
                                               (2000, 1000, "aaaa"), (2, 2, "..")])
def test_long_tool_responses_are_cut_to_max_tool_response(tiny_model, tiny_tokenizer, limit, length, end) -> None:
    env = make_env(tiny_model, tiny_tokenizer, tools={"dummy": lambda _: "a" * 1000})
    env.max_tool_response = limit
    segment = env.step(TextHistory("<request><dummy>Hello<call>", torch.tensor([5]))).last_text_segment
    assert len(segment) - len(env.response_token) == length
    assert segment.endswith(end + "<response>")


def test_trls_spelling_of_max_tool_response_is_accepted(tiny_model, tiny_tokenizer) -> None:
    assert make_env(tiny_model, tiny_tokenizer, max_tool_reponse=7).max_tool_response == 7
    with pytest.raises(ValueError, match="not both"):
        make_env(tiny_model, tiny_tokenizer, max_tool_reponse=7, max_tool_response=8)


# --- episodes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_turns", [1, 2, 4])
def test_max_turns_bounds_the_tool_calls(tiny_model, tiny_tokenizer, monkeypatch, max_turns) -> None:
    env = make_env(tiny_model, tiny_tokenizer, tools={"DummyTool": EchoTool()}, max_turns=max_turns)
    calls = script(env, ["<request><DummyTool>test<call>"] * 5, monkeypatch)
    *_, (history,) = env.run(["test"])
    assert history.text == PROMPT + "test" + max_turns * "<request><DummyTool>test<call>test<response>"
    assert len(calls) == max_turns and not history.completed  # out of turns, as in TRL


def test_run_returns_tensors_masks_and_rewards_from_reward_fn_kwargs(tiny_model, tiny_tokenizer, monkeypatch) -> None:
    seen: Dict[str, Any] = {}

    def reward_fn(texts: List[str], answers: List[int]) -> List[torch.Tensor]:
        seen.update(texts=texts, answers=answers)
        return [torch.tensor(float(f"Result={a}<submit>" in t)) for t, a in zip(texts, answers)]

    env = make_env(tiny_model, tiny_tokenizer, reward_fn=reward_fn)
    calls = script(env, [CALL, "Result=42<submit>", "never written"], monkeypatch)
    queries, responses, masks, rewards, histories = env.run(["Six times seven?", "Twice 21?"], answers=[42, 41])
    assert calls == [2, 2]  # both submitted on the second turn
    assert seen == {"texts": ["Result=42<submit>"] * 2, "answers": [42, 41]}
    assert [float(r) for r in rewards] == [1.0, 0.0] and [h.reward for h in histories] == rewards
    for task, query, response, mask, history in zip(["Six times seven?", "Twice 21?"], queries, responses, masks,
                                                     histories):
        assert query.tolist() == tiny_tokenizer(PROMPT + task).input_ids
        assert history.text == PROMPT + task + CALL + "42<response>" + "Result=42<submit>"
        assert history.completed and not history.truncated
        lengths = [len(tiny_tokenizer(t).input_ids) for t in (CALL, "42<response>", "Result=42<submit>")]
        assert mask.tolist() == [1] * lengths[0] + [0] * lengths[1] + [1] * lengths[2] == history.token_masks[
            len(query):].tolist()
        assert torch.equal(torch.cat([query, response]), history.tokens)


@pytest.mark.parametrize("last_turn", ["just words", CALL + "</s>", CALL + "<submit>"])
def test_a_turn_without_a_call_or_with_submit_or_eos_ends_the_episode(tiny_model, tiny_tokenizer, monkeypatch,
                                                                      last_turn) -> None:
    env = make_env(tiny_model, tiny_tokenizer)
    assert tiny_tokenizer.eos_token == "</s>"
    script(env, [last_turn, CALL], monkeypatch)
    *_, (history,) = env.run(["task"])
    assert history.completed and not history.truncated and history.text == PROMPT + "task" + last_turn


def test_max_length_truncates_the_episode(tiny_model, tiny_tokenizer, monkeypatch) -> None:
    query_length = len(tiny_tokenizer(PROMPT + "task").input_ids)
    call_length = len(tiny_tokenizer(CALL).input_ids)
    response_length = len(tiny_tokenizer("42<response>").input_ids)
    env = make_env(tiny_model, tiny_tokenizer, max_length=query_length + call_length + response_length - 1)
    calls = script(env, [CALL, CALL], monkeypatch)
    *_, (history,) = env.run(["task"])
    assert history.completed and history.truncated and len(calls) == 1  # over max_length after the tool
    assert history.text == PROMPT + "task" + CALL + "42<response>"

    env.max_length = query_length + call_length - 1  # over it after the model's call: no tool runs (TRL)
    calls = script(env, [CALL, CALL], monkeypatch)
    *_, (history,) = env.run(["task"])
    assert history.truncated and history.text == PROMPT + "task" + CALL and env.max_context_tokens == env.max_length + 1

    env.max_length = query_length + call_length  # exactly max_length is not over it
    calls = script(env, [CALL, "done<submit>"], monkeypatch)
    *_, (history,) = env.run(["task"])
    assert history.truncated and history.last_text_segment == "42<response>" and len(calls) == 1


def test_compute_reward_and_tasks_end_check(tiny_model, tiny_tokenizer) -> None:
    env = make_env(tiny_model, tiny_tokenizer, reward_fn=lambda texts: [torch.tensor(i) for i, _ in enumerate(texts)])
    histories = env.compute_reward([TextHistory(CALL, torch.tensor([1, 2, 3])) for _ in range(4)])
    assert [int(h.reward) for h in histories] == [0, 1, 2, 3]
    answered = TextHistory("Result=1<submit>", torch.tensor([5]))
    calling = TextHistory(CALL, torch.tensor([5]))
    assert env.task_end_check(answered) == (False, True) and env.task_end_check(calling) == (False, False)
    assert env.task_end_check(answered, model_turn=False) == (False, False)
    env.max_length = 0
    assert env.task_end_check(calling, model_turn=False) == (True, True)
    env.tasks_end_check([answered, calling], model_turn=False)
    assert answered.completed and answered.truncated and calling.truncated


# --- generation -----------------------------------------------------------------------------------
class ScriptedLM(torch.nn.Module):
    """A causal LM whose ``generate`` appends the given token rows (right-padded, as finished rows are)."""

    def __init__(self, rows: List[List[int]], pad: int, is_encoder_decoder: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(is_encoder_decoder=is_encoder_decoder)
        self.rows, self.pad, self.calls = rows, pad, []

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, **kwargs})
        rows = [self.rows.pop(0) for _ in range(len(input_ids))]
        width = max(len(row) for row in rows)
        new = torch.tensor([row + [self.pad] * (width - len(row)) for row in rows])
        return torch.cat([input_ids, new], dim=1)


def test_generation_is_batched_left_padded_and_cut_at_call_submit_or_eos(tiny_tokenizer) -> None:
    ids = lambda text: tiny_tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    unended = "no end: a row that runs to max_new_tokens, longer than the others"
    rows = [ids(CALL + "ignored"), ids("Result=42<submit> more"), ids(unended), ids("end") + [eos] + ids("junk")]
    model = ScriptedLM([list(r) for r in rows], pad)
    env = TextEnvironment(model, tiny_tokenizer, [calculator], lambda texts: texts, PROMPT,
                          generation_kwargs={"max_new_tokens": 64, "do_sample": False})
    queries = [torch.tensor(ids("a b c")), torch.tensor([7]), torch.tensor([8, 9]), torch.tensor([10])]
    outputs = env._generate_batched(queries, batch_size=3)
    assert [len(call["input_ids"]) for call in model.calls] == [3, 1]
    first = model.calls[0]
    assert first["input_ids"][1].tolist() == [pad] * (len(queries[0]) - 1) + [7]  # left padding
    assert first["attention_mask"][1].tolist() == [0] * (len(queries[0]) - 1) + [1]
    assert first["stop_strings"] == ["<call>", "<submit>"] and first["tokenizer"] is tiny_tokenizer
    assert first["max_new_tokens"] == 64 and "stop_strings" not in env.generation_kwargs
    texts = [tiny_tokenizer.decode(o) for o in outputs]
    assert texts == [CALL, "Result=42<submit>", unended, "end</s>"]  # the padding after finished rows is gone


def test_batched_generation_matches_one_at_a_time_on_the_tiny_model(tiny_model, tiny_tokenizer) -> None:
    greedy = {"do_sample": False, "max_new_tokens": 4, "pad_token_id": tiny_tokenizer.pad_token_id}
    env = make_env(tiny_model, tiny_tokenizer, generation_kwargs=greedy)
    queries = [tiny_tokenizer(t, return_tensors="pt").input_ids[0] for t in ["this is a test", "one two three four"]]
    batched = env._generate_batched(queries, batch_size=2)
    single = [env._generate_batched([query], batch_size=1)[0] for query in queries]
    assert [b.tolist() for b in batched] == [s.tolist() for s in single] and all(0 < len(b) <= 4 for b in batched)


def test_run_on_the_tiny_model_gives_trainable_triplets(tiny_model, tiny_tokenizer) -> None:
    env = make_env(tiny_model, tiny_tokenizer, max_turns=2, generation_kwargs={
        "do_sample": True, "max_new_tokens": 6, "pad_token_id": tiny_tokenizer.pad_token_id})
    torch.manual_seed(0)
    queries, responses, masks, rewards, histories = env.run(["What is 1+1?", "What is 2*3?", "Hi"])
    for query, response, mask, reward, history in zip(queries, responses, masks, rewards, histories):
        assert 0 < len(response) == len(mask) and mask[0] == 1  # the model's first turn
        assert torch.equal(torch.cat([query, response]), history.tokens)
        assert reward == float(len(history.last_text_segment))
        model_text = tiny_tokenizer.decode(response[mask.bool()])
        assert "<response>" not in model_text


def test_encoder_decoder_models_are_refused(tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match="needs a causal LM"):
        TextEnvironment(ScriptedLM([], 0, is_encoder_decoder=True), tiny_tokenizer, [calculator], len, PROMPT)


def test_the_project_tool_environment_speaks_trls_syntax_too(tiny_tokenizer) -> None:
    def generate(contexts: List[torch.Tensor]) -> List[torch.Tensor]:
        text = CALL + " and more" if len(contexts[0]) < 10 else "Result=42<submit>"
        return [torch.tensor(tiny_tokenizer(text, add_special_tokens=False).input_ids)] * len(contexts)

    env = ToolEnvironment(generate, tiny_tokenizer, {"calculator": calculator}, syntax=RequestCallSyntax())
    (episode,) = env.run([torch.tensor([5, 6])])
    assert env.text(episode) == CALL + "42<response>" + "Result=42<submit>"
    assert (episode.turns, episode.tool_calls, episode.finished) == (2, 1, True)
    assert episode.response_mask.count(0) == len(tiny_tokenizer("42<response>", add_special_tokens=False).input_ids)
