"""Rollout and update throughput on one model, batch and length, with an RL4LMs-style reference.

    python scripts/bench/throughput.py [--sizes tiny gpt2-small] [--batch_size 8] [--new_tokens 64] [--threads N] [--quick]

For each model size (random init, built here) it times, on the same prompts and lengths:
  1. ``generate``       pure ``model.generate`` of ``new_tokens`` tokens: the floor;
  2. ``rollout``        this project's rollout: generate (its logits and hidden states give the
                        policy's log-probs and values) + one reference forward + rewards + KL
                        penalty (``RolloutCollector.collect``);
  3. ``per_token``      an RL4LMs-style rollout, implemented below as the reference: one
                        ``generate``, then for every generated token one policy, one value and one
                        reference forward (each with its own KV cache, the value model a separate
                        LM copy as in RL4LMs) and one ``SubprocVecEnv.step`` over the episodes;
  4. ``ppo_epoch``      one PPO epoch (``n_epochs=1``, minibatch = batch) on the rollout;
  5. ``nlpo_rollout``   the same rollout by NLPO's maskable policy (``learned_top_p`` 0.9: the mask
                        model decodes alongside ``generate`` with its own KV cache);
  6. ``grpo_rollout``   the same prompts by GRPO with ``beta: 0`` (no value head, no reference, no
                        KL in the reward), each answered ``num_generations`` (4) times: tokens/s
                        count every completion.
It prints tokens/s, the time ratios against the targets, the parameter and buffer memory of the
whole policy (PPO's: actor + reference + value head; GRPO's with ``beta: 0``: the actor alone)
relative to the actor's weights, and writes everything as JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch
from transformers import GPT2Config, GPT2LMHeadModel

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from stable_baselines3.common.vec_env import SubprocVecEnv  # noqa: E402

from rl4lms.algorithms.grpo import GRPO  # noqa: E402
from rl4lms.algorithms.kl_controller import KLController  # noqa: E402
from rl4lms.algorithms.nlpo import NLPO  # noqa: E402
from rl4lms.algorithms.ppo import PPO  # noqa: E402
from rl4lms.algorithms.buffer import RolloutBatch  # noqa: E402
from rl4lms.algorithms.rollout import encode_prompts, scored_batch  # noqa: E402
from rl4lms.data_pools.text_gen_pool import Sample  # noqa: E402
from rl4lms.data_pools.synthetic import IncreasingNumbersPool  # noqa: E402
from rl4lms.envs.text_gen_env import TextGenEnv  # noqa: E402
from rl4lms.models.loading import load_tokenizer, resolve_model_name  # noqa: E402
from rl4lms.policies.base import PolicyOutput, masked_log_probs, module_device, weight_bytes  # noqa: E402
from rl4lms.policies.causal import CausalLMActorCriticPolicy  # noqa: E402
from rl4lms.policies.maskable import MaskableCausalLMActorCriticPolicy  # noqa: E402
from rl4lms.models.value_head import hidden_size  # noqa: E402
from rl4lms.rewards.synthetic import IncreasingNumbersReward  # noqa: E402

TARGETS = {"rollout / generate": 1.5, "per_token / rollout": 5.0, "memory / policy weights": 2.2,
           "grpo_memory / policy weights": 1.0}
GRPO_GENERATIONS = 4


def build_model(size: str, tokenizer: Any, folder: Path) -> str:
    """A model name or folder for ``size``: the embedded tiny GPT-2, or a random-init GPT-2 small (124M)."""
    if size == "tiny":
        return "rl4lms/tiny-gpt2"
    config = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up call (GPU work included)."""
    fn()
    times = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        fn()
        _synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def rollout_and_epoch(alg: PPO, samples: List[Any]) -> Tuple[Callable[[], None], Callable[[], None]]:
    """Two callables to time: a rollout of ``samples`` (kept) and a PPO epoch on the last rollout."""
    batches = []

    def rollout() -> None:
        batches.append(alg.collector.collect(samples, 0.01)[0])

    def ppo_epoch() -> None:
        alg.rollout_buffer.reset()
        alg.rollout_buffer.add(batches[-1])
        alg.rollout_buffer.finalize()
        alg.train()

    return rollout, ppo_epoch


