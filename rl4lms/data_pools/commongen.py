"""CommonGen (GRUE): write a sentence that uses a set of concepts."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from rl4lms.data_pools.sources import hub_split_name, load_rows, truncated
from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool

COMMONGEN_DATASET = "GEM/common_gen"


def _concept_set(row: Dict[str, Any]) -> Any:
    return row.get("concept_set_id", row.get("concept_set_idx", tuple(row["concepts"])))


def group_by_concept_set(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One entry per concept set (first-seen order) with every target of the set as a reference."""
    groups: Dict[Any, Dict[str, Any]] = {}
    for row in rows:
        group = groups.setdefault(_concept_set(row), {"concepts": list(row["concepts"]), "references": []})
        for text in list(row.get("references") or []) or [row.get("target", "")]:
            if text not in group["references"]:
                group["references"].append(text)
    return list(groups.values())


class CommonGen(TextGenPool):
    """Prompt: ``prefix`` + concepts joined by ``concept_separator_token`` + ``concept_end_token``.

    Train has one sample per (concepts, target) row; val/test one sample per concept set with all its
    references. ``meta_data["concepts"]`` holds the concept list.
    """

    @classmethod
    def prepare(cls, split: str, concept_separator_token: str = " ", concept_end_token: str = " ",
                prefix: str = "summarize: ", fixture: bool = False, max_size: Optional[int] = None,
                dataset_name: str = COMMONGEN_DATASET) -> "CommonGen":
        rows = list(load_rows("commongen", dataset_name, None, hub_split_name(split), fixture))
        entries = ([{"concepts": list(r["concepts"]), "references": [r["target"]]} for r in rows]
                   if split == "train" else group_by_concept_set(rows))
        samples = []
        for ix, entry in enumerate(entries):
            references = [ref if ref else "empty reference" for ref in entry["references"]]  # as RL4LMs
            prompt = prefix + concept_separator_token.join(entry["concepts"]) + concept_end_token
            samples.append(Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt, references=references,
                                  meta_data={"concepts": entry["concepts"]}))
        return cls(truncated(samples, max_size))
