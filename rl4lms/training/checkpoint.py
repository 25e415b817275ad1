"""Training checkpoints: everything needed to continue a run exactly where it stopped.

``trainer_state.pt`` holds only tensors and plain containers (RNG states as lists), so it is read
with ``torch.load(..., weights_only=True)``: resuming from a folder someone else wrote cannot run
code, as with Hugging Face's Trainer on current torch. It is hashed while it is written
(``manifest.json``, see :mod:`rl4lms.manifest`); a resume checks it and falls back to the
previous checkpoint when it was damaged.
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from rl4lms.algorithms.on_policy import LMOnPolicyAlgorithm
from rl4lms.errors import CheckpointFormatError, DamagedArtifactError
from rl4lms.training.artifacts import STAGING_PREFIX, write_folder_atomic
from rl4lms.manifest import FileDigest, HashingWriter, verify_files

STATE_FILE = "trainer_state.pt"
_PREFIX = "checkpoint_"


def _capture_rng() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                   "cached_gaussian": float(cached_gaussian)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], np.asarray(numpy_state["keys"], dtype=np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def process_random_state(alg: LMOnPolicyAlgorithm) -> Dict[str, Any]:
    """This process's prompt sampler and python/numpy/torch generators."""
    return {"sampler": alg.rng_state(), "rng": _capture_rng()}


TrainableState = Tuple[Dict[str, torch.Tensor], Dict[str, Any]]


def trainable_state(alg: LMOnPolicyAlgorithm) -> TrainableState:
    """The policy's trainable weights and the optimizer state, as a checkpoint holds them. In a
    sharded run this gathers them: every process must call it, and the main process gets the whole
    state (the others empty dicts), in the layout of an unsharded run."""
    if alg.sharded is not None:
        return alg.sharded.full_state()
    return alg.policy.trainable_state_dict(), alg.policy.optimizer.state_dict()


def save_checkpoint(folder: Path, iteration: int, alg: LMOnPolicyAlgorithm, keep: int,
                    rank_states: Optional[List[Dict[str, Any]]] = None,
                    weights: Optional[TrainableState] = None) -> Path:
    """Write ``checkpoint_<iteration>`` atomically (staging folder + rename) and prune old ones.

    ``rank_states`` holds every process's :func:`process_random_state` in a multi-process run, so
    that each process resumes with its own prompt sampler and generators. ``weights`` is the
    :func:`trainable_state` gathered beforehand (default: taken here, unsharded runs only).
    """
    policy_state, optimizer_state = weights if weights is not None else trainable_state(alg)
    state = {
        "iteration": iteration,
        "policy": policy_state,
        "optimizer": optimizer_state,
        "kl_controller": alg.kl_controller.state_dict(),
        "num_timesteps": alg.num_timesteps,
        "n_updates": alg._n_updates,
        **process_random_state(alg),
        "ranks": rank_states,
    }

    def write(staging: Path) -> Dict[str, FileDigest]:
        with open(staging / STATE_FILE, "wb") as handle:
            hashed = HashingWriter(handle)
            torch.save(state, hashed)
            handle.flush()
            os.fsync(handle.fileno())
        return {STATE_FILE: hashed.digest()}

    target = write_folder_atomic(folder / f"{_PREFIX}{iteration:06d}", write)
    prune_checkpoints(folder, keep)
    return target


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints and drop staging leftovers of interrupted saves.

    Runs after every save and on resume, so a kill between a save's rename and its pruning
    leaves no extra checkpoint behind.
    """
    if not folder.exists():
        return
    for leftover in folder.glob(f"{STAGING_PREFIX}{_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for old in checkpoint_folders(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_folders(folder: Path) -> List[Path]:
    """Complete checkpoint folders, oldest first."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.glob(f"{_PREFIX}*") if (p / STATE_FILE).exists())


def checkpoint_iteration(path: Path) -> int:
    """The iteration a checkpoint folder was written after (from its name)."""
    return int(path.name[len(_PREFIX):])


def latest_checkpoint(folder: Path) -> Optional[Path]:
    """The newest complete checkpoint folder, or None (staging leftovers are ignored)."""
    done = checkpoint_folders(folder)
    return done[-1] if done else None


