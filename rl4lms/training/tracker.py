"""Where a run's records go: ``log.txt``, the JSON-lines files, prediction dumps and (optionally) wandb."""
from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

from rl4lms.training.artifacts import JsonlLog, write_json_atomic

LOGGER_NAME = "rl4lms"


class Tracker:
    """Writes every record of a run under ``run_dir`` and mirrors numbers to wandb when enabled."""

    def __init__(self, run_dir: Path, experiment_name: str, config: Dict[str, Any], log_to_wandb: bool = False,
                 wandb_project: str = "rl4lms", wandb_entity: Optional[str] = None) -> None:
        self.run_dir = run_dir
        self.rollout_log = JsonlLog(run_dir / "rollout_info.jsonl", key="iteration")
        self.training_log = JsonlLog(run_dir / "training_info.jsonl", key="iteration")
        self.metric_logs = {split: JsonlLog(run_dir / f"{split}_split_metrics.jsonl", key="epoch")
                            for split in ("val", "test")}
        self.logger = self._file_logger(run_dir / "log.txt")
        self.wandb_run = self._init_wandb(experiment_name, config, wandb_project, wandb_entity) if log_to_wandb else None

    @staticmethod
    def _file_logger(path: Path) -> logging.Logger:
        logger = logging.getLogger(LOGGER_NAME)
        logger.setLevel(logging.INFO)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        for handler in (logging.FileHandler(path), logging.StreamHandler(sys.stderr)):
            handler.setFormatter(formatter)
            logger.addHandler(handler)
        logger.propagate = False
        return logger

    def _init_wandb(self, experiment_name: str, config: Dict[str, Any], project: str, entity: Optional[str]) -> Any:
        import wandb

        id_file = self.run_dir / "wandb_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        os.environ.setdefault("WANDB_DIR", str(self.run_dir))
        return wandb.init(project=project, entity=entity, name=experiment_name, config=config, id=run_id,
                          resume="allow", dir=str(self.run_dir))

    def rollback(self, iteration: int) -> None:
        """Archive records newer than ``iteration`` (they belong to work that will be redone)."""
        logs: List[JsonlLog] = [self.rollout_log, self.training_log, *self.metric_logs.values()]
        moved = sum(log.rollback(iteration) for log in logs)
        if moved:
            self.logger.info("resuming at iteration %d: moved %d newer records to superseded/", iteration, moved)

    def log_iteration(self, iteration: int, rollout_stats: Dict[str, float], train_stats: Dict[str, float],
                      num_timesteps: int) -> None:
        self.rollout_log.append({"iteration": iteration, "num_timesteps": num_timesteps, **rollout_stats})
        self.training_log.append({"iteration": iteration, **train_stats})
        if self.wandb_run is not None:
            self.wandb_run.log({**rollout_stats, **train_stats, "iteration": iteration}, step=iteration)

    def log_evaluation(self, split: str, epoch: int, scores: Dict[str, float],
                       predictions: List[Dict[str, Any]]) -> None:
        write_json_atomic(self.run_dir / f"epoch_{epoch}_{split}_split_predictions.json", predictions)
        self.metric_logs[split].append({"epoch": epoch, "metrics": scores})
        self.logger.info("%s metrics at epoch %d: %s", split, epoch,
                         ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
        if self.wandb_run is not None:
            self.wandb_run.log({f"{split}/{k}": v for k, v in scores.items()}, step=epoch)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
        for handler in list(self.logger.handlers):
            self.logger.removeHandler(handler)
            handler.close()
