"""RL4LMs users' configs and extension code: the keys RL4LMs reads, its supervised form, and the
README's custom data pool, reward, metric, algorithm and policy, written as such a user would."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import yaml

from conftest import REPO, write_custom_module_config
from rl4lms.algorithms.advantages import compute_gae, normalize_rewards
from rl4lms.algorithms.buffer import RolloutBatch, TextRolloutBuffer
from rl4lms.algorithms.rollout import encode_prompts
from rl4lms.cli import default_experiment_name, main
from rl4lms.config import load_config
from rl4lms.config.rl4lms_supervised import translate_rl4lms_supervised
from rl4lms.config.validation import validate_config
from rl4lms.data_pools.text_gen_pool import Sample
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.errors import ConfigError
from rl4lms.training.evaluation import generate_texts

DEFAULT = REPO / "task_configs/synthetic_increasing_numbers/tiny_gpt2_ppo.yml"


def _run(config: Path, folder: Path, name: str, *extra: str) -> int:
    return main(["--config_path", str(config), "--base_path_to_store_results", str(folder), "--experiment_name",
                 name, *extra])


# --- keys RL4LMs reads ---------------------------------------------------------------------------

def test_evaluation_cuts_prompts_on_the_policy_side(tiny_tokenizer: Any) -> None:
    from rl4lms.policies.causal import CausalLMActorCriticPolicy

    env = TextGenEnv(tiny_tokenizer, None, [Sample(id="s", prompt_or_input_text="one two three four five six seven")],
                     max_episode_length=2, max_prompt_length=3, prompt_truncation_side="left")
    ids = tiny_tokenizer("one two three four five six seven")["input_ids"]
    left, _, _ = encode_prompts(env, env.samples, torch.device("cpu"))
    right, _, cut = encode_prompts(env, env.samples, torch.device("cpu"), "right")
    assert left[0].tolist() == ids[-3:] and right[0].tolist() == ids[:3] and cut == 1
    policy = CausalLMActorCriticPolicy(env.observation_space, env.action_space, lambda _: 1e-4,
                                       model_name="rl4lms/tiny-gpt2", tokenizer=tiny_tokenizer,
                                       prompt_truncation_side="right", generation_kwargs={"max_new_tokens": 2})
    seen: List[List[int]] = []
    generate = policy.generate

    def spy(prompt_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append(prompt_ids[0].tolist())
        return generate(prompt_ids, *args, **kwargs)

    policy.generate = spy  # type: ignore[method-assign]
    generate_texts(policy, env, env.samples, batch_size=1)
    assert seen == [ids[:3]]  # RL4LMs' policy-side prompt_truncation_side, not the env's


def test_policy_rejects_an_unknown_truncation_side(tiny_tokenizer: Any) -> None:
    from rl4lms.policies.causal import CausalLMActorCriticPolicy

    env = TextGenEnv(tiny_tokenizer, None, [Sample(id="s", prompt_or_input_text="x")], max_episode_length=2)
    with pytest.raises(ValueError, match="policy.args.prompt_truncation_side must be 'left' or 'right'"):
        CausalLMActorCriticPolicy(env.observation_space, env.action_space, lambda _: 1e-4,
                                  model_name="rl4lms/tiny-gpt2", tokenizer=tiny_tokenizer,
                                  prompt_truncation_side="middle")


def test_normalize_rewards_by_hand() -> None:
    rewards = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    mean, std = 2.0, (2.0 / 3.0) ** 0.5  # population std of 1, 2, 3
    expected = torch.tensor([[(1 - mean) / std, 0.0, 0.0], [(3 - mean) / std, 0.0, 0.0]])
    assert torch.allclose(normalize_rewards(rewards, mask), expected, atol=1e-6)


def _batch(rewards: torch.Tensor, mask: torch.Tensor) -> RolloutBatch:
    batch, width = rewards.shape
    zeros = torch.zeros_like(rewards)
    return RolloutBatch(prompt_ids=torch.ones(batch, 2, dtype=torch.long), prompt_mask=torch.ones(batch, 2, dtype=torch.long),
                        response_ids=torch.arange(batch * width).view(batch, width) + 3, response_mask=mask.long(),
                        log_probs=zeros, ref_log_probs=zeros, values=torch.full_like(rewards, 0.5) * mask,
                        rewards=rewards, kl=zeros, scores=rewards.sum(1))


def test_norm_reward_standardizes_the_rollout_before_gae() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    buffer = TextRolloutBuffer(pad_token_id=0, gamma=0.99, gae_lambda=0.95, normalize_advantage=False,
                               norm_reward=True)
    buffer.add(_batch(rewards, mask))
    data = buffer.finalize()
    expected, _ = compute_gae(normalize_rewards(rewards, mask), data.values, mask, 0.99, 0.95)
    assert torch.allclose(data.advantages, expected)
    assert torch.allclose((data.rewards * mask).sum() / mask.sum(), torch.tensor(0.0), atol=1e-6)


def test_kl_div_norm_reward_reaches_the_buffer() -> None:
    config = load_config(DEFAULT, ["alg.kl_div.norm_reward=true"], smoke=False)
    assert config["alg"]["kl_div"]["norm_reward"] is True
    assert load_config(DEFAULT)["alg"]["kl_div"]["norm_reward"] is False


def test_pad_token_as_eos_token_defaults_to_true_as_in_rl4lms() -> None:
    raw = yaml.safe_load(DEFAULT.read_text())
    raw["tokenizer"].pop("pad_token_as_eos_token", None)
    assert validate_config(raw)["tokenizer"]["pad_token_as_eos_token"] is True


def test_default_run_folder_names_the_task_folder() -> None:
    names = {default_experiment_name(Path(f"task_configs/{task}/t5_ppo.yml"), smoke=False)
             for task in ("totto", "common_gen")}
    assert names == {"totto_t5_ppo", "common_gen_t5_ppo"}
    assert default_experiment_name(Path("task_configs/totto/t5_ppo.yml"), smoke=True) == "totto_t5_ppo_smoke"


def test_a_config_in_the_working_folder_is_named_after_that_folder(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "my_task"
    work.mkdir()
    monkeypatch.chdir(work)
    assert default_experiment_name(Path("ppo.yml"), smoke=False) == "my_task_ppo"
    assert default_experiment_name(Path("/ppo.yml"), smoke=True) == "ppo_smoke"


def test_a_stray_comma_after_a_boolean_is_read_as_the_boolean(caplog: pytest.LogCaptureFixture) -> None:
    raw = yaml.safe_load(DEFAULT.read_text())
    raw["train_evaluation"]["metrics"] = [{"id": "rouge_l_max", "args": {"apply_best": "True,"}}]
    assert validate_config(raw)["train_evaluation"]["metrics"][0]["args"]["apply_best"] is True
    assert "apply_best: read 'True,' as true" in caplog.text
    raw["train_evaluation"]["metrics"] = [{"id": "rouge_l_max", "args": {"apply_best": "yes please"}}]
    with pytest.raises(ConfigError, match="apply_best: expected bool"):
        validate_config(raw)


# --- RL4LMs' supervised form ---------------------------------------------------------------------

def _rl4lms_supervised(**training_args: Any) -> Dict[str, Any]:
    return {
        "tokenizer": {"model_name": "rl4lms/tiny-gpt2", "padding_side": "left", "truncation_side": "right",
                      "max_length": 24},
        "datapool": {"id": "increasing_numbers", "args": {"n_samples": 8}},
        "alg": {"id": "supervised", "model_type": "causal", "model_name": "rl4lms/tiny-gpt2",
                "training_args": {"per_device_train_batch_size": 4, "num_train_epochs": 2, "learning_rate": 1e-3,
                                  "lr_scheduler_type": "constant", "logging_steps": 10, "save_total_limit": 1,
                                  **training_args},
                "generation_kwargs": {"do_sample": True, "max_new_tokens": 6, "post_processing_fn": None}},
        "train_evaluation": {"eval_batch_size": 8, "metrics": [{"id": "increasing_numbers"}]},
    }


def test_rl4lms_supervised_form_maps_onto_the_supervised_algorithm(caplog: pytest.LogCaptureFixture) -> None:
    config = validate_config(translate_rl4lms_supervised(_rl4lms_supervised(weight_decay=0.1, adam_epsilon=1e-6,
                                                                           gradient_accumulation_steps=2)))
    assert config["alg"]["args"] == {"batch_size": 4, "learning_rate": 1e-3, "lr_scheduler_type": "constant"}
    policy = config["alg"]["policy"]
    assert policy["id"] == "causal_lm_actor_critic_policy"
    assert policy["args"]["generation_kwargs"] == {"do_sample": True, "max_new_tokens": 6}
    assert policy["args"]["weight_decay"] == 0.1 and policy["args"]["optimizer_kwargs"] == {"eps": 1e-6}
    assert policy["args"]["prompt_truncation_side"] == "right"
    assert config["env"]["args"]["max_prompt_length"] == 24 and config["env"]["args"]["max_episode_length"] == 6
    evaluation = config["train_evaluation"]
    assert (evaluation["n_iters"], evaluation["eval_every"], evaluation["save_checkpoints_to_keep"]) == (2, 1, 1)
    assert config["accelerator"]["gradient_accumulation_steps"] == 2
    assert "max_length" not in config["tokenizer"]
    assert "logging_steps steer Hugging Face Trainer's own logging" in caplog.text


def test_rl4lms_supervised_form_takes_hugging_face_defaults() -> None:
    raw = _rl4lms_supervised()
    raw["alg"]["training_args"] = {}
    config = validate_config(translate_rl4lms_supervised(raw))
    assert config["alg"]["args"] == {"batch_size": 8, "learning_rate": 5e-5, "lr_scheduler_type": "linear"}
    assert config["train_evaluation"]["n_iters"] == 3 and config["alg"]["policy"]["args"]["weight_decay"] == 0.0


@pytest.mark.parametrize("change, message", [
    (lambda a: a["training_args"].update(warmup_ratio=0.1), "alg.training_args.warmup_ratio: not supported"),
    (lambda a: a["training_args"].update(num_train_epochs=1.5), "num_train_epochs: must be a whole number"),
    (lambda a: a.update(model_type="encoder"), "alg.model_type: 'encoder' is not one of 'causal', 'seq2seq'"),
    (lambda a: a.pop("model_name"), "alg.model_name: required key is missing"),
    (lambda a: a["generation_kwargs"].update(post_processing_fn={"id": "three_sentence_summary"}),
     "post_processing_fn: only null is supported"),
])
def test_rl4lms_supervised_form_errors_name_the_key(change: Any, message: str) -> None:
    raw = _rl4lms_supervised()
    change(raw["alg"])
    with pytest.raises(ConfigError, match=message):
        translate_rl4lms_supervised(raw)


@pytest.mark.slow
def test_rl4lms_supervised_config_trains_and_resumes_like_a_project_run(tmp_path: Path) -> None:
    path = tmp_path / "tiny_gpt2_supervised.yml"
    path.write_text(yaml.safe_dump(_rl4lms_supervised()))
    assert _run(path, tmp_path, "sup") == 0
    run = tmp_path / "sup"
    assert json.loads((run / "config.json").read_text())["alg"]["policy"]["id"] == "causal_lm_actor_critic_policy"
    losses = [json.loads(line)["supervised/loss"] for line in (run / "training_info.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert (run / "model" / "config.json").is_file()
    assert _run(path, tmp_path, "sup") == 0  # finished: a second start changes nothing


# --- the README's extension examples -------------------------------------------------------------

RL4LMS_STYLE_COMPONENTS = '''
from typing import Any, Dict, List
from rl4lms.data_pools import Sample, TextGenPool
from rl4lms.envs import Observation
from rl4lms.metrics import BaseMetric
from rl4lms.registry import DataPoolRegistry, MetricRegistry, RewardFunctionRegistry
from rl4lms.rewards import RewardFunction


class CountingPool(TextGenPool):
    @classmethod
    def prepare(cls, split: str):
        samples = []
        for ix, item in enumerate({"train": range(8), "val": range(4), "test": range(4)}[split]):
            samples.append(Sample(id=f"{split}_{ix}", prompt_or_input_text=f"{item} {item + 1}",
                                  references=[f"{item + 2}"]))
        return cls(samples)


class LengthReward(RewardFunction):
    def __init__(self, *args) -> None:
        super().__init__()

    def __call__(self, prev_observation: Observation, action: int, current_observation: Observation,
                 done: bool, meta_info: Dict[str, Any] = None) -> float:
        if done:
            return float(len(current_observation.context_text.split()))
        return 0


class WordCount(BaseMetric):
    def __init__(self) -> None:
        super().__init__()

    def compute(self, prompt_texts, generated_texts, reference_texts, meta_infos=None, model=None, split_name=None):
        counts = [len(text.split()) for text in generated_texts]
        return {"custom_metrics/word_count": (counts, sum(counts) / len(counts))}


DataPoolRegistry.add("counting_pool", CountingPool)
RewardFunctionRegistry.add("length_reward", LengthReward)
MetricRegistry.add("word_count", WordCount)
'''


@pytest.mark.slow
def test_rl4lms_readme_pool_reward_and_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def edit(config: Dict[str, Any]) -> None:
        config["datapool"] = {"id": "counting_pool", "args": {}}
        config["reward_fn"] = {"id": "length_reward"}
        config["train_evaluation"]["metrics"] = [{"id": "word_count"}]

    path = write_custom_module_config(tmp_path, monkeypatch, "rl4lms_style_components", RL4LMS_STYLE_COMPONENTS,
                                      edit, "components.yml", n_iters=1, eval_every=1, save_every=1)
    assert _run(path, tmp_path, "components") == 0
    metrics = [json.loads(line) for line in (tmp_path / "components" / "val_split_metrics.jsonl").open()]
    assert "custom_metrics/word_count" in metrics[-1]["metrics"]
    rewards = [json.loads(line) for line in (tmp_path / "components" / "rollout_info.jsonl").open()]
    assert rewards[-1]["rollout_info/ep_rew"] > 0  # the per-step reward paid the finished episodes


RL4LMS_STYLE_ALGORITHM = '''
import torch as th
from torch.nn import functional as F
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import explained_variance, get_schedule_fn
from rl4lms.registry import AlgorithmRegistry

SEEN = {"batches": 0, "fields": None}


class ClippedPolicyGradient(OnPolicyAlgorithm):
    def __init__(self, policy, env, tracker, learning_rate=1e-4, n_steps=16, batch_size=16, n_epochs=2,
                 gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5,
                 use_sde=False, sde_sample_freq=-1, tensorboard_log=None, policy_kwargs=None, verbose=0,
                 seed=None, device="auto", _init_setup_model=True):
        super().__init__(policy, env, learning_rate=learning_rate, n_steps=n_steps, gamma=gamma,
                         gae_lambda=gae_lambda, ent_coef=ent_coef, vf_coef=vf_coef, max_grad_norm=max_grad_norm,
                         use_sde=use_sde, sde_sample_freq=sde_sample_freq, tensorboard_log=tensorboard_log,
                         policy_kwargs=policy_kwargs, verbose=verbose, device=device, seed=seed,
                         _init_setup_model=False)
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range
        self._tracker = tracker
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self):
        super()._setup_model()
        self.clip_range = get_schedule_fn(self.clip_range)

    def train(self):
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip = self.clip_range(self._current_progress_remaining)
        losses = []
        for epoch in range(self.n_epochs):
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                SEEN["batches"] += 1
                SEEN["fields"] = sorted(rollout_data._fields)
                actions = rollout_data.actions.long().flatten()
                out = self.policy.evaluate_actions(rollout_data.observations, actions)
                advantages = rollout_data.advantages
                ratio = th.exp(out.log_prob - rollout_data.old_log_prob)
                policy_loss = -th.min(advantages * ratio, advantages * th.clamp(ratio, 1 - clip, 1 + clip)).mean()
                loss = policy_loss + self.vf_coef * F.mse_loss(rollout_data.returns, out.values.flatten())
                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
                losses.append(loss.item())
        self._n_updates += self.n_epochs
        self.logger.record("train/explained_variance",
                           explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()))
        self._tracker.log_training_infos({"custom/loss": sum(losses) / len(losses)})


AlgorithmRegistry.add("clipped_pg", ClippedPolicyGradient)
'''


@pytest.mark.slow
def test_rl4lms_readme_custom_algorithm_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def edit(config: Dict[str, Any]) -> None:
        config["alg"]["id"] = "clipped_pg"
        config["alg"]["args"] = {"n_steps": 4, "batch_size": 16, "n_epochs": 2, "learning_rate": 1e-4}

    path = write_custom_module_config(tmp_path, monkeypatch, "rl4lms_style_algorithm", RL4LMS_STYLE_ALGORITHM, edit,
                                      "algorithm.yml", n_iters=2, eval_every=1, save_every=1)
    assert _run(path, tmp_path, "alg") == 0
    import rl4lms_style_algorithm

    assert rl4lms_style_algorithm.SEEN["fields"] == ["actions", "advantages", "observations", "old_log_prob",
                                                     "old_values", "returns"]
    assert rl4lms_style_algorithm.SEEN["batches"] >= 4
    records = [json.loads(line) for line in (tmp_path / "alg" / "training_info.jsonl").open()]
    assert len(records) == 2 and {"custom/loss", "train/explained_variance"} <= set(records[-1])
    assert (tmp_path / "alg" / "model" / "config.json").is_file()


PASS_THROUGH_ALGORITHM = '''
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from rl4lms.registry import AlgorithmRegistry


class MyOnPolicyAlgorithm(OnPolicyAlgorithm):
    def __init__(self, **args):
        super().__init__(**args)

    def train(self):
        for rollout_data in self.rollout_buffer.get(8):
            out = self.policy.evaluate_actions(rollout_data.observations, rollout_data.actions.long().flatten())
            loss = -(rollout_data.advantages * out.log_prob).mean()
            self.policy.optimizer.zero_grad()
            loss.backward()
            self.policy.optimizer.step()
        self._tracker.log_training_infos({"custom/loss": loss.item()})


AlgorithmRegistry.add("my_on_policy", MyOnPolicyAlgorithm)
'''


@pytest.mark.slow
def test_rl4lms_readme_pass_through_constructor_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RL4LMs' README form, ``__init__(self, **args)`` calling ``super().__init__(**args)``: the
    ``tracker`` it passes on is kept, not refused."""
    def edit(config: Dict[str, Any]) -> None:
        config["alg"]["id"] = "my_on_policy"
        config["alg"]["args"] = {"n_steps": 4, "learning_rate": 1e-4}

    path = write_custom_module_config(tmp_path, monkeypatch, "pass_through_algorithm", PASS_THROUGH_ALGORITHM, edit,
                                      "pass_through.yml", n_iters=1, eval_every=1, save_every=1)
    assert _run(path, tmp_path, "pass") == 0
    records = [json.loads(line) for line in (tmp_path / "pass" / "training_info.jsonl").open()]
    assert len(records) == 1 and "custom/loss" in records[0]


