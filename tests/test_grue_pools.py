"""GRUE data pools on their shipped fixtures, the file pools, and the offline errors of the real loaders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl4lms.data_pools.sources import download, load_rows, offline_hint
from rl4lms.errors import DataSourceError
from rl4lms.registry import DataPoolRegistry
FIXTURE_POOLS = {
    "imdb": {}, "imdb_seq2seq": {}, "commongen": {"prefix": "generate a sentence with: ", "concept_end_token": "."},
    "cnn_daily_mail": {"prompt_prefix": "Summarize: "}, "totto": {}, "narrative_qa": {}, "wmt16": {},
    "iwslt2017en_de": {"prompt_prefix": "translate English to German: "}, "daily_dialog": {"context_size": 2},
    "crd3": {"max_context_size": 3}, "gsm8k": {},
}


def prepare(pool_id: str, split: str, **args):
    return DataPoolRegistry.get(pool_id).prepare(split=split, fixture=True, **{**FIXTURE_POOLS[pool_id], **args})


@pytest.mark.parametrize("pool_id", sorted(FIXTURE_POOLS))
def test_fixture_splits_are_non_empty_and_well_formed(pool_id: str) -> None:
    for split in ("train", "val", "test"):
        pool = prepare(pool_id, split)
        assert len(pool) > 0, (pool_id, split)
        ids = [sample.id for sample in pool]
        assert len(set(ids)) == len(ids)
        for sample in pool:
            assert isinstance(sample.prompt_or_input_text, str) and sample.prompt_or_input_text.strip()
            assert all(isinstance(ref, str) for ref in sample.references)
            if not (pool_id == "totto" and split == "test"):  # ToTTo's test split is unlabelled
                assert sample.references and all(ref.strip() for ref in sample.references), (pool_id, sample)
    assert len(prepare(pool_id, "train", max_size=3)) == 3


def test_imdb_prompts_are_the_first_half_of_the_review() -> None:
    train, val = prepare("imdb", "train"), prepare("imdb", "val")
    rows = load_rows("imdb", "unused", None, "train", fixture=True)
    assert len(train) + len(val) == len(rows) and len(train) == int(len(rows) * 0.8)
    for sample in train:
        words = sample.references[0].split(" ")
        assert sample.prompt_or_input_text == " ".join(words[:len(words) // 2])
        assert sample.meta_data["label"] in (0, 1)
    assert [s.prompt_or_input_text for s in prepare("imdb", "train", seed=1)] != [s.prompt_or_input_text for s in train]
    seq2seq = prepare("imdb_seq2seq", "train")
    assert seq2seq and all(s.meta_data["label"] == 1 for s in seq2seq)
    for sample in seq2seq:
        assert sample.prompt_or_input_text + " " + sample.references[0] == sample.meta_data["reference"]
    assert len(prepare("imdb_seq2seq", "train", positive_ratio=0.5)) == max(1, int(len(seq2seq) * 0.5))


def test_commongen_prompt_format_and_grouped_references() -> None:
    sample = prepare("commongen", "val")[0]
    concepts = sample.meta_data["concepts"]
    assert sample.prompt_or_input_text == "generate a sentence with: " + " ".join(concepts) + "."
    assert len(sample.references) >= 2  # val/test: every reference of the concept set
    rows = load_rows("commongen", "unused", None, "train", fixture=True)
    assert len(prepare("commongen", "train")) == len(rows)  # train: one sample per target


def test_daily_dialog_context_window_and_intent() -> None:
    from rl4lms.scoring.dialog import EOU_TOKEN

    dialog = load_rows("daily_dialog", "unused", None, "train", fixture=True)[0]
    first = prepare("daily_dialog", "train", context_size=2)[0]
    assert first.prompt_or_input_text == EOU_TOKEN.join(dialog["dialog"][:2]) + " " + EOU_TOKEN
    assert first.references == [dialog["dialog"][2] + EOU_TOKEN]
    assert first.meta_data == {"emotion": [dialog["emotion"][2]], "intent": [dialog["act"][2]]}


def test_crd3_turns_need_two_earlier_turns() -> None:
    sample = prepare("crd3", "train")[0]
    assert sample.id.endswith("_turn_2")
    lines = sample.prompt_or_input_text.split("\n")
    assert len(lines) == 3 and lines[-1].endswith(": ")


def test_narrative_qa_groups_answers_per_question() -> None:
    val = prepare("narrative_qa", "val")
    assert all(len(s.references) >= 2 for s in val)
    assert all(s.prompt_or_input_text == s.prompt_or_input_text.lower() for s in val)


def test_totto_linearization_with_headers_and_spans() -> None:
    from rl4lms.data_pools.totto import highlighted_subtable, linearize_subtable

    def cell(value: str, header: bool = False, span: int = 1):
        return {"value": value, "is_header": header, "column_span": span, "row_span": 1}

    table = [[cell("Year", True), cell("Result", True, span=2)],
             [cell("2001", True), cell("won"), cell("gold")]]
    subtable = highlighted_subtable(table, [[1, 2]])
    assert subtable[0]["col_headers"] == ["Result"] and subtable[0]["row_headers"] == ["2001"]
    assert linearize_subtable(subtable, "Page", None) == (
        "<page_title> Page </page_title> <table> <cell> gold <col_header> Result </col_header> "
        "<row_header> 2001 </row_header> </cell> </table>")
    assert linearize_subtable([]) == "<table> </table>"


def test_totto_column_headers_follow_the_baseline_heuristic() -> None:
    from rl4lms.data_pools.totto import highlighted_subtable

    def cell(value: str, header: bool = False, column_span: int = 1, row_span: int = 1):
        return {"value": value, "is_header": header, "column_span": column_span, "row_span": row_span}

    # A cell spanning two columns gets every header above those columns.
    table = [[cell("Year", True), cell("Gold", True), cell("Silver", True)],
             [cell("2001", True), cell("won both", column_span=2)]]
    assert highlighted_subtable(table, [[1, 1]])[0]["col_headers"] == ["Gold", "Silver"]
    # Row spans are ignored: "Home" and "Away" count from column 0, although "Name" spans into their row.
    table = [[cell("Name", True, row_span=2), cell("Score", True, column_span=2)],
             [cell("Home", True), cell("Away", True)],
             [cell("Bob"), cell("3"), cell("4")]]
    assert [c["col_headers"] for c in highlighted_subtable(table, [[2, 1], [2, 2]])] == [["Score", "Away"], ["Score"]]


def test_totto_prompt_joins_both_linearizations_without_a_space() -> None:
    cells = ("<table> <cell> 2017 <col_header> Year </col_header> </cell> <cell> European Championships "
             "<col_header> Competition </col_header> </cell> <cell> 1st <col_header> Position </col_header> </cell> "
             "</table>")
    titles = "<page_title> Anna Korval </page_title> <section_title> International competitions </section_title> "
    assert prepare("totto", "train")[0].prompt_or_input_text == cells + titles + cells


def test_cnn_daily_mail_truncates_to_word_tokens_of_every_sentence() -> None:
    # The first fixture article starts "Heavy rain has flooded large parts of Millbrook, forcing 69 families
    # to leave their homes overnight. The river rose ..."; its 18th token is the first period.
    sample = prepare("cnn_daily_mail", "train", truncate_article=20)[0]
    assert sample.prompt_or_input_text == ("Summarize: Heavy rain has flooded large parts of Millbrook , forcing 69 "
                                           "families to leave their homes overnight . The river")


def test_translation_pools_use_prefix_and_target_language() -> None:
    sample = prepare("iwslt2017en_de", "test")[0]
    row = load_rows("iwslt2017en_de", "unused", None, "test", fixture=True)[0]
    assert sample.prompt_or_input_text == "translate English to German: " + row["translation"]["en"]
    assert sample.references == [row["translation"]["de"]]
    reverse = prepare("wmt16", "val", source_language="de", target_language="en")[0]
    assert reverse.references == [load_rows("wmt16", "unused", None, "validation", fixture=True)[0]["translation"]["en"]]
    with pytest.raises(ValueError, match="has no \\['fr'\\] text"):
        prepare("wmt16", "val", target_language="fr")


def test_file_pools_map_fields(tmp_path: Path) -> None:
    rows = [{"q": "2+2?", "a": ["4", "four"], "topic": "math", "uid": "x1"}, {"q": "capital of France?", "a": "Paris",
                                                                            "topic": "geo", "uid": "x2"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "val.csv").write_text("question,answer,alt\nwho?,me,I\n")
    jsonl = DataPoolRegistry.get("jsonl").prepare(
        split="train", files={"train": str(tmp_path / "train.jsonl")}, prompt_field="q", reference_field="a",
        id_field="uid", meta_fields=["topic"])
    assert [(s.id, s.prompt_or_input_text, s.references, s.meta_data) for s in jsonl] == [
        ("x1", "2+2?", ["4", "four"], {"topic": "math"}), ("x2", "capital of France?", ["Paris"], {"topic": "geo"})]
    csv_pool = DataPoolRegistry.get("csv").prepare(split="val", files={"val": str(tmp_path / "val.csv")},
                                                   prompt_field="question", reference_field=["answer", "alt"])
    assert csv_pool[0].references == ["me", "I"]
    with pytest.raises(ValueError, match="no field 'prompt' \\(prompt_field\\); fields: q, a, topic, uid"):
        DataPoolRegistry.get("jsonl").prepare(split="train", files={"train": str(tmp_path / "train.jsonl")})
    with pytest.raises(ValueError, match="has no 'test' entry"):
        DataPoolRegistry.get("jsonl").prepare(split="test", files={"train": "x"})
    with pytest.raises(ValueError, match="does not exist"):
        DataPoolRegistry.get("csv").prepare(split="val", files={"val": str(tmp_path / "missing.csv")})


def test_offline_hub_and_download_errors_point_at_the_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataSourceError, match="(?s)datapool .imdb.: could not load .stanfordnlp/imdb.*fixture: true"):
        DataPoolRegistry.get("imdb").prepare(split="train")
    with pytest.raises(DataSourceError, match="(?s)could not download file:///nonexistent.tsv.*fixture: true"):
        download("file:///nonexistent.tsv", tmp_path / "x.tsv", "datapool 'narrative_qa'", offline_hint("narrative_qa"))
    assert not list(tmp_path.iterdir())  # no partial file left behind
    source = tmp_path / "source.tsv"
    source.write_text("q?\ta\n")
    assert download(source.as_uri(), tmp_path / "copy.tsv", "datapool 'narrative_qa'", "").read_text() == "q?\ta\n"
