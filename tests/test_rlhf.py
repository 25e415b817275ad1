"""RLHF building blocks: SFT packing, pairwise reward models, the triplet PPO API, tool episodes,
LoRA, and the example pipeline end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Tuple

import pytest
import torch

from conftest import REPO
from rl4lms.rlhf.reward_model import (PreferencePair, RewardModelTrainer, load_preference_pairs, pairwise_accuracy,
                                      pairwise_loss)
from rl4lms.rlhf.sft import IGNORE_INDEX, SFTExample, SFTTrainer, load_sft_examples, pack_examples, pad_examples

PIPELINE = REPO / "task_configs" / "rlhf_pipeline"


def parameter_counts(model: torch.nn.Module) -> Tuple[int, int]:
    """(trainable, total) parameter counts."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


# --- SFT ------------------------------------------------------------------------------------------
def test_packing_cuts_the_stream_into_blocks_and_pads_only_the_last() -> None:
    examples = [([1, 2, 9], [1, 2, 9]), ([3, 4, 5, 9], [IGNORE_INDEX, 4, 5, 9]), ([6, 9], [6, 9])]
    packed = pack_examples(examples, max_seq_length=4, pad_token_id=0)
    assert packed["input_ids"].tolist() == [[1, 2, 9, 3], [4, 5, 9, 6], [9, 0, 0, 0]]
    assert packed["labels"].tolist() == [[1, 2, 9, IGNORE_INDEX], [4, 5, 9, 6], [9, IGNORE_INDEX, IGNORE_INDEX,
                                                                                 IGNORE_INDEX]]
    assert packed["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]
    exact = pack_examples([([1, 9], [1, 9]), ([2, 9], [2, 9])], max_seq_length=2, pad_token_id=0)
    assert exact["input_ids"].tolist() == [[1, 9], [2, 9]] and exact["attention_mask"].min() == 1  # no padding block
    padded = pad_examples(examples, max_seq_length=3, pad_token_id=0)
    assert padded["input_ids"].tolist() == [[1, 2, 9], [3, 4, 5], [6, 9, 0]]
    assert padded["labels"][2].tolist() == [6, 9, IGNORE_INDEX]


def test_completion_only_loss_masks_the_prompt(isolated_home: Path) -> None:
    from rl4lms.models.loading import load_tokenizer
    from rl4lms.rlhf.sft import tokenize_example

    tokenizer = load_tokenizer("rl4lms/tiny-gpt2")
    example = SFTExample("count: 1 2", " 3 4")
    prompt_len = len(tokenizer("count: 1 2", add_special_tokens=False).input_ids)
    ids, labels = tokenize_example(tokenizer, example, completion_only=True)
    assert ids[-1] == tokenizer.eos_token_id
    assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len and labels[prompt_len:] == ids[prompt_len:]
    assert tokenize_example(tokenizer, example, completion_only=False)[1] == ids


def test_sft_lowers_the_loss_and_saves_a_loadable_model(tmp_path: Path, isolated_home: Path) -> None:
    from transformers import AutoModelForCausalLM

    examples = load_sft_examples(PIPELINE / "data" / "sft.jsonl")
    trainer = SFTTrainer("rl4lms/tiny-gpt2", examples, max_seq_length=32, learning_rate=3e-3, batch_size=8,
                         num_epochs=4, completion_only_loss=True, device="cpu")
    stats = trainer.train()
    assert [s["epoch"] for s in stats] == [1, 2, 3, 4] and stats[-1]["sft/loss"] < stats[0]["sft/loss"]
    trainer.save_pretrained(tmp_path / "sft")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "sft").config.n_embd == 64
    with pytest.raises(ValueError, match="needs 'text', or 'prompt' and 'completion'"):
        (tmp_path / "bad.jsonl").write_text('{"question": "x"}\n')
        load_sft_examples(tmp_path / "bad.jsonl")


