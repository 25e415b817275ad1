"""Hand-checked numbers for the PPO loss, GAE, KL-penalised rewards, whitening and KL control.

Every expected value below is worked out by hand in the comments (plain arithmetic), not by
calling the function under test.
"""
from __future__ import annotations

import math

import pytest
import torch

from rl4lms.algorithms.advantages import compute_gae, kl_penalized_rewards, masked_mean, masked_var, token_kl, whiten
from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.ppo import ppo_loss

ABS = 1e-6


def _t(*rows: list) -> torch.Tensor:
    return torch.tensor(list(rows), dtype=torch.float64)


# --- ppo_loss ----------------------------------------------------------------------------------
# One row of three tokens; the third token is padding (mask 0) and carries deliberately wild
# numbers that must not leak into any result.
MASK = _t([1.0, 1.0, 0.0])
VALUES = _t([0.5, 2.0, 100.0])
OLD_VALUES = _t([0.0, 1.0, -50.0])
RETURNS = _t([1.0, 1.0, 3.0])


def _log_probs(ratios: list, old: list) -> torch.Tensor:
    return _t([o + math.log(r) for o, r in zip(old, ratios)])


def test_ppo_loss_ratio_inside_clip_range() -> None:
    old = [-1.0, -2.0, -3.0]
    log_probs = _log_probs([1.1, 0.95, 40.0], old).requires_grad_(True)
    advantages = _t([1.0, -2.0, 7.0])
    out = ppo_loss(log_probs, _t(old), advantages, VALUES, OLD_VALUES, RETURNS, MASK, clip_range=0.2,
                   clip_range_vf=None)
    # token 0: r=1.1,  A=1  -> -A*r = -1.1, clipped r is 1.1 as well -> max = -1.1
    # token 1: r=0.95, A=-2 -> -A*r =  1.9, clipped r is 0.95        -> max =  1.9
    # mean over the 2 valid tokens: (-1.1 + 1.9) / 2 = 0.4
    assert out.policy_loss.item() == pytest.approx(0.4, abs=ABS)
    assert out.clipfrac == pytest.approx(0.0, abs=ABS)
    # value loss without clipping: ((0.5-1)^2 + (2-1)^2) / 2 = (0.25 + 1) / 2 = 0.625
    assert out.value_loss.item() == pytest.approx(0.625, abs=ABS)
    assert out.value_clipfrac == pytest.approx(0.0, abs=ABS)
    # approx_kl = mean((r - 1) - log r):
    #   (0.1 - 0.0953101798) = 0.0046898202 ; (-0.05 + 0.0512932944) = 0.0012932944 ; mean 0.0029915573
    assert out.approx_kl == pytest.approx(0.0029915573, abs=ABS)
    # policy_kl = mean(-log r) = (-0.0953101798 + 0.0512932944) / 2 = -0.0220084427
    assert out.policy_kl == pytest.approx(-0.0220084427, abs=ABS)
    # Unclipped tokens pass the gradient d/dlogp (-A r / n) = -A r / 2: -0.55 and +0.95; padding 0.
    out.policy_loss.backward()
    assert log_probs.grad[0].tolist() == pytest.approx([-0.55, 0.95, 0.0], abs=ABS)


def test_ppo_loss_ratio_outside_clip_range_pessimistic_bound() -> None:
    old = [0.0, 0.0, 0.0]
    log_probs = _log_probs([1.5, 0.5, 3.0], old).requires_grad_(True)
    advantages = _t([2.0, -1.0, 7.0])
    out = ppo_loss(log_probs, _t(old), advantages, VALUES, OLD_VALUES, RETURNS, MASK, clip_range=0.2,
                   clip_range_vf=None)
    # token 0: r=1.5, A=2  -> unclipped -3.0, clipped -2*1.2 = -2.4 -> max = -2.4
    # token 1: r=0.5, A=-1 -> unclipped  0.5, clipped  1*0.8 =  0.8 -> max =  0.8
    # mean: (-2.4 + 0.8) / 2 = -0.8
    assert out.policy_loss.item() == pytest.approx(-0.8, abs=ABS)
    # the clipped term is the larger one on both tokens -> clipfrac 2/2
    assert out.clipfrac == pytest.approx(1.0, abs=ABS)
    # kl_k2 = mean((log r)^2) / 2 = (0.4054651^2 + 0.6931472^2) / 4 = (0.1644020 + 0.4804530) / 4 = 0.1612137
    assert out.kl_k2 == pytest.approx(0.1612137, abs=ABS)
    # Both valid tokens sit on the clipped branch, so no gradient reaches the log-probs.
    out.policy_loss.backward()
    assert log_probs.grad[0].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=ABS)


