"""Whole PPO iterations (rollout + ``n_epochs`` update epochs): this project, RL4LMs' scheme and a floor.

    python scripts/bench/iteration.py [--sizes tiny gpt2-small] [--n_epochs 4] [--repeats 3]
                                      [--reference_minibatches 1 | --full_reference] [--threads N]
                                      [--profile_top 12] [--quick]

Every column works on the same settings: ``batch_size`` prompts, ``new_tokens`` generated tokens each
(no EOS stop), prompts of at most ``prompt_length`` tokens, ``n_epochs`` passes over the rollout.

  1. ``iteration``         this project: one ``PPO.learn`` iteration as the trainer runs it (the
                           batched rollout, then ``n_epochs`` epochs of ``PPO.train``, minibatches of
                           ``minibatch_episodes`` episodes).
  2. ``rl4lms_iteration``  RL4LMs' scheme, reimplemented below as the reference: the per-token
                           rollout of ``throughput.py`` (``PerTokenReference``), then RL4LMs'
                           ``PPO.train``: the buffer holds one transition per generated token, and
                           every minibatch of ``reference_batch_size`` transitions runs the policy LM
                           and the separate value LM over each transition's whole padded observation
                           (prompt width + context width), then backward, clipping and an AdamW step.
  3. ``floor``             one ``generate``, then per epoch one forward and backward of the rollout's
                           tokens (the whole batch, the response tokens' cross-entropy as the loss,
                           the output layer at the response positions only) and no optimizer step:
                           what any on-policy update of these tokens costs at least.

RL4LMs' update costs minutes per epoch at GPT-2-small size, so by default only
``reference_minibatches`` of its minibatches per epoch are timed and the epoch is extrapolated by the
number of minibatches: all of them have the same padded width, so each costs the same (the JSON
keeps every timed minibatch to check the spread). ``--full_reference`` runs every minibatch.

The columns take turns, ``repeats`` rounds after one warm-up round, and the table reports the
medians. Then one more update of this project and one of the floor run under ``torch.profiler``,
and a second table lists the operators whose self time differs most (where the update spends what
the floor does not). It prints the tables and writes everything, with ``ratios`` and ``targets``,
as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples
from torch.distributions import Categorical

from throughput import (PerTokenReference, _synchronize, add_workload_arguments, apply_threads,  # noqa: E402
                        bench_env, machine_description)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from rl4lms.algorithms.advantages import whiten  # noqa: E402
from rl4lms.algorithms.buffer import TextRolloutBuffer  # noqa: E402
from rl4lms.algorithms.kl_controller import KLController  # noqa: E402
from rl4lms.algorithms.ppo import PPO, ppo_loss  # noqa: E402
from rl4lms.algorithms.rollout import RolloutCollector, encode_prompts  # noqa: E402
from rl4lms.data_pools.text_gen_pool import Sample  # noqa: E402
from rl4lms.policies.causal import CausalLMActorCriticPolicy  # noqa: E402

TARGETS = {"rl4lms_iteration / iteration": (">=", 50.0), "iteration / floor": ("<=", 1.3)}
COLUMNS = ("iteration", "floor", "rl4lms_iteration")
LEARNING_RATE = 1e-5
KL_COEFF = 0.01


def clock() -> float:
    """Wall-clock seconds, after the GPU (if any) finished its queued work."""
    _synchronize()
    return time.perf_counter()


class TimedPPO(PPO):
    """PPO that records how long each update (``train``) took, to split an iteration's time."""

    update_seconds: List[float]

    def train(self) -> None:
        start = clock()
        super().train()
        self.update_seconds.append(clock() - start)


class SamePromptsCollector(RolloutCollector):
    """The rollout collector with the env's first ``n`` prompts in every batch instead of a random
    draw, so that all columns generate for the same prompts."""

    def draw_samples(self, n: int) -> List[Sample]:
        return list(self.env.samples[:n])


