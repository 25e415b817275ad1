"""One ``PPOTrainer.step`` in ``rl4lms.trl`` and in the real TRL 0.11.4, from the same weights and batch.

    bash scripts/bench/trl_side_venv.sh /tmp/trlvenv           # once: trl 0.11.4 + transformers 4.46.3
    python scripts/bench/trl_parity.py --trl-python /tmp/trlvenv/bin/python [--size tiny|gpt2-small]

The script writes a policy and a reference model (random init, dropout 0, the reference perturbed so
the KL is not zero) in TRL's folder format and a batch of (query, response, score) triplets, then runs
itself in each venv (``--side ours`` here, ``--side trl`` in the side venv). Each side

1. runs one ``step`` on the batch (numpy and torch seeded alike, so the minibatch order is the same)
   and writes its statistics and updated weights; the comparison table lists every statistic both
   return, the relative difference and whether it is within the tolerance, and the largest weight
   difference next to the largest weight change of the step;
2. times ``generate`` (``new_tokens`` sampled tokens per query) + ``step`` on a fresh batch. The
   sides take turns, ``--repeats`` rounds of one process each; the table reports the medians and
   ``trl / ours``.

Results go to ``--out`` (JSON) and print as Markdown tables.
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
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
SIZES = {"tiny": None, "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024,
                                      "vocab_size": 50257}}
RTOL, ATOL = 2e-3, 1e-5
"""A statistic agrees when ``|ours - trl| <= ATOL + RTOL * |trl|``."""
SKIPPED = ("time/",)
COUNTED = ("ppo/policy/clipfrac", "ppo/val/clipfrac")
"""Shares of tokens: a token on a tie (two losses equal to float precision) may count on one side
only, so these agree within one token of the update (``1 / (ppo_epochs * response tokens)``)."""
ELEMENTWISE = ("objective/kl_dist", "tokens/queries_dist", "tokens/responses_dist")
"""Array statistics of the same shape on both sides (the others differ in layout: TRL's cover the
query positions and padding too)."""


# --- preparation (project venv) ------------------------------------------------------------------
def prepare(work: Path, size: str, batch: int, query_len: int, response_len: int) -> None:
    """Model folders (policy, reference), tokenizer and the batch, all under ``work``."""
    sys.path.insert(0, str(REPO))
    from transformers import GPT2Config, GPT2LMHeadModel

    from rl4lms.models.loading import load_tokenizer
    from rl4lms.trl import AutoModelForCausalLMWithValueHead

    tokenizer = load_tokenizer("rl4lms/tiny-gpt2")
    torch.manual_seed(0)
    if SIZES[size] is None:
        from rl4lms.models.loading import load_model

        lm = load_model(GPT2LMHeadModel, "rl4lms/tiny-gpt2")
    else:
        lm = GPT2LMHeadModel(GPT2Config(**SIZES[size], bos_token_id=tokenizer.bos_token_id or 0,
                                        eos_token_id=tokenizer.eos_token_id))
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        setattr(lm.config, name, 0.0)
    policy = AutoModelForCausalLMWithValueHead.from_pretrained(lm, summary_dropout_prob=0.0)
    policy.save_pretrained(work / "policy")
    with torch.no_grad():
        for parameter in lm.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    AutoModelForCausalLMWithValueHead.from_pretrained(lm, summary_dropout_prob=0.0).save_pretrained(work / "ref")
    tokenizer.save_pretrained(work / "tokenizer")
    # transformers 5 names its fast tokenizer class TokenizersBackend, which 4.46 does not know.
    tokenizer_config = work / "tokenizer" / "tokenizer_config.json"
    tokenizer_config.write_text(json.dumps({**json.loads(tokenizer_config.read_text()),
                                            "tokenizer_class": "PreTrainedTokenizerFast"}))
    generator = torch.Generator().manual_seed(1)
    high = min(len(tokenizer), lm.config.vocab_size)
    triplets = {"queries": torch.randint(5, high, (batch, query_len), generator=generator).tolist(),
                "responses": [torch.randint(5, high, (int(n),), generator=generator).tolist()
                              for n in torch.randint(response_len // 2, response_len + 1, (batch,), generator=generator)],
                "scores": torch.randn(batch, generator=generator).tolist()}
    (work / "batch.json").write_text(json.dumps(triplets))


# --- one side (either venv) ----------------------------------------------------------------------
def run_side(side: str, work: Path, out: Path, epochs: int, mini_batch: int, new_tokens: int, repeats: int) -> None:
    """One parity step, then ``repeats`` timed generate + step rounds, with ``side``'s PPOTrainer."""
    if side == "ours":
        sys.path.insert(0, str(REPO))
        from rl4lms.trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
    else:
        from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    triplets = json.loads((work / "batch.json").read_text())
    batch = len(triplets["queries"])
    tokenizer = AutoTokenizer.from_pretrained(str(work / "tokenizer"))
    tokenizer.pad_token = tokenizer.eos_token
    # GPT-2's own tokenizer pads on the right; TRL passes no position ids, so left padding would shift
    # the positions of its shorter sequences.
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(work / "policy"), summary_dropout_prob=0.0)
    ref = AutoModelForCausalLMWithValueHead.from_pretrained(str(work / "ref"), summary_dropout_prob=0.0)
    config = PPOConfig(batch_size=batch, mini_batch_size=mini_batch, ppo_epochs=epochs, learning_rate=1e-4, seed=0,
                       init_kl_coef=0.2)
    trainer = PPOTrainer(config, model, ref, tokenizer)
    queries = [torch.tensor(q) for q in triplets["queries"]]
    responses = [torch.tensor(r) for r in triplets["responses"]]
    scores = [torch.tensor(s) for s in triplets["scores"]]
    np.random.seed(0)
    torch.manual_seed(0)
    stats = trainer.step(queries, responses, scores)
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(out.with_suffix(".safetensors")))
    record: Dict[str, Any] = {"stats": {}, "generate_s": [], "step_s": []}
    for key, value in stats.items():
        value = np.asarray(value, dtype=np.float64)
        record["stats"][key] = value.item() if value.size == 1 else value.reshape(-1).tolist()
    settings = {"do_sample": True, "top_k": 0, "top_p": 1.0, "max_new_tokens": new_tokens,
                "min_new_tokens": new_tokens, "pad_token_id": tokenizer.eos_token_id}
    for _ in range(repeats):
        started = time.perf_counter()
        fresh = trainer.generate(queries, batch_size=batch, return_prompt=False, **settings)
        generated = time.perf_counter()
        trainer.step(queries, fresh, scores)
        record["generate_s"].append(generated - started)
        record["step_s"].append(time.perf_counter() - generated)
    out.write_text(json.dumps(record))


