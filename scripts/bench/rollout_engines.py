"""Rollout engines side by side: Hugging Face ``generate`` in float32 against vLLM (bfloat16).

    python scripts/bench/rollout_engines.py [--models tiny <folder or model name> ...] [--prompts 32]
                                            [--new_tokens 128] [--eos off on] [--repeats 2] [--threads N]
                                            [--paths generate_fp32 vllm_bf16 vllm_fp32] [--no_ppo] [--quick]
                                            [--device cpu|cuda]

Needs vLLM (docs/vllm.md). Each model runs arithmetic prompts ("What is 23 + 58? Answer with just the
number." through the tokenizer's chat template when it has one, else "23+58="), ``--prompts``
completions of at most ``--new_tokens`` tokens, with EOS stopping off (every completion runs the whole
length) and on (real length spread). The paths:

  ``generate_fp32``  today's path: ``policy.args.generation_engine: hf``, float32 everywhere; the
                     rollout's log-probs come from the logits ``generate`` computed while sampling.
  ``vllm_bf16``      ``generation_engine: vllm`` with ``vllm.dtype: bfloat16``; the trainer's forwards
                     (the rollout's log-probs, the update) under ``accelerator.mixed_precision: bf16``.
  ``vllm_fp32``      vLLM in float32 and a float32 trainer (the engine's gain alone).

Per path it times, taking turns with the other paths (one warm-up round, then ``--repeats`` rounds;
medians): ``sample`` (the engine's generation alone), ``rollout`` (GRPO's rollout: sampling, the
log-prob forward, rewards; ``--prompts / 4`` prompts x 4 completions; GRPO's update here is one
optimizer step, which computes the log-probs in its own forward, so neither engine's rollout has
them), ``rollout_forward`` (the same rollout with the log-probs: from ``generate``'s logits, or vLLM's
trainer forward, as every rollout did before that change), ``grpo_iteration``
(rollout + one update pass over the 32 completions, beta 0) and ``ppo_iteration`` (rollout with value head and
reference, one epoch; ``--no_ppo`` leaves it out). An iteration ends with the engine's copy of the new
weights (``weight_sync``, also reported alone; nothing for ``generate``), so the phases that follow time the
engine alone. Tokens per second count the generated tokens.
For the vLLM paths it also records the engine-trainer mismatch of the last GRPO rollout
(``rollout_info/engine_*``) and, for ``vllm_bf16``, how far the trainer's bf16-autocast log-probs are
from float32 on the same tokens.
It prints a table and writes JSON with the ratios to ``generate_fp32``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

from throughput import apply_threads, build_model, machine_description  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from rl4lms.algorithms.grpo import GRPO  # noqa: E402
from rl4lms.algorithms.kl_controller import KLController  # noqa: E402
from rl4lms.algorithms.on_policy import LMOnPolicyAlgorithm  # noqa: E402
from rl4lms.algorithms.ppo import PPO  # noqa: E402
from rl4lms.algorithms.rollout import encode_prompts  # noqa: E402
from rl4lms.data_pools.synthetic import SyntheticArithmeticPool  # noqa: E402
from rl4lms.envs.text_gen_env import TextGenEnv  # noqa: E402
from rl4lms.models.loading import load_tokenizer  # noqa: E402
from rl4lms.policies.base import masked_log_probs  # noqa: E402
from rl4lms.policies.causal import CausalLMActorCriticPolicy  # noqa: E402
from rl4lms.rewards.final_answer import ExactMatchAnswerReward  # noqa: E402
from rl4lms.training.distributed import make_accelerator  # noqa: E402

PATHS = {"generate_fp32": {"engine": "hf"}, "vllm_bf16": {"engine": "vllm", "dtype": "bfloat16"},
         "vllm_fp32": {"engine": "vllm", "dtype": "float32"}}
TARGETS = {"sample": 3.0, "rollout": 2.0, "grpo_iteration": 2.0}
"""Acceptance (SmolLM2-135M-Instruct, 32 x 128 tokens): vllm_bf16 speed-up over generate_fp32."""
GENERATIONS = 4
CHAT_PROMPT = "What is {a} + {b}? Answer with just the number."


def workload(model: str, args: argparse.Namespace, folder: Path) -> Dict[str, Any]:
    """Tokenizer, model name and prompts of one model."""
    if model == "tiny":
        tokenizer = load_tokenizer("rl4lms/tiny-gpt2")
        name, template = build_model("tiny", tokenizer, folder), "{a}+{b}="
    else:
        tokenizer = load_tokenizer(model, pad_token_as_eos_token=True)
        name, template = model, CHAT_PROMPT
    samples = list(SyntheticArithmeticPool.prepare("train", n_samples=args.prompts, min_operand=10, max_operand=99,
                                                   prompt_template=template))
    if tokenizer.chat_template and model != "tiny":
        samples = [s.__class__(**{**vars(s), "prompt_or_input_text": tokenizer.apply_chat_template(
            [{"role": "user", "content": s.prompt_or_input_text}], add_generation_prompt=True, tokenize=False)})
                   for s in samples]
    return {"tokenizer": tokenizer, "model_name": name, "samples": samples}


def build(kind: str, path: str, work: Dict[str, Any], args: argparse.Namespace, eos: bool) -> LMOnPolicyAlgorithm:
    """A GRPO or PPO algorithm on ``path``'s engine, one rollout batch per iteration."""
    settings = PATHS[path]
    tokenizer = work["tokenizer"]
    env = TextGenEnv(tokenizer, ExactMatchAnswerReward(extraction="last_number"), work["samples"],
                     max_prompt_length=args.prompt_length, max_episode_length=args.new_tokens, terminate_on_eos=eos)
    policy_kwargs: Dict[str, Any] = {"model_name": work["model_name"], "tokenizer": tokenizer, "terminate_on_eos": eos,
                                     "generation_kwargs": {"do_sample": True, "top_k": 0,
                                                           "max_new_tokens": args.new_tokens},
                                     "generation_engine": settings["engine"]}
    if settings["engine"] == "vllm":
        policy_kwargs["vllm"] = {"dtype": settings["dtype"], "kv_cache_gib": args.kv_cache_gib}
    if kind == "grpo":
        alg: LMOnPolicyAlgorithm = GRPO(CausalLMActorCriticPolicy, env, KLController(0.0), n_envs=args.prompts // GENERATIONS,
                                        n_steps=1, batch_size=args.prompts, num_generations=GENERATIONS, beta=0.0,
                                        learning_rate=1e-6, seed=0, policy_kwargs=policy_kwargs, device=args.device)
    else:
        alg = PPO(CausalLMActorCriticPolicy, env, KLController(0.01), n_envs=args.prompts, n_steps=1,
                  batch_size=args.prompts, n_epochs=1, learning_rate=1e-6, seed=0, policy_kwargs=policy_kwargs,
                  device=args.device)
    if settings.get("dtype") == "bfloat16":
        accelerator = make_accelerator({"mixed_precision": "bf16"}, args.device)
        assert accelerator is not None
        alg.attach_accelerator(accelerator)
    alg.planned_iterations = 1000
    return alg


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def one_iteration(alg: LMOnPolicyAlgorithm, sync_seconds: List[float]) -> int:
    """One trainer iteration and the engine's copy of the weights it changed (timed into ``sync_seconds``;
    in training the next rollout makes that copy); returns the tokens it generated."""
    before = alg.num_timesteps
    alg.run_iteration()
    sync_seconds.append(timed(alg.policy.engine.refresh_weights))
    return alg.num_timesteps - before