class RL4LMsUpdate:
    """RL4LMs' ``PPO.train``, reimplemented as the baseline, on RL4LMs' per-transition buffer.

    Each epoch materialises the shuffled transition minibatches (``list(buffer.get(batch_size))``,
    as RL4LMs does). Per minibatch, RL4LMs' ``evaluate_actions``: the policy LM and the separate value
    LM each run the whole fixed-width observation ``input_encoded_pt`` (left-padded prompt + context),
    with the output layer at every position; the last position gives the action's log-prob and
    entropy and, through a linear head on the value LM's last hidden state, the value. Then the
    minibatch-normalised advantages, the clipped surrogate, the value MSE, backward, gradient
    clipping and an AdamW step over the policy LM, the value LM and the head (RL4LMs' optimizer,
    with its weight-decay groups).
    """

    def __init__(self, rollout: PerTokenReference, batch_size: int = 64, clip_range: float = 0.2,
                 vf_coef: float = 0.5, ent_coef: float = 0.0, max_grad_norm: float = 0.5,
                 weight_decay: float = 1e-6) -> None:
        self.policy_lm, self.value_lm, self.value_head = rollout.policy.model, rollout.critic, rollout.value_head
        self.batch_size = batch_size
        self.clip_range, self.vf_coef, self.ent_coef, self.max_grad_norm = clip_range, vf_coef, ent_coef, max_grad_norm
        named = [(n, p) for module in (self.policy_lm, self.value_lm, self.value_head)
                 for n, p in module.named_parameters()]
        no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")  # RL4LMs' names: GPT-2's ln_* weights decay
        groups = [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": weight_decay},
                  {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}]
        self.parameters = [p for _, p in named]
        self.optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE)

    def full_observation_forward(self, model: torch.nn.Module, obs: Dict[str, torch.Tensor]) -> Any:
        input_ids, attention_mask = obs["input_encoded_pt"], obs["input_attention_mask_pt"]
        # GPT-2's prepare_inputs_for_generation, which RL4LMs' forwards go through.
        positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                     output_hidden_states=True)

    def step(self, samples: DictRolloutBufferSamples) -> None:
        """One minibatch: evaluate the transitions, the PPO loss, backward, clip and step."""
        obs, actions = samples.observations, samples.actions.long()
        dist = Categorical(logits=self.full_observation_forward(self.policy_lm, obs).logits[:, -1])
        log_prob, entropy = dist.log_prob(actions), dist.entropy()
        hidden = self.full_observation_forward(self.value_lm, obs).hidden_states[-1][:, -1]
        values = self.value_head(hidden).flatten()
        ones = torch.ones_like(log_prob)
        losses = ppo_loss(log_prob, samples.old_log_prob, whiten(samples.advantages, ones), values,
                          samples.old_values, samples.returns, ones, self.clip_range, None)
        loss = losses.policy_loss - self.ent_coef * entropy.mean() + self.vf_coef * losses.value_loss
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.optimizer.step()