# --- comparison (project venv) -------------------------------------------------------------------
def compare(ours: Dict[str, Any], trl: Dict[str, Any], epochs: int) -> List[Dict[str, Any]]:
    """Per statistic both sides return: the values, their difference and the verdict."""
    one_token = 1.0 / (epochs * sum(trl["stats"]["tokens/responses_dist"]))
    rows = []
    for key in sorted(set(ours["stats"]) & set(trl["stats"])):
        if key.startswith(SKIPPED):
            continue
        a, b = ours["stats"][key], trl["stats"][key]
        if isinstance(a, list) or isinstance(b, list):
            if key not in ELEMENTWISE or not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
                continue
            a, b = np.asarray(a), np.asarray(b)
            close = bool(np.all(np.abs(a - b) <= ATOL + RTOL * np.abs(b)))
            rows.append({"statistic": key, "ours": float(a.mean()), "trl": float(b.mean()),
                         "max_abs_diff": float(np.abs(a - b).max()), "within_tolerance": close})
            continue
        atol = max(ATOL, one_token) if key in COUNTED else ATOL
        rows.append({"statistic": key, "ours": a, "trl": b, "max_abs_diff": abs(a - b),
                     "within_tolerance": abs(a - b) <= atol + RTOL * abs(b)})
    return rows


