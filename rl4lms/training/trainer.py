"""The on-policy trainer loop: rollouts + updates, periodic evaluation, checkpoints and resume."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from tqdm.auto import tqdm
from transformers import set_seed

from rl4lms.errors import ConfigMismatchError, LauncherGoneError
from rl4lms.training.artifacts import write_folder_atomic, write_json_atomic, writing
from rl4lms.training.completion import (COMPLETE_FILE, MODEL_FOLDER, read_complete, verify_final_model,
                                        write_complete)
from rl4lms.models.loading import default_device
from rl4lms.training.builders import RunComponents, build_components
from rl4lms.training.checkpoint import (checkpoint_iteration, latest_checkpoint, load_checkpoint,
                                        newest_intact_checkpoint, process_random_state, prune_checkpoints,
                                        save_checkpoint, trainable_state)
from rl4lms.training.distributed import (LauncherWatch, any_launcher_gone, check_launch, end_process_group,
                                         gather_from_processes, main_process_value, make_accelerator,
                                         share_main_failure, weights_checksum)
from rl4lms.training.evaluation import evaluate_samples
from rl4lms.training.run_lock import RunLock
from rl4lms.training.sharding import ShardedPolicy, fsdp_settings, memory_footprint
from rl4lms.training.tracker import Tracker

RESUMABLE_CHANGES = {("train_evaluation", "n_iters")}
ENVIRONMENT_FILE = "environment.json"


def _config_differences(old: Dict[str, Any], new: Dict[str, Any], prefix: tuple = ()) -> List[tuple]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _config_differences(old.get(key), new.get(key), prefix + (key,))
        return out
    return [] if old == new else [prefix]


class OnPolicyTrainer:
    """Runs one experiment from a validated config and writes it under ``<base>/<experiment>/``.

    Rerunning with the same arguments after a crash continues from the newest checkpoint;
    rerunning a finished run only prints its summary.
    """

    def __init__(self, config: Dict[str, Any], experiment_name: str, base_path_to_store_results: str,
                 log_to_wandb: bool = False, wandb_project: str = "rl4lms", wandb_entity: Optional[str] = None,
                 device: Optional[str] = None) -> None:
        self.config = config
        self.run_dir = Path(base_path_to_store_results) / experiment_name
        self.accelerator = make_accelerator(config.get("accelerator") or {}, device or default_device())
        self.sharding = fsdp_settings(config.get("accelerator") or {})
        # Under several processes only the main one writes files; the others train alongside.
        self.is_main = self.accelerator is None or self.accelerator.is_main_process
        self.lock: Optional[RunLock] = None
        self.tracker: Optional[Tracker] = None
        self.eval_config = config["train_evaluation"]
        self.n_iters: int = self.eval_config["n_iters"]
        multi_process = self.accelerator is not None and self.accelerator.num_processes > 1
        self.launcher = LauncherWatch() if multi_process else None
        failure: Optional[Exception] = None
        if self.is_main:
            try:
                self._open_run_folder(experiment_name, log_to_wandb, wandb_project, wandb_entity)
            except Exception as error:
                self.close()
                failure = error
            except BaseException:
                self.close()
                raise
        share_main_failure(self.accelerator, failure)  # the lock and config checks stop every process alike
        self.device = device or (str(self.accelerator.device) if self.accelerator else default_device())
        self.parts: Optional[RunComponents] = None

    def _open_run_folder(self, experiment_name: str, log_to_wandb: bool, wandb_project: str,
                         wandb_entity: Optional[str]) -> None:
        """Lock the run folder, check it against this run and start its logs (main process)."""
        with writing(self.run_dir, "run folder"):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.run_dir).acquire()
        self._check_iterations_done()
        self._check_finished_model()
        self._check_or_write_config()
        with writing(self.run_dir / "log.txt", "log"):
            self.tracker = Tracker(self.run_dir, experiment_name, self.config, log_to_wandb, wandb_project,
                                   wandb_entity)
        self._record_environment()

    def _check_or_write_config(self) -> None:
        """Refuse a config that differs from the one of the iterations already recorded (checkpoints
        or a finished run); a folder holding none (a start that failed before training, say on a
        missing data file) takes the new config, so the fixed command just runs."""
        path = self.run_dir / "config.json"
        recorded = latest_checkpoint(self.checkpoint_dir) is not None or (self.run_dir / COMPLETE_FILE).exists()
        if path.exists() and recorded:
            differences = [d for d in _config_differences(json.loads(path.read_text()), self.config)
                           if d not in RESUMABLE_CHANGES]
            if differences:
                keys = ", ".join(".".join(map(str, d)) for d in differences)
                raise ConfigMismatchError(f"{self.run_dir} holds a run with a different config (differs at: {keys}); "
                                          "use another --experiment_name or base path to start a new run")
        write_json_atomic(path, self.config)

    def _check_iterations_done(self) -> None:
        """Refuse an ``n_iters`` below what the folder already holds: its logs, checkpoints and
        summary would then describe a longer run than the one recorded."""
        done = 0
        newest = latest_checkpoint(self.checkpoint_dir)
        if newest is not None:
            done = checkpoint_iteration(newest)
        complete = self.run_dir / COMPLETE_FILE
        if complete.exists():
            done = max(done, int(read_complete(self.run_dir).get("iterations", 0)))
        if done > self.n_iters:
            raise ConfigMismatchError(
                f"train_evaluation.n_iters is {self.n_iters}, but {self.run_dir} already holds {done} iterations; "
                f"set n_iters to {done} or more to continue this run, or use another --experiment_name")

    def _check_finished_model(self) -> None:
        """A finished run that this command would only report: check its final model's files first."""
        if (self.run_dir / COMPLETE_FILE).exists():
            summary = read_complete(self.run_dir)
            if summary["iterations"] == self.n_iters:
                verify_final_model(self.run_dir, summary)

    def _record_environment(self) -> None:
        """Append this start's torch thread count and library versions to ``environment.json``;
        warn when a resume runs with another thread count (results then differ by float rounding)."""
        import transformers

        path = self.run_dir / ENVIRONMENT_FILE
        sessions = json.loads(path.read_text())["sessions"] if path.exists() else []
        current = {"torch_num_threads": torch.get_num_threads(), "torch": torch.__version__,
                   "transformers": transformers.__version__,
                   "num_processes": self.accelerator.num_processes if self.accelerator else 1}
        if sessions and sessions[0]["torch_num_threads"] != current["torch_num_threads"]:
            assert self.tracker is not None
            self.tracker.logger.warning(
                "this run started with %d torch threads and continues with %d: it will not be bit-identical to an "
                "uninterrupted run (pass --num_threads %d to match)", sessions[0]["torch_num_threads"],
                current["torch_num_threads"], sessions[0]["torch_num_threads"])
        write_json_atomic(path, {"sessions": [*sessions, current]})

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    # --- phases ---------------------------------------------------------------------------------
    def _evaluate(self, split: str, epoch: int) -> None:
        """The main process evaluates; in a sharded run every process gathers the actor for it."""
        assert self.parts is not None
        policy = self.parts.alg.policy
        with policy.generation_context():
            # Every process together: an engine with its own copy of the weights (vLLM) starts and
            # loads them in a collective when the run has several processes.
            policy.engine.refresh_weights()
            if self.tracker is None:
                return
            result = evaluate_samples(policy, self.parts.env, list(self.parts.pools[split]), self.parts.metrics,
                                      self.eval_config["eval_batch_size"], split, self.eval_config["generation_kwargs"])
        self.tracker.log_evaluation(split, epoch, result.corpus_scores, result.predictions)

    def _resume(self) -> int:
        """Load the newest intact checkpoint (if any; the main process picks it) and return the
        iteration to continue after."""
        assert self.parts is not None
        accelerator = self.accelerator
        position = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        iteration = 0
        checkpoint = None
        if self.tracker is not None:
            checkpoint = newest_intact_checkpoint(self.checkpoint_dir, self.tracker.logger.warning)
            prune_checkpoints(self.checkpoint_dir, self.eval_config["save_checkpoints_to_keep"])
        checkpoint = main_process_value(accelerator, checkpoint)
        if checkpoint is not None:
            iteration = int(load_checkpoint(checkpoint, self.parts.alg, *position)["iteration"])
        if self.tracker is not None:
            self.tracker.rollback(iteration if checkpoint else -1)
            if checkpoint:
                self.tracker.logger.info("resumed from %s", checkpoint)
        return iteration

    def _save(self, iteration: int) -> None:
        assert self.parts is not None
        weights = trainable_state(self.parts.alg)  # gathered on the main process in sharded runs
        rank_states = gather_from_processes(self.accelerator, process_random_state(self.parts.alg))
        if self.is_main:
            save_checkpoint(self.checkpoint_dir, iteration, self.parts.alg,
                            keep=self.eval_config["save_checkpoints_to_keep"], rank_states=rank_states,
                            weights=weights)

    def train_and_eval(self) -> Dict[str, Any]:
        """Run (or finish) the experiment and return its summary."""
        complete = self.run_dir / COMPLETE_FILE
        if complete.exists():
            summary = read_complete(self.run_dir)  # checked when the folder was opened
            if summary["iterations"] == self.n_iters:
                if self.tracker is not None:
                    self.tracker.logger.info("run already complete; summary in %s", complete)
                return summary
            if self.is_main:
                complete.unlink()  # n_iters was raised: continue training the finished run
        set_seed(self.config["seed"])
        # A sharded policy is built on the CPU; sharding moves each process's shards to its device.
        self.parts = build_components(self.config, "cpu" if self.sharding else self.device)
        alg = self.parts.alg
        alg.planned_iterations = self.n_iters
        if self.accelerator is not None:
            check_launch(self.accelerator, sharded=self.sharding is not None)
            sharded = ShardedPolicy(alg.policy, self.sharding, self.accelerator.device) if self.sharding else None
            alg.attach_accelerator(self.accelerator, sharded)
        start = self._resume()
        if start == 0:
            self._evaluate("val", 0)
            self._evaluate("test", 0)
        progress = tqdm(total=self.n_iters, initial=start, desc="iterations", dynamic_ncols=True, mininterval=1.0,
                        disable=not self.is_main)
        with progress:  # closed before an error is reported, so the error stays the last line
            for iteration in range(start + 1, self.n_iters + 1):
                self._stop_if_launcher_gone(iteration - 1)
                alg.run_iteration()
                if self.tracker is not None:
                    self.tracker.log_iteration(iteration, alg.rollout_stats, alg.train_stats, alg.num_timesteps)
                progress.set_postfix({k: f"{v:.3f}" for k, v in alg.progress_stats().items()}, refresh=False)
                progress.update(1)
                last = iteration == self.n_iters
                if iteration % self.eval_config["eval_every"] == 0 or last:
                    self._evaluate("val", iteration)
                if iteration % self.eval_config["save_every"] == 0 or last:
                    self._save(iteration)
        distributed = self._distributed_summary()
        tested = self.tracker is not None and any(r.get("epoch") == self.n_iters
                                                  for r in self.tracker.metric_logs["test"].records())
        if not main_process_value(self.accelerator, tested):
            self._evaluate("test", self.n_iters)
        # The final weights, gathered on the main process in sharded runs (None: the modules' own).
        final_weights = alg.sharded.full_weights() if alg.sharded is not None else None
        summary: Dict[str, Any] = {}
        if self.tracker is not None:
            if start >= self.n_iters:
                self.tracker.logger.info("all %d iterations were done before; finishing the run", self.n_iters)
            summary = self._finish(distributed, final_weights)
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            # After the main process's writes, take the process group down while the interpreter is
            # whole: gloo's worker threads left to interpreter shutdown can abort a process.
            self.accelerator.wait_for_everyone()
            end_process_group(self.accelerator)
        return summary

    def _stop_if_launcher_gone(self, done: int) -> None:
        """At an iteration boundary of a multi-process run: stop every process together when the
        launcher is gone (the processes would otherwise train on unseen, holding the run's lock)."""
        if self.launcher is None or not any_launcher_gone(self.accelerator, self.launcher):
            return
        newest = latest_checkpoint(self.checkpoint_dir)
        message = (f"the launcher of this {self.accelerator.num_processes}-process run is gone: stopped after "
                   f"iteration {done}; rerun the same command to continue from "
                   f"{newest.name if newest is not None else 'the first iteration'}")
        end_process_group(self.accelerator)
        error = LauncherGoneError(message)
        error.reported_by_main_process = not self.is_main
        raise error

    def _distributed_summary(self) -> Dict[str, Any]:
        """Process count, sharding, each process's checksum of the trainable weights (gathered whole
        in sharded runs) and each process's parameter and optimizer-state bytes (all processes take
        part in the gathers)."""
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return {}
        assert self.parts is not None
        alg = self.parts.alg
        return {"distributed": {"num_processes": self.accelerator.num_processes,
                                "sharding": "fsdp" if alg.sharded is not None else "ddp",
                                "trainable_weight_checksums": gather_from_processes(self.accelerator,
                                                                                    weights_checksum(alg.policy)),
                                "memory_per_process": gather_from_processes(self.accelerator,
                                                                            memory_footprint(alg.policy))}}

    def _finish(self, extra: Dict[str, Any], final_weights: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        assert self.parts is not None and self.tracker is not None
        model_dir = self.run_dir / MODEL_FOLDER
        write_folder_atomic(model_dir, lambda folder: self.parts.alg.policy.save_pretrained(folder, final_weights))
        summary = write_complete(self.run_dir, {**self.summary(), **extra})
        self.tracker.logger.info("run complete; model saved to %s", model_dir)
        return summary

    def summary(self) -> Dict[str, Any]:
        """Before/after numbers read back from the run's own artifact files."""
        assert self.tracker is not None
        def first_last(records: List[Dict[str, Any]]) -> Dict[str, Any]:
            return {"before": records[0]["metrics"], "after": records[-1]["metrics"]} if records else {}

        rollouts = [r for r in self.tracker.rollout_log.records() if "rollout_info/ep_rew" in r]
        return {
            "val": first_last(self.tracker.metric_logs["val"].records()),
            "test": first_last(self.tracker.metric_logs["test"].records()),
            "train_ep_rew": {"first_iteration": rollouts[0]["rollout_info/ep_rew"],
                             "last_iteration": rollouts[-1]["rollout_info/ep_rew"]} if rollouts else {},
            "iterations": self.n_iters,
        }

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
        if self.lock is not None:
            self.lock.release()
