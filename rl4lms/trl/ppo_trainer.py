"""TRL's classic ``PPOTrainer`` (trl 0.4-0.11) on this project's PPO core.

The trainer translates; the math is the project's: :class:`rl4lms.rlhf.triplet_ppo_trainer.TripletPPOTrainer`
scores the triplets (policy and reference forwards, the KL penalty of ``kl_penalty``, the score on
the last response token) and runs :class:`rl4lms.algorithms.ppo.PPO`'s update. The translation:

=============================  ==================================================================
TRL (``PPOConfig``)            here
=============================  ==================================================================
``mini_batch_size``            ``PPO(batch_size=...)``; the first forwards use it as TRL does
``ppo_epochs``                 ``n_epochs``
``cliprange``                  ``clip_range``
``cliprange_value``            ``clip_range_vf`` (TRL always clips the value)
``vf_coef``                    ``vf_coef / 2``: TRL's value loss is ``0.5 * (V - R)^2``, the PPO
                               core's ``(V - R)^2``; ``ppo/loss/value`` is reported on TRL's scale
``gamma``, ``lam``             ``gamma``, ``gae_lambda``
``max_grad_norm`` None         no clipping (an infinite norm)
``early_stopping``,            ``target_kl`` with ``early_stop_statistic="last_policy_kl"``
``target_kl``
``ratio_threshold``            ``ratio_threshold``
``adap_kl_ctrl``, ``target``,  ``KLController(init_kl_coef, target, horizon=horizon)``
``horizon``, ``init_kl_coef``
``kl_penalty``                 :func:`rl4lms.algorithms.advantages.token_kl`
``whiten_rewards``             ``TextRolloutBuffer.whiten_rewards``
``gradient_accumulation_steps`` the ``Accelerator``'s, through ``PPO.optimization_step``
=============================  ==================================================================

Dropout is off in every forward on both sides (TRL's forwards run in eval mode). Minibatches are
drawn with numpy's global generator, as TRL draws them. ``step`` on responses this trainer's
``generate`` produced (since the last step) takes the policy's log-probs and values from that
generation instead of a second forward, as the config trainer's rollouts do; other responses get
the forward. ``scripts/bench/trl_parity.py`` checks statistics and weights against TRL 0.11.4.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object
from transformers import PreTrainedTokenizerBase

from rl4lms.algorithms.advantages import (compute_gae, kl_penalized_rewards, masked_mean, terminal_rewards, token_kl,
                                          value_statistics, whiten)
from rl4lms.algorithms.ppo import ppo_loss
from rl4lms.algorithms.rollout import pad_token_lists
from rl4lms.generation.engine import generation_step_outputs
from rl4lms.policies.base import entropy_from_logits, masked_log_probs
from rl4lms.policies.causal import forward_takes, positions_from_mask
from rl4lms.rlhf.triplet_ppo_trainer import TripletPPOTrainer
from rl4lms.training.distributed import check_launch, world_size
from rl4lms.trl.core import set_seed
from rl4lms.trl.modeling_value_head import _TRLModelWithValueHead
from rl4lms.trl.ppo_config import PPOConfig
from rl4lms.trl.reference import create_reference_model

logger = logging.getLogger(__name__)

NO_PAD_TOKEN = ("the tokenizer has no pad token: set `tokenizer.pad_token = tokenizer.eos_token` (as TRL's examples "
                "do) or add one")
LOGGED_COLUMNS = ("label", "query", "response")
"""Dataset columns TRL keeps besides the model's ``forward`` arguments."""
DEFAULT_MAX_LENGTH = 2048
"""Bound on queries and responses for a model without position embeddings (T5)."""


@dataclass
class RunningMoments:
    """Running mean and standard deviation of the scores over all steps (TRL's ``use_score_scaling``),
    merged batch by batch with the parallel-variance formula."""

    mean: float = 0.0
    std: float = 1.0
    var: float = 1.0
    count: float = 1e-24

    def update(self, scores: torch.Tensor) -> Tuple[float, float]:
        """Merge a batch in; returns the batch's mean and (unbiased) standard deviation."""
        batch_var, batch_mean = torch.var_mean(scores.float(), unbiased=False)
        n = scores.numel()
        delta = float(batch_mean) - self.mean
        total = self.count + n
        squares = self.var * self.count + float(batch_var) * n + delta ** 2 * self.count * n / total
        self.mean += delta * n / total
        self.var = squares / total
        self.std = math.sqrt(self.var * total / (total - 1))
        self.count = total
        return float(batch_mean), math.sqrt(float(batch_var) * n / max(n - 1, 1))


