"""Every GRUE task config runs offline on CPU with ``--smoke`` (test_config validates them all as written)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, training_configs, wordnet_marked
from rl4lms.cli import main
from rl4lms.config import load_config
from rl4lms.config.smoke import TINY_POLICY_MODELS

CONFIGS = training_configs()
GRUE_TASKS = ("imdb_text_continuation", "common_gen", "summarization", "totto", "narrative_qa", "iwslt2017", "dialog")
GRUE_CONFIGS = [p for p in CONFIGS if p.parent.name in GRUE_TASKS]


def test_every_grue_task_has_the_five_variants() -> None:
    variants = {"ppo", "nlpo", "supervised", "ppo_on_supervised", "nlpo_on_supervised"}
    for task in GRUE_TASKS:
        stems = {p.stem.split("_", 1)[1] for p in GRUE_CONFIGS if p.parent.name == task}
        assert variants <= stems, task  # and models of other families (smollm2_*)


@pytest.mark.parametrize("path", wordnet_marked(GRUE_CONFIGS), ids=lambda p: f"{p.parent.name}/{p.stem}")
@pytest.mark.slow
def test_smoke_run_completes(path: Path, tmp_path: Path) -> None:
    smoke = load_config(path, smoke=True)
    kind = "seq2seq" if "seq2seq" in smoke["alg"]["policy"]["id"] else "causal"
    assert smoke["alg"]["policy"]["args"]["model_name"] == TINY_POLICY_MODELS[kind]
    assert smoke["datapool"]["args"]["fixture"] is True
    assert main(["--config_path", str(path), "--smoke", "--base_path_to_store_results", str(tmp_path)]) == 0
    run = tmp_path / f"{path.parent.name}_{path.stem}_smoke"
    complete = json.loads((run / "run_complete.json").read_text())
    assert complete["iterations"] == 1
    assert (run / "model" / "config.json").exists()
    after = complete["test"]["after"]
    expected = {metric["id"] for metric in smoke["train_evaluation"]["metrics"]}
    prefixes = {"meteor": "lexical/meteor", "rouge": "lexical/rouge_rouge1", "bleu": "lexical/bleu",
                "sacre_bleu": "lexical/sacrebleu", "chrf": "lexical/chrf", "ter": "lexical/ter",
                "rouge_l_max": "lexical/rouge_l_max", "cider": "lexical/cider", "bert_score": "semantic/bert_score",
                "learned_reward": "semantic/learned_automodel_metric", "diversity": "diversity_metrics/distinct-1",
                "causal_perplexity": "fluency_metrics/perplexity", "intent_accuracy": "intent/accuracy",
                "parent_totto": "table_to_text/parent_overall_f_score", "bleu_totto": "table_to_text/bleu_overall",
                "spice": "lexical/spice"}
    for metric_id in expected:
        assert prefixes[metric_id] in after, (metric_id, sorted(after))


def test_smoke_keeps_overrides_last(tmp_path: Path) -> None:
    path = REPO / "task_configs" / "common_gen" / "t5_ppo.yml"
    config = load_config(path, ["train_evaluation.n_iters=3", "env.n_envs=2"], smoke=True)
    assert config["train_evaluation"]["n_iters"] == 3 and config["env"]["n_envs"] == 2
    assert config["env"]["args"]["max_episode_length"] <= 12
    assert config["reward_fn"] == load_config(path, smoke=True)["reward_fn"]


def test_smoke_keeps_minibatches_of_whole_groups(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "task_configs" / "synthetic_increasing_numbers" / "tiny_gpt2_grpo.yml").read_text())
    # smoke caps batch_size at 8: 8 // 3 = 2 groups of 3; groups of 16 need a minibatch of 16
    for num_generations, batch_size in ((3, 6), (16, 16), (8, 8)):
        config["alg"]["args"].update(num_generations=num_generations, batch_size=48)
        path = tmp_path / f"grpo_{num_generations}.yml"
        path.write_text(yaml.safe_dump(config))
        assert load_config(path, smoke=True)["alg"]["args"]["batch_size"] == batch_size
