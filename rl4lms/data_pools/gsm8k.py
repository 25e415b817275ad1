"""GSM8K grade-school math word problems, whose solutions end in a checkable ``#### <answer>`` line."""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

from rl4lms.data_pools.sources import hub_split_name, load_rows, truncated
from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool
from rl4lms.scoring.answers import ANSWER_MARKER, extract_answer

GSM8K_DATASET = "openai/gsm8k"
DEFAULT_PROMPT = "Question: {question}\nAnswer:"
CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")
"""GSM8K's calculator annotations, e.g. ``<<48/2=24>>`` in ``48/2 = <<48/2=24>>24 clips``."""


class GSM8K(TextGenPool):
    """Prompt: the question in ``prompt_template``; reference: the worked solution, which ends with
    ``#### <answer>``; ``meta_data["answer"]``: that answer without thousands commas (``1234``).

    The hub's data set has train and test splits only. val is a seeded ``val_ratio`` share of its
    train split (at least one row), and train keeps the rest, in the data set's order.

    Args (``datapool.args``):
        prompt_template: the prompt, in which ``{question}`` is replaced by the question.
        val_ratio: the share of the hub's train split held out as val.
        seed: picks the val rows.
        remove_calculator_annotations: drop the ``<<48/2=24>>`` annotations from the references
            (e.g. for supervised training of a model that has no calculator).
        fixture: read the shipped rows (``rl4lms/data_pools/fixtures/gsm8k``: made-up problems in
            GSM8K's format) instead of the hub.
        max_size: keep the first N samples.
        dataset_name, dataset_config: the hub id (or local copy) and its configuration (``main``;
            ``socratic`` has sub-questions in the solutions).
    """

    @classmethod
    def prepare(cls, split: str, prompt_template: str = DEFAULT_PROMPT, val_ratio: float = 0.1, seed: int = 42,
                remove_calculator_annotations: bool = False, fixture: bool = False,
                max_size: Optional[int] = None, dataset_name: str = GSM8K_DATASET,
                dataset_config: str = "main") -> "GSM8K":
        if not 0.0 < val_ratio < 1.0:
            raise ValueError(f"datapool.args.val_ratio must be between 0 and 1, got {val_ratio}")
        if "{question}" not in prompt_template:
            raise ValueError(f"datapool.args.prompt_template must contain {{question}}, got {prompt_template!r}")
        hub_split = "test" if hub_split_name(split) == "test" else "train"
        rows = list(load_rows("gsm8k", dataset_name, dataset_config, hub_split, fixture))
        indices = list(range(len(rows)))
        if split != "test":
            held_out = set(np.random.default_rng(seed).permutation(len(rows))[:max(1, int(len(rows) * val_ratio))].tolist())
            indices = [ix for ix in indices if (ix in held_out) == (split == "val")]
        samples = []
        for ix in indices:
            solution = rows[ix]["answer"]
            answer = extract_answer(solution, ["marker"])
            if answer is None:
                raise ValueError(f"{dataset_name} {hub_split} row {ix}: the solution has no '{ANSWER_MARKER} <number>' "
                                 f"line: ...{solution[-60:]!r}")
            if remove_calculator_annotations:
                solution = CALCULATOR_ANNOTATION.sub("", solution)
            samples.append(Sample(id=f"{split}_{len(samples)}", references=[solution], meta_data={"answer": answer},
                                  prompt_or_input_text=prompt_template.replace("{question}", rows[ix]["question"])))
        return cls(truncated(samples, max_size))