def test_rows_without_a_token_to_learn_are_skipped_or_refused(isolated_home: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # With completion-only loss, a prompt longer than max_seq_length leaves nothing to learn in its
    # (truncated) row, and in the packed blocks that hold only prompt tokens.
    long_prompt = SFTExample("1 2 3 4 5 6 7 8 9 10 " * 4, " 11")
    kwargs = dict(max_seq_length=16, completion_only_loss=True, batch_size=2, device="cpu")
    with pytest.raises(ValueError, match="no example has a token to learn within max_seq_length=16"):
        SFTTrainer("rl4lms/tiny-gpt2", [long_prompt], packing=False, **kwargs)
    unpacked = SFTTrainer("rl4lms/tiny-gpt2", [long_prompt, SFTExample("count: 1", " 2 3")], packing=False, **kwargs)
    assert len(unpacked.rows) == 1 and "1 of 2 examples have no token to learn" in caplog.text
    packed = SFTTrainer("rl4lms/tiny-gpt2", [long_prompt], packing=True, **kwargs)
    assert len(packed.rows) == 1 and "blocks have no token to learn" in caplog.text  # only the last block
    for trainer in (unpacked, packed):
        assert math.isfinite(trainer.train()[0]["sft/loss"])
    with pytest.raises(ValueError, match="max_seq_length=512 exceeds the 256 positions"):
        SFTTrainer("rl4lms/tiny-gpt2", [long_prompt], max_seq_length=512, device="cpu")


# --- reward model ---------------------------------------------------------------------------------
def test_pairwise_loss_hand_example() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2  # -log sigmoid(2), -log sigmoid(0)
    assert float(pairwise_loss(chosen, rejected)) == pytest.approx(expected)
    assert pairwise_accuracy(chosen, rejected) == 0.5  # a tie is not a correct ranking


@pytest.mark.slow
def test_reward_model_trains_and_plugs_into_learned_reward(tmp_path: Path, isolated_home: Path) -> None:
    from rl4lms.registry import RewardFunctionRegistry

    pairs = load_preference_pairs(PIPELINE / "data" / "preferences_train.jsonl")[:64]
    trainer = RewardModelTrainer("rl4lms/tiny-gpt2", pairs, eval_pairs=pairs[:16], max_length=32,
                                 learning_rate=5e-4, batch_size=16, num_epochs=3, device="cpu")
    stats = trainer.train()
    assert stats[-1]["rm/loss"] < stats[0]["rm/loss"] and "rm/eval_accuracy" in stats[-1]
    trainer.save_pretrained(tmp_path / "rm")
    reward = RewardFunctionRegistry.build("learned_reward", {"model_name": str(tmp_path / "rm"), "label_ix": 0,
                                                             "device": "cpu"})
    prompts = [p.prompt for p in pairs[:4]]
    chosen = [p.chosen for p in pairs[:4]]
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.rewards([p + c for p, c in zip(prompts, chosen)]).tolist()
    assert reward(prompts, chosen, [[]] * 4, [True] * 4) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="no string field"):
        (tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b"}\n')
        load_preference_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(ValueError, match="no training pairs"):
        RewardModelTrainer("rl4lms/tiny-gpt2", [])


# --- triplet PPO API ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ppo_trainer():
    from rl4lms.rlhf.triplet_ppo_trainer import TripletPPOTrainer

    return TripletPPOTrainer("rl4lms/tiny-gpt2", ppo_args={"batch_size": 4, "n_epochs": 2, "learning_rate": 1e-3},
                      kl_coeff=0.05, policy_args={"generation_kwargs": {"do_sample": True, "top_k": 0}}, device="cpu")


def _queries(trainer, texts: List[str]) -> List[torch.Tensor]:
    return [trainer.tokenizer(t, return_tensors="pt").input_ids[0] for t in texts]


@pytest.mark.slow
def test_step_runs_the_ppo_update_and_returns_trl_stats(ppo_trainer) -> None:
    from rl4lms.algorithms.ppo import PPO

    assert isinstance(ppo_trainer.ppo, PPO)  # the config trainer's algorithm, not a copy of it
    queries = _queries(ppo_trainer, ["1 2 3", "the meeting is on"])
    responses = ppo_trainer.generate(queries, max_new_tokens=6)
    before = [p.detach().clone() for p in ppo_trainer.policy.model.parameters()]
    stats = ppo_trainer.step(queries, responses, [1.0, -1.0])
    for key in ("ppo/loss/total", "ppo/policy/clipfrac", "ppo/val/var_explained", "objective/kl", "objective/kl_coef",
                "ppo/mean_scores", "rollout_info/ep_rew"):
        assert math.isfinite(stats[key]), key
    assert stats["ppo/mean_scores"] == pytest.approx(0.0)
    assert any(not torch.equal(a, b) for a, b in zip(before, ppo_trainer.policy.model.parameters()))
    with pytest.raises(ValueError, match="as many queries, responses and scores"):
        ppo_trainer.step(queries, responses, [1.0])
    with pytest.raises(ValueError, match="must be finite"):
        ppo_trainer.step(queries, responses, [1.0, float("nan")])
    with pytest.raises(ValueError, match=r"queries\[1\] and responses\[1\] must not be empty"):
        ppo_trainer.step([queries[0], torch.tensor([], dtype=torch.long)], responses, [1.0, 1.0])
    # tiny-gpt2 has 256 positions: each part fits max_length, the two together do not.
    with pytest.raises(ValueError, match=r"queries\[0\] \+ responses\[0\] take 300 positions; the model has 256"):
        ppo_trainer.step([torch.full((200,), 5)], [torch.full((100,), 6)], [1.0])
    with pytest.raises(ValueError, match=r"queries\[0\] \+ max_new_tokens take 264 positions"):
        ppo_trainer.generate([torch.full((200,), 5)], max_new_tokens=64)
    with pytest.raises(ValueError, match="differs from the policy's"):
        ppo_trainer.generate(queries, max_new_tokens=4, temperature=0.7)


@pytest.mark.slow
def test_response_masks_leave_tool_tokens_out_of_the_loss(ppo_trainer) -> None:
    from rl4lms.algorithms.rollout import pad_token_lists, scored_batch

    queries = _queries(ppo_trainer, ["2+3=", "7*6="])
    responses = [torch.tensor([10, 11, 12, 13]), torch.tensor([20, 21, 22])]
    masks = [[1, 0, 0, 1], [1, 1, 0]]
    stats = ppo_trainer.step(queries, responses, [1.0, 0.0], response_masks=masks)
    assert stats["rollout_info/ep_lens"] == pytest.approx(2.0)  # model-written tokens only
    # The batch the step builds: no log-prob, KL or reward on the tool tokens; the score on the
    # last model token.
    policy = ppo_trainer.policy
    prompt_ids, prompt_mask = pad_token_lists([q.tolist() for q in queries], 0, torch.device("cpu"), left=True)
    response_ids, response_mask = pad_token_lists([r.tolist() for r in responses], 0, torch.device("cpu"), left=False)
    loss_mask, _ = pad_token_lists(masks, 0, torch.device("cpu"), left=False)
    with torch.no_grad():
        out = policy.evaluate_episodes(prompt_ids, prompt_mask, response_ids, response_mask)
        ref = policy.reference_log_probs(prompt_ids, prompt_mask, response_ids, response_mask)
    rewards = torch.zeros(2, 4)
    rewards[0, 3] = 1.0
    batch = scored_batch(prompt_ids, prompt_mask, response_ids, response_mask, out, ref, rewards, 0.05,
                         loss_mask=loss_mask)
    off = loss_mask == 0
    assert torch.all(batch.log_probs[off] == 0) and torch.all(batch.kl[off] == 0) and torch.all(batch.rewards[off] == 0)
    assert torch.all(batch.log_probs[~off] != 0)


# --- tool environment -----------------------------------------------------------------------------
def test_tool_call_parsing_and_the_calculator() -> None:
    from rl4lms.envs.tool_env import ToolCall, calculator, parse_tool_call, run_tool
    from rl4lms.errors import ToolCallError

    assert parse_tool_call("I will compute <call>calculator(12 * (3 + 4))</call> then") == ToolCall(
        "calculator", "12 * (3 + 4)")
    assert parse_tool_call("no call here") is None
    assert parse_tool_call("<call>a(1)</call><call>b(2)</call>") == ToolCall("a", "1")  # the first closed call
    with pytest.raises(ToolCallError, match="malformed tool call"):
        parse_tool_call("<call>calculator 1+1</call>")
    assert calculator("12 * (3 + 4)") == "84" and calculator("7 / 2") == "3.5" and calculator("-2 ** 3") == "-8"
    for bad in ("__import__('os')", "2 ** 1000", "1 +"):
        with pytest.raises(ValueError):
            calculator(bad)
    assert calculator("(2 ** 63) ** 64") == str(2 ** 4032)  # 64 bits x 64: at the size limit
    for too_large in ("((9 ** 64) ** 64) ** 64", "(2 ** 64) ** 64", "(2 ** 63) ** 64 * 2 ** 64"):
        with pytest.raises(ValueError, match="result too large"):
            calculator(too_large)
    tools = {"calculator": calculator}
    assert run_tool(tools, ToolCall("calculator", "1/0")) == "error: ZeroDivisionError: division by zero"
    assert run_tool(tools, ToolCall("search", "x")) == "error: unknown tool 'search'; available: calculator"


class ScriptedModel:
    """A stand-in for ``TripletPPOTrainer.generate`` that writes the given texts turn by turn."""

    def __init__(self, tokenizer, turns: List[List[str]]) -> None:
        self.tokenizer, self.turns, self.calls = tokenizer, turns, 0

    def __call__(self, contexts: List[torch.Tensor]) -> List[torch.Tensor]:
        texts = self.turns[self.calls]
        self.calls += 1
        return [torch.tensor(self.tokenizer(t, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id])
                for t in texts[:len(contexts)]]


def test_tool_episodes_append_results_and_mask_them(isolated_home: Path) -> None:
    from rl4lms.envs.tool_env import ToolEnvironment, calculator
    from rl4lms.models.loading import load_tokenizer

    tokenizer = load_tokenizer("rl4lms/tiny-gpt2")
    scripted = ScriptedModel(tokenizer, [
        ["<call>calculator(6*7)</call> ignored", "42", "<call>calculator(1/0)</call>"],
        ["the answer is 42", "<call>calculator(2+2)</call>"],
        ["<call>calculator(3)</call>"],
    ])
    env = ToolEnvironment(scripted, tokenizer, {"calculator": calculator}, max_turns=3)
    episodes = env.run([torch.tensor([5, 6]), torch.tensor([7]), torch.tensor([8])])
    first, second, third = episodes
    assert env.text(first) == "<call>calculator(6*7)</call><result>42</result>the answer is 42"
    assert first.tool_calls == 1 and first.turns == 2 and first.finished
    assert env.text(second) == "42" and second.turns == 1 and second.tool_calls == 0
    assert env.text(third).startswith("<call>calculator(1/0)</call><result>error: ZeroDivisionError")
    assert third.turns == 3 and third.tool_calls == 3  # stopped by max_turns
    for episode in episodes:
        assert len(episode.response) == len(episode.response_mask)
        model_text = tokenizer.decode([t for t, m in zip(episode.response, episode.response_mask) if m],
                                      skip_special_tokens=True)
        assert "<result>" not in model_text and "ignored" not in model_text
    result_tokens = tokenizer("<result>42</result>", add_special_tokens=False).input_ids
    assert first.response_mask.count(0) == len(result_tokens)


def test_long_tool_output_is_cut_and_full_contexts_end_the_episode(isolated_home: Path) -> None:
    from rl4lms.envs.tool_env import ToolEnvironment
    from rl4lms.models.loading import load_tokenizer

    tokenizer = load_tokenizer("rl4lms/tiny-gpt2")
    scripted = ScriptedModel(tokenizer, [["<call>echo(x)</call>"], ["<call>echo(y)</call>"], ["never asked"]])
    env = ToolEnvironment(scripted, tokenizer, {"echo": lambda arg: arg * 1000}, max_turns=3, max_result_chars=5,
                          max_context_tokens=20)
    (episode,) = env.run([torch.tensor([5, 6])])
    assert env.text(episode) == "<call>echo(x)</call><result>xxxxx [truncated]</result>"
    assert episode.finished and episode.turns == 1 and scripted.calls == 1
    assert len(episode.query) + len(episode.response) >= 20


@pytest.mark.slow
def test_tool_episodes_train_with_ppo(ppo_trainer) -> None:
    from rl4lms.envs.tool_env import ToolEnvironment, calculator

    env = ToolEnvironment(lambda contexts: ppo_trainer.generate(contexts, max_new_tokens=8), ppo_trainer.tokenizer,
                          {"calculator": calculator}, max_turns=2)
    queries = _queries(ppo_trainer, ["what is 6*7?", "what is 2+2?"])
    episodes = env.run(queries)
    scores = [float("42" in env.text(e)) for e in episodes]
    stats = ppo_trainer.step([e.query for e in episodes], [torch.tensor(e.response) for e in episodes], scores,
                             response_masks=[e.response_mask for e in episodes])
    assert math.isfinite(stats["ppo/loss/total"])


# --- LoRA ------------------------------------------------------------------------------------------
def test_lora_policy_trains_adapters_only_and_uses_the_base_as_reference(isolated_home: Path) -> None:
    from transformers import AutoModelForCausalLM

    from rl4lms.models.loading import resolve_model_name
    from rl4lms.rlhf.triplet_ppo_trainer import TripletPPOTrainer

    trainer = TripletPPOTrainer("rl4lms/tiny-gpt2", device="cpu", ppo_args={"batch_size": 2, "n_epochs": 1},
                         policy_args={"peft_config": {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]}})
    policy = trainer.policy
    # c_attn maps 64 -> 192 in each of the 2 layers: A is 4 x 64, B is 192 x 4.
    trainable, total = parameter_counts(policy.model)
    assert trainable == 2 * (4 * 64 + 192 * 4) == 2048
    base = AutoModelForCausalLM.from_pretrained(resolve_model_name("rl4lms/tiny-gpt2")).eval()
    assert total == sum(p.numel() for p in base.parameters()) + 2048
    optimized = sum(p.numel() for group in policy.optimizer.param_groups for p in group["params"])
    assert optimized == 2048 + 65  # the adapters and the value head (64 weights + bias)
    assert policy.ref_model is None
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # adapters that change the model
    ids = trainer.tokenizer("1 2 3 4 5", return_tensors="pt").input_ids
    prompt, response = ids[:, :2], ids[:, 2:]
    ones_p, ones_r = torch.ones_like(prompt), torch.ones_like(response)
    ref = policy.reference_log_probs(prompt, ones_p, response, ones_r)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits[:, 1:-1]
        expected = torch.log_softmax(base_logits, -1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
        adapted = policy.evaluate_episodes(prompt, ones_p, response, ones_r).log_probs
    assert torch.allclose(ref, expected, atol=1e-5) and not torch.allclose(adapted, expected, atol=1e-3)


def test_quantized_loading_is_refused_without_a_gpu(isolated_home: Path) -> None:
    from rl4lms.models.lora import quantization_kwargs
    from rl4lms.rlhf.triplet_ppo_trainer import TripletPPOTrainer

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        quantization_kwargs("8bit")
    with pytest.raises(ValueError, match="not one of 4bit, 8bit"):
        quantization_kwargs("2bit")
    with pytest.raises(ValueError, match="needs policy.args.peft_config"):
        TripletPPOTrainer("rl4lms/tiny-gpt2", device="cpu", policy_args={"quantization": "4bit"})


# --- the example pipeline -------------------------------------------------------------------------
@pytest.mark.slow
def test_example_pipeline_runs_offline_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rl4lms.rlhf.pipeline import run_pipeline

    monkeypatch.chdir(REPO)  # the PPO config names its prompt files relative to the repository root
    out = tmp_path / "pipeline"
    summary = run_pipeline(PIPELINE / "pipeline.yml", out, device="cpu")
    assert summary["sft"][-1]["sft/loss"] < summary["sft"][0]["sft/loss"]
    assert summary["reward_model"][-1]["rm/eval_accuracy"] > 0.5
    assert summary["ppo"]["iterations"] == 60
    assert json.loads((out / "pipeline_summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (out / "reward_model" / "model.safetensors").exists() and (out / "ppo" / "model" / "value_head.safetensors").exists()
    stamp = (out / "sft" / "model.safetensors").stat().st_mtime_ns
    assert run_pipeline(PIPELINE / "pipeline.yml", out, device="cpu")["sft"] == summary["sft"]  # finished stages are kept
    assert (out / "sft" / "model.safetensors").stat().st_mtime_ns == stamp


def test_pipeline_config_errors_name_the_key(tmp_path: Path) -> None:
    from rl4lms.errors import ConfigError
    from rl4lms.rlhf.pipeline import run_pipeline

    bad = tmp_path / "bad.yml"
    bad.write_text("sft: {model_name: rl4lms/tiny-gpt2, data: x.jsonl, epochs: 3}\nreward_model: {}\nppo: {}\nextra: 1\n")
    with pytest.raises(ConfigError, match="extra: unknown section"):
        run_pipeline(bad, tmp_path / "out")
    bad.write_text("sft: {}\nreward_model: {}\nppo: {overides: [seed=1], overrides: seed=1}\n")
    with pytest.raises(ConfigError) as error:
        run_pipeline(bad, tmp_path / "out")
    for message in ("ppo.overides: unknown key; valid keys: config_path, overrides", "ppo.config_path: required key",
                    "ppo.overrides: expected a list"):
        assert message in str(error.value)
    assert not (tmp_path / "out").exists()  # refused before any stage ran
    (tmp_path / "sft.jsonl").write_text('{"text": "1 2 3"}\n')
    bad.write_text("sft: {model_name: rl4lms/tiny-gpt2, data: sft.jsonl, epochs: 3}\nreward_model: {}\n"
                   "ppo: {config_path: ppo.yml}\n")
    with pytest.raises(ConfigError, match="sft.epochs: unknown key; valid keys: model_name, max_seq_length"):
        run_pipeline(bad, tmp_path / "out")
    bad.write_text("sft: {model_name: rl4lms/tiny-gpt2, data: sft.jsonl}\nppo: {config_path: ppo.yml}\n"
                   "reward_model: {model_name: rl4lms/tiny-gpt2, init_from_sft: true, data: sft.jsonl}\n")
    with pytest.raises(ConfigError, match="model_name or init_from_sft: true, not both"):
        run_pipeline(bad, tmp_path / "out_2")
    assert not (tmp_path / "out_2").exists()


@pytest.mark.slow
def test_reward_model_with_lora_trains_adapters_and_the_score_head(isolated_home: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification


    pairs = [PreferencePair("count: 1 2 3", " 4 5 6", " 6 5 4")] * 4
    trainer = RewardModelTrainer("rl4lms/tiny-gpt2", pairs, batch_size=4, num_epochs=1, device="cpu",
                                 peft_config={"r": 2, "lora_alpha": 4, "target_modules": ["c_attn"]})
    trainable, _ = parameter_counts(trainer.model)
    # LoRA on c_attn (2 layers x (2 x 64 + 192 x 2)) plus the trainable copy of the 64 -> 1 score head.
    assert trainable == 2 * (2 * 64 + 192 * 2) + 64
    trainer.train()
    trainer.save_pretrained(tmp_path / "rm")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    trainer.model.eval()
    ids = trainer.tokenizer(["count: 1 2 3 4 5 6"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**ids).logits, trainer.model(**ids).logits, atol=1e-5)


@pytest.mark.slow
def test_triplet_trainer_continues_from_its_saved_folder_with_its_critic(tmp_path: Path) -> None:
    from rl4lms.rlhf.triplet_ppo_trainer import TripletPPOTrainer

    first = TripletPPOTrainer("rl4lms/tiny-gpt2", ppo_args={"batch_size": 2, "n_epochs": 1}, max_length=16)
    first.step([torch.tensor([5, 6])] * 2, [torch.tensor([7, 8, 9])] * 2, [1.0, 0.0])
    first.save_pretrained(tmp_path / "saved")
    again = TripletPPOTrainer(str(tmp_path / "saved"), ppo_args={"batch_size": 2, "n_epochs": 1}, max_length=16)
    for name, value in first.policy.value_head.state_dict().items():
        assert torch.equal(again.policy.value_head.state_dict()[name], value), name
    fresh = TripletPPOTrainer("rl4lms/tiny-gpt2", ppo_args={"batch_size": 2, "n_epochs": 1}, max_length=16, seed=1)
    assert not torch.equal(fresh.policy.value_head.summary.weight, first.policy.value_head.summary.weight)