def test_ppo_loss_ratio_outside_clip_range_unclipped_branch_wins() -> None:
    old = [0.0, 0.0, 0.0]
    log_probs = _log_probs([1.5, 0.5, 3.0], old)
    advantages = _t([-1.0, 1.0, 7.0])
    out = ppo_loss(log_probs, _t(old), advantages, VALUES, OLD_VALUES, RETURNS, MASK, clip_range=0.2,
                   clip_range_vf=None)
    # token 0: r=1.5, A=-1 -> unclipped 1.5, clipped 1.2  -> max 1.5
    # token 1: r=0.5, A=1  -> unclipped -0.5, clipped -0.8 -> max -0.5
    # mean: (1.5 - 0.5) / 2 = 0.5; both ratios lie outside [0.8, 1.2], but on both tokens the
    # unclipped term is the larger one, so clipping binds nowhere: clipfrac 0/2
    assert out.policy_loss.item() == pytest.approx(0.5, abs=ABS)
    assert out.clipfrac == pytest.approx(0.0, abs=ABS)


def test_ppo_loss_half_clipped() -> None:
    old = [0.0, 0.0, 0.0]
    log_probs = _log_probs([1.1, 1.5, 1.0], old)
    advantages = _t([1.0, 1.0, 1.0])
    out = ppo_loss(log_probs, _t(old), advantages, VALUES, OLD_VALUES, RETURNS, MASK, clip_range=0.2,
                   clip_range_vf=None)
    # token 0: max(-1.1, -1.1) = -1.1 ; token 1: max(-1.5, -1.2) = -1.2 ; mean -1.15 ; clipfrac 1/2
    assert out.policy_loss.item() == pytest.approx(-1.15, abs=ABS)
    assert out.clipfrac == pytest.approx(0.5, abs=ABS)


def test_ppo_loss_with_value_clipping() -> None:
    old = [0.0, 0.0, 0.0]
    log_probs = _t(old)
    out = ppo_loss(log_probs, _t(old), _t([1.0, 1.0, 1.0]), VALUES, OLD_VALUES, RETURNS, MASK, clip_range=0.2,
                   clip_range_vf=0.2)
    # token 0: V=0.5, V_old=0 -> V_clip = 0 + clamp(0.5, -0.2, 0.2) = 0.2
    #          max((0.5-1)^2, (0.2-1)^2) = max(0.25, 0.64) = 0.64   (clipped error is larger)
    # token 1: V=2.0, V_old=1 -> V_clip = 1 + 0.2 = 1.2
    #          max((2-1)^2, (1.2-1)^2) = max(1.0, 0.04) = 1.0       (unclipped error is larger)
    # mean: (0.64 + 1.0) / 2 = 0.82 ; value_clipfrac 1/2
    assert out.value_loss.item() == pytest.approx(0.82, abs=ABS)
    assert out.value_clipfrac == pytest.approx(0.5, abs=ABS)
    # ratio 1 everywhere: policy loss = mean(-A) = -1, nothing clipped, zero KL
    assert out.policy_loss.item() == pytest.approx(-1.0, abs=ABS)
    assert out.clipfrac == pytest.approx(0.0, abs=ABS)
    assert out.approx_kl == pytest.approx(0.0, abs=ABS)


def test_ppo_value_loss_gradient_with_clipping() -> None:
    values = VALUES.clone().requires_grad_(True)
    out = ppo_loss(_t([0.0, 0.0, 0.0]), _t([0.0, 0.0, 0.0]), _t([0.0, 0.0, 0.0]), values, OLD_VALUES, RETURNS,
                   MASK, clip_range=0.2, clip_range_vf=0.2)
    out.value_loss.backward()
    # token 0 takes the clipped branch (V_clip = 0.2 does not depend on V) -> gradient 0
    # token 1 takes the unclipped branch: d/dV (V - R)^2 / 2 = (2 - 1) = 1.0
    assert values.grad[0].tolist() == pytest.approx([0.0, 1.0, 0.0], abs=ABS)


# --- GAE -----------------------------------------------------------------------------------------

def test_compute_gae_hand_example_with_padded_tail() -> None:
    gamma, lam = 0.9, 0.8  # gamma * lambda = 0.72
    rewards = _t([0.0, 0.0, 1.0, 5.0])     # last entry is padding
    values = _t([0.5, 0.4, 0.2, 9.0])      # last entry is padding
    mask = _t([1.0, 1.0, 1.0, 0.0])
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    # t=2 (last valid): delta = 1.0 + 0.9*0 - 0.2 = 0.8 ; A2 = 0.8
    # t=1: delta = 0 + 0.9*0.2 - 0.4 = -0.22 ; A1 = -0.22 + 0.72*0.8 = 0.356
    # t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14 ; A0 = -0.14 + 0.72*0.356 = 0.11632
    assert advantages[0].tolist() == pytest.approx([0.11632, 0.356, 0.8, 0.0], abs=ABS)
    # returns = A + V on valid tokens, 0 on padding
    assert returns[0].tolist() == pytest.approx([0.61632, 0.756, 1.0, 0.0], abs=ABS)


