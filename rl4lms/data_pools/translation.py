"""Machine translation pools (GRUE's IWSLT 2017 en-de, and WMT16): ``{"translation": {lang: text}}`` rows."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

from rl4lms.data_pools.sources import hub_split_name, load_rows, truncated
from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool
from rl4lms.errors import DataSourceError


def translation_rows(pool_id: str, dataset_name: str, configs: List[str], split: str,
                     fixture: bool) -> Iterable[Dict[str, Any]]:
    """Rows of the first of ``configs`` (language-pair names, e.g. ``de-en`` then ``en-de``) that loads."""
    errors = []
    for config in configs:
        try:
            return load_rows(pool_id, dataset_name, config, hub_split_name(split), fixture)
        except DataSourceError as error:
            errors.append(str(error))
    raise DataSourceError("\n".join(errors))


def translation_samples(rows: Iterable[Dict[str, Any]], split: str, source_language: str, target_language: str,
                        prompt_prefix: str, prompt_suffix: str, max_size: Optional[int]) -> List[Sample]:
    samples = []
    for ix, row in enumerate(rows):
        if max_size is not None and ix >= max_size:
            break
        pair = row["translation"]
        missing = [lang for lang in (source_language, target_language) if lang not in pair]
        if missing:
            raise ValueError(f"translation row {ix} has no {missing} text; languages present: {', '.join(pair)}")
        samples.append(Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt_prefix + pair[source_language]
                              + prompt_suffix, references=[pair[target_language]]))
    return truncated(samples, max_size)


class WMT(TextGenPool):
    """WMT news translation. ``wmt_id`` is the hub data set (RL4LMs' key); the language pair is tried
    as ``src-tgt`` and then ``tgt-src`` (the hub's config names)."""

    @classmethod
    def prepare(cls, split: str, source_language: str = "en", target_language: str = "de",
                prompt_prefix: str = "", prompt_suffix: str = "", fixture: bool = False,
                max_size: Optional[int] = None, wmt_id: str = "wmt/wmt16") -> "WMT":
        configs = [f"{source_language}-{target_language}", f"{target_language}-{source_language}"]
        rows = translation_rows("wmt16", wmt_id, configs, split, fixture)
        return cls(translation_samples(rows, split, source_language, target_language, prompt_prefix,
                                       prompt_suffix, max_size))


class IWSLT2017EnDe(TextGenPool):
    """IWSLT 2017 (TED talks) English to German."""

    @classmethod
    def prepare(cls, split: str, prompt_prefix: str = "", prompt_suffix: str = "", fixture: bool = False,
                max_size: Optional[int] = None, dataset_name: str = "IWSLT/iwslt2017",
                dataset_config: str = "iwslt2017-de-en") -> "IWSLT2017EnDe":
        rows = translation_rows("iwslt2017en_de", dataset_name, [dataset_config], split, fixture)
        return cls(translation_samples(rows, split, "en", "de", prompt_prefix, prompt_suffix, max_size))
