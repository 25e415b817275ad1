"""Pools over a user's own JSON Lines or CSV files, one file per split, with field mapping.

    datapool:
      id: jsonl            # or csv
      args:
        files: {train: data/train.jsonl, val: data/val.jsonl, test: data/test.jsonl}
        prompt_field: question
        reference_field: answers     # a string or a list of strings per row (CSV: a column, or a list of columns)
        meta_fields: [topic]
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from rl4lms.data_pools.sources import read_jsonl, truncated
from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool

FieldNames = Union[str, List[str], None]


def _references(row: Dict[str, Any], reference_field: FieldNames, where: str) -> List[str]:
    if reference_field is None:
        return []
    values = [row.get(f) for f in reference_field] if isinstance(reference_field, list) else [row.get(reference_field)]
    references: List[str] = []
    for value in values:
        if isinstance(value, list):
            references += [str(v) for v in value]
        elif value not in (None, ""):
            references.append(str(value))
    if not references:
        raise ValueError(f"{where}: no reference in field(s) {reference_field!r}")
    return references


class FilePool(TextGenPool):
    """Base of the file pools: subclasses read one file into row dicts."""

    @classmethod
    def read_rows(cls, path: Path) -> List[Dict[str, Any]]:
        raise NotImplementedError

    @classmethod
    def prepare(cls, split: str, files: Dict[str, str], prompt_field: str = "prompt",
                reference_field: FieldNames = "references", id_field: Optional[str] = None,
                meta_fields: Optional[List[str]] = None, max_size: Optional[int] = None) -> "FilePool":
        if split not in files:
            raise ValueError(f"datapool.args.files has no '{split}' entry; given: {', '.join(files) or 'none'} "
                             "(needed: train, val, test)")
        path = Path(files[split]).expanduser()
        if not path.is_file():
            raise ValueError(f"datapool.args.files.{split}: file '{path}' does not exist")
        samples = []
        for ix, row in enumerate(cls.read_rows(path)):
            where = f"{path} row {ix + 1}"
            if prompt_field not in row:
                raise ValueError(f"{where}: no field '{prompt_field}' (prompt_field); fields: {', '.join(row)}")
            missing = [f for f in meta_fields or [] if f not in row]
            if missing:
                raise ValueError(f"{where}: no meta field(s) {missing}; fields: {', '.join(row)}")
            samples.append(Sample(id=str(row[id_field]) if id_field else f"{split}_{ix}",
                                  prompt_or_input_text=str(row[prompt_field]),
                                  references=_references(row, reference_field, where),
                                  meta_data={f: row[f] for f in meta_fields or []}))
        return cls(truncated(samples, max_size))


class JsonlPool(FilePool):
    """One JSON object per line."""

    @classmethod
    def read_rows(cls, path: Path) -> List[Dict[str, Any]]:
        return read_jsonl(path)


class CsvPool(FilePool):
    """A CSV file with a header row."""

    @classmethod
    def read_rows(cls, path: Path) -> List[Dict[str, Any]]:
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
