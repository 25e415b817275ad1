"""RL4LMs' components that configs name: ToTTo's BLEU and PARENT, py-rouge's ROUGE-L max, SPICE and
CommonGen's preference-model reward."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from conftest import REPO, fake_spice_home
from rl4lms.config.smoke import smoke_config
from rl4lms.config.validation import validate_config
from rl4lms.errors import ConfigError, SpiceUnavailableError
from rl4lms.metrics.lexical import RougeLMaxMetric
from rl4lms.metrics.py_rouge import rouge_l_scorer
from rl4lms.metrics.spice import SpiceMetric
from rl4lms.metrics.totto import ParentToTToMetric, ToTToBLEUMetric, padded_references, parent_tables

TOTTO_ROWS = [json.loads(line) for line in (REPO / "rl4lms/data_pools/fixtures/totto/validation.jsonl").open()]
TOTTO_PREDICTIONS = [
    "Anna Korval finished 5th in the 5000 m at the 2012 Olympic Games.",
    'Ben Adeyemi played the Narrator in "The Glass Road" (2013).',
    "Clara Moretti won Lakeview for the Green Party with 23,157 votes (35.4%).",
    "Daniel Frost was third in the high jump.",
    "Eva Lindqvist starred as Captain Ward in The Glass Road, a 2010 film.",
    "The Northgate seat was won by Eva Lindqvist.",
    "Hana Sato's long jump at the 2012 Commonwealth Games in Eugene earned 7th place.",
    "Igor Petrov played Maya in the 2020 film Silent Harbour.",
]
# Google's ToTTo scripts as RL4LMs runs them (totto_bleu_eval.sh / totto_parent_eval.sh, Moses'
# detokenizer.perl, sacrebleu 2.2.0) on the 8 validation fixture rows and the predictions above.
# The shell script's sacrebleu prints BLEU rounded (56.3, 80.7, 39.0); these are its unrounded values.
REFERENCE_BLEU = {"overall": 0.5626343981397025, "overlap": 0.8065460234629471, "non_overlap": 0.38982324891634754}
REFERENCE_PARENT = {
    "overall": (0.6200795516124301, 0.5626554720430464, 0.583234345845551),
    "overlap": (0.8276652200184054, 0.6985495314534346, 0.7564521314405378),
    "non_overlap": (0.495528150568845, 0.48111903639681347, 0.47930367448855904),
}
REFERENCE_PARENT_PER_SAMPLE = [0.8460322985768731, 0.6686253796743198, 0.5548175769164588, 0.18091687842256887,
                               0.6099771241152193, 0.3152004809575947, 0.6769580564718531, 0.8133469716295211]


def _raw_schema(row: Dict[str, Any]) -> Dict[str, Any]:
    """A hub row in ToTTo's own jsonl schema (the form RL4LMs' pool keeps)."""
    annotations = row["sentence_annotations"]
    raw = dict(row, overlap_subset=row["overlap_subset"] == "True")
    raw["sentence_annotations"] = [{key: values[i] for key, values in annotations.items()}
                                   for i in range(len(annotations["final_sentence"]))]
    return raw


@pytest.mark.parametrize("schema", ["hub", "totto_jsonl"])
def test_totto_bleu_and_parent_match_the_reference_scripts(schema: str) -> None:
    rows = TOTTO_ROWS if schema == "hub" else [_raw_schema(row) for row in TOTTO_ROWS]
    meta = [{"raw_table": row} for row in rows]
    args = ([""] * len(rows), TOTTO_PREDICTIONS, [[] for _ in rows], meta)
    bleu = ToTToBLEUMetric().compute(*args)
    for subset, expected in REFERENCE_BLEU.items():
        assert bleu[f"table_to_text/bleu_{subset}"] == (None, pytest.approx(expected, abs=1e-12))
    parent = ParentToTToMetric().compute(*args)
    for subset, (precision, recall, f_score) in REFERENCE_PARENT.items():
        assert parent[f"table_to_text/parent_{subset}/precision"][1] == pytest.approx(precision, abs=1e-12)
        assert parent[f"table_to_text/parent_{subset}/recall"][1] == pytest.approx(recall, abs=1e-12)
        assert parent[f"table_to_text/parent_{subset}_f_score"][1] == pytest.approx(f_score, abs=1e-12)
    assert parent["table_to_text/parent_overall_f_score"][0] == pytest.approx(REFERENCE_PARENT_PER_SAMPLE, abs=1e-12)
    assert parent["table_to_text/parent_overlap_f_score"][0] is None


def test_totto_inputs_follow_the_scripts() -> None:
    row = TOTTO_ROWS[1]  # two annotations: the third reference is the scripts' "<null>"
    assert padded_references(row) == ["in 2013, ben adeyemi played narrator in the glass road.",
                                      "ben adeyemi appeared as narrator in the 2013 film the glass road.", "<null>"]
    precision_table, recall_table = parent_tables(TOTTO_ROWS[0])
    assert precision_table[0] == [["header"], ["year"]]
    assert recall_table == [[["cell"], ["2012"]], [["cell"], ["olympic", "games"]], [["cell"], ["5th"]],
                            [["page", "_", "title"], ["anna", "korval"]],  # 13a tokens, as the scripts read it
                            [["section", "_", "title"], ["international", "competitions"]]]


def test_totto_metrics_need_the_raw_table() -> None:
    with pytest.raises(ValueError, match="needs meta_data\\['raw_table'\\].*'totto' data pool"):
        ToTToBLEUMetric().compute(["p"], ["g"], [["r"]], [{}])


def test_empty_totto_subset_scores_zero() -> None:
    rows = [row for row in TOTTO_ROWS if row["overlap_subset"] == "True"]
    meta = [{"raw_table": row} for row in rows]
    bleu = ToTToBLEUMetric().compute([""] * len(rows), ["a sentence"] * len(rows), [[]] * len(rows), meta)
    assert bleu["table_to_text/bleu_non_overlap"] == (None, 0.0)


RL4LMS_NARRATIVE_QA_ROUGE = {"max_n": 4, "limit_length": True, "length_limit": 100, "length_limit_type": "words",
                             "apply_avg": True, "apply_best": True, "alpha": 0.5, "weight_factor": 1.2,
                             "stemming": True}


def test_rouge_l_max_is_py_rouge_with_rl4lms_arguments() -> None:
    metric = RougeLMaxMetric(**RL4LMS_NARRATIVE_QA_ROUGE)
    generated = ["The cats sat on the mat.", "nothing alike"]
    references = [["a cat sat on a mat", "cats sat"], ["the answer is here"]]
    scorer = rouge_l_scorer(**RL4LMS_NARRATIVE_QA_ROUGE)
    expected = [max(scorer.get_scores(gen, [ref])["rouge-l"]["f"] for ref in refs)
                for gen, refs in zip(generated, references)]
    per_sample, corpus = metric.compute([""] * 2, generated, references)["lexical/rouge_l_max"]
    assert per_sample == pytest.approx(expected)
    assert expected[0] > 0.5 and expected[1] == 0.0
    assert corpus == pytest.approx(sum(expected) / 2)
    # "cats" and "cat" match through py-rouge's stemmer; without it they do not.
    unstemmed = RougeLMaxMetric(stemming=False).compute([""], ["cats"], [["cat"]])["lexical/rouge_l_max"][0]
    assert unstemmed == [0.0]
    assert RougeLMaxMetric().compute([""], ["cats"], [["cat"]])["lexical/rouge_l_max"][0] == [1.0]


def test_rouge_l_max_length_limit_cuts_the_hypothesis() -> None:
    long = "the answer " + "padding " * 50
    cut = RougeLMaxMetric(limit_length=True, length_limit=2, length_limit_type="words")
    assert cut.compute([""], [long], [["the answer"]])["lexical/rouge_l_max"][0] == [1.0]
    assert RougeLMaxMetric(limit_length=False).compute([""], [long], [["the answer"]])["lexical/rouge_l_max"][0][0] < 0.2


def test_rouge_l_max_rejects_a_bad_length_unit() -> None:
    with pytest.raises(ValueError, match="length_limit_type must be 'words' or 'bytes'"):
        RougeLMaxMetric(length_limit_type="tokens")


def _metric_config(metric: Dict[str, Any]) -> Dict[str, Any]:
    import yaml

    config = yaml.safe_load((REPO / "task_configs/common_gen/t5_ppo.yml").read_text())
    config["train_evaluation"]["metrics"] = [metric]
    return config


def test_spice_without_java_and_corenlp_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(SpiceUnavailableError) as error:
        SpiceMetric(spice_home=str(tmp_path), java="no-such-java")
    message = str(error.value)
    assert "apt-get install --no-install-recommends default-jre-headless" in message
    assert "SPICE-1.0.zip" in message and "stanford-corenlp-full-2015-12-09.zip" in message
    with pytest.raises(ConfigError, match=r"train_evaluation\.metrics\[0\]\.id: SPICE needs Java"):
        validate_config(_metric_config({"id": "spice", "args": {"spice_home": str(tmp_path)}}))


def test_smoke_leaves_out_an_unavailable_spice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _metric_config({"id": "spice", "args": {"spice_home": str(tmp_path)}})
    config["train_evaluation"]["metrics"].append({"id": "bleu", "args": {}})
    smoked = smoke_config(config)
    assert [m["id"] for m in smoked["train_evaluation"]["metrics"]] == ["bleu"]
    assert "--smoke: metric 'spice' is left out: SPICE needs Java" in caplog.text


def test_spice_reads_the_jar_output_per_sample(tmp_path: Path) -> None:
    java = fake_spice_home(tmp_path / "spice")
    metric = SpiceMetric(spice_home=str(tmp_path / "spice"), java=str(java))
    per_sample, corpus = metric.compute(["p1", "p2", "p3"], ["a dog runs.", "", "a cat"],
                                        [["a dog runs ."], ["x"], ["the cat"]])["lexical/spice"]
    assert per_sample[0] == 1.0 and math.isnan(per_sample[1]) and per_sample[2] == pytest.approx(1 / 3)
    assert corpus == pytest.approx((1.0 + 1 / 3) / 2)  # the undefined sample is left out


def test_spice_run_failure_is_one_clear_error(tmp_path: Path) -> None:
    java = fake_spice_home(tmp_path / "spice")
    java.write_text("#!/bin/sh\necho 'Exception in thread main: out of memory' >&2\nexit 1\n")
    metric = SpiceMetric(spice_home=str(tmp_path / "spice"), java=str(java))
    with pytest.raises(RuntimeError, match="SPICE failed \\(exit code 1\\): Exception in thread main"):
        metric.compute(["p"], ["g"], [["r"]])


def test_common_gen_preference_reward_on_a_local_model(isolated_home: Path) -> None:
    from rl4lms.rewards.preference import CommonGenPreferenceReward

    reward = CommonGenPreferenceReward(model_name="rl4lms/tiny-t5", batch_size=2, concept_penalty_coeff=1.0,
                                       device="cpu")
    scorer = reward.scorer
    texts = ["a dog runs in the park", "cats sleep", "the dog and the cat"]
    with torch.no_grad():
        batch = scorer.tokenizer(texts, padding=True, return_tensors="pt")
        start = torch.full((3, 1), scorer.model.config.decoder_start_token_id)
        logits = scorer.model(**batch, decoder_input_ids=start).logits[:, 0]
    good, bad = logits[:, scorer.good_id], logits[:, scorer.bad_id]
    probability = (good.exp() / (good.exp() + bad.exp())).tolist()
    meta = [{"concepts": ["dog", "park"]}, {"concepts": ["dog", "cat"]}, {"concepts": ["dog", "cat"]}]
    rewards = reward([""] * 3, texts, [["r"]] * 3, [True, True, False], meta)
    # A concept is missing when it is not a substring of the generation.
    assert rewards[0] == pytest.approx(probability[0])
    assert rewards[1] == pytest.approx(probability[1] / 2)  # "dog" missing, "cat" inside "cats"
    assert rewards[2] == 0.0  # unfinished episode


def test_common_gen_preference_reward_offline_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from rl4lms.errors import DataSourceError
    from rl4lms.rewards import preference

    monkeypatch.setitem(preference.PREFERENCE_MODELS, "11b", ("t5-11b", "file:///nonexistent/prefs.pt"))
    with pytest.raises(DataSourceError, match="(?s)reward_fn 'common_gen_preference_model': could not download "
                                              "file:///nonexistent/prefs.pt.*reward_fn.args.model_name"):
        preference.CommonGenPreferenceReward()


def test_preference_reward_rejects_an_unknown_model_type() -> None:
    from rl4lms.rewards.preference import CommonGenPreferenceReward

    with pytest.raises(ValueError, match="model_type 'xl' is not a published preference model; valid: 11b"):
        CommonGenPreferenceReward(model_type="xl")
