"""ToTTo's official evaluation, as RL4LMs runs it: BLEU and PARENT overall and on the overlap subsets.

RL4LMs writes the predictions and ``meta_data["raw_table"]`` rows to files and runs Google's ToTTo
scripts on them. The same steps, in process:

1. references: up to 3 final sentences per example, padded with ``"<null>"`` to 3 (the scripts'
   dev/test mode); an empty prediction becomes ``"<null>"``; everything is lowercased;
2. the Moses detokenizer (English) on every line, tables included (``sacremoses``, the Python port);
3. BLEU: sacrebleu's corpus BLEU (13a tokens) against the 3 reference streams, divided by 100;
   PARENT: Dhingra et al.'s metric with word-overlap entailment, lambda estimated per example
   (``lambda_weight=None``), smoothing 1e-5, n-grams up to 4; the precision table is every cell of
   the table plus the page title, section title and section text, the recall table the highlighted
   cells plus the two titles; text and table fields are lowercased and 13a-tokenized;
4. each score overall, on the examples whose ``overlap_subset`` is true and on the others. A
   subset without examples scores 0 (BLEU) or 0 with no per-sample scores (PARENT).

Rows may come in the hub's schema (``sentence_annotations`` as a mapping of lists,
``overlap_subset`` as ``"True"``/``"False"``) or in ToTTo's jsonl schema (a list of annotations, a bool).
"""
from __future__ import annotations

import collections
import math
from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from rl4lms.metrics.base import BaseMetric, MetricResult

NULL = "<null>"
N_REFERENCES = 3
TAB_SENTINEL = "\ue000"
"""Stands for a tab while detokenizing: the Perl detokenizer splits words on spaces only, so table
entries joined by tabs stay one word, while ``sacremoses`` splits on any whitespace."""

Tokens = List[str]
Table = List[List[Tokens]]
SUBSETS = (("overall", None), ("overlap", True), ("non_overlap", False))


@lru_cache(maxsize=1)
def _detokenizer() -> Any:
    try:
        from sacremoses import MosesDetokenizer
    except ImportError as error:
        raise ImportError("the ToTTo metrics detokenize with the Moses detokenizer: pip install sacremoses") from error
    return MosesDetokenizer(lang="en")


@lru_cache(maxsize=1)
def _tokenizer_13a() -> Callable[[str], str]:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def detokenize(line: str) -> str:
    """One line through the Moses detokenizer (tabs kept in place)."""
    words = line.replace("\t", TAB_SENTINEL).split(" ")
    return _detokenizer().detokenize([w for w in words if w]).replace(TAB_SENTINEL, "\t")


def normalize_text(text: str) -> Tokens:
    """Lowercased 13a tokens (PARENT's text normalization)."""
    return _tokenizer_13a()(text.strip().lower()).split()


def final_sentences(row: Dict[str, Any]) -> List[str]:
    annotations = row.get("sentence_annotations") or []
    if isinstance(annotations, dict):
        return list(annotations.get("final_sentence") or [])
    return [annotation["final_sentence"] for annotation in annotations]


def in_overlap_subset(row: Dict[str, Any]) -> bool:
    value = row.get("overlap_subset", False)
    return value.strip().lower() == "true" if isinstance(value, str) else bool(value)


def padded_references(row: Dict[str, Any]) -> List[str]:
    """The first 3 final sentences, padded with ``"<null>"``, lowercased and detokenized."""
    references = (final_sentences(row) + [NULL] * N_REFERENCES)[:N_REFERENCES]
    return [detokenize(reference.lower()) for reference in references]


def prepared_prediction(text: str) -> str:
    text = " ".join(text.split())  # one line per prediction, as in the scripts' text file
    return detokenize((text or NULL).lower())


def _parent_entry(attribute: str, value: str) -> str:
    return f"{attribute}|||{value.replace('|', '-')}"