class PerTokenReference:
    """RL4LMs' rollout, reimplemented as the baseline: one ``generate``, then every generated
    token is replayed through three cached forwards (the policy, a separate value LM with its
    own linear head, the reference) and one ``SubprocVecEnv.step`` over the episodes' envs.
    A call returns the scored episodes (log-probs, values, the envs' rewards, KL penalty)."""

    def __init__(self, policy: CausalLMActorCriticPolicy, env: TextGenEnv, samples: List[Any]) -> None:
        self.policy = policy
        self.critic = copy.deepcopy(policy.model)  # RL4LMs keeps a separate value LM
        self.value_head = torch.nn.Linear(hidden_size(policy.model.config), 1, bias=False,
                                          device=module_device(policy))
        self.samples = samples
        self.env = env
        self.vec_env = SubprocVecEnv([lambda: copy.copy(env) for _ in samples], start_method="fork")
        self.vec_env.set_options([{"sample": s} for s in samples])

    @torch.no_grad()
    def __call__(self, new_tokens: int, kl_coeff: float = 0.01) -> RolloutBatch:
        policy = self.policy
        self.vec_env.reset()
        prompt_ids, prompt_mask, _ = encode_prompts(self.env, self.samples, module_device(policy))
        config = policy.generation_config(max_new_tokens=new_tokens)
        response, _ = policy.generate(prompt_ids, prompt_mask, config)
        mask, positions = prompt_mask, (prompt_mask.cumsum(1) - 1).clamp(min=0)
        step_ids = prompt_ids
        caches: Dict[str, Any] = {"policy": None, "value": None, "ref": None}
        models = (("policy", policy.model), ("value", self.critic), ("ref", policy.ref_model))
        steps: Dict[str, List[torch.Tensor]] = {"log_probs": [], "ref_log_probs": [], "values": [], "rewards": []}
        for t in range(response.shape[1]):
            outputs = {}
            for name, model in models:
                outputs[name] = model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                      cache=caches[name], use_cache=True, output_hidden_states=name == "value")
                caches[name] = outputs[name].cache
            actions = response[:, t]
            steps["log_probs"].append(masked_log_probs(outputs["policy"].logits[:, -1], actions))
            steps["ref_log_probs"].append(masked_log_probs(outputs["ref"].logits[:, -1], actions))
            steps["values"].append(self.value_head(outputs["value"].hidden_states[-1][:, -1]).squeeze(-1))
            _, rewards, _, _ = self.vec_env.step(actions.cpu().numpy())
            steps["rewards"].append(torch.as_tensor(rewards, dtype=torch.float32, device=actions.device))
            step_ids = actions[:, None]
            mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
            positions = positions[:, -1:] + 1
        per_token = {name: torch.stack(values, dim=1) for name, values in steps.items()}
        out = PolicyOutput(log_probs=per_token["log_probs"], entropy=None, values=per_token["values"],
                           unmasked_log_probs=per_token["log_probs"])
        return scored_batch(prompt_ids, prompt_mask, response, torch.ones_like(response), out,
                            per_token["ref_log_probs"], per_token["rewards"], kl_coeff)

    def close(self) -> None:
        self.vec_env.close()


def bench_env(size: str, args: argparse.Namespace, folder: Path) -> Tuple[TextGenEnv, List[Sample], Dict[str, Any]]:
    """The env, the ``batch_size`` prompts and the policy kwargs of one model size: every method
    generates exactly ``new_tokens`` tokens per prompt (no EOS stop)."""
    tokenizer = load_tokenizer("rl4lms/tiny-gpt2")
    model_name = build_model(size, tokenizer, folder / size)
    samples = list(IncreasingNumbersPool.prepare("train", n_samples=args.batch_size, prompt_numbers=args.prompt_numbers))
    env = TextGenEnv(tokenizer, IncreasingNumbersReward(min_tokens=4), samples, max_episode_length=args.new_tokens,
                     max_prompt_length=args.prompt_length, terminate_on_eos=False)
    generation = {"do_sample": True, "top_k": 0, "max_new_tokens": args.new_tokens}
    vocab = GPT2Config.from_pretrained(resolve_model_name(model_name)).vocab_size
    if vocab > len(tokenizer):
        # GPT-2 small keeps its 50257-token output layer (its real cost); ids the project's small
        # tokenizer lacks are never sampled.
        generation["suppress_tokens"] = list(range(len(tokenizer), vocab))
    policy_kwargs = {"model_name": model_name, "tokenizer": tokenizer, "terminate_on_eos": False,
                     "generation_kwargs": generation}
    return env, samples, policy_kwargs