def _older_checkpoint(path: Path) -> Optional[Path]:
    """The newest complete checkpoint written before ``path``, or None."""
    older = [p for p in checkpoint_folders(path.parent) if p.name < path.name]
    return older[-1] if older else None


def _resume_advice(path: Path) -> str:
    older = _older_checkpoint(path)
    then = f"resume from {older.name}" if older is not None else "start the run from its first iteration"
    return f"move {path} away and rerun the same command to {then}"


def read_trainer_state(path: Path, device: Any = "cpu", mmap: bool = False) -> Dict[str, Any]:
    """``trainer_state.pt`` of checkpoint folder ``path``, read with ``weights_only=True`` (with
    ``mmap``, tensors are read from the file when used: the processes of a node share its pages)."""
    file = path / STATE_FILE
    try:
        return torch.load(file, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise CheckpointFormatError(
            f"{file} holds pickled objects beyond tensors and plain containers (a file from another program, or "
            "from an rl4lms that pickled numpy states), which can run code when loaded, so it is not read; "
            f"{_resume_advice(path)}") from error
    except (RuntimeError, EOFError, OSError) as error:
        empty = file.is_file() and file.stat().st_size == 0
        reason = "the file is empty (0 bytes)" if empty else (str(error).splitlines()[0] if str(error).strip()
                                                               else type(error).__name__)
        raise CheckpointFormatError(f"cannot read checkpoint {file}: {reason}; {_resume_advice(path)}") from error


DAMAGED_FOLDER = "damaged"
"""Subfolder of the checkpoint folder that damaged checkpoints are moved into (kept, never deleted)."""


def _set_aside(path: Path) -> Path:
    """Move damaged checkpoint ``path`` into ``damaged/`` beside it (under a free name)."""
    aside = path.parent / DAMAGED_FOLDER
    aside.mkdir(exist_ok=True)
    target, copy = aside / path.name, 1
    while target.exists():
        target, copy = aside / f"{path.name}.{copy}", copy + 1
    os.replace(path, target)
    return target


def newest_intact_checkpoint(folder: Path, report: Callable[[str], Any]) -> Optional[Path]:
    """The newest checkpoint whose trainer state matches its manifest (one written before manifests
    is taken as it is). Each damaged newer one is moved into ``damaged/`` and ``report`` gets one
    line saying which checkpoint the run resumes from instead."""
    for path in reversed(checkpoint_folders(folder)):
        try:
            verify_files(path, [STATE_FILE])
            return path
        except DamagedArtifactError as error:
            older = _older_checkpoint(path)
            moved = _set_aside(path)
            report(f"checkpoint {path.name} is damaged: {error}; moved it to {moved} and "
                   + (f"resuming from {older.name}" if older is not None else "starting from the first iteration"))
    return None


def load_checkpoint(path: Path, alg: LMOnPolicyAlgorithm, process_index: int = 0,
                    num_processes: int = 1) -> Dict[str, Any]:
    """Restore policy, optimizer, KL controller, counters and all RNG states; return the state.

    Process ``process_index`` of ``num_processes`` takes its own random state when the checkpoint
    was written by as many processes; otherwise the main process's (and other processes reseed
    their prompt samplers, see :meth:`LMOnPolicyAlgorithm.load_rng_state`). Weights and optimizer
    state are whole in every checkpoint, so a sharded or unsharded run of any size reads them.
    """
    if alg.sharded is not None:  # every process shards the whole state it reads
        state = read_trainer_state(path, "cpu", mmap=True)
        alg.sharded.load_full_state(state["policy"], state["optimizer"])
    else:
        state = read_trainer_state(path, alg.device)
        alg.policy.load_trainable_state_dict(state["policy"])
        alg.policy.optimizer.load_state_dict(state["optimizer"])
    alg.kl_controller.load_state_dict(state["kl_controller"])
    alg.num_timesteps = state["num_timesteps"]
    alg._n_updates = state["n_updates"]
    alg.iterations_done = int(state["iteration"])
    ranks = state.get("ranks")
    own = ranks[process_index] if ranks is not None and len(ranks) == num_processes else None
    alg.load_rng_state((own or state)["sampler"], reseed=own is None)
    _restore_rng((own or state)["rng"])
    return state
