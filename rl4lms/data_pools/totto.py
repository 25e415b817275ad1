"""ToTTo table-to-text (GRUE): describe the highlighted cells of a Wikipedia table.

The prompt linearizes the highlighted cells with their row/column headers in the ToTTo baseline's
tag format (``<table> <cell> v <col_header> h </col_header> </cell> </table>``), first without and
then with the page and section titles, the two joined with nothing in between, as RL4LMs does.
Headers follow the baseline's heuristics, which RL4LMs uses: the header cells left of the cell in
its row, and the header cells in the rows above whose columns overlap the cell's columns. A cell's
columns count the column spans of the cells before it in its row; row spans are ignored.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from rl4lms.data_pools.sources import hub_split_name, load_rows, truncated
from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool

Cell = Dict[str, Any]


def column_ranges(table: Sequence[Sequence[Cell]]) -> List[List[Tuple[int, int]]]:
    """Each cell's columns ``[start, end)``: the column spans of the cells before it in its row, and its own."""
    ranges = []
    for row in table:
        end, row_ranges = 0, []
        for cell in row:
            start, end = end, end + int(cell.get("column_span", 1) or 1)
            row_ranges.append((start, end))
        ranges.append(row_ranges)
    return ranges


def highlighted_subtable(table: Sequence[Sequence[Cell]], cell_indices: Sequence[Sequence[int]]
                         ) -> List[Dict[str, Any]]:
    """Each highlighted cell with the header cells left of it in its row and above it in its columns."""
    ranges = column_ranges(table)
    subtable = []
    for r, c in cell_indices:
        cell = table[r][c]
        start, end = ranges[r][c]
        col_headers = [header["value"] for hr in range(r) for header, (h_start, h_end) in zip(table[hr], ranges[hr])
                       if header["is_header"] and h_start < end and h_end > start]
        row_headers = [table[r][hc]["value"] for hc in range(c) if table[r][hc]["is_header"]]
        subtable.append({"value": cell["value"], "is_header": cell["is_header"],
                         "col_headers": col_headers, "row_headers": row_headers})
    return subtable


def linearize_subtable(subtable: Sequence[Dict[str, Any]], page_title: Optional[str] = None,
                       section_title: Optional[str] = None) -> str:
    """The ToTTo baseline's string for ``subtable``, after the titles that are given."""
    text = f"<page_title> {page_title} </page_title> " if page_title else ""
    text += f"<section_title> {section_title} </section_title> " if section_title else ""
    text += "<table> "
    for item in subtable:
        text += f"<cell> {item['value']} "
        text += "".join(f"<col_header> {header} </col_header> " for header in item["col_headers"])
        text += "".join(f"<row_header> {header} </row_header> " for header in item["row_headers"])
        text += "</cell> "
    return text + "</table>"


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
            prompt = (linearize_subtable(subtable) +
                      linearize_subtable(subtable, row["table_page_title"], row["table_section_title"]))
            references = [s for s in row["sentence_annotations"]["final_sentence"] if s] or [""]
            samples.append(Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt, references=references,
                                  meta_data={"raw_table": dict(row)}))
        return cls(truncated(samples, max_size))
