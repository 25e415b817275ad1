"""CommonGen's repeat penalty: -1 when the generation just copies the concept list or the instruction."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from rl4lms.rewards.base import ScoreReward


class CommonGenRepeatPenalty(ScoreReward):
    """``penalty`` if the generation contains the prompt's concept string (the text after ``prefix``,
    without the end token), the prefix itself, or the words "generate"/"sentence"; else 0."""

    def __init__(self, prefix: str = "generate a sentence with: ", penalty: float = -1.0) -> None:
        super().__init__()
        self.prefix = prefix
        self.penalty = penalty

    def concept_text(self, prompt: str) -> str:
        if self.prefix not in prompt:
            raise ValueError(f"common_gen_repeat_penalty: prompt {prompt!r} does not contain the prefix "
                             f"{self.prefix!r} (reward_fn args: prefix)")
        return prompt.split(self.prefix, 1)[1][:-1].strip().lower()

    def scores(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        scores = []
        for prompt, gen in zip(prompt_texts, gen_texts):
            text = gen.lower()
            copied = any(part and part in text for part in (self.concept_text(prompt), self.prefix.lower().strip(),
                                                            "generate", "sentence"))
            scores.append(self.penalty if copied else 0.0)
        return scores
