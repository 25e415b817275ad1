"""Training checkpoints: everything needed to continue a run exactly where it stopped."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from rl4lms.algorithms.on_policy import LMOnPolicyAlgorithm
from rl4lms.training.artifacts import write_folder_atomic

STATE_FILE = "trainer_state.pt"
_PREFIX = "checkpoint_"


def _capture_rng() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def process_random_state(alg: LMOnPolicyAlgorithm) -> Dict[str, Any]:
    """This process's prompt sampler and python/numpy/torch generators."""
    return {"sampler": alg.rng_state(), "rng": _capture_rng()}


def save_checkpoint(folder: Path, iteration: int, alg: LMOnPolicyAlgorithm, keep: int,
                    rank_states: Optional[List[Dict[str, Any]]] = None) -> Path:
    """Write ``checkpoint_<iteration>`` atomically (staging folder + rename) and prune old ones.

    ``rank_states`` holds every process's :func:`process_random_state` in a multi-process run, so
    that each process resumes with its own prompt sampler and generators.
    """
    state = {
        "iteration": iteration,
        "policy": alg.policy.trainable_state_dict(),
        "optimizer": alg.policy.optimizer.state_dict(),
        "kl_controller": alg.kl_controller.state_dict(),
        "num_timesteps": alg.num_timesteps,
        "n_updates": alg._n_updates,
        **process_random_state(alg),
        "ranks": rank_states,
    }

    def write(staging: Path) -> None:
        torch.save(state, staging / STATE_FILE)
        with open(staging / STATE_FILE, "rb") as handle:
            os.fsync(handle.fileno())

    target = write_folder_atomic(folder / f"{_PREFIX}{iteration:06d}", write)
    for old in sorted(p for p in folder.glob(f"{_PREFIX}*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(folder: Path) -> Optional[Path]:
    """The newest complete checkpoint folder, or None (staging leftovers are ignored)."""
    if not folder.exists():
        return None
    done = sorted(p for p in folder.glob(f"{_PREFIX}*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


def load_checkpoint(path: Path, alg: LMOnPolicyAlgorithm, process_index: int = 0,
                    num_processes: int = 1) -> Dict[str, Any]:
    """Restore policy, optimizer, KL controller, counters and all RNG states; return the state.

    Process ``process_index`` of ``num_processes`` takes its own random state when the checkpoint
    was written by as many processes; otherwise the main process's (and other processes reseed
    their prompt samplers, see :meth:`LMOnPolicyAlgorithm.load_rng_state`).
    """
    state = torch.load(path / STATE_FILE, map_location=alg.device, weights_only=False)
    alg.policy.load_trainable_state_dict(state["policy"])
    alg.policy.optimizer.load_state_dict(state["optimizer"])
    alg.kl_controller.load_state_dict(state["kl_controller"])
    alg.num_timesteps = state["num_timesteps"]
    alg._n_updates = state["n_updates"]
    ranks = state.get("ranks")
    own = ranks[process_index] if ranks is not None and len(ranks) == num_processes else None
    alg.load_rng_state((own or state)["sampler"], reseed=own is None)
    _restore_rng((own or state)["rng"])
    return state
