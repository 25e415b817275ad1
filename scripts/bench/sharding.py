"""Memory and time per process of DDP against FSDP2 sharding (``accelerator.sharding: fsdp``).

    python scripts/bench/sharding.py [--sizes tiny gpt2-small] [--processes 2] [--batch_size 8] [--new_tokens 32]

For each model size (random init, built as ``throughput.py`` builds it) and each of ``ddp`` and
``fsdp`` it starts ``--processes`` CPU processes (``torch.distributed.run``, gloo) that build a PPO
policy (actor, frozen reference, value head), attach it the way the trainer does and report, per
process: the bytes of the parameters, of the gradients of one minibatch and of the AdamW state
after one update; and the best-of-``--repeats`` seconds of a rollout, a PPO epoch and
``generate``. Under FSDP ``generate`` is timed twice: on gathered weights (what training does:
one all-gather of the actor, then decoding without collectives) and on the sharded model (every
block all-gathered again at every generated token, ``synced_gpus``). Prints tables and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from throughput import best_time, build_model, rollout_and_epoch  # noqa: E402

from rl4lms.algorithms.kl_controller import KLController  # noqa: E402
from rl4lms.algorithms.ppo import PPO  # noqa: E402
from rl4lms.algorithms.rollout import encode_prompts  # noqa: E402
from rl4lms.data_pools.synthetic import IncreasingNumbersPool  # noqa: E402
from rl4lms.envs.text_gen_env import TextGenEnv  # noqa: E402
from rl4lms.models.loading import load_tokenizer  # noqa: E402
from rl4lms.policies.causal import CausalLMActorCriticPolicy  # noqa: E402
from rl4lms.rewards.synthetic import IncreasingNumbersReward  # noqa: E402
from rl4lms.training.distributed import gather_from_processes, make_accelerator  # noqa: E402
from rl4lms.training.sharding import FSDPSettings, ShardedPolicy, memory_footprint, tensor_bytes  # noqa: E402

MODES = ("ddp", "fsdp")


def worker(args: argparse.Namespace) -> None:
    """One process of a ``--mode`` run; the main process writes every process's numbers to ``--out``."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer("rl4lms/tiny-gpt2")
    samples = list(IncreasingNumbersPool.prepare("train", n_samples=args.batch_size, prompt_numbers=4))
    env = TextGenEnv(tokenizer, IncreasingNumbersReward(min_tokens=4), samples, max_episode_length=args.new_tokens,
                     max_prompt_length=16, terminate_on_eos=False)
    generation = {"do_sample": True, "top_k": 0, "max_new_tokens": args.new_tokens,
                  "suppress_tokens": list(range(len(tokenizer), args.vocab))}  # ids the small tokenizer lacks
    alg = PPO(CausalLMActorCriticPolicy, env, KLController(0.01), n_envs=args.batch_size, n_steps=args.new_tokens,
              batch_size=args.batch_size, n_epochs=1, seed=0, device="cpu",
              policy_kwargs={"model_name": args.model_name, "tokenizer": tokenizer, "terminate_on_eos": False,
                             "generation_kwargs": generation})
    accelerator = make_accelerator({"sharding": args.mode}, "cpu")
    sharded = ShardedPolicy(alg.policy, FSDPSettings(), accelerator.device) if args.mode == "fsdp" else None
    alg.attach_accelerator(accelerator, sharded)
    policy = alg.policy
    prompt_ids, prompt_mask, _ = encode_prompts(env, samples, torch.device("cpu"))
    config = policy.generation_config(max_new_tokens=args.new_tokens)
    rollout, ppo_epoch = rollout_and_epoch(alg, samples)

    def timed(fn: Any) -> float:
        accelerator.wait_for_everyone()
        return best_time(fn, args.repeats)

    times = {"generate": timed(lambda: policy.generate(prompt_ids, prompt_mask, config)),
             "rollout": timed(rollout), "ppo_epoch": timed(ppo_epoch)}
    if args.mode == "fsdp":
        with torch.no_grad():
            times["generate_sharded"] = timed(lambda: policy.model.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config, synced_gpus=True))
    # The gradients of one minibatch, before the optimizer step frees them.
    total, *_ = alg.minibatch_loss(next(iter(alg.rollout_buffer.minibatches(args.batch_size))))
    accelerator.backward(total)
    gradient_bytes = tensor_bytes(p.grad for p in policy.parameters() if p.grad is not None)
    policy.optimizer.zero_grad()
    report = {**memory_footprint(policy), "gradient_bytes": gradient_bytes, "seconds": times}
    reports = gather_from_processes(accelerator, report)
    if accelerator.is_main_process:
        Path(args.out).write_text(json.dumps(reports))