def test_buffer_transitions_are_the_env_observations(tiny_tokenizer: Any) -> None:
    samples = [Sample(id="a", prompt_or_input_text="hello there"),
               Sample(id="b", prompt_or_input_text="a much longer prompt text")]
    env = TextGenEnv(tiny_tokenizer, lambda *args: 0.0, samples, max_episode_length=4, max_prompt_length=8,
                     context_start_token=0)
    actions = [[5, 6, 7], [8, 9]]
    prompt_ids, prompt_mask, _ = encode_prompts(env, samples, torch.device("cpu"))
    response = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = torch.arange(6, dtype=torch.float).view(2, 3) * mask
    zeros = torch.zeros(2, 3)
    buffer = TextRolloutBuffer(tiny_tokenizer.pad_token_id, 1.0, 1.0, normalize_advantage=False,
                               observation_layout=env.observation_layout)
    buffer.add(RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response,
                            response_mask=mask, log_probs=zeros - 1, ref_log_probs=zeros, values=zeros,
                            rewards=rewards, kl=zeros, scores=rewards.sum(1)))
    data = buffer.finalize()
    (sample,) = list(buffer.get())  # no batch size: everything at once
    by_action = {int(a): i for i, a in enumerate(sample.actions)}
    for episode, episode_actions in zip(samples, actions):
        observation, _ = env.reset(options={"sample": episode})
        for step, action in enumerate(episode_actions):
            row = by_action[action]
            for key, value in observation.items():
                assert sample.observations[key][row].tolist() == value.tolist(), key
            i = samples.index(episode)
            assert sample.returns[row] == data.returns[i, step] and sample.old_log_prob[row] == -1
            observation, *_ = env.step(action)
    assert len(buffer.values) == 5 and [len(b.actions) for b in buffer.get(2)] == [2, 2, 1]


