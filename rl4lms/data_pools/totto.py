"""ToTTo table-to-text (GRUE): describe the highlighted cells of a Wikipedia table.

The prompt linearizes the highlighted cells with their row/column headers in the ToTTo baseline's
tag format (``<table> <cell> v <col_header> h </col_header> </cell> </table>``), first without and
then with the page and section titles, as RL4LMs does.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from rl4lms.data_pools.sources import hub_split_name, load_rows, truncated
from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool
from rl4lms.registry import DataPoolRegistry

Cell = Dict[str, Any]


def _span(cell: Cell, key: str) -> int:
    return int(cell.get(key, 1) or 1)


def column_starts(table: Sequence[Sequence[Cell]]) -> List[List[int]]:
    """The grid column where each cell starts, taking column spans and cells spanning rows from above into account."""
    occupied: Dict[Tuple[int, int], bool] = {}
    starts: List[List[int]] = []
    for r, row in enumerate(table):
        column, row_starts = 0, []
        for cell in row:
            while occupied.get((r, column)):
                column += 1
            row_starts.append(column)
            for dr in range(_span(cell, "row_span")):
                for dc in range(_span(cell, "column_span")):
                    occupied[(r + dr, column + dc)] = True
            column += _span(cell, "column_span")
        starts.append(row_starts)
    return starts


def highlighted_subtable(table: Sequence[Sequence[Cell]], cell_indices: Sequence[Sequence[int]]
                         ) -> List[Dict[str, Any]]:
    """Each highlighted cell with the header cells above it in its column and left of it in its row."""
    starts = column_starts(table)
    subtable = []
    for r, c in cell_indices:
        cell = table[r][c]
        column = starts[r][c]
        col_headers = [table[hr][hc]["value"] for hr in range(r) for hc, start in enumerate(starts[hr])
                       if table[hr][hc]["is_header"] and start <= column < start + _span(table[hr][hc], "column_span")]
        row_headers = [table[r][hc]["value"] for hc in range(c) if table[r][hc]["is_header"]]
        subtable.append({"value": cell["value"], "is_header": cell["is_header"],
                         "col_headers": col_headers, "row_headers": row_headers})
    return subtable


def linearize_subtable(subtable: Sequence[Dict[str, Any]], page_title: Optional[str] = None,
                       section_title: Optional[str] = None) -> str:
    parts = []
    if page_title:
        parts.append(f"<page_title> {page_title} </page_title>")
    if section_title:
        parts.append(f"<section_title> {section_title} </section_title>")
    cells = []
    for item in subtable:
        headers = "".join(f" <col_header> {h} </col_header>" for h in item["col_headers"])
        headers += "".join(f" <row_header> {h} </row_header>" for h in item["row_headers"])
        cells.append(f"<cell> {item['value']}{headers} </cell>")
    parts.append("<table> " + " ".join(cells) + " </table>")
    return " ".join(parts)


@DataPoolRegistry.register("totto")
class ToTTo(TextGenPool):
    """References: the annotators' final sentences (empty on the unlabelled test split);
    ``meta_data["raw_table"]`` keeps the row for table-aware metrics."""

    @classmethod
    def prepare(cls, split: str, representation: str = "subtable", fixture: bool = False,
                max_size: Optional[int] = None, dataset_name: str = "google-research-datasets/totto") -> "ToTTo":
        if representation != "subtable":
            raise ValueError(f"representation {representation!r} is not supported; valid: 'subtable' "
                             "(the highlighted cells with their headers)")
        samples = []
        for ix, row in enumerate(load_rows("totto", dataset_name, None, hub_split_name(split), fixture)):
            if max_size is not None and ix >= max_size:
                break
            subtable = highlighted_subtable(row["table"], row["highlighted_cells"])
            prompt = (linearize_subtable(subtable) + " " +
                      linearize_subtable(subtable, row["table_page_title"], row["table_section_title"]))
            references = [s for s in row["sentence_annotations"]["final_sentence"] if s] or [""]
            samples.append(Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt, references=references,
                                  meta_data={"raw_table": dict(row)}))
        return cls(truncated(samples, max_size))