def weight_differences(work: Path, ours_file: Path, trl_file: Path) -> Dict[str, float]:
    """The largest difference between the two updated models, next to the largest change of the step."""
    from safetensors.torch import load_file

    from rl4lms.trl.modeling_value_head import trl_value_head_weights

    start = {**load_file(str(work / "policy" / "model.safetensors"))}
    start.update({"v_head." + k: v for k, v in trl_value_head_weights(work / "policy").items()})
    ours, trl = load_file(str(ours_file)), load_file(str(trl_file))
    common = [k for k in ours if k in trl and k in start]
    diff = max(float((ours[k] - trl[k]).abs().max()) for k in common)
    change = max(float((trl[k] - start[k]).abs().max()) for k in common)
    # Adam's first steps move a weight by about lr * sign(gradient), so weights whose gradient is at
    # float-noise level can differ by up to the step size; the update as a whole says more.
    update_diff = sum(float(((ours[k] - trl[k]) ** 2).sum()) for k in common) ** 0.5
    update = sum(float(((trl[k] - start[k]) ** 2).sum()) for k in common) ** 0.5
    return {"parameters_compared": len(common), "max_abs_weight_diff": diff, "max_abs_weight_change": change,
            "relative_update_diff": update_diff / update}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-python", default="/tmp/trlvenv/bin/python", help="python of the side venv with trl 0.11.4")
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2-small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mini-batch", type=int, default=None, help="default: the batch (TRL's own default)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--query-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench_trl_parity.json"))
    parser.add_argument("--side", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    mini_batch = args.mini_batch or args.batch
    if args.side:
        run_side(args.side, args.work, args.side_out, args.epochs, mini_batch, args.new_tokens, args.repeats)
        return
    if not Path(args.trl_python).is_file():
        sys.exit(f"error: {args.trl_python} does not exist; build the side venv first: "
                 "bash scripts/bench/trl_side_venv.sh /tmp/trlvenv")
    with tempfile.TemporaryDirectory(prefix="trl_parity_") as folder:
        work = Path(folder)
        prepare(work, args.size, args.batch, args.query_len, args.new_tokens)
        results: Dict[str, Dict[str, Any]] = {}
        # The sides take turns, one timed round per process, so a slow spell of the machine hits both.
        for round_ix in range(args.repeats):
            for side, python in (("ours", sys.executable), ("trl", args.trl_python)):
                side_out = work / f"{side}_{round_ix}.json"
                command = [python, __file__, "--side", side, "--work", str(work), "--side-out", str(side_out),
                           "--epochs", str(args.epochs), "--mini-batch", str(mini_batch), "--new-tokens",
                           str(args.new_tokens), "--repeats", "1", "--batch", str(args.batch)]
                env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
                completed = subprocess.run(command, env=env, capture_output=True, text=True)
                if completed.returncode != 0:
                    sys.exit(f"error: the {side} side failed:\n{completed.stderr[-3000:]}")
                record = json.loads(side_out.read_text())
                if side not in results:
                    results[side] = record
                    side_out.with_suffix(".safetensors").rename(work / f"{side}.safetensors")
                else:
                    for key in ("generate_s", "step_s"):
                        results[side][key] += record[key]
        rows = compare(results["ours"], results["trl"], args.epochs)
        weights = weight_differences(work, work / "ours.safetensors", work / "trl.safetensors")
    timing = {side: {"generate_s": statistics.median(r["generate_s"]), "step_s": statistics.median(r["step_s"])}
              for side, r in results.items()}
    report = {
        "settings": {"size": args.size, "batch": args.batch, "mini_batch": mini_batch, "ppo_epochs": args.epochs,
                     "query_len": args.query_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
                     "torch_threads": torch.get_num_threads(), "rtol": RTOL, "atol": ATOL},
        "statistics": rows, "weights": weights, "timing": timing, "raw_timing": {s: {k: r[k] for k in
                                                                                   ("generate_s", "step_s")}
                                                                               for s, r in results.items()},
        "ratios": {"trl_step / ours_step": timing["trl"]["step_s"] / timing["ours"]["step_s"],
                   "trl_step / ours_step, median of the rounds": statistics.median(
                       t / o for t, o in zip(results["trl"]["step_s"], results["ours"]["step_s"])),
                   "trl_generate / ours_generate": timing["trl"]["generate_s"] / timing["ours"]["generate_s"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"| statistic | rl4lms.trl | trl 0.11.4 | max abs diff | within rtol {RTOL}, atol {ATOL} (shares: one token) |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['statistic']} | {row['ours']:.6g} | {row['trl']:.6g} | {row['max_abs_diff']:.2g} | "
              f"{'yes' if row['within_tolerance'] else 'NO'} |")
    print(f"\nweights after the step: max |ours - trl| = {weights['max_abs_weight_diff']:.3g} over "
          f"{weights['parameters_compared']} tensors; the step's largest change {weights['max_abs_weight_change']:.3g}; "
          f"||update_ours - update_trl|| / ||update_trl|| = {weights['relative_update_diff']:.3g}\n")
    print("| per batch (median) | rl4lms.trl | trl 0.11.4 | trl / ours |\n|---|---|---|---|")
    for phase in ("generate_s", "step_s"):
        print(f"| {phase[:-2]} s | {timing['ours'][phase]:.2f} | {timing['trl'][phase]:.2f} | "
              f"{timing['trl'][phase] / timing['ours'][phase]:.2f} |")
    print(f"\ntrl / ours step, median of the per-round ratios: {report['ratios']['trl_step / ours_step, median of the rounds']:.2f}")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