def _cell_entries(cells: Sequence[Dict[str, Any]]) -> List[str]:
    return [_parent_entry("header" if cell["is_header"] else "cell", cell["value"].strip())
            for cell in cells if cell["value"].strip()]


def _title_entries(row: Dict[str, Any], with_section_text: bool) -> List[str]:
    fields = [("page_title", "table_page_title"), ("section_title", "table_section_title")]
    if with_section_text:
        fields.append(("section_text", "table_section_text"))
    return [_parent_entry(attribute, row[key]) for attribute, key in fields if row.get(key)]


def parse_table(line: str) -> Table:
    """A PARENT table line (``attribute|||value`` entries joined by tabs) into tokenized entries."""
    return [[normalize_text(member) for member in entry.split("|||")] for entry in line.lower().split("\t")]


def parent_tables(row: Dict[str, Any]) -> Tuple[Table, Table]:
    """The precision table (all cells and the titles and section text) and the recall table
    (the highlighted cells and the titles), as the ToTTo scripts write and read them."""
    cells = [cell for table_row in row["table"] for cell in table_row]
    highlighted = [row["table"][r][c] for r, c in row["highlighted_cells"]]
    precision_line = "\t".join(_cell_entries(cells) + _title_entries(row, with_section_text=True))
    recall_line = "\t".join(_cell_entries(highlighted) + _title_entries(row, with_section_text=False))
    return parse_table(detokenize(precision_line.lower())), parse_table(detokenize(recall_line.lower()))


def overlap_probability(ngram: Sequence[str], table: Table) -> float:
    """Share of the n-gram's tokens found among the table's values (PARENT's word-overlap entailment)."""
    if len(table[0]) == 2:
        values = {token for _, value in table for token in value}
    else:
        values = {token for head, _, tail in table for token in head + tail}
    return sum(token in values for token in ngram) / len(ngram)


def lcs_length(x: Sequence[str], y: Sequence[str]) -> int:
    previous = [0] * (len(y) + 1)
    for a in x:
        current = [0]
        for j, b in enumerate(y, start=1):
            current.append(previous[j - 1] + 1 if a == b else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def mention_probability(entry: List[Tokens], sentence: Sequence[str]) -> float:
    """Share of a table entry's value found, in order, in the sentence (longest common subsequence)."""
    value = entry[1] if len(entry) == 2 else entry[0] + entry[2]
    return lcs_length(value, sentence) / len(value)


def ngram_counts(tokens: Sequence[str], order: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i - order:i]) for i in range(order, len(tokens) + 1))


def _geometric_mean(values: Sequence[float]) -> float:
    return math.exp(math.fsum(math.log(v) / len(values) for v in values))


def parent_scores(prediction: Tokens, reference: Tokens, precision_table: Table, recall_table: Table,
                  lambda_weight: Optional[float] = None, smoothing: float = 1e-5,
                  max_order: int = 4) -> Tuple[float, float, float]:
    """PARENT (precision, recall, F) of one prediction against one reference and its tables."""
    precisions, recalls = [], []
    for order in range(1, max_order + 1):
        predicted, referenced = ngram_counts(prediction, order), ngram_counts(reference, order)
        weight = {ngram: overlap_probability(ngram, precision_table) for ngram in set(predicted) | set(referenced)}
        numerator = sum(count * (min(1.0, referenced.get(ngram, 0) / count) * (1.0 - weight[ngram]) + weight[ngram])
                        for ngram, count in predicted.items())
        total = sum(predicted.values())
        precisions.append(numerator / total if total else 0.0)
        numerator = sum(count * weight[ngram] * min(1.0, predicted.get(ngram, 0) / count)
                        for ngram, count in referenced.items())
        total = sum(count * weight[ngram] for ngram, count in referenced.items())
        recalls.append(numerator / total if total else 1.0)
    # Orders above 1 with a zero score are smoothed; a zero unigram score stays zero.
    precisions = precisions[:1] + [p or smoothing for p in precisions[1:]]
    recalls = recalls[:1] + [r or smoothing for r in recalls[1:]]
    precision = 0.0 if 0.0 in precisions else _geometric_mean(precisions)
    reference_recall = smoothing if 0.0 in recalls else _geometric_mean(recalls)
    table_recall = sum(mention_probability(entry, prediction) for entry in recall_table) / len(recall_table)
    table_recall = table_recall or smoothing
    if lambda_weight is None:
        lambda_weight = 1.0 - sum(mention_probability(entry, reference) for entry in recall_table) / len(recall_table)
    recall = math.exp((1.0 - lambda_weight) * math.log(reference_recall) + lambda_weight * math.log(table_recall))
    f_score = 2.0 * precision * recall / (precision + recall + 1e-8)
    return precision, recall, f_score