def rl4lms_iteration(rollout: PerTokenReference, update: RL4LMsUpdate, buffer: TextRolloutBuffer, new_tokens: int,
                     n_epochs: int, timed_minibatches: Optional[int]) -> Dict[str, Any]:
    """One RL4LMs-style iteration; per epoch only the first ``timed_minibatches`` minibatches run
    (all with None), and the epoch's time is extrapolated from their mean."""
    start = clock()
    buffer.reset()
    buffer.add(rollout(new_tokens, KL_COEFF))
    buffer.finalize()
    rollout_s = clock() - start
    update_s, minibatch_s, per_epoch = 0.0, [], 0
    for _ in range(n_epochs):
        start = clock()
        minibatches = list(buffer.get(update.batch_size))
        prepare_s = clock() - start
        per_epoch = len(minibatches)
        timed = []
        for samples in minibatches[:timed_minibatches]:
            start = clock()
            update.step(samples)
            timed.append(clock() - start)
        update_s += prepare_s + statistics.mean(timed) * per_epoch
        minibatch_s += timed
    return {"total": rollout_s + update_s, "rollout": rollout_s, "update": update_s, "minibatch_s": minibatch_s,
            "minibatches_per_epoch": per_epoch, "timed_per_epoch": len(minibatch_s) // n_epochs}


def floor_iteration(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, config: Any,
                    n_epochs: int) -> Dict[str, float]:
    """One ``generate``, then :func:`floor_update`."""
    start = clock()
    with torch.no_grad():
        sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    generate_s = clock() - start
    start = clock()
    floor_update(model, sequences, prompt_mask, n_epochs)
    update_s = clock() - start
    return {"total": generate_s + update_s, "rollout": generate_s, "update": update_s}


def floor_update(model: torch.nn.Module, sequences: torch.Tensor, prompt_mask: torch.Tensor, n_epochs: int) -> None:
    """Per epoch one forward and backward of prompt + response with the response tokens'
    cross-entropy (the output layer at the response positions only), no optimizer step."""
    response = sequences[:, prompt_mask.shape[1]:]
    # The last token predicts nothing: the input stops before it, and its last T positions predict
    # the T response tokens.
    inputs = sequences[:, :-1]
    attention_mask = torch.cat([prompt_mask, torch.ones_like(response)], dim=1)[:, :-1]
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    for _ in range(n_epochs):
        logits = model(input_ids=inputs, attention_mask=attention_mask, position_ids=positions,
                       logits_to_keep=response.shape[1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), response.reshape(-1))
        model.zero_grad(set_to_none=True)
        loss.backward()
    model.zero_grad(set_to_none=True)


def operator_seconds(fn: Callable[[], Any]) -> Dict[str, float]:
    """Self time in seconds per torch operator of one call of ``fn`` (``torch.profiler``; on a GPU the
    device time, else the CPU time)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        fn()
        _synchronize()
    device = torch.cuda.is_available()
    return {e.key: (e.self_device_time_total if device else e.self_cpu_time_total) / 1e6
            for e in profile.key_averages()}


def profile_updates(alg: PPO, top: int) -> Dict[str, Any]:
    """``PPO.train`` on the last rollout against :func:`floor_update` on the same tokens and epochs,
    operator by operator: the ``top`` operators with the most extra time, and the totals."""
    batch, model = alg.rollout_buffer.data, alg.policy.model
    sequences = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    ours = operator_seconds(alg.train)
    floor = operator_seconds(lambda: floor_update(model, sequences, batch.prompt_mask, alg.n_epochs))
    extra = sorted(set(ours) | set(floor), key=lambda op: floor.get(op, 0.0) - ours.get(op, 0.0))
    return {"update_s": sum(ours.values()), "floor_s": sum(floor.values()),
            "operators": [{"operator": op, "update_s": ours.get(op, 0.0), "floor_s": floor.get(op, 0.0)}
                          for op in extra[:top]]}


def profile_table(profile: Dict[str, Any]) -> str:
    lines = ["| operator | update s | floor s | extra s |", "|---|---|---|---|"]
    for row in profile["operators"]:
        lines.append(f"| `{row['operator']}` | {row['update_s']:.3f} | {row['floor_s']:.3f} | "
                     f"{row['update_s'] - row['floor_s']:+.3f} |")
    lines.append(f"| all operators | {profile['update_s']:.3f} | {profile['floor_s']:.3f} | "
                 f"{profile['update_s'] - profile['floor_s']:+.3f} |")
    return "\n".join(lines)


def bench_size(size: str, args: argparse.Namespace, folder: Path) -> Dict[str, Any]:
    env, samples, policy_kwargs = bench_env(size, args, folder)
    alg = TimedPPO(CausalLMActorCriticPolicy, env, KLController(KL_COEFF), policy_kwargs=policy_kwargs,
                   n_envs=args.batch_size, n_steps=args.new_tokens, batch_size=args.minibatch_episodes,
                   n_epochs=args.n_epochs, learning_rate=LEARNING_RATE, seed=0, device=args.device)
    alg.update_seconds = []
    alg.collector = SamePromptsCollector(alg.policy, env, seed=0)
    policy = alg.policy
    prompt_ids, prompt_mask, _ = encode_prompts(env, samples, torch.device(args.device))
    config = policy.generation_config(max_new_tokens=args.new_tokens)

    def iteration() -> Dict[str, float]:
        start = clock()
        alg.run_iteration()
        total = clock() - start
        return {"total": total, "rollout": total - alg.update_seconds[-1], "update": alg.update_seconds[-1]}

    columns: Dict[str, Callable[[int], Dict[str, Any]]] = {
        "iteration": lambda warm_up: iteration(),
        "floor": lambda warm_up: floor_iteration(policy.model, prompt_ids, prompt_mask, config, args.n_epochs),
    }
    rollout = None
    if "rl4lms_iteration" in args.columns:
        rollout = PerTokenReference(policy, env, samples)
        update = RL4LMsUpdate(rollout, batch_size=args.reference_batch_size)
        buffer = TextRolloutBuffer(env.tokenizer.pad_token_id, alg.gamma, alg.gae_lambda, normalize_advantage=False,
                                   observation_layout=env.observation_layout)
        timed_minibatches = None if args.full_reference else args.reference_minibatches
        # Its warm-up call is one epoch of one minibatch.
        columns["rl4lms_iteration"] = lambda warm_up: rl4lms_iteration(
            rollout, update, buffer, args.new_tokens, 1 if warm_up else args.n_epochs, 1 if warm_up else timed_minibatches)
    names = [name for name in COLUMNS if name in args.columns]
    for name in names:  # the warm-up round
        columns[name](True)
    rounds: Dict[str, List[Dict[str, Any]]] = {name: [] for name in names}
    for round_ix in range(args.repeats):
        for name in names:
            rounds[name].append(columns[name](False))
            print(f"  {size} round {round_ix + 1}/{args.repeats} {name}: {rounds[name][-1]['total']:.2f} s", flush=True)
    if rollout is not None:
        rollout.close()
    profile = profile_updates(alg, args.profile_top) if args.profile_top else None
    seconds = {name: {part: statistics.median(r[part] for r in runs) for part in ("total", "rollout", "update")}
               for name, runs in rounds.items()}
    tokens = args.batch_size * args.new_tokens
    result: Dict[str, Any] = {
        "size": size, "parameters": sum(p.numel() for p in policy.model.parameters()), "tokens": tokens,
        "seconds": seconds, "tokens_per_second": {name: tokens / s["total"] for name, s in seconds.items()},
        "ratios": {},
        "rounds": {name: [{k: v for k, v in r.items() if k != "minibatch_s"} for r in runs] for name, runs in rounds.items()},
    }
    if profile is not None:
        result["update_profile"] = profile
    for slow, fast in (ratio.split(" / ") for ratio in TARGETS):
        if slow in seconds and fast in seconds:
            result["ratios"][f"{slow} / {fast}"] = seconds[slow]["total"] / seconds[fast]["total"]
            result["ratios"][f"{slow} / {fast}, median of the rounds"] = statistics.median(
                a["total"] / b["total"] for a, b in zip(rounds[slow], rounds[fast]))
    result["targets_met"] = {name: (value >= TARGETS[name][1]) if TARGETS[name][0] == ">=" else (value <= TARGETS[name][1])
                             for name, value in result["ratios"].items() if name in TARGETS}
    if "rl4lms_iteration" in rounds:
        minibatch_s = [t for r in rounds["rl4lms_iteration"] for t in r["minibatch_s"]]
        reference = rounds["rl4lms_iteration"][0]
        result["reference_update"] = {
            "minibatches_per_epoch": reference["minibatches_per_epoch"],
            "timed_minibatches_per_epoch": reference["timed_per_epoch"],
            "extrapolated": reference["timed_per_epoch"] < reference["minibatches_per_epoch"],
            "transitions_per_minibatch": args.reference_batch_size,
            "minibatch_seconds": minibatch_s,
            "minibatch_spread": (max(minibatch_s) - min(minibatch_s)) / statistics.median(minibatch_s),
        }
    return result


def table(results: List[Dict[str, Any]]) -> str:
    headers = {"iteration": "iteration s (rollout + update)", "floor": "floor s (generate + fwd/bwd)",
               "rl4lms_iteration": "RL4LMs-style s (rollout + update)"}
    names = [name for name in COLUMNS if name in results[0]["seconds"]]
    ratios = [name for name in TARGETS if name in results[0]["ratios"]]
    reference = "reference_update" in results[0]
    cells = [headers[name] for name in names] + (["RL4LMs-style minibatches timed / per epoch"] if reference else [])
    cells += [f"{name} ({' '.join(map(str, TARGETS[name]))})" for name in ratios]
    lines = ["| model | params | " + " | ".join(cells) + " |", "|---|---|" + "---|" * len(cells)]
    for r in results:
        s = r["seconds"]
        cells = [f"{s[c]['total']:.2f} ({s[c]['rollout']:.2f} + {s[c]['update']:.2f})" for c in names]
        if reference:
            cells.append(f"{r['reference_update']['timed_minibatches_per_epoch']} / "
                         f"{r['reference_update']['minibatches_per_epoch']}")
        cells += [f"{r['ratios'][name]:.2f}" for name in ratios]
        lines.append(f"| {r['size']} | {r['parameters'] / 1e6:.1f}M | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--n_epochs", type=int, default=4, help="update epochs per iteration (RL4LMs' GRUE configs: 5)")
    parser.add_argument("--minibatch_episodes", type=int, default=None,
                        help="this project's PPO batch_size, in episodes (default: the whole batch)")
    parser.add_argument("--reference_batch_size", type=int, default=64,
                        help="transitions per RL4LMs-style minibatch (RL4LMs' PPO batch_size)")
    parser.add_argument("--reference_minibatches", type=int, default=1,
                        help="RL4LMs-style minibatches timed per epoch; the epoch is extrapolated from them")
    parser.add_argument("--full_reference", action="store_true", help="run every RL4LMs-style minibatch")
    parser.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=COLUMNS)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (after a warm-up round)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 16 tokens, 1 epoch, 1 round")
    parser.add_argument("--profile_top", type=int, default=12,
                        help="after the rounds, profile one update against the floor's and list the operators with "
                             "the most extra time (0: no profile)")
    parser.add_argument("--json", default="bench_iteration.json")
    args = parser.parse_args()
    apply_threads(args)
    if args.quick:
        args.sizes, args.new_tokens, args.n_epochs, args.repeats = ["tiny"], 16, 1, 1
    args.minibatch_episodes = args.minibatch_episodes or args.batch_size
    if min(args.n_epochs, args.repeats, args.reference_minibatches, args.minibatch_episodes,
           args.reference_batch_size) < 1:
        parser.error("--n_epochs, --repeats, --reference_minibatches, --minibatch_episodes and "
                     "--reference_batch_size must be at least 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="rl4lms_iteration_") as folder:
        results = [bench_size(size, args, Path(folder)) for size in args.sizes]
    machine = machine_description(args.device)
    targets = {name: f"{sign} {value}" for name, (sign, value) in TARGETS.items()}
    Path(args.json).write_text(json.dumps({"machine": machine, "settings": vars(args), "targets": targets,
                                           "results": results}, indent=2))
    print(f"\nbatch {args.batch_size} x {args.new_tokens} new tokens, prompts <= {args.prompt_length} tokens, "
          f"{args.n_epochs} epochs, medians of {args.repeats} rounds; {machine}\n")
    print(table(results))
    for r in results:
        ref = r.get("reference_update")
        if ref is not None:
            how = "extrapolated from" if ref["extrapolated"] else "measured over"
            print(f"\n{r['size']}: RL4LMs-style update {how} {ref['timed_minibatches_per_epoch']} of "
                  f"{ref['minibatches_per_epoch']} minibatches ({ref['transitions_per_minibatch']} transitions) per "
                  f"epoch; timed minibatches {min(ref['minibatch_seconds']):.3f}-{max(ref['minibatch_seconds']):.3f} s "
                  f"(spread {ref['minibatch_spread']:.0%} of the median)")
        for name, value in r["ratios"].items():
            if name.endswith("median of the rounds"):
                print(f"{r['size']}: {name}: {value:.2f}")
        if "update_profile" in r:
            print(f"\n{r['size']}: where the update's time goes beyond the floor's (self time per operator, "
                  f"{args.n_epochs} epochs, one profiled call each):\n")
            print(profile_table(r["update_profile"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