RL4LMS_STYLE_POLICY = '''
from rl4lms.policies.causal import CausalLMActorCriticPolicy
from rl4lms.registry import PolicyRegistry

CALLS = []


class HalfValuePolicy(CausalLMActorCriticPolicy):
    def evaluate_actions(self, obs, actions):
        CALLS.append(len(actions))
        output = super().evaluate_actions(obs, actions)
        output.values = output.values * 0.5
        return output


PolicyRegistry.add("half_value_policy", HalfValuePolicy)
'''


def _load_module(folder: Path, name: str, source: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    import importlib

    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    return importlib.import_module(name)


@pytest.mark.parametrize("model", ["rl4lms/tiny-gpt2", "rl4lms/tiny-t5"])
def test_per_transition_evaluation_equals_the_batched_forward(model: str, tiny_tokenizer: Any) -> None:
    from rl4lms.models.loading import load_tokenizer
    from rl4lms.policies.causal import CausalLMActorCriticPolicy
    from rl4lms.policies.seq2seq import Seq2SeqLMActorCriticPolicy

    tokenizer = load_tokenizer(model, pad_token_as_eos_token=True)
    cls = Seq2SeqLMActorCriticPolicy if "t5" in model else CausalLMActorCriticPolicy
    env = TextGenEnv(tokenizer, None, [Sample(id="s", prompt_or_input_text="x")], max_episode_length=4,
                     max_prompt_length=6, context_start_token=0 if "t5" in model else None)
    policy = cls(env.observation_space, env.action_space, lambda _: 1e-4, model_name=model, tokenizer=tokenizer)
    policy.observation_layout = env.observation_layout
    prompt = torch.tensor([[tokenizer.pad_token_id, 11, 12, 13], [21, 22, 23, 24]])
    prompt_mask = (prompt != tokenizer.pad_token_id).long()
    response = torch.tensor([[31, 32, 33], [41, 42, tokenizer.pad_token_id]])
    response_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        batched = policy.forward_episodes(prompt, prompt_mask, response, response_mask)
        slow = policy.episodes_through_transitions(prompt, prompt_mask, response, response_mask)
    valid = response_mask.bool()
    for name in ("log_probs", "values", "entropy"):
        assert torch.allclose(getattr(slow, name)[valid], getattr(batched, name)[valid], atol=1e-5), name


def test_a_policy_overriding_evaluate_actions_trains_through_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    def edit(config: Dict[str, Any]) -> None:
        config["alg"]["policy"]["id"] = "half_value_policy"

    path = write_custom_module_config(tmp_path, monkeypatch, "rl4lms_style_policy", RL4LMS_STYLE_POLICY, edit,
                                      "policy.yml", n_iters=1, eval_every=1, save_every=1)
    with caplog.at_level(logging.WARNING):
        assert _run(path, tmp_path, "policy") == 0
    import rl4lms_style_policy

    assert rl4lms_style_policy.CALLS  # the rollout values and every update went through the override
    log = (tmp_path / "policy" / "log.txt").read_text()
    assert log.count("overrides evaluate_actions(obs, actions)") == 1
