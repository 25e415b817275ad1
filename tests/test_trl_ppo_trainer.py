"""rl4lms.trl.PPOTrainer: TRL 0.11's classic trainer on the project's PPO core."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors import safe_open

from rl4lms.trl import AutoModelForCausalLMWithValueHead, LengthSampler, PPOConfig, PPOTrainer
from rl4lms.trl.ppo_trainer import RunningMoments

TRL_STAT_KEYS = {
    "objective/kl", "objective/kl_dist", "objective/logprobs", "objective/ref_logprobs", "objective/kl_coef",
    "objective/entropy", "ppo/mean_non_score_reward", "ppo/mean_scores", "ppo/std_scores",
    "tokens/queries_len_mean", "tokens/queries_len_std", "tokens/queries_dist", "tokens/responses_len_mean",
    "tokens/responses_len_std", "tokens/responses_dist", "ppo/loss/policy", "ppo/loss/value", "ppo/loss/total",
    "ppo/policy/entropy", "ppo/policy/approxkl", "ppo/policy/policykl", "ppo/policy/clipfrac",
    "ppo/policy/advantages", "ppo/policy/advantages_mean", "ppo/policy/ratio", "ppo/returns/mean",
    "ppo/returns/var", "ppo/val/vpred", "ppo/val/error", "ppo/val/clipfrac", "ppo/val/mean", "ppo/val/var",
    "ppo/val/var_explained", "ppo/learning_rate", "time/ppo/forward_pass", "time/ppo/compute_rewards",
    "time/ppo/compute_advantages", "time/ppo/optimize_step", "time/ppo/calc_stats", "time/ppo/total",
}
ARRAY_KEYS = {"objective/kl_dist", "objective/logprobs", "objective/ref_logprobs", "tokens/queries_dist",
              "tokens/responses_dist", "ppo/policy/advantages", "ppo/policy/ratio"}


@pytest.fixture()
def tokenizer(eos_padded_tokenizer):
    return eos_padded_tokenizer


def _model(**kwargs) -> AutoModelForCausalLMWithValueHead:
    torch.manual_seed(0)
    return AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2", **kwargs)


def _trainer(tokenizer, model=None, **config) -> PPOTrainer:
    settings = {"batch_size": 4, "mini_batch_size": 2, "learning_rate": 1e-3, "seed": 1, **config}
    with pytest.warns(UserWarning, match="No dataset is provided"):
        return PPOTrainer(PPOConfig(**settings), model or _model(), None, tokenizer)


def _triplets(tokenizer, n: int = 4, response_length: int = 5):
    queries = [torch.tensor(tokenizer.encode(text)) for text in ("one two", "three four five", "six", "seven eight")][:n]
    generator = torch.Generator().manual_seed(0)
    responses = [torch.randint(5, 60, (response_length,), generator=generator) for _ in range(n)]
    scores = [torch.tensor(float(ix % 2)) for ix in range(n)]
    return queries, responses, scores


def _trainable(model: torch.nn.Module) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_step_checks_inputs_as_trl_does(tokenizer) -> None:
    trainer = _trainer(tokenizer)
    queries, responses, scores = _triplets(tokenizer)
    with pytest.raises(ValueError, match=r"Batch size \(4\) does not match number of examples - but got 3 for: queries"):
        trainer.step(queries[:3], responses, scores)
    with pytest.raises(ValueError, match="scores must be a list of tensors"):
        trainer.step(queries, responses, torch.ones(4))
    with pytest.raises(ValueError, match="Elements in scores must be tensors"):
        trainer.step(queries, responses, [1.0] * 4)
    with pytest.raises(ValueError, match="Scores must be 1-dimensional - got 2"):
        trainer.step(queries, responses, [torch.ones(1, 1)] * 4)
    with pytest.raises(ValueError, match=r"queries\[0\] must be a 1-D tensor"):
        trainer.step([q[None] for q in queries], responses, scores)
    # One-element 1-D scores are squeezed, as TRL does.
    assert trainer.step(queries, responses, [s[None] for s in scores])["ppo/mean_scores"] == pytest.approx(0.5)


def test_step_returns_trls_statistics_with_their_kinds(tokenizer) -> None:
    trainer = _trainer(tokenizer, log_with=None)
    queries, responses, scores = _triplets(tokenizer)
    stats = trainer.step(queries, responses, scores)
    assert TRL_STAT_KEYS <= set(stats)
    for key in ARRAY_KEYS:
        assert isinstance(stats[key], np.ndarray), key
    for key in TRL_STAT_KEYS - ARRAY_KEYS:
        assert isinstance(stats[key], float) and np.isfinite(stats[key]), key
    assert stats["objective/logprobs"].shape == (4, 5) and stats["tokens/queries_dist"].tolist() == [len(q) for q in queries]
    assert stats["ppo/policy/ratio"].shape[0] == 1
    # Same reference and policy before the first update: the KL is zero, the coefficient TRL's initial one.
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-5) and stats["objective/kl_coef"] == pytest.approx(0.2)
    assert stats["ppo/mean_scores"] == pytest.approx(0.5) and stats["ppo/learning_rate"] == pytest.approx(1e-3)
    assert stats["ppo/val/var_explained"] == pytest.approx(1 - stats["ppo/val/error"] / stats["ppo/returns/var"])
    # The adaptive controller moves the coefficient after the step: KL 0 < target 6, error -1 clipped to -0.2.
    assert trainer.core.ppo.kl_controller.kl_coeff == pytest.approx(0.2 * (1 - 0.2 * 4 / 10000))


def test_gradients_reach_every_trainable_weight_and_the_reference_stays_frozen(tokenizer) -> None:
    model = _model()
    trainer = _trainer(tokenizer, model, ppo_epochs=1)
    before, reference = _trainable(model), {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    trainer.step(*_triplets(tokenizer))
    unchanged = [name for name, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[name])]
    assert not unchanged and any(name.startswith("v_head.") for name in before)
    assert all(torch.equal(p, reference[n]) for n, p in trainer.ref_model.named_parameters())
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())


def test_value_and_total_loss_fall_on_a_fixed_batch(tokenizer) -> None:
    trainer = _trainer(tokenizer, adap_kl_ctrl=False, init_kl_coef=0.0)
    triplets = _triplets(tokenizer)
    history = [trainer.step(*triplets) for _ in range(8)]
    assert history[-1]["ppo/loss/value"] < 0.5 * history[0]["ppo/loss/value"]
    assert history[-1]["ppo/loss/total"] < history[0]["ppo/loss/total"]
    # The episodes with score 1 become likelier than those with score 0.
    log_probs = history[-1]["objective/logprobs"].sum(1) - history[0]["objective/logprobs"].sum(1)
    assert log_probs[1] + log_probs[3] > log_probs[0] + log_probs[2]


def test_num_shared_layers_freezes_and_shares_the_first_layers(tokenizer) -> None:
    model = _model()
    with pytest.warns(UserWarning, match="No dataset"):
        trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=4, learning_rate=1e-3), model, None, tokenizer,
                             num_shared_layers=1)
    shared = dict(model.pretrained_model.transformer.h[0].named_parameters())
    assert all(not p.requires_grad for p in shared.values())
    assert trainer.ref_model.pretrained_model.transformer.h[0].attn.c_attn.weight is shared["attn.c_attn.weight"]
    frozen, trained = shared["attn.c_attn.weight"].clone(), model.pretrained_model.transformer.h[1].attn.c_attn.weight.clone()
    trainer.step(*_triplets(tokenizer))
    assert torch.equal(shared["attn.c_attn.weight"], frozen)
    assert not torch.equal(model.pretrained_model.transformer.h[1].attn.c_attn.weight, trained)


def test_gradient_accumulation_matches_one_large_minibatch(tokenizer) -> None:
    after = []
    for mini_batch_size, accumulation in ((4, 1), (1, 4)):
        model = _model()
        # SGD: Adam's first step is about lr * sign(gradient), which float noise flips on near-zero gradients.
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        config = PPOConfig(batch_size=4, mini_batch_size=mini_batch_size, gradient_accumulation_steps=accumulation,
                           ppo_epochs=1)
        with pytest.warns(UserWarning, match="No dataset"):
            trainer = PPOTrainer(config, model, None, tokenizer, optimizer=optimizer)
        steps = []
        original_step = optimizer.step
        optimizer.step = lambda *a, **k: (steps.append(1), original_step(*a, **k))[1]
        trainer.step(*_triplets(tokenizer))  # equal response lengths: the token mean equals the mean of means
        assert len(steps) == 1 and trainer.optimizer.optimizer is optimizer
        after.append(_trainable(model))
    assert all(torch.allclose(after[0][name], after[1][name], atol=1e-6) for name in after[0])


def test_lora_model_trains_adapters_and_uses_the_base_as_reference(tokenizer) -> None:
    peft = pytest.importorskip("peft")
    model = _model(peft_config=peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0))
    trainer = _trainer(tokenizer, model)
    assert trainer.is_peft_model and trainer.ref_model is None
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = _trainable(model)
    assert all("lora_" in n or n.startswith("v_head.") for n in trained)
    stats = trainer.step(*_triplets(tokenizer))
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # adapters start at zero
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    assert any(not torch.equal(p, trained[n]) for n, p in model.named_parameters() if "lora_B" in n)
    assert trainer.step(*_triplets(tokenizer))["objective/kl"] != 0.0


def test_generate_has_trls_semantics(tokenizer) -> None:
    trainer = _trainer(tokenizer)
    query = torch.tensor(tokenizer.encode("one two three"))
    settings = {"do_sample": True, "top_k": 0, "top_p": 1.0, "pad_token_id": tokenizer.eos_token_id}
    single = trainer.generate(query, max_new_tokens=4, min_new_tokens=4, **settings)
    assert single.shape == (1, len(query) + 4) and torch.equal(single[0, :len(query)], query)
    assert trainer.generate(query, return_prompt=False, max_new_tokens=4, min_new_tokens=4, **settings).shape == (1, 4)
    queries = [query, query[:1], query[:2], query, query[1:]]
    responses = trainer.generate(queries, batch_size=2, return_prompt=False, length_sampler=LengthSampler(3, 4),
                                 min_new_tokens=3, **settings)
    assert isinstance(responses, list) and [len(r) for r in responses] == [3] * 5
    with_prompt = trainer.generate(queries, batch_size=2, max_new_tokens=3, min_new_tokens=3, **settings)
    assert [len(r) for r in with_prompt] == [len(q) + 3 for q in queries]
    assert all(torch.equal(r[:len(q)], q) for r, q in zip(with_prompt, queries))
    response, reference = trainer.generate(queries[:2], generate_ref_response=True, max_new_tokens=3, **settings)
    assert len(response) == len(reference) == 2
    with pytest.raises(ValueError, match="query_tensor must be a tensor of shape"):
        trainer.generate(query[None], max_new_tokens=2)


def test_responses_are_cut_after_their_first_eos(tokenizer) -> None:
    trainer = _trainer(tokenizer)
    eos = tokenizer.eos_token_id
    forced = trainer.generate([torch.tensor(tokenizer.encode("one two"))], return_prompt=False, max_new_tokens=5,
                              min_new_tokens=5, suppress_tokens=None, begin_suppress_tokens=None,
                              forced_eos_token_id=eos, do_sample=False)
    assert int(forced[0][-1]) == eos and (forced[0] == eos).sum() == 1


@pytest.mark.parametrize("penalty", ["abs", "mse", "full"])
def test_kl_penalties_are_non_negative_and_zero_at_the_start(tokenizer, penalty: str) -> None:
    trainer = _trainer(tokenizer, kl_penalty=penalty, adap_kl_ctrl=False)
    triplets = _triplets(tokenizer)
    assert trainer.step(*triplets)["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    later = trainer.step(*triplets)
    assert later["objective/kl"] > 0 and (later["objective/kl_dist"] >= -1e-6).all()


def test_running_moments_merge_batches_exactly() -> None:
    moments = RunningMoments()
    first, second = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0])
    assert moments.update(first) == pytest.approx((2.0, 1.0))
    moments.update(second)
    everything = torch.cat([first, second])
    assert moments.mean == pytest.approx(float(everything.mean()))
    assert moments.std == pytest.approx(float(everything.std()), rel=1e-6)


def test_score_scaling_normalisation_and_clipping(tokenizer) -> None:
    queries, responses, _ = _triplets(tokenizer)
    scores = [torch.tensor(v) for v in (4.0, 0.0, 2.0, 2.0)]
    clipped = _trainer(tokenizer, score_clip=1.5).step(queries, responses, scores)
    assert clipped["ppo/mean_scores"] == pytest.approx((1.5 + 0 + 1.5 + 1.5) / 4)
    normed = _trainer(tokenizer, use_score_scaling=True, use_score_norm=True).step(queries, responses, scores)
    # Mean 2, unbiased std sqrt(8/3): scores become (s - 2) / 1.633, whose mean is 0.
    assert normed["ppo/mean_scores"] == pytest.approx(0.0, abs=1e-6)
    assert normed["ppo/std_scores"] == pytest.approx(1.0, rel=1e-5)


def test_whiten_rewards_gives_unit_variance_rewards(tokenizer) -> None:
    trainer = _trainer(tokenizer, whiten_rewards=True)
    trainer.step(*_triplets(tokenizer))
    data = trainer.core.ppo.rollout_buffer.data
    valid = data.rewards[data.token_mask() > 0]
    assert float(valid.var()) == pytest.approx(1.0, rel=1e-4)


def test_early_stopping_and_ratio_threshold(tokenizer) -> None:
    stopped = _trainer(tokenizer, early_stopping=True, target_kl=1e-12, learning_rate=1e-2)
    assert stopped.step(*_triplets(tokenizer))["ppo/early_stop"] == 1.0
    guarded = _trainer(tokenizer, ratio_threshold=0.0)
    stats = guarded.step(*_triplets(tokenizer))
    assert stats["ppo/loss/total"] == 0.0 and stats["ppo/loss/policy"] == 0.0


def test_dataloader_keeps_the_models_and_logging_columns(tokenizer) -> None:
    rows = {"input_ids": [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]], "query": list("abcde"), "review": list("vwxyz")}
    dataset = Dataset.from_dict(rows)

    def collate(batch: list) -> dict:
        return {key: [row[key] for row in batch] for key in batch[0]}

    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2), _model(), None, tokenizer, dataset=dataset,
                         data_collator=collate)
    batches = list(trainer.dataloader)
    assert len(batches) == 2 and set(batches[0]) == {"input_ids", "query"}
    assert all(len(b["query"]) == 2 for b in batches)


def test_log_stats_writes_to_wandb_offline(tokenizer, tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    config = PPOConfig(batch_size=4, mini_batch_size=2, log_with="wandb", tracker_project_name="trl-test",
                       tracker_kwargs={"wandb": {"dir": str(tmp_path), "mode": "offline"}})
    with pytest.warns(UserWarning, match="No dataset"):
        trainer = PPOTrainer(config, _model(), None, tokenizer)
    queries, responses, scores = _triplets(tokenizer)
    stats = trainer.step(queries, responses, scores)
    batch = {"query": ["a", "b", "c", "d"], "response": ["e", "f", "g", "h"]}
    trainer.log_stats(stats, batch, scores)
    trainer.accelerator.end_training()
    history = next(tmp_path.glob("wandb/offline-run-*/files"), None) or next(tmp_path.glob("wandb/offline-run-*"))
    assert history.exists()
    with pytest.raises(ValueError, match="Columns to log"):
        trainer.log_stats(stats, {"query": batch["query"]}, scores)


def test_save_pretrained_writes_a_folder_both_libraries_read(tokenizer, tmp_path: Path) -> None:
    model = _model()
    trainer = _trainer(tokenizer, model)
    trainer.step(*_triplets(tokenizer))
    trainer.save_pretrained(tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as handle:
        assert torch.equal(handle.get_tensor("v_head.summary.weight"), model.v_head.summary.weight.detach())
    assert (tmp_path / "out" / "value_head.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    again = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "out"))
    assert torch.equal(again.v_head.summary.weight, model.v_head.summary.weight)


def test_step_on_generated_responses_reuses_what_generate_computed(tokenizer) -> None:
    from rl4lms.algorithms.rollout import pad_token_lists

    trainer = _trainer(tokenizer)
    queries, _, scores = _triplets(tokenizer)
    responses = trainer.generate(queries, return_prompt=False, max_new_tokens=5, do_sample=True, top_k=0,
                                 pad_token_id=tokenizer.eos_token_id)
    sampled = [trainer._sampled[(tuple(q.tolist()), tuple(r.tolist()))] for q, r in zip(queries, responses)]
    prompt, prompt_mask = pad_token_lists([q.tolist() for q in queries], tokenizer.pad_token_id, "cpu", left=True)
    response, response_mask = pad_token_lists([r.tolist() for r in responses], tokenizer.pad_token_id, "cpu", left=False)
    with torch.no_grad():
        full = trainer.core.policy.evaluate_episodes(prompt, prompt_mask, response, response_mask)
    for row, (log_probs, values) in enumerate(sampled):
        n = len(responses[row])
        assert torch.allclose(log_probs, full.log_probs[row, :n], atol=1e-4)
        assert torch.allclose(values, full.values[row, :n], atol=1e-4)
    stats = trainer.step(queries, responses, scores)
    assert not trainer._sampled and np.isfinite(stats["ppo/loss/total"])


def test_kl_penalty_method_has_trls_modes(tokenizer) -> None:
    log_probs, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    expected = {"kl": [0.5, -1.0], "abs": [0.5, 1.0], "mse": [0.125, 0.5]}
    for mode, values in expected.items():
        assert _trainer(tokenizer, kl_penalty=mode)._kl_penalty(log_probs, ref)[0].tolist() == pytest.approx(values)
    # "full": TRL passes whole log-distributions; p = (0.5, 0.5) against q = (0.8, 0.2) gives 0.2231436.
    full = _trainer(tokenizer, kl_penalty="full")._kl_penalty(torch.log(torch.tensor([[0.5, 0.5]])),
                                                              torch.log(torch.tensor([[0.8, 0.2]])))
    assert full.tolist() == pytest.approx([0.2231436], abs=1e-6)


def test_reference_responses_of_a_peft_model_are_not_taken_for_the_policys(tokenizer) -> None:
    peft = pytest.importorskip("peft")
    model = _model(peft_config=peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0))
    trainer = _trainer(tokenizer, model)
    queries, _, _ = _triplets(tokenizer)
    responses, references = trainer.generate(queries, return_prompt=False, generate_ref_response=True,
                                             max_new_tokens=8, min_new_tokens=8, do_sample=True, top_k=0,
                                             pad_token_id=tokenizer.eos_token_id)
    # The reference is the same module with its adapters off: only the policy's responses are kept.
    assert set(trainer._sampled) == {(tuple(q.tolist()), tuple(r.tolist())) for q, r in zip(queries, responses)}
    assert len(references) == len(queries)
