"""The RLHF pipeline from one config (TRL's StackLLaMA recipe): SFT -> pairwise reward model -> PPO.

    output_dir: rl4lms_exps/rlhf_pipeline
    sft:          {model_name: ..., data: sft.jsonl, <SFTTrainer arguments>}
    reward_model: {model_name: ... or init_from_sft: true, data: pairs.jsonl, eval_data: ...,
                   <RewardModelTrainer arguments>}
    ppo:          {config_path: ppo.yml, overrides: [...]}

Data and config paths are relative to the pipeline file. The PPO stage is an ordinary training run
whose policy and tokenizer start from the SFT model and whose ``learned_reward`` reads the reward
model. A finished stage is not run again, so a killed pipeline resumes with the next stage (and
the PPO run resumes from its last checkpoint).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from rl4lms.config.loader import read_yaml
from rl4lms.errors import ConfigError
from rl4lms.rlhf.reward_model import RewardModelTrainer, load_preference_pairs
from rl4lms.rlhf.sft import SFTTrainer, load_sft_examples
from rl4lms.training.artifacts import write_json_atomic

SECTIONS = ("output_dir", "seed", "sft", "reward_model", "ppo")
PPO_KEYS = ("config_path", "overrides")
STAGE_STATS = "stage_stats.json"


def load_pipeline_config(path: Union[str, Path]) -> Dict[str, Any]:
    """The pipeline YAML with its sections checked (unknown or missing ones are named)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"pipeline config '{path}' does not exist"])
    config = read_yaml(path) or {}
    errors = [f"{key}: unknown section; valid sections: {', '.join(SECTIONS)}" for key in config if key not in SECTIONS]
    errors += [f"{key}: required section is missing" for key in ("sft", "reward_model", "ppo") if key not in config]
    errors += [f"{key}: expected a mapping" for key in ("sft", "reward_model", "ppo")
               if key in config and not isinstance(config[key], dict)]
    if isinstance(config.get("ppo"), dict):
        errors += _ppo_section_errors(config["ppo"])
    reward_model = config.get("reward_model")
    if isinstance(reward_model, dict) and reward_model.get("init_from_sft") and "model_name" in reward_model:
        errors.append("reward_model: give model_name or init_from_sft: true, not both")
    if errors:
        raise ConfigError(errors, str(path))
    return config


def _ppo_section_errors(ppo: Dict[str, Any]) -> List[str]:
    errors = [f"ppo.{key}: unknown key; valid keys: {', '.join(PPO_KEYS)}" for key in ppo if key not in PPO_KEYS]
    if "config_path" not in ppo:
        errors.append("ppo.config_path: required key is missing (a training config, relative to the pipeline file)")
    overrides = ppo.get("overrides", [])
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        errors.append("ppo.overrides: expected a list of 'key.path=value' strings")
    return errors


def build_stage(cls: Callable, section: Dict[str, Any], name: str, **given: Any) -> Any:
    """``cls(**section, **given)``; an unknown key names the section and the valid keys."""
    accepted = [p for p in inspect.signature(cls).parameters if p not in given]
    unknown = [key for key in section if key not in accepted]
    if unknown:
        raise ConfigError([f"{name}.{key}: unknown key; valid keys: {', '.join(accepted)}" for key in unknown])
    try:
        return cls(**section, **given)
    except TypeError as error:
        raise ConfigError([f"{name}: {error}"]) from error


def _stage_done(folder: Path) -> Optional[List[Dict[str, float]]]:
    stats = folder / STAGE_STATS
    return json.loads(stats.read_text()) if stats.is_file() and (folder / "config.json").is_file() else None


def _train_stage(folder: Path, trainer: Callable[[], Any]) -> List[Dict[str, float]]:
    done = _stage_done(folder)
    if done is not None:
        return done
    stage = trainer()
    stats = stage.train()
    stage.save_pretrained(folder)
    write_json_atomic(folder / STAGE_STATS, stats)  # written last: marks the stage as finished
    return stats


def _data_path(base: Path, section: Dict[str, Any], key: str, name: str) -> Path:
    if key not in section:
        raise ConfigError([f"{name}.{key}: required key is missing (a .jsonl file, relative to the pipeline file)"])
    return base / section.pop(key)


def run_pipeline(config_path: Union[str, Path], output_dir: Optional[Union[str, Path]] = None,
                 device: Optional[str] = None) -> Dict[str, Any]:
    """Run (or finish) the three stages; returns and writes ``pipeline_summary.json``."""
    from rl4lms.cli import main as train_main

    config_path = Path(config_path)
    config = load_pipeline_config(config_path)
    base = config_path.resolve().parent
    out = Path(output_dir or config.get("output_dir", "rl4lms_exps/rlhf_pipeline"))
    seed = int(config.get("seed", 0))

    sft = dict(config["sft"])
    sft_data = _data_path(base, sft, "data", "sft")
    sft_stats = _train_stage(out / "sft", lambda: build_stage(
        SFTTrainer, {"seed": seed, **sft}, "sft", examples=load_sft_examples(sft_data), device=device))

    rm = dict(config["reward_model"])
    rm_data = _data_path(base, rm, "data", "reward_model")
    if rm.pop("init_from_sft", False):  # start from the SFT model's weights, as StackLLaMA does
        rm["model_name"] = str((out / "sft").resolve())
    eval_data = base / rm.pop("eval_data") if "eval_data" in rm else None
    rm_stats = _train_stage(out / "reward_model", lambda: build_stage(
        RewardModelTrainer, {"seed": seed, **rm}, "reward_model", pairs=load_preference_pairs(rm_data),
        eval_pairs=load_preference_pairs(eval_data) if eval_data else None, device=device))

    ppo = config["ppo"]
    sft_dir, rm_dir = (out / "sft").resolve(), (out / "reward_model").resolve()
    overrides = [f"tokenizer.model_name={sft_dir}", f"alg.policy.args.model_name={sft_dir}",
                 f"reward_fn.args.model_name={rm_dir}", f"seed={seed}", *ppo.get("overrides", [])]
    argv = ["--config_path", str(base / ppo["config_path"]), "--base_path_to_store_results", str(out),
            "--experiment_name", "ppo"] + [arg for o in overrides for arg in ("--override", o)]
    if device:
        argv += ["--device", device]
    status = train_main(argv)
    if status != 0:
        raise RuntimeError(f"the PPO stage failed with exit status {status}; see {out / 'ppo' / 'log.txt'}")
    summary = {"sft": sft_stats, "reward_model": rm_stats,
               "ppo": json.loads((out / "ppo" / "run_complete.json").read_text())}
    write_json_atomic(out / "pipeline_summary.json", summary)
    return summary