def parent_best_reference(prediction: Tokens, references: Sequence[Tokens], precision_table: Table,
                          recall_table: Table) -> Tuple[float, float, float]:
    """PARENT against the reference with the best F-score."""
    scores = [parent_scores(prediction, reference, precision_table, recall_table) for reference in references]
    return max(scores, key=lambda score: score[2])


def _subset_indices(rows: Sequence[Dict[str, Any]], overlap: Optional[bool]) -> List[int]:
    return [ix for ix, row in enumerate(rows) if overlap is None or in_overlap_subset(row) == overlap]


def _raw_tables(meta_infos: Optional[List[Dict[str, Any]]], n: int, metric: str) -> List[Dict[str, Any]]:
    if not meta_infos or len(meta_infos) != n or any("raw_table" not in info for info in meta_infos):
        raise ValueError(f"metric '{metric}' needs meta_data['raw_table'] on every sample (the 'totto' data pool "
                         "sets it)")
    return [info["raw_table"] for info in meta_infos]


class ToTToBLEUMetric(BaseMetric):
    """ToTTo's BLEU (RL4LMs' ``bleu_totto``): ``table_to_text/bleu_{overall,overlap,non_overlap}``.

    Takes no arguments; the samples need ``meta_data["raw_table"]`` (the ``totto`` data pool).
    """

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        import sacrebleu

        rows = _raw_tables(meta_infos, len(generated_texts), "bleu_totto")
        predictions = [prepared_prediction(text) for text in generated_texts]
        references = [padded_references(row) for row in rows]
        result: MetricResult = {}
        for name, overlap in SUBSETS:
            indices = _subset_indices(rows, overlap)
            score = 0.0
            if indices:
                streams = [[references[ix][k] for ix in indices] for k in range(N_REFERENCES)]
                score = sacrebleu.corpus_bleu([predictions[ix] for ix in indices], streams).score / 100
            result[f"table_to_text/bleu_{name}"] = (None, score)
        return result


class ParentToTToMetric(BaseMetric):
    """ToTTo's PARENT (RL4LMs' ``parent_totto``): precision, recall and F-score overall and on the
    overlap subsets; per-sample F-scores for ``table_to_text/parent_overall_f_score``.

    Takes no arguments; the samples need ``meta_data["raw_table"]`` (the ``totto`` data pool).
    """

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        rows = _raw_tables(meta_infos, len(generated_texts), "parent_totto")
        scores = []
        for text, row in zip(generated_texts, rows):
            prediction = normalize_text(prepared_prediction(text))
            references = [normalize_text(reference) for reference in padded_references(row)]
            scores.append(parent_best_reference(prediction, references, *parent_tables(row)))
        result: MetricResult = {}
        for name, overlap in SUBSETS:
            subset = [scores[ix] for ix in _subset_indices(rows, overlap)]
            means = [sum(values) / len(subset) if subset else 0.0 for values in zip(*subset)] or [0.0, 0.0, 0.0]
            result[f"table_to_text/parent_{name}/precision"] = (None, means[0])
            result[f"table_to_text/parent_{name}/recall"] = (None, means[1])
            per_sample = [f for _, _, f in scores] if overlap is None else None
            result[f"table_to_text/parent_{name}_f_score"] = (per_sample, means[2])
        return result
