"""A weighted sum of registered rewards."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from rl4lms.errors import RegistryError
from rl4lms.registry import RewardFunctionRegistry
from rl4lms.rewards.base import BatchedRewardFunction, ScoreReward


class CombinedReward(ScoreReward):
    """Sum of ``weight`` x reward over ``rewards``, each an ``{id, args, weight}`` entry, e.g.::

        reward_fn:
          id: combined
          args:
            rewards:
              - {id: meteor, weight: 1.0}
              - {id: learned_reward, args: {model_name: my/rm, label_ix: 0}, weight: 0.5}
    """

    def __init__(self, rewards: List[Dict[str, Any]]) -> None:
        super().__init__()
        if not isinstance(rewards, list) or not rewards:
            raise ValueError("rewards must be a non-empty list of {id, args, weight} entries")
        self.parts: List[tuple] = []
        for ix, entry in enumerate(rewards):
            where = f"rewards[{ix}]"
            if not isinstance(entry, dict) or "id" not in entry:
                raise ValueError(f"{where}: expected a mapping with 'id' (and optional 'args', 'weight'), got {entry!r}")
            unknown = set(entry) - {"id", "args", "weight"}
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: id, args, weight")
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValueError(f"{where}.weight: expected a number, got {weight!r}")
            try:
                reward = RewardFunctionRegistry.build(entry["id"], entry.get("args") or {})
            except (RegistryError, TypeError, ValueError) as error:
                raise ValueError(f"{where} ('{entry['id']}'): {error}") from error
            if not isinstance(reward, BatchedRewardFunction):
                raise ValueError(f"{where}: '{entry['id']}' is not a batched reward function")
            self.parts.append((float(weight), reward))

    def scores(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        totals = [0.0] * len(gen_texts)
        dones = [True] * len(gen_texts)
        for weight, reward in self.parts:
            values = reward(prompt_texts, gen_texts, ref_texts, dones, meta_infos)
            totals = [t + weight * float(v) for t, v in zip(totals, values)]
        return totals