@contextlib.contextmanager
def _pad_token_for_construction(tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    """EOS as the pad token while the PPO core is built, for a tokenizer that has none yet (TRL sets
    it after building its trainer in places); :meth:`PPOTrainer._pad_token_id` asks for it when padding."""
    if tokenizer.pad_token_id is not None:
        yield
        return
    tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.pad_token = None


def _through_first_eos(tokens: torch.Tensor, eos_token_id: Optional[int]) -> int:
    """The length of ``tokens`` up to and including the first EOS (all of them without one)."""
    eos = (tokens == eos_token_id).nonzero()
    return int(eos[0, 0]) + 1 if len(eos) else len(tokens)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _to_scalars(stats: Dict[str, Any]) -> Dict[str, Any]:
    """One-element arrays as Python floats (TRL does this for trackers other than wandb)."""
    return {key: float(value.reshape(-1)[0]) if isinstance(value, np.ndarray) and value.size == 1 else value
            for key, value in stats.items()}


class PPOTrainer:
    """TRL 0.11's ``PPOTrainer``: PPO on (query, response, score) triplets from the caller's own loop.

    Args:
        config: the :class:`PPOConfig`.
        model: an ``AutoModelForCausalLMWithValueHead`` / ``AutoModelForSeq2SeqLMWithValueHead`` of
            :mod:`rl4lms.trl` (its LM and value head are trained in place).
        ref_model: the frozen reference, a value-head model as well; default: a copy of ``model``
            (``num_shared_layers`` layers shared, see :func:`create_reference_model`), none for a
            ``peft`` model (its adapters are switched off instead).
        tokenizer: the model's tokenizer (with a pad token).
        dataset: a ``torch`` or ``datasets`` dataset; ``dataloader`` serves it in ``batch_size`` batches.
        optimizer: default ``Adam(lr=config.learning_rate)`` over the trainable parameters.
        data_collator: the dataloader's ``collate_fn``.
        num_shared_layers: see ``ref_model``.
        lr_scheduler: a ``torch`` scheduler, stepped after every :meth:`step`.
        training_data_collator: accepted for TRL's signature; episodes are padded by the PPO core.
    """

    def __init__(self, config: Optional[PPOConfig] = None, model: Optional[_TRLModelWithValueHead] = None,
                 ref_model: Optional[_TRLModelWithValueHead] = None,
                 tokenizer: Optional[PreTrainedTokenizerBase] = None, dataset: Any = None,
                 optimizer: Optional[torch.optim.Optimizer] = None, data_collator: Optional[Callable] = None,
                 num_shared_layers: Optional[int] = None, lr_scheduler: Any = None,
                 training_data_collator: Optional[Callable] = None) -> None:
        if not isinstance(config, PPOConfig):
            raise ValueError(f"config must be a PPOConfig, got {type(config)}")
        set_seed(config.seed)
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise ValueError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer)}")
        if not isinstance(model, _TRLModelWithValueHead):
            raise ValueError(f"model must be an AutoModelForCausalLMWithValueHead or AutoModelForSeq2SeqLMWithValueHead "
                             f"of rl4lms.trl, got {type(model)}")
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
            raise ValueError(NO_PAD_TOKEN)
        if training_data_collator is not None:
            logger.info("training_data_collator is not used: the PPO core pads queries and responses itself")
        self.config = config
        accelerator_kwargs = dict(config.accelerator_kwargs)
        if world_size() > 1 and not torch.cuda.is_available():
            # Several CPU processes form a gloo group only when accelerate is told they are CPU ones.
            accelerator_kwargs.setdefault("cpu", True)
        self.accelerator = Accelerator(log_with=config.log_with,
                                       gradient_accumulation_steps=config.gradient_accumulation_steps,
                                       project_config=ProjectConfiguration(**config.project_kwargs),
                                       **accelerator_kwargs)
        config.world_size = self.accelerator.num_processes
        config.global_backward_batch_size = config.backward_batch_size * config.world_size
        config.global_batch_size = config.batch_size * config.world_size
        self.model = model
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)
        self.is_peft_model = model.is_peft_model
        config.is_encoder_decoder, config.is_peft_model = self.is_encoder_decoder, self.is_peft_model
        tracker_config = config.to_dict() if config.log_with == "tensorboard" else {"trl_ppo_trainer_config": config.to_dict()}
        self.accelerator.init_trackers(config.tracker_project_name, config=tracker_config,
                                       init_kwargs=config.tracker_kwargs)
        self.ref_model = self._reference(ref_model, num_shared_layers)
        self.tokenizer = tokenizer
        if config.gradient_checkpointing:
            model.pretrained_model.gradient_checkpointing_enable()
            model.pretrained_model.enable_input_require_grads()
        with _pad_token_for_construction(tokenizer):
            self.core = self._build_core()
        # TRL's default optimizer, Adam at config.learning_rate, in torch's fused form (one kernel
        # for all parameters: the same update, faster than the per-parameter loop).
        self.optimizer = optimizer if optimizer is not None else torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, fused=True)
        self.core.policy.optimizer = self.optimizer
        check_launch(self.accelerator, sharded=False)
        self.core.ppo.attach_accelerator(self.accelerator)
        self.optimizer = self.core.policy.optimizer
        if lr_scheduler is not None and not isinstance(lr_scheduler, torch.optim.lr_scheduler.LRScheduler):
            raise ValueError("lr_scheduler must be a torch.optim.lr_scheduler.LRScheduler")
        self.lr_scheduler = None if lr_scheduler is None else self.accelerator.prepare_scheduler(lr_scheduler)
        if dataset is not None and not isinstance(dataset, (torch.utils.data.Dataset, datasets.Dataset)):
            raise ValueError("dataset must be a torch.utils.data.Dataset or datasets.Dataset")
        if dataset is None:
            warnings.warn("No dataset is provided. Make sure to set config.batch_size to the correct value before "
                          "training.", UserWarning)
        self.dataset = dataset
        self.dataloader = None if dataset is None else self.accelerator.prepare_data_loader(
            self.prepare_dataloader(dataset, data_collator))
        self.is_distributed = self.accelerator.num_processes > 1
        self.current_device = self.accelerator.device
        self.current_step = 0
        self.running = RunningMoments()
        self._sampled: Dict[Tuple[Tuple[int, ...], Tuple[int, ...]], Tuple[torch.Tensor, torch.Tensor]] = {}
        """(query, response) -> per-token log-probs and values of responses generated since the last step."""

    @property
    def kl_ctl(self) -> Any:
        """The KL controller (TRL's attribute; its ``value`` is the current coefficient)."""
        return self.core.ppo.kl_controller

    # --- construction -----------------------------------------------------------------------------
    def _reference(self, ref_model: Optional[_TRLModelWithValueHead],
                   num_shared_layers: Optional[int]) -> Optional[_TRLModelWithValueHead]:
        if isinstance(ref_model, _TRLModelWithValueHead):
            if num_shared_layers is not None:
                warnings.warn("num_shared_layers is ignored when ref_model is provided: the two models share no "
                              "layers.", UserWarning)
            return ref_model
        if ref_model is not None:
            raise ValueError(f"ref_model must be a value-head model of rl4lms.trl or None, got {type(ref_model)}")
        if self.is_peft_model:
            return None
        return create_reference_model(self.model, num_shared_layers=num_shared_layers)

    def _build_core(self) -> TripletPPOTrainer:
        config, lm = self.config, self.model.pretrained_model
        policy_args: Dict[str, Any] = {"model": lm, "value_head": self.model.v_head}
        if self.ref_model is not None:
            policy_args["ref_model"] = self.ref_model.pretrained_model
        ppo_args = {
            "batch_size": config.mini_batch_size, "n_epochs": config.ppo_epochs, "learning_rate": config.learning_rate,
            "clip_range": config.cliprange, "clip_range_vf": config.cliprange_value, "vf_coef": 0.5 * config.vf_coef,
            "ent_coef": 0.0, "gamma": config.gamma, "gae_lambda": config.lam, "normalize_advantage": True,
            "max_grad_norm": math.inf if config.max_grad_norm is None else config.max_grad_norm,
            "target_kl": config.target_kl if config.early_stopping else None,
            "early_stop_statistic": "last_policy_kl", "ratio_threshold": config.ratio_threshold,
            "lr_scheduler_type": None,
        }
        policy_id = "seq2seq_lm_actor_critic_policy" if self.is_encoder_decoder else "causal_lm_actor_critic_policy"
        core = TripletPPOTrainer(
            getattr(lm.config, "_name_or_path", "") or type(lm).__name__, tokenizer=self.tokenizer,
            policy_id=policy_id, policy_args=policy_args, ppo_args=ppo_args, kl_coeff=config.init_kl_coef,
            target_kl=config.target if config.adap_kl_ctrl else None, kl_horizon=config.horizon,
            kl_penalty=config.kl_penalty, max_length=getattr(lm.config, "max_position_embeddings", None)
            or getattr(lm.config, "n_positions", None) or DEFAULT_MAX_LENGTH,
            seed=config.seed, device=str(self.accelerator.device))
        buffer = core.ppo.rollout_buffer
        buffer.whiten_rewards = config.whiten_rewards
        buffer.permutation = lambda n: torch.as_tensor(np.random.permutation(n))
        return core

    def prepare_dataloader(self, dataset: Any, data_collator: Optional[Callable] = None) -> torch.utils.data.DataLoader:
        """A shuffling ``DataLoader`` of ``batch_size`` batches that drops the last partial one; a
        ``datasets.Dataset`` loses the columns neither the model's ``forward`` nor logging uses
        (with ``remove_unused_columns``)."""
        column_names = getattr(dataset, "column_names", None)
        if column_names is not None and self.config.remove_unused_columns:
            keep = set(inspect.signature(self.model.forward).parameters) | set(LOGGED_COLUMNS)
            dataset = dataset.remove_columns([name for name in column_names if name not in keep])
        return torch.utils.data.DataLoader(dataset, batch_size=self.config.batch_size, collate_fn=data_collator,
                                           shuffle=True, drop_last=True)

    # --- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, query_tensor: Union[torch.Tensor, List[torch.Tensor]], length_sampler: Optional[Callable] = None,
                 batch_size: int = 4, return_prompt: bool = True, generate_ref_response: bool = False,
                 **generation_kwargs: Any) -> Any:
        """TRL's ``generate``: a 1-D query gives a ``[1, L]`` tensor (prompt included unless
        ``return_prompt`` is False); a list of queries gives a list of 1-D tensors, generated
        ``batch_size`` at a time from left-padded prompts and cut after their first EOS.
        ``length_sampler`` draws ``max_new_tokens`` (per call, or per batch for a list);
        ``generate_ref_response`` also returns the reference model's responses."""
        models = [self.model]
        if generate_ref_response:
            models.append(self.model if self.is_peft_model else self.ref_model)
        outputs = []
        for ix, model in enumerate(models):
            # The reference of a peft model is the same model with its adapters off.
            context = self.model.pretrained_model.disable_adapter() if ix == 1 and self.is_peft_model else contextlib.nullcontext()
            with context:
                if isinstance(query_tensor, list):
                    outputs.append(self._generate_batched(model, query_tensor, length_sampler, batch_size,
                                                          return_prompt, dict(generation_kwargs), ix == 0))
                else:
                    outputs.append(self._generate_one(model, query_tensor, length_sampler, return_prompt,
                                                      dict(generation_kwargs), ix == 0))
        return tuple(outputs) if generate_ref_response else outputs[0]

    def _generate_one(self, model: torch.nn.Module, query: torch.Tensor, length_sampler: Optional[Callable],
                      return_prompt: bool, generation_kwargs: Dict[str, Any], is_policy: bool) -> torch.Tensor:
        if query.dim() == 2:
            raise ValueError("query_tensor must be a tensor of shape (`seq_len`) or a list of tensors of shape "
                             "(`seq_len`)")
        if length_sampler is not None:
            generation_kwargs["max_new_tokens"] = length_sampler()
        inputs = {"input_ids": query.unsqueeze(0).to(self.current_device)}
        response = self._sample(model, inputs, [query], generation_kwargs, is_policy, cut_after_eos=False)
        if not return_prompt and not self.is_encoder_decoder:
            response = response[:, query.shape[0]:]
        return response

    def _generate_batched(self, model: torch.nn.Module, queries: List[torch.Tensor], length_sampler: Optional[Callable],
                          batch_size: int, return_prompt: bool, generation_kwargs: Dict[str, Any],
                          is_policy: bool) -> List[torch.Tensor]:
        outputs: List[torch.Tensor] = []
        batch_size = min(len(queries), batch_size)
        for start in range(0, len(queries), batch_size):
            if length_sampler is not None:
                generation_kwargs["max_new_tokens"] = length_sampler()
            batch = queries[start:start + batch_size]
            # Left padding for causal LMs (TRL's choice), right padding for encoder inputs.
            ids, mask = pad_token_lists([q.tolist() for q in batch], self._pad_token_id(), self.current_device,
                                        left=not self.is_encoder_decoder)
            generations = self._sample(model, {"input_ids": ids, "attention_mask": mask}, batch, generation_kwargs,
                                       is_policy, cut_after_eos=True)
            for generation, row_mask in zip(generations, mask):
                output = generation if self.is_encoder_decoder else generation[int((1 - row_mask).sum()):]
                if not return_prompt and not self.is_encoder_decoder:
                    output = output[int(row_mask.sum()):]
                outputs.append(output[:_through_first_eos(output, self.tokenizer.eos_token_id)])
        return outputs

    def _sample(self, model: torch.nn.Module, inputs: Dict[str, torch.Tensor], queries: List[torch.Tensor],
                generation_kwargs: Dict[str, Any], is_policy: bool, cut_after_eos: bool) -> torch.Tensor:
        """``model.generate``'s sequences. For the policy (``is_policy``: not the reference, which for
        a peft model is the same module with its adapters off; one sampled sequence per query, causal
        LM) it also keeps the log-probability and value of each generated token, computed by
        ``generate`` itself, so that ``step`` on these responses needs no policy forward of its own."""
        plain = any(generation_kwargs.get(key, 1) != 1 for key in ("num_beams", "num_return_sequences")) or \
            any(key in generation_kwargs for key in ("return_dict_in_generate", "output_logits", "output_scores"))
        if not is_policy or self.is_encoder_decoder or self.config.kl_penalty == "full" or plain:
            return model.generate(**inputs, **generation_kwargs)
        out = model.generate(**inputs, **generation_kwargs, return_dict_in_generate=True, output_logits=True,
                             output_hidden_states=True)
        logits, hidden = generation_step_outputs(out, is_encoder_decoder=False)
        generated = out.sequences[:, inputs["input_ids"].shape[1]:]
        log_probs = masked_log_probs(logits, generated)
        values = self.model.v_head(hidden)
        for query, tokens, row_log_probs, row_values in zip(queries, generated, log_probs, values):
            n = _through_first_eos(tokens, self.tokenizer.eos_token_id) if cut_after_eos else len(tokens)
            key = (tuple(query.tolist()), tuple(tokens[:n].tolist()))
            self._sampled[key] = (row_log_probs[:n], row_values[:n])
        return out.sequences

    # --- the update ------------------------------------------------------------------------------
    def _pad_token_id(self) -> int:
        if self.tokenizer.pad_token_id is None:
            raise ValueError(NO_PAD_TOKEN)
        return self.tokenizer.pad_token_id

    def _step_safety_checker(self, batch_size: Optional[int], queries: Any, responses: Any, scores: Any,
                             masks: Optional[Any] = None) -> Tuple[List[torch.Tensor], List[torch.Tensor],
                                                                   List[torch.Tensor], Optional[List[torch.Tensor]]]:
        """TRL's checks: lists of tensors, ``batch_size`` of each (None: any), queries/responses/masks
        1-D, scores 0-d (or one element); returns them on the trainer's device, scores as 0-d tensors."""
        for name, values in (("queries", queries), ("responses", responses), ("scores", scores)):
            if not isinstance(values, list):
                raise ValueError(f"{name} must be a list of tensors - got {type(values)}")
            if not values or not isinstance(values[0], torch.Tensor):
                raise ValueError(f"Elements in {name} must be tensors - got "
                                 f"{type(values[0]) if values else 'an empty list'}")
            if batch_size is not None and len(values) != batch_size:
                raise ValueError(f"Batch size ({batch_size}) does not match number of examples - but "
                                 f"got {len(values)} for: {name}")
        for name, values in (("queries", queries), ("responses", responses), ("response_masks", masks or [])):
            for ix, tensor in enumerate(values):
                if tensor.dim() != 1:
                    raise ValueError(f"{name}[{ix}] must be a 1-D tensor of token ids, got shape {tuple(tensor.shape)}")
        checked = []
        for score in scores:
            if score.dim() > 1:
                raise ValueError(f"Scores must be 1-dimensional - got {score.dim()} for {score}")
            if score.numel() != 1:
                raise ValueError(f"each score must hold one number, got shape {tuple(score.shape)}")
            checked.append(score.reshape(()).to(self.current_device))
        device = self.current_device
        return ([q.to(device) for q in queries], [r.to(device) for r in responses], checked,
                None if masks is None else [m.to(device) for m in masks])

    def _kl_penalty(self, logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
        """TRL's per-token KL penalty of ``config.kl_penalty`` (for ``"full"`` the arguments are the
        full log-distributions ``[..., V]``, as TRL passes them)."""
        if self.config.kl_penalty == "full":
            return token_kl(logprob, ref_logprob, "full", logits=logprob, ref_logits=ref_logprob)
        return token_kl(logprob, ref_logprob, self.config.kl_penalty)

    def _processed_scores(self, scores: List[torch.Tensor]) -> torch.Tensor:
        values = torch.stack([s.detach().float().cpu() for s in scores])
        if self.config.use_score_scaling:
            self.running.update(values)
            scale = self.running.std + torch.finfo(values.dtype).eps
            values = (values - self.running.mean) / scale if self.config.use_score_norm else values / scale
        if self.config.score_clip is not None:
            values = values.clamp(-self.config.score_clip, self.config.score_clip)
        return values

    def _without_decoder_start(self, responses: List[torch.Tensor],
                               masks: Optional[List[torch.Tensor]]) -> Tuple[List[torch.Tensor], Optional[List[torch.Tensor]]]:
        """Encoder-decoder responses as ``generate`` returns them start with the decoder start token,
        which TRL leaves out of the loss; the policy adds that token itself."""
        start_id = self.model.pretrained_model.config.decoder_start_token_id
        cut = [len(r) > 1 and int(r[0]) == start_id for r in responses]
        responses = [r[1:] if c else r for r, c in zip(responses, cut)]
        return responses, None if masks is None else [m[1:] if c else m for m, c in zip(masks, cut)]

    def step(self, queries: List[torch.Tensor], responses: List[torch.Tensor], scores: List[torch.Tensor],
             response_masks: Optional[List[torch.Tensor]] = None) -> Dict[str, Any]:
        """One PPO update on ``batch_size`` triplets; returns TRL's statistics (``objective/*``,
        ``ppo/*``, ``tokens/*``, ``time/ppo/*``; arrays for ``objective/kl_dist``, ``objective/logprobs``,
        ``objective/ref_logprobs``, ``tokens/*_dist``, ``ppo/policy/advantages`` and ``ppo/policy/ratio``,
        these two over the valid tokens of every minibatch)."""
        self._pad_token_id()
        queries, responses, scores, response_masks = self._step_safety_checker(
            self.config.batch_size, queries, responses, scores, response_masks)
        values = self._processed_scores(scores)
        if self.is_encoder_decoder:
            responses, response_masks = self._without_decoder_start(responses, response_masks)
        core = self.core
        sampled = [self._sampled.get((tuple(q.tolist()), tuple(r.tolist()))) for q, r in zip(queries, responses)]
        self._sampled = {}  # the weights change with this step
        core.score_episodes(queries, responses, values.tolist(), response_masks,
                            forward_batch_size=self.config.mini_batch_size,
                            sampled=sampled if all(part is not None for part in sampled) else None)
        learning_rate = float(self.optimizer.param_groups[0]["lr"])
        stats = core.update()
        timings = dict(core.timings)
        started = time.perf_counter()
        stats = self._trl_statistics(stats, learning_rate)
        timings["time/ppo/calc_stats"] = time.perf_counter() - started
        if stats["objective/kl"] < -1.0:
            warnings.warn(f"KL divergence is starting to become negative: {stats['objective/kl']:.2f} - this might "
                          "be a precursor for failed training. Check the generation kwargs (sampling without top-k/"
                          "top-p cuts, no min_length forcing) and the training hyperparameters.")
        timings["time/ppo/total"] = sum(timings.values())
        stats.update(timings)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return stats if self.config.log_with == "wandb" else _to_scalars(stats)

    def _trl_statistics(self, stats: Dict[str, float], learning_rate: float) -> Dict[str, Any]:
        """The core's statistics on TRL's scales, plus TRL's arrays."""
        out: Dict[str, Any] = {key: value for key, value in stats.items() if not key.startswith("rollout_info/")}
        out.update(self.core.ppo.minibatch_value_stats)  # TRL's mean over minibatches, not the whole batch's
        out["ppo/loss/value"] = 0.5 * stats["ppo/loss/value"]
        out["ppo/val/var_explained"] = 1.0 - out["ppo/val/error"] / out["ppo/returns/var"] \
            if out["ppo/returns/var"] else float("nan")
        out["ppo/learning_rate"] = learning_rate
        data = self.core.ppo.rollout_buffer.data
        assert data is not None
        out["objective/kl_dist"] = _numpy(data.kl.sum(1))
        out["objective/logprobs"] = _numpy(data.log_probs)
        out["objective/ref_logprobs"] = _numpy(data.ref_log_probs)
        out["tokens/queries_dist"] = _numpy(data.prompt_mask.sum(1))
        out["tokens/responses_dist"] = _numpy(data.response_mask.sum(1))
        for name, values in self.core.ppo.update_arrays.items():
            out[f"ppo/policy/{name}"] = _numpy(values)[None]
        return out

    # --- TRL's step in pieces (its public helpers; ``step`` itself runs the PPO core) ------------------
    def prepare_model_inputs(self, queries: List[torch.Tensor], responses: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The padded model inputs of the triplets, padded on the tokenizer's ``padding_side``: query
        and response as one sequence (``input_ids``, ``attention_mask``), or for an encoder-decoder
        the query as encoder input and the response as ``decoder_input_ids`` / ``decoder_attention_mask``."""
        pad, device, left = self._pad_token_id(), self.current_device, self.tokenizer.padding_side == "left"
        if self.is_encoder_decoder:
            ids, mask = pad_token_lists([q.tolist() for q in queries], pad, device, left=left)
            decoder_ids, decoder_mask = pad_token_lists([r.tolist() for r in responses], pad, device, left=left)
            return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids,
                    "decoder_attention_mask": decoder_mask}
        ids, mask = pad_token_lists([q.tolist() + r.tolist() for q, r in zip(queries, responses)], pad, device,
                                    left=left)
        return {"input_ids": ids, "attention_mask": mask}

    def batched_forward_pass(self, model: _TRLModelWithValueHead, queries: List[torch.Tensor],
                             responses: List[torch.Tensor], model_inputs: Dict[str, torch.Tensor],
                             return_logits: bool = False, response_masks: Optional[List[torch.Tensor]] = None
                             ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
        """TRL's layout of one forward over ``model_inputs`` (``mini_batch_size`` rows at a time):
        ``(logprobs, logits or None, values, masks)``, each ``[B, L - 1]`` (logits ``[B, L - 1, V]``)
        where position ``t`` predicts token ``t + 1`` and ``masks`` marks the response's predictions
        (times ``response_masks``). Causal models get position ids from the attention mask, so left
        padding does not shift them (TRL leaves them to the model)."""
        training = model.training
        model.eval()
        parts: Dict[str, List[torch.Tensor]] = {"logprobs": [], "logits": [], "values": [], "masks": []}
        step = self.config.mini_batch_size
        for start in range(0, len(queries), step):
            inputs = {key: value[start:start + step] for key, value in model_inputs.items()}
            if self.is_encoder_decoder:
                ids, mask = inputs["decoder_input_ids"], inputs["decoder_attention_mask"]
            else:
                ids, mask = inputs["input_ids"], inputs["attention_mask"]
                if forward_takes(model.pretrained_model, "position_ids"):
                    inputs.setdefault("position_ids", positions_from_mask(mask))
            logits, _, values = model(**inputs)
            predicted = torch.zeros_like(mask)
            predicted[:, :-1] = mask[:, 1:]
            for row in range(len(ids)):
                first = int(mask[row].nonzero()[0])  # past any left padding
                if self.is_encoder_decoder:  # the decoder's first token is the start token
                    begin, end = first + 1, first + int(mask[row].sum()) - 1
                else:
                    begin = first + len(queries[start + row]) - 1
                    end = begin + len(responses[start + row])
                predicted[row, :begin] = 0
                predicted[row, end:] = 0
                if response_masks is not None:
                    predicted[row, begin:end] *= response_masks[start + row].to(predicted)
            parts["logprobs"].append(masked_log_probs(logits[:, :-1], ids[:, 1:]))
            parts["values"].append(values[:, :-1])
            parts["masks"].append(predicted[:, :-1])
            if return_logits:
                parts["logits"].append(logits[:, :-1])
        model.train(training)
        return (torch.cat(parts["logprobs"]), torch.cat(parts["logits"]) if return_logits else None,
                torch.cat(parts["values"]), torch.cat(parts["masks"]))

    def compute_rewards(self, scores: Any, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                        masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token ``(rewards, non_score_rewards, kls)`` ``[B, T]``: minus the KL coefficient times
        the ``kl_penalty`` on the valid tokens of ``masks``, plus each score on its last valid token."""
        masks = masks.float()
        kl = self._kl_penalty(logprobs, ref_logprobs)
        task_rewards = terminal_rewards(scores, masks)
        kl_coeff = self.kl_ctl.value
        rewards, kl = kl_penalized_rewards(task_rewards, kl, masks, kl_coeff)
        return rewards, -kl_coeff * kl, kl

    def compute_advantages(self, values: torch.Tensor, rewards: torch.Tensor,
                           mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(values, advantages, returns)`` of GAE over the valid tokens of ``mask`` (``whiten_rewards``
        first, as configured); the advantages are whitened. Tokens outside ``mask`` are skipped, so a
        masked-out stretch inside a response (tool output) is not discounted over (TRL's GAE runs
        through it with zero values)."""
        mask = mask.float()
        values, rewards = values * mask, rewards * mask
        if self.config.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, values, mask, self.config.gamma, self.config.lam)
        return values, whiten(advantages, mask).detach(), returns

    def loss(self, old_logprobs: torch.Tensor, values: torch.Tensor, logits: torch.Tensor, vpreds: torch.Tensor,
             logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
             returns: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """TRL's ``(policy loss, vf_coef * value loss, statistics)`` of one minibatch: the PPO core's
        clipped losses (:func:`rl4lms.algorithms.ppo.ppo_loss`), the value loss on TRL's
        ``0.5 * (V - R)^2`` scale, both zeroed when the mean ratio exceeds ``ratio_threshold``."""
        mask = mask.float()
        losses = ppo_loss(logprobs, old_logprobs, advantages, vpreds, values, returns, mask, self.config.cliprange,
                          self.config.cliprange_value)
        policy_loss, value_loss = losses.policy_loss, 0.5 * losses.value_loss
        if masked_mean(losses.ratio, mask).item() > self.config.ratio_threshold:
            warnings.warn(f"The average ratio of batch ({masked_mean(losses.ratio, mask).item():.2f}) exceeds "
                          f"threshold {self.config.ratio_threshold:.2f}. Skipping batch.")
            policy_loss, value_loss = policy_loss * 0.0, value_loss * 0.0
        total = policy_loss + self.config.vf_coef * value_loss
        with torch.no_grad():
            stats = {"loss/policy": policy_loss.detach(), "loss/value": value_loss.detach(), "loss/total": total.detach(),
                     "policy/entropy": masked_mean(entropy_from_logits(logits), mask),
                     "policy/approxkl": torch.tensor(losses.kl_k2), "policy/policykl": torch.tensor(losses.policy_kl),
                     "policy/clipfrac": torch.tensor(losses.clipfrac), "policy/advantages": advantages.detach(),
                     "policy/ratio": losses.ratio, "val/vpred": masked_mean(vpreds, mask),
                     "val/error": masked_mean((vpreds - returns) ** 2, mask),
                     "val/clipfrac": torch.tensor(losses.value_clipfrac)}
            stats.update({key[len("ppo/"):]: value for key, value in
                          value_statistics(returns, values, advantages, mask).items()})
        return policy_loss, self.config.vf_coef * value_loss, stats

    # --- logging and saving ------------------------------------------------------------------------
    def log_stats(self, stats: Dict[str, Any], batch: Dict[str, Any], rewards: Any,
                  columns_to_log: Iterable[str] = ("query", "response")) -> None:
        """Send ``stats`` and the batch's rewards (``env/reward_mean``, ``_std``, ``_dist``) to the
        accelerator's trackers; with wandb also a ``game_log`` table of ``columns_to_log`` and reward."""
        columns = list(columns_to_log)
        rewards = rewards if isinstance(rewards, torch.Tensor) else torch.tensor([float(r) for r in rewards])
        rewards = self.accelerator.gather(rewards.to(self.current_device)).flatten().float()
        table_columns = None
        if self.config.log_with == "wandb":
            missing = [c for c in columns if c not in batch]
            if missing:
                raise ValueError(f"Columns to log {columns} are not present in the batch {list(batch.keys())}.")
            table_columns = [gather_object(batch[c]) if self.is_distributed else batch[c] for c in columns]
        if not self.accelerator.is_main_process:
            return
        logs: Dict[str, Any] = {}
        if "query" not in batch and "response" not in batch:
            warnings.warn("The game logs will not be logged because the batch does not contain the keys 'query' and "
                          "'response'.")
        elif table_columns is not None:
            import wandb

            rows = [list(row) for row in zip(*table_columns, rewards.cpu().tolist())]
            logs["game_log"] = wandb.Table(columns=[*columns, "reward"], rows=rows)
        logs.update(stats)
        logs["env/reward_mean"] = float(rewards.mean())
        logs["env/reward_std"] = float(rewards.std()) if len(rewards) > 1 else 0.0
        logs["env/reward_dist"] = _numpy(rewards)
        if self.config.log_with == "tensorboard":
            self.current_step += 1
        self.accelerator.log(logs, step=self.current_step if self.config.log_with == "tensorboard" else None)

    def save_pretrained(self, save_directory: Union[str, Path]) -> None:
        """The model (TRL's folder: the value head inside the weights file, and ``value_head.safetensors``)
        and the tokenizer."""
        self.accelerator.unwrap_model(self.model).save_pretrained(save_directory)
        self.tokenizer.save_pretrained(save_directory)

