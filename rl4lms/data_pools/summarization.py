"""CNN/DailyMail summarization (GRUE)."""
from __future__ import annotations

from typing import Optional

from rl4lms.data_pools.sources import hub_split_name, load_rows, truncated
from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool
from rl4lms.scoring.tokenize import word_tokenize


class CNNDailyMail(TextGenPool):
    """Prompt: ``prompt_prefix`` + article (its first ``truncate_article`` NLTK word tokens, joined by
    spaces, as in RL4LMs) + ``prompt_suffix``; reference: the highlights."""

    @classmethod
    def prepare(cls, split: str, prompt_prefix: str = "", prompt_suffix: str = "",
                truncate_article: Optional[int] = None, fixture: bool = False, max_size: Optional[int] = None,
                dataset_name: str = "abisee/cnn_dailymail", dataset_config: str = "3.0.0") -> "CNNDailyMail":
        samples = []
        for ix, row in enumerate(load_rows("cnn_daily_mail", dataset_name, dataset_config, hub_split_name(split),
                                           fixture)):
            if max_size is not None and ix >= max_size:
                break
            article = row["article"]
            if truncate_article is not None:
                article = " ".join(word_tokenize(article)[:truncate_article])
            samples.append(Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt_prefix + article + prompt_suffix,
                                  references=[row["highlights"]]))
        return cls(truncated(samples, max_size))