def bench_size(size: str, args: argparse.Namespace, folder: Path) -> Dict[str, Any]:
    env, samples, policy_kwargs = bench_env(size, args, folder)
    settings = dict(n_envs=args.batch_size, n_steps=args.new_tokens, batch_size=args.batch_size, n_epochs=1, seed=0,
                    device=args.device)
    alg = PPO(CausalLMActorCriticPolicy, env, KLController(0.01), policy_kwargs=policy_kwargs, **settings)
    policy = alg.policy
    reference = PerTokenReference(policy, env, samples)
    prompt_ids, prompt_mask, _ = encode_prompts(env, samples, torch.device(args.device))
    config = policy.generation_config(max_new_tokens=args.new_tokens)

    def generate() -> None:
        with torch.no_grad():
            policy.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)

    rollout, ppo_epoch = rollout_and_epoch(alg, samples)

    times = {"generate": best_time(generate, args.repeats), "rollout": best_time(rollout, args.repeats),
             "per_token": best_time(lambda: reference(args.new_tokens), args.repeats),
             "ppo_epoch": best_time(ppo_epoch, args.repeats)}
    reference.close()
    del reference
    nlpo = NLPO(MaskableCausalLMActorCriticPolicy, env, KLController(0.01), **settings,
                policy_kwargs={**policy_kwargs, "mask_type": "learned_top_p", "top_mask": 0.9})
    times["nlpo_rollout"] = best_time(lambda: nlpo.collector.collect(samples, 0.01), args.repeats)
    del nlpo
    grpo = GRPO(CausalLMActorCriticPolicy, env, KLController(0.0), policy_kwargs=policy_kwargs,
                n_envs=args.batch_size, n_steps=1, batch_size=args.batch_size * GRPO_GENERATIONS,
                num_generations=GRPO_GENERATIONS, beta=0.0, seed=0, device=args.device)
    groups = [sample for sample in samples for _ in range(GRPO_GENERATIONS)]
    times["grpo_rollout"] = best_time(lambda: grpo.collector.collect(groups, 0.0), args.repeats)
    tokens = args.batch_size * args.new_tokens
    counts = {name: tokens for name in times}
    counts["grpo_rollout"] = tokens * GRPO_GENERATIONS
    weights = weight_bytes(policy.model)
    return {
        "size": size, "parameters": sum(p.numel() for p in policy.model.parameters()), "tokens": counts,
        "seconds": times, "tokens_per_second": {k: counts[k] / v for k, v in times.items()},
        "ratios": {"rollout / generate": times["rollout"] / times["generate"],
                   "per_token / rollout": times["per_token"] / times["rollout"],
                   "nlpo_rollout / rollout": times["nlpo_rollout"] / times["rollout"],
                   "memory / policy weights": weight_bytes(policy) / weights,
                   "grpo_memory / policy weights": weight_bytes(grpo.policy) / weight_bytes(grpo.policy.model)},
        "policy_weight_bytes": weights,
    }


def table(results: List[Dict[str, Any]]) -> str:
    lines = ["| model | params | generate tok/s | rollout tok/s | per-token ref tok/s | PPO epoch tok/s | "
             "NLPO rollout tok/s | GRPO rollout tok/s | rollout / generate (<= 1.5) | per-token / rollout (>= 5) | "
             "NLPO / PPO rollout | PPO memory / policy (<= 2.2) | GRPO beta 0 memory / policy (1.0) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        tps, ratios = r["tokens_per_second"], r["ratios"]
        lines.append(f"| {r['size']} | {r['parameters'] / 1e6:.1f}M | {tps['generate']:.0f} | {tps['rollout']:.0f} | "
                     f"{tps['per_token']:.0f} | {tps['ppo_epoch']:.0f} | {tps['nlpo_rollout']:.0f} | {tps['grpo_rollout']:.0f} | "
                     f"{ratios['rollout / generate']:.2f} | {ratios['per_token / rollout']:.1f} | "
                     f"{ratios['nlpo_rollout / rollout']:.2f} | {ratios['memory / policy weights']:.3f} | "
                     f"{ratios['grpo_memory / policy weights']:.3f} |")
    return "\n".join(lines)


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The model sizes, batch and lengths (the bench scripts share them), and the device."""
    parser.add_argument("--sizes", nargs="+", default=["tiny", "gpt2-small"], choices=["tiny", "gpt2-small"])
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per rollout")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--prompt_length", type=int, default=16)
    parser.add_argument("--prompt_numbers", type=int, default=4, help="numbers in each prompt (its length)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 keeps a shared machine's stalls out of small ops")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count from ``--threads`` when given."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)


PRELOADED = os.environ.get("LD_PRELOAD")
"""The libraries preloaded when this process started (vLLM's CPU platform later sets ``LD_PRELOAD`` for its own
child processes)."""


def machine_description(device: str) -> str:
    """Processor, torch threads and version (and the GPU's name on ``cuda``, the preloaded libraries if any)."""
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name()}"
    if PRELOADED:
        machine += f", LD_PRELOAD={PRELOADED}"
    return machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny model, 16 tokens, 1 repeat")
    parser.add_argument("--json", default="bench_throughput.json")
    args = parser.parse_args()
    apply_threads(args)
    if args.quick:
        args.sizes, args.new_tokens, args.repeats = ["tiny"], 16, 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="rl4lms_throughput_") as folder:
        results = [bench_size(size, args, Path(folder)) for size in args.sizes]
    machine = machine_description(args.device)
    Path(args.json).write_text(json.dumps({"machine": machine, "settings": vars(args), "targets": TARGETS,
                                           "results": results}, indent=2))
    print(f"batch {args.batch_size} x {args.new_tokens} new tokens, prompts <= {args.prompt_length} tokens; {machine}\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