def bf16_vs_fp32(alg: LMOnPolicyAlgorithm) -> Dict[str, float]:
    """The last rollout's bf16-autocast log-probs against a float32 forward over the same tokens."""
    data = alg.rollout_buffer.data
    assert data is not None
    model = alg.policy.model
    # accelerate's mixed precision wraps the module's own forward in autocast; the class's forward is float32.
    autocast_forward = model.__dict__.pop("forward", None)
    try:
        with torch.no_grad():
            logits = alg.policy.response_logits(data.prompt_ids, data.prompt_mask, data.response_ids,
                                                data.response_mask)
    finally:
        if autocast_forward is not None:
            model.forward = autocast_forward
    fp32 = masked_log_probs(logits, data.response_ids)
    mask = data.token_mask() > 0
    diff = (data.log_probs - fp32)[mask]
    return {"bf16_fp32_logprob_abs_diff_mean": float(diff.abs().mean()),
            "bf16_fp32_logprob_abs_diff_max": float(diff.abs().max())}


def turns(phases: Dict[str, Dict[str, Callable[[], int]]], repeats: int) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``phases[path][phase]()`` (returning generated tokens), paths taking turns: one warm-up round,
    then ``repeats`` timed rounds; median seconds and tokens per second."""
    seconds: Dict[str, Dict[str, List[float]]] = {p: {k: [] for k in fns} for p, fns in phases.items()}
    tokens: Dict[str, Dict[str, List[int]]] = {p: {k: [] for k in fns} for p, fns in phases.items()}
    for round_ in range(repeats + 1):
        for phase in next(iter(phases.values())):
            for path, fns in phases.items():
                count: List[int] = []
                spent = timed(lambda: count.append(fns[phase]()))
                if round_:
                    seconds[path][phase].append(spent)
                    tokens[path][phase].append(count[0])
    return {path: {phase: {"seconds": statistics.median(seconds[path][phase]),
                           "tokens": statistics.median(tokens[path][phase]),
                           "tokens_per_second": sum(tokens[path][phase]) / sum(seconds[path][phase])}
                   for phase in seconds[path]} for path in phases}


def bench(model: str, eos: bool, args: argparse.Namespace, folder: Path) -> Dict[str, Any]:
    work = workload(model, args, folder)
    results: Dict[str, Dict[str, Any]] = {path: {} for path in args.paths}
    params = 0
    extra: Dict[str, Dict[str, float]] = {path: {} for path in args.paths}
    weight_sync: Dict[str, Dict[str, float]] = {path: {} for path in args.paths}
    for kind in ("grpo",) if args.no_ppo else ("grpo", "ppo"):
        algs = {path: build(kind, path, work, args, eos) for path in args.paths}
        phases: Dict[str, Dict[str, Callable[[], int]]] = {}
        syncs: Dict[str, List[float]] = {path: [] for path in algs}
        for path, alg in algs.items():
            phases[path] = {f"{kind}_iteration": lambda alg=alg, path=path: one_iteration(alg, syncs[path])}
            if kind == "grpo":
                phases[path] = {"sample": lambda alg=alg: sample_once(alg), "rollout": lambda alg=alg: rollout_once(alg),
                                "rollout_forward": lambda alg=alg: rollout_once(alg, with_forward=True),
                                **phases[path]}
        for path, measured in turns(phases, args.repeats).items():
            results[path].update(measured)
            weight_sync[path][kind] = statistics.median(syncs[path][1:])  # the timed rounds, not the warm-up
        for path, alg in algs.items():
            params = sum(p.numel() for p in alg.policy.model.parameters())
            if kind == "grpo":
                extra[path].update({k: v for k, v in alg.rollout_stats.items() if "engine" in k})
                if PATHS[path].get("dtype") == "bfloat16":
                    extra[path].update(bf16_vs_fp32(alg))
            alg.policy.engine.close()
        del algs, phases, alg
        gc.collect()  # the algorithms hold reference cycles; free their models before the next ones
    base = results.get("generate_fp32")
    ratios = {path: {phase: base[phase]["seconds"] / r[phase]["seconds"] for phase in r}
              for path, r in results.items() if base is not None and path != "generate_fp32"}
    return {"model": model, "eos_stop": eos, "results": results, "speedup_over_generate_fp32": ratios,
            "weight_sync_seconds": weight_sync,
            "mismatch": extra, "parameters": params}


def sample_once(alg: LMOnPolicyAlgorithm) -> int:
    """The engine's generation alone, for the GRPO batch's prompts."""
    policy = alg.policy
    ids, mask, _ = encode_prompts(alg.text_env, alg.draw_prompts(), alg.device)
    response, response_mask = policy.generate(ids, mask, policy.generation_config(
        max_new_tokens=alg.text_env.max_episode_length))
    return int(response_mask.sum())


def rollout_once(alg: LMOnPolicyAlgorithm, with_forward: bool = False) -> int:
    """GRPO's rollout of one batch: sampling and rewards, and the old log-probs unless GRPO's one-step
    update computes them in its own forward. ``with_forward``: the log-probs even then, from
    ``generate``'s logits or (vLLM) the trainer's forward (the rollout before that change)."""
    deferred = alg.collector.defer_log_probs
    alg.collector.defer_log_probs = deferred and not with_forward
    try:
        batch, _ = alg.collector.collect(alg.draw_prompts(), 0.0)
    finally:
        alg.collector.defer_log_probs = deferred
    return int(batch.response_mask.sum())


def table(runs: List[Dict[str, Any]], paths: List[str]) -> str:
    timed_phases = runs[0]["results"][paths[0]]
    phases = [phase for phase in ("sample", "rollout", "rollout_forward", "grpo_iteration", "ppo_iteration")
              if phase in timed_phases]
    head = "| model | EOS stop | path | " + " | ".join(f"{p} tok/s (s)" for p in phases) + \
        " | weight sync (s) | speed-up " + " / ".join(phases) + \
        " | engine |logp diff| mean / max, KL | bf16-fp32 |logp diff| mean |"
    lines = [head, "|" + "---|" * (len(phases) + 7)]
    for run in runs:
        for path in paths:
            r = run["results"][path]
            cells = " | ".join(f"{r[p]['tokens_per_second']:.0f} ({r[p]['seconds']:.1f})" for p in phases)
            cells += f" | {run['weight_sync_seconds'][path]['grpo']:.2f}"
            ratio = run["speedup_over_generate_fp32"].get(path)
            speed = " / ".join(f"{ratio[p]:.2f}x" for p in phases) if ratio else "1"
            m = run["mismatch"][path]
            engine = (f"{m['rollout_info/engine_logprob_abs_diff_mean']:.2e} / "
                      f"{m['rollout_info/engine_logprob_abs_diff_max']:.2e}, {m['rollout_info/engine_kl']:.1e}"
                      if "rollout_info/engine_kl" in m else "-")
            bf16 = f"{m['bf16_fp32_logprob_abs_diff_mean']:.2e}" if "bf16_fp32_logprob_abs_diff_mean" in m else "-"
            lines.append(f"| {run['model']} | {'on' if run['eos_stop'] else 'off'} | {path} | {cells} | {speed} | "
                         f"{engine} | {bf16} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny"],
                        help="'tiny' (the embedded tiny GPT-2) or a model folder / name, e.g. rl4lms/smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32, help="completions per batch (GRPO: prompts/4 x 4)")
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--prompt_length", type=int, default=64)
    parser.add_argument("--eos", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--paths", nargs="+", default=["generate_fp32", "vllm_bf16"], choices=list(PATHS))
    parser.add_argument("--no_ppo", action="store_true", help="time GRPO's iteration only, not PPO's")
    parser.add_argument("--kv_cache_gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (after a warm-up round)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the trainer runs (default: the GPU when there is one; vLLM follows its build)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 x 16 tokens, EOS off, 1 round")
    parser.add_argument("--json", default="bench_rollout_engines.json")
    args = parser.parse_args()
    apply_threads(args)
    if args.quick:
        args.models, args.prompts, args.new_tokens, args.eos, args.repeats = ["tiny"], 8, 16, ["off"], 1
    if args.prompts % GENERATIONS:
        parser.error(f"--prompts must be a multiple of {GENERATIONS} (GRPO groups)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="rl4lms_engines_") as folder:
        runs = [bench(model, eos == "on", args, Path(folder)) for model in args.models for eos in args.eos]
    machine = machine_description(args.device)
    Path(args.json).write_text(json.dumps({"machine": machine, "settings": vars(args), "targets": TARGETS,
                                           "runs": runs}, indent=2))
    print(f"{args.prompts} completions x <= {args.new_tokens} new tokens; {machine}\n")
    print(table(runs, args.paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
