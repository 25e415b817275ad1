"""CommonGen's learned preference reward (RL4LMs' ``common_gen_preference_model``).

AI2 fine-tuned T5-11B to answer "good" or "bad" for a CommonGen sentence. The reward of a finished
episode is ``P(good) / (1 + concept_penalty_coeff * missing concepts) + meteor_coeff * METEOR``,
where ``P(good)`` compares the logits of the first tokens of "good" and "bad" at the first decoder
step (with one dummy label token, as RL4LMs scores), and a concept is missing when it is not a
substring of the lower-cased generation.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from rl4lms.data_pools.sources import download
from rl4lms.metrics.lexical import MeteorMetric
from rl4lms.models.loading import default_device, load_pretrained
from rl4lms.models.tiny import cache_dir
from rl4lms.rewards.base import ScoreReward

PREFERENCE_MODELS = {
    "11b": ("t5-11b", "https://storage.googleapis.com/ai2-jack-public/rl4lms_preference_models/t5-11b~commongen_prefs.pt"),
}
"""``model_type`` -> (base model, URL of AI2's fine-tuned state dict)."""


def missing_concepts(text: str, concepts: Sequence[str]) -> int:
    lowered = text.lower()
    return sum(concept not in lowered for concept in concepts)


class PreferenceScorer:
    """A seq2seq model that answers "good" or "bad"; :meth:`good_probability` scores texts in batches."""

    def __init__(self, model_name: str, state_dict_path: Optional[str] = None, batch_size: int = 1,
                 device: Optional[str] = None) -> None:
        self.tokenizer = load_pretrained(AutoTokenizer, model_name, "tokenizer")
        self.model = load_pretrained(AutoModelForSeq2SeqLM, model_name, "model")
        if state_dict_path is not None:
            state = torch.load(state_dict_path, map_location="cpu", weights_only=True)
            state = state.get("model_state_dict", state)
            # AI2's checkpoint was trained with the embeddings resized to the tokenizer's length.
            self.model.resize_token_embeddings(len(self.tokenizer))
            self.model.load_state_dict(state)
        self.device = torch.device(device or default_device())
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.good_id = self.tokenizer("good").input_ids[0]
        self.bad_id = self.tokenizer("bad").input_ids[0]
        self.start_id = self.model.config.decoder_start_token_id

    @torch.no_grad()
    def good_probability(self, texts: Sequence[str]) -> List[float]:
        scores: List[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), truncation=True, padding=True,
                                   return_tensors="pt").to(self.device)
            decoder_start = torch.full((batch.input_ids.shape[0], 1), self.start_id, device=self.device)
            logits = self.model(**batch, decoder_input_ids=decoder_start).logits[:, 0].float()
            pair = torch.stack([logits[:, self.good_id], logits[:, self.bad_id]], dim=1)
            scores += torch.softmax(pair, dim=1)[:, 0].tolist()
        return scores


def published_state_dict(model_type: str) -> str:
    """AI2's fine-tuned weights for ``model_type``, downloaded once into ``$RL4LMS_CACHE/models``."""
    base, url = PREFERENCE_MODELS[model_type]
    path = cache_dir() / "models" / "common_gen_preference" / url.rsplit("/", 1)[1]
    hint = ("Offline? Put the file there yourself, or give reward_fn.args.model_name (a local seq2seq "
            "preference model) and optionally reward_fn.args.checkpoint (a state dict for it); --smoke uses "
            "the tiny T5.")
    return str(download(url, path, "reward_fn 'common_gen_preference_model'", hint))


class CommonGenPreferenceReward(ScoreReward):
    """Preference-model reward for CommonGen (RL4LMs' ``CommonGenPrefRM``); see the module docstring.

    Args:
        model_type: the published preference model ("11b": T5-11B with AI2's weights, downloaded once).
        device: where the preference model runs ("cpu", "cuda"); default: the training device.
        batch_size: texts per preference-model forward.
        concept_penalty_coeff: divides the preference score by ``1 + coeff * missing concepts``
            (the samples' ``meta_data["concepts"]``, set by the ``commongen`` pool).
        meteor_coeff: weight of the METEOR score against the references added to the reward.
        model_name: a different seq2seq preference model (hub id or folder) instead of ``model_type``'s.
        checkpoint: a state dict loaded into ``model_name`` (default: none with ``model_name``,
            AI2's weights without it).
    """

    def __init__(self, model_type: str = "11b", device: Optional[str] = None, batch_size: int = 1,
                 concept_penalty_coeff: float = 0.0, meteor_coeff: float = 0.0, model_name: Optional[str] = None,
                 checkpoint: Optional[str] = None) -> None:
        super().__init__()
        if model_type not in PREFERENCE_MODELS:
            raise ValueError(f"model_type {model_type!r} is not a published preference model; valid: "
                             f"{', '.join(PREFERENCE_MODELS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if model_name is None:
            model_name, checkpoint = PREFERENCE_MODELS[model_type][0], checkpoint or published_state_dict(model_type)
        self.scorer = PreferenceScorer(model_name, checkpoint, batch_size, device)
        self.concept_penalty_coeff = concept_penalty_coeff
        self.meteor_coeff = meteor_coeff
        self.meteor = MeteorMetric() if meteor_coeff else None

    @staticmethod
    def requirement_errors(meteor_coeff: float = 0.0, **_: Any) -> List[str]:
        """WordNet when ``meteor_coeff`` adds METEOR."""
        return MeteorMetric.requirement_errors() if meteor_coeff else []

    def scores(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        infos = meta_infos or [{} for _ in gen_texts]
        preference = self.scorer.good_probability(gen_texts)
        rewards = [p / (1.0 + self.concept_penalty_coeff * missing_concepts(text, info.get("concepts", [])))
                   for p, text, info in zip(preference, gen_texts, infos)]
        if self.meteor is not None:
            meteor = self.meteor.sentence_scores(prompt_texts, gen_texts, ref_texts)
            rewards = [r + self.meteor_coeff * m for r, m in zip(rewards, meteor)]
        return rewards