def test_compute_gae_rows_are_independent() -> None:
    gamma, lam = 0.9, 0.8
    rewards = _t([0.0, 0.0, 1.0, 5.0], [0.0, 0.0, 0.0, 1.0])
    values = _t([0.5, 0.4, 0.2, 9.0], [0.0, 0.0, 0.0, 0.0])
    mask = _t([1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0])
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    assert advantages[0].tolist() == pytest.approx([0.11632, 0.356, 0.8, 0.0], abs=ABS)
    # Row 2, zero values: A3 = 1 ; A2 = 0.72 ; A1 = 0.72^2 = 0.5184 ; A0 = 0.72^3 = 0.373248
    assert advantages[1].tolist() == pytest.approx([0.373248, 0.5184, 0.72, 1.0], abs=ABS)
    assert returns[1].tolist() == pytest.approx([0.373248, 0.5184, 0.72, 1.0], abs=ABS)


def test_compute_gae_lambda_one_gives_discounted_return() -> None:
    # With lambda = 1 the return is the plain discounted reward-to-go, whatever the values:
    # R2 = 2 ; R1 = 1 + 0.5*2 = 2 ; R0 = 0 + 0.5*2 = 1
    advantages, returns = compute_gae(_t([0.0, 1.0, 2.0]), _t([3.0, -1.0, 0.5]), _t([1.0, 1.0, 1.0]), 0.5, 1.0)
    assert returns[0].tolist() == pytest.approx([1.0, 2.0, 2.0], abs=ABS)
    assert advantages[0].tolist() == pytest.approx([1.0 - 3.0, 2.0 + 1.0, 2.0 - 0.5], abs=ABS)


# --- KL-penalised rewards, masked statistics and whitening ---------------------------------------

def test_kl_penalized_rewards_hand_example() -> None:
    task = _t([0.0, 0.0, 2.0, 0.0])
    log_probs = _t([-1.0, -2.0, -0.5, -3.0])
    ref = _t([-1.5, -1.0, -0.5, -9.0])
    mask = _t([1.0, 1.0, 1.0, 0.0])
    rewards, kl = kl_penalized_rewards(task, token_kl(log_probs, ref), mask, kl_coeff=0.1)
    # kl = logp - ref_logp on valid tokens: [0.5, -1.0, 0.0, (padding) 0]
    assert kl[0].tolist() == pytest.approx([0.5, -1.0, 0.0, 0.0], abs=ABS)
    # reward = task - 0.1 * kl: [-0.05, 0.1, 2.0, 0]
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.1, 2.0, 0.0], abs=ABS)


def test_masked_mean_and_var() -> None:
    values = _t([1.0, 2.0, 6.0, 100.0])
    mask = _t([1.0, 1.0, 1.0, 0.0])
    # mean (1 + 2 + 6) / 3 = 3 ; unbiased var ((-2)^2 + (-1)^2 + 3^2) / (3 - 1) = 14 / 2 = 7
    assert masked_mean(values, mask).item() == pytest.approx(3.0, abs=ABS)
    assert masked_var(values, mask).item() == pytest.approx(7.0, abs=ABS)
    # An all-zero mask does not divide by zero.
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_whiten_masked() -> None:
    values = _t([1.0, 2.0, 3.0, 100.0], [5.0, -4.0, 0.0, 0.0])
    mask = _t([1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0])
    out = whiten(values, mask)
    valid = mask.bool()
    # Zero mean and unit (unbiased) variance over the masked entries.
    n = int(mask.sum().item())
    mean = out[valid].sum().item() / n
    var = sum((x - mean) ** 2 for x in out[valid].tolist()) / (n - 1)
    assert mean == pytest.approx(0.0, abs=1e-6)
    assert var == pytest.approx(1.0, abs=1e-6)
    # Padding becomes exactly 0.
    assert out[~valid].tolist() == [0.0, 0.0, 0.0]


