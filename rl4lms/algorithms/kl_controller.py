"""KL-penalty coefficient control (RL4LMs' ``kl_div: {coeff, target_kl, norm_reward}``)."""
from __future__ import annotations

from typing import Any, Dict, Optional


class KLController:
    """Holds the KL coefficient; with ``target_kl`` it adapts it after every rollout.

    The update is proportional control: the relative error ``(kl - target) / target`` is
    clipped to [-0.2, 0.2] and the coefficient is multiplied by ``1 + 0.1 * error``.
    Without ``target_kl`` the coefficient stays fixed.

    Args (``alg.kl_div``):
        coeff: initial KL coefficient (>= 0).
        target_kl: per-episode KL the coefficient steers towards; null keeps it fixed.
        norm_reward: standardize the KL-penalised per-token rewards over each rollout before GAE
            (RL4LMs' ``norm_reward``).
    """

    def __init__(self, coeff: float, target_kl: Optional[float] = None, norm_reward: bool = False) -> None:
        if coeff < 0:
            raise ValueError(f"alg.kl_div.coeff must be >= 0, got {coeff}")
        if target_kl is not None and target_kl <= 0:
            raise ValueError(f"alg.kl_div.target_kl must be > 0 or null, got {target_kl}")
        self.kl_coeff = float(coeff)
        self.target_kl = target_kl
        self.norm_reward = norm_reward

    def step(self, kl: float) -> float:
        """Update the coefficient from the rollout's mean per-episode KL; return the new value."""
        if self.target_kl is not None:
            error = min(max((kl - self.target_kl) / self.target_kl, -0.2), 0.2)
            self.kl_coeff *= 1.0 + 0.1 * error
        return self.kl_coeff

    def state_dict(self) -> Dict[str, Any]:
        return {"kl_coeff": self.kl_coeff, "target_kl": self.target_kl}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.kl_coeff = float(state["kl_coeff"])
        self.target_kl = state["target_kl"]
