"""KL-penalty coefficient control (RL4LMs' ``kl_div: {coeff, target_kl, norm_reward}``)."""
from __future__ import annotations

from typing import Any, Dict, Optional


class KLController:
    """Holds the KL coefficient; with ``target_kl`` it adapts it after every rollout.

    The update is proportional control: the relative error ``(kl - target) / target`` is
    clipped to [-0.2, 0.2] and the coefficient is multiplied by ``1 + rate * error``.
    Without ``target_kl`` the coefficient stays fixed.

    Args (``alg.kl_div``):
        coeff: initial KL coefficient (>= 0).
        target_kl: per-episode KL the coefficient steers towards; null keeps it fixed.
        norm_reward: standardize the KL-penalised per-token rewards over each rollout before GAE
            (RL4LMs' ``norm_reward``).
        horizon: with it the rate is ``n_episodes / horizon`` for the ``n_episodes`` of the rollout the
            KL was measured on (TRL's ``AdaptiveKLController``); without it a fixed 0.1 (RL4LMs').
    """

    def __init__(self, coeff: float, target_kl: Optional[float] = None, norm_reward: bool = False,
                 horizon: Optional[float] = None) -> None:
        if coeff < 0:
            raise ValueError(f"alg.kl_div.coeff must be >= 0, got {coeff}")
        if target_kl is not None and target_kl <= 0:
            raise ValueError(f"alg.kl_div.target_kl must be > 0 or null, got {target_kl}")
        if horizon is not None and not horizon > 0:
            raise ValueError(f"alg.kl_div.horizon must be > 0 or null, got {horizon}")
        self.kl_coeff = float(coeff)
        self.target_kl = target_kl
        self.norm_reward = norm_reward
        self.horizon = horizon

    @property
    def value(self) -> float:
        """The coefficient under TRL's name (``ppo_trainer.kl_ctl.value``)."""
        return self.kl_coeff

    def step(self, kl: float, n_episodes: int = 1) -> float:
        """Update the coefficient from the rollout's mean per-episode KL over ``n_episodes``; return
        the new value."""
        if self.target_kl is not None:
            error = min(max((kl - self.target_kl) / self.target_kl, -0.2), 0.2)
            rate = 0.1 if self.horizon is None else n_episodes / self.horizon
            self.kl_coeff *= 1.0 + rate * error
        return self.kl_coeff

    def state_dict(self) -> Dict[str, Any]:
        return {"kl_coeff": self.kl_coeff, "target_kl": self.target_kl}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.kl_coeff = float(state["kl_coeff"])
        self.target_kl = state["target_kl"]