def test_whiten_hand_example() -> None:
    values = _t([1.0, 2.0, 3.0, 100.0])
    mask = _t([1.0, 1.0, 1.0, 0.0])
    # mean 2, unbiased var ((1)+(0)+(1))/2 = 1 -> (x - 2) / 1
    assert whiten(values, mask)[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    # shift_mean=False adds the mean back: [1, 2, 3] and still 0 on padding
    assert whiten(values, mask, shift_mean=False)[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


# --- KLController --------------------------------------------------------------------------------

def test_kl_controller_fixed_without_target() -> None:
    controller = KLController(0.1)
    assert controller.step(100.0) == 0.1
    assert controller.step(0.0) == 0.1
    assert controller.kl_coeff == 0.1


@pytest.mark.parametrize("kl, expected", [
    (2.0, 0.102),    # error (2 - 1) / 1 = 1 -> clipped to 0.2 -> factor 1 + 0.1*0.2 = 1.02
    (50.0, 0.102),   # still clipped at 0.2
    (1.1, 0.101),    # error 0.1 -> factor 1.01
    (1.0, 0.1),      # on target: unchanged
    (0.95, 0.0995),  # error -0.05 -> factor 0.995
    (0.0, 0.098),    # error -1 -> clipped to -0.2 -> factor 0.98
])
def test_kl_controller_adaptive_step(kl: float, expected: float) -> None:
    controller = KLController(0.1, target_kl=1.0)
    assert controller.step(kl) == pytest.approx(expected, rel=1e-12)
    assert controller.kl_coeff == pytest.approx(expected, rel=1e-12)


def test_kl_controller_compounds() -> None:
    controller = KLController(1.0, target_kl=0.5)
    controller.step(10.0)
    controller.step(10.0)
    # two clipped increases: 1.02 * 1.02 = 1.0404
    assert controller.kl_coeff == pytest.approx(1.0404, rel=1e-12)


def test_kl_controller_state_dict_round_trip() -> None:
    controller = KLController(0.2, target_kl=0.3)
    controller.step(1.0)  # 0.2 * 1.02 = 0.204
    state = controller.state_dict()
    assert state == {"kl_coeff": pytest.approx(0.204), "target_kl": 0.3}
    restored = KLController(5.0)
    restored.load_state_dict(state)
    assert restored.kl_coeff == controller.kl_coeff
    assert restored.target_kl == 0.3
    # The restored controller continues the same way.
    assert restored.step(0.0) == pytest.approx(controller.step(0.0))
    assert restored.kl_coeff == pytest.approx(0.204 * 0.98)


@pytest.mark.parametrize("coeff, target", [(-0.1, None), (0.1, 0.0), (0.1, -1.0)])
def test_kl_controller_invalid_arguments(coeff: float, target: float) -> None:
    with pytest.raises(ValueError, match="alg.kl_div"):
        KLController(coeff, target_kl=target)


def test_token_kl_estimators_hand_example() -> None:
    log_probs, ref = _t([-1.0, -2.0]), _t([-1.5, -1.0])
    # log-ratios: 0.5 and -1.0
    assert token_kl(log_probs, ref, "kl")[0].tolist() == pytest.approx([0.5, -1.0], abs=ABS)
    assert token_kl(log_probs, ref, "abs")[0].tolist() == pytest.approx([0.5, 1.0], abs=ABS)
    # mse: half the squares: 0.125 and 0.5
    assert token_kl(log_probs, ref, "mse")[0].tolist() == pytest.approx([0.125, 0.5], abs=ABS)
    # full: two-token vocabulary, p = (0.5, 0.5) against q = (0.8, 0.2):
    # KL = 0.5 log(0.5/0.8) + 0.5 log(0.5/0.2) = 0.5 * (-0.4700036) + 0.5 * 0.9162907 = 0.2231436
    logits = torch.log(_t([[0.5, 0.5]]))[None]
    ref_logits = torch.log(_t([[0.8, 0.2]]))[None]
    full = token_kl(_t([0.0]), _t([0.0]), "full", logits, ref_logits)
    assert full.flatten().tolist() == pytest.approx([0.2231436], abs=ABS)
    with pytest.raises(ValueError, match="needs the logits"):
        token_kl(log_probs, ref, "full")
    with pytest.raises(ValueError, match="is not one of kl, abs, mse, full"):
        token_kl(log_probs, ref, "l2")


def test_kl_controller_with_a_horizon_adapts_as_trl() -> None:
    controller = KLController(0.2, target_kl=6.0, horizon=10000)
    # error (9 - 6) / 6 = 0.5, clipped to 0.2; rate = 256 / 10000: 0.2 * (1 + 0.2 * 0.0256) = 0.20102400
    assert controller.step(9.0, n_episodes=256) == pytest.approx(0.201024, abs=1e-9)
    # error (5.4 - 6) / 6 = -0.1: 0.201024 * (1 - 0.1 * 0.0256) = 0.2005093786
    assert controller.step(5.4, n_episodes=256) == pytest.approx(0.2005093786, abs=1e-9)