def run_mode(size: str, mode: str, model_name: str, vocab: int, args: argparse.Namespace,
             folder: Path) -> Dict[str, Any]:
    out = folder / f"{size}_{mode}.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes),
               "--master_port", str(args.port), str(Path(__file__).resolve()), "--worker", "--mode", mode,
               "--model_name", model_name, "--vocab", str(vocab), "--out", str(out),
               "--batch_size", str(args.batch_size), "--new_tokens", str(args.new_tokens),
               "--repeats", str(args.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return {"size": size, "mode": mode, "processes": json.loads(out.read_text())}


def megabytes(value: float) -> str:
    return f"{value / 2 ** 20:.2f}"


def tables(results: List[Dict[str, Any]]) -> str:
    memory = ["| model | sharding | parameters (all, MiB) | parameters / process | trainable / process | "
              "gradients / process | AdamW state / process |", "|---|---|---|---|---|---|---|"]
    times = ["| model | sharding | generate s | rollout s | PPO epoch s | generate on the sharded model s |",
             "|---|---|---|---|---|---|"]
    for r in results:
        ranks = r["processes"]
        def each(key: str) -> str:
            return " / ".join(megabytes(p[key]) for p in ranks)
        memory.append(f"| {r['size']} | {r['mode']} | {megabytes(ranks[0]['full_parameter_bytes'])} | "
                      f"{each('parameter_bytes')} | {each('trainable_parameter_bytes')} | {each('gradient_bytes')} | "
                      f"{each('optimizer_state_bytes')} |")
        seconds = ranks[0]["seconds"]
        sharded = f"{seconds['generate_sharded']:.2f}" if "generate_sharded" in seconds else "-"
        times.append(f"| {r['size']} | {r['mode']} | {seconds['generate']:.2f} | {seconds['rollout']:.2f} | "
                     f"{seconds['ppo_epoch']:.2f} | {sharded} |")
    return "\n".join(memory) + "\n\n" + "\n".join(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "gpt2-small"], choices=["tiny", "gpt2-small"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--port", type=int, default=29533)
    parser.add_argument("--json", default="bench_sharding.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--model_name", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    from transformers import GPT2Config

    tokenizer = load_tokenizer("rl4lms/tiny-gpt2")
    results = []
    with tempfile.TemporaryDirectory(prefix="rl4lms_sharding_") as name:
        folder = Path(name)
        for size in args.sizes:
            model_name = build_model(size, tokenizer, folder / size)
            vocab = GPT2Config.from_pretrained(folder / size).vocab_size if size != "tiny" else len(tokenizer)
            results += [run_mode(size, mode, model_name, vocab, args, folder) for mode in MODES]
    machine = (f"{platform.processor() or platform.machine()}, {args.processes} CPU processes x {args.threads} torch "
               f"thread(s), gloo, torch {torch.__version__}")
    Path(args.json).write_text(json.dumps({"machine": machine, "settings": vars(args), "results": results}, indent=2))
    print(f"batch {args.batch_size} x {args.new_tokens} new tokens; {machine}\n")
    print(tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
