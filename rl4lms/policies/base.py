"""Actor-critic policy over a Hugging Face language model (RL4LMs' ``LMActorCriticPolicy``).

One class holds the trainable LM (the actor), a value head that shares the LM's backbone
(or, with ``shared_backbone: false``, a separate critic LM), and a frozen reference copy
for the KL penalty. Rollouts call :meth:`generate` once per batch and
:meth:`evaluate_episodes` / :meth:`reference_log_probs` once per batch; there is no
per-token replay. RL4LMs' per-transition :meth:`evaluate_actions` is there for RL4LMs-style code.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Dict, List, Optional, Tuple, Type

import torch
from gymnasium import spaces
from safetensors.torch import load_file
from stable_baselines3.common.policies import BasePolicy
from torch import nn
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedTokenizerBase

from rl4lms.envs.observation import ObservationLayout
from rl4lms.generation.engine import GenerationEngine, build_engine
from rl4lms.models.fused_activations import use_fused_activations
from rl4lms.models.loading import load_model, resolve_checkpoint, resolve_model_name
from rl4lms.models.lora import add_lora_adapters, quantization_kwargs, save_model
from rl4lms.models.value_head import CRITIC_DIR, VALUE_HEAD_FILE, ValueHead, hidden_size, save_value_head

if TYPE_CHECKING:  # transformers' modelling code loads with the first model, not with this module
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

REFERENCE_PREFIX = "ref_model."


@dataclass
class PolicyOutput:
    """Per-token quantities of the response tokens, each of shape ``[batch, response_len]``."""

    log_probs: torch.Tensor
    entropy: Optional[torch.Tensor]
    """None where it was not computed (scores taken from generation)."""
    values: torch.Tensor
    unmasked_log_probs: torch.Tensor
    """Log-probs without action masks (equal to ``log_probs`` when none were given); the KL uses these."""


@dataclass
class EvaluateActionsOutput:
    """RL4LMs' per-transition evaluation, each of shape ``[N]`` (its field names)."""

    values: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor


@dataclass
class SampledActions:
    """Rollout generation output: responses, their mask and what was computed while sampling.

    ``step_logits`` ``[B, T, V]`` are the actor's raw logits and ``step_hidden`` ``[B, T, H]`` its
    last hidden states at the positions that predicted each response token; ``action_masks``
    ``[B, T, V]`` are the allowed tokens of masked (NLPO) sampling.
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    action_masks: Optional[torch.Tensor] = None
    step_logits: Optional[torch.Tensor] = None
    step_hidden: Optional[torch.Tensor] = None
    engine_log_probs: Optional[torch.Tensor] = None
    """A separate engine's own log-probs ``[B, T]`` of the tokens it sampled (0 after the end)."""


@dataclass
class DecodingState:
    """What a cached token-by-token forward of a model carries from one step to the next."""

    cache: Any
    attention_mask: torch.Tensor
    """Causal LMs: the mask of prompt + tokens fed so far; seq2seq: the encoder's mask."""
    next_positions: Optional[torch.Tensor] = None
    """Causal LMs: the position id ``[B, 1]`` of the next token."""
    encoder_outputs: Any = None
    """Seq2seq: the encoded prompt."""


FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")
"""Device types whose parameters get torch's fused AdamW by default."""


def with_fused_default(parameters: List[torch.Tensor], optimizer_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``optimizer_kwargs`` with ``fused=True`` added (torch's fused AdamW: the same update rule in one
    pass over each parameter instead of several, the update equal up to float rounding) unless they
    choose an implementation (``fused`` or ``foreach``) or a parameter is not a floating-point tensor
    on a CPU or CUDA device."""
    if "fused" in optimizer_kwargs or "foreach" in optimizer_kwargs or not parameters:
        return dict(optimizer_kwargs)
    if not all(p.is_floating_point() and p.device.type in FUSED_OPTIMIZER_DEVICES for p in parameters):
        return dict(optimizer_kwargs)
    return {**optimizer_kwargs, "fused": True}


def masked_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``tokens`` under ``logits`` (``[B, T, V]`` and ``[B, T]``)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def apply_action_masks(logits: torch.Tensor, action_masks: Optional[torch.Tensor],
                       response_mask: torch.Tensor) -> torch.Tensor:
    """Response logits ``[B, T, V]`` with disallowed tokens (``action_masks`` False) pushed to the
    lowest finite value; positions outside ``response_mask`` (padding) allow every token.

    A finite fill keeps log-probs finite at padded positions, where multiplying by a zero
    mask must give zero (``-inf * 0`` would be NaN).
    """
    if action_masks is None:
        return logits
    allowed = action_masks | (response_mask == 0).unsqueeze(-1)
    return logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def log_probs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor,
                          entropy_grad: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`masked_log_probs` and :func:`entropy_from_logits` from one log-softmax (one ``[B, T, V]``
    float32 tensor kept for the backward pass instead of two). Without ``entropy_grad`` the entropy
    is a detached statistic, which spares its ``[B, T, V]`` backward (and, computed in place, one
    ``[B, T, V]`` temporary)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    if entropy_grad and torch.is_grad_enabled():
        entropy = -(log_p.exp() * log_p).sum(-1)
    else:
        with torch.no_grad():
            entropy = -log_p.exp().mul_(log_p).sum(-1)
    return log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy


class LMActorCriticPolicy(BasePolicy):
    """Actor-critic over an ``AutoModelFor*LM``; subclasses say how prompt and response are fed.

    Args (``alg.policy.args``):
        model_name: hub id, local folder, embedded tiny model (``rl4lms/tiny-gpt2``) or packaged model
            (``rl4lms/smollm2-135m-instruct``) of the actor (and the reference).
        gguf_file: a GGUF checkpoint's file name in the folder ``model_name``; it is converted once into
            a safetensors folder under ``$RL4LMS_CACHE``, which the run then loads.
        generation_kwargs: Hugging Face ``generate`` settings for rollouts (``max_new_tokens``,
            ``do_sample``, ``top_k``, ...); evaluation replaces them with ``train_evaluation.generation_kwargs``.
        shared_backbone: the value head sits on the actor's hidden states (True) or on a separate critic LM.
        weight_decay: AdamW weight decay.
        optimizer_kwargs: further AdamW arguments (``betas``, ``eps``; torch's fused AdamW unless they set
            ``fused`` or ``foreach``, e.g. ``fused: false`` for torch's loop over the parameters).
        apply_model_parallel: RL4LMs' flag; accepted and ignored (multi-device runs use ``accelerate launch``).
        prompt_truncation_side: where evaluation cuts an over-long prompt text ("left" or "right"), as
            RL4LMs' policy ``generate`` does; rollouts cut with ``env.args.prompt_truncation_side``.
        peft_config: LoRA settings (peft ``LoraConfig`` arguments); the reference is the adapter-free model.
        quantization: "4bit" or "8bit" (bitsandbytes, GPU only, with ``peft_config``).
        model, value_head, ref_model: modules built by the caller (from Python, e.g. TRL-style code),
            used as they are instead of loading ``model_name``: the actor (a ``peft`` model counts as
            LoRA: its reference is the model with the adapters off), its value head (shared backbone
            only) and the frozen reference (default: a copy of the actor).
        generation_engine: what samples rollouts and evaluation outputs: "hf" (Hugging Face ``generate``
            on the actor, the default) or "vllm" (vLLM in this process, fed the actor's weights after
            every update; causal LMs without NLPO's masks; docs/vllm.md).
        vllm: options of the vLLM engine (:class:`rl4lms.generation.vllm_engine.VLLMOptions`: ``dtype``,
            ``kv_cache_gib``, ``enforce_eager``, ``gpu_memory_utilization``, ``importance_sampling_cap``...).
        with_value_head, with_reference: set by the algorithm, not in configs (critic-free algorithms
            build no value head or critic, and no reference when no KL term needs one). Without a
            value head the policy's values are zeros; without a reference :meth:`reference_log_probs`
            refuses to run.
    """

    model_class: Type[PreTrainedModel]
    prompt_and_response_share_positions: bool
    """True when prompt and response form one sequence (causal LMs), so their lengths add up."""
    overrides_evaluate_actions = False
    """Set for subclasses that override :meth:`evaluate_actions` (RL4LMs' extension point)."""
    _warned_per_transition = False
    observation_layout: Optional[ObservationLayout] = None
    """The env's observation shape (set by the algorithm), for per-transition evaluation."""
    entropy_needs_grad = True
    """Whether training differentiates the entropy; the algorithm sets False when its loss has no
    entropy term (``ent_coef: 0``), and the entropy is then a statistic only."""
    samples_with_logits_processor = False
    """True for policies whose sampling applies their own per-step logits processor (NLPO's masks),
    which only the Hugging Face engine can run."""
    generation_context: Callable[[], ContextManager[None]] = contextlib.nullcontext
    """The context ``generate`` runs in (and evaluation, whose metrics may run the actor): sharded
    training (``rl4lms.training.sharding``) sets one that gathers the actor's weights."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "evaluate_actions" in vars(cls):
            cls.overrides_evaluate_actions = True

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Discrete,
                 lr_schedule: Callable[[float], float], model_name: str, tokenizer: PreTrainedTokenizerBase,
                 generation_kwargs: Optional[Dict[str, Any]] = None, shared_backbone: bool = True,
                 weight_decay: float = 1e-6, optimizer_kwargs: Optional[Dict[str, Any]] = None,
                 apply_model_parallel: bool = False, prompt_truncation_side: str = "left",
                 terminate_on_eos: bool = True, peft_config: Optional[Dict[str, Any]] = None,
                 quantization: Optional[str] = None, model: Optional[PreTrainedModel] = None,
                 value_head: Optional[nn.Module] = None, ref_model: Optional[PreTrainedModel] = None,
                 generation_engine: str = "hf", vllm: Optional[Dict[str, Any]] = None,
                 with_value_head: bool = True, with_reference: bool = True,
                 gguf_file: Optional[str] = None) -> None:
        super().__init__(observation_space, action_space, optimizer_class=torch.optim.AdamW,
                         optimizer_kwargs=optimizer_kwargs or {})
        if apply_model_parallel:
            logger.info("apply_model_parallel is ignored: run multi-device training through `accelerate launch`")
        if prompt_truncation_side not in ("left", "right"):
            raise ValueError(f"policy.args.prompt_truncation_side must be 'left' or 'right', got {prompt_truncation_side!r}")
        if gguf_file is not None:
            model_name = resolve_checkpoint(model_name, gguf_file)
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.prompt_truncation_side = prompt_truncation_side
        self.generation_kwargs = dict(generation_kwargs or {})
        self.terminate_on_eos = terminate_on_eos
        self.shared_backbone = shared_backbone
        if quantization is not None and peft_config is None:
            raise ValueError("policy.args.quantization needs policy.args.peft_config: a 4-/8-bit model is trained "
                             "through LoRA adapters")
        if value_head is not None and not shared_backbone:
            raise ValueError("a given value_head sits on the actor's hidden states: it needs shared_backbone true")
        self.model = model if model is not None else load_model(self.model_class, model_name,
                                                                  **quantization_kwargs(quantization))
        self._check_vocab()
        self.peft_config = peft_config
        if peft_config is not None:
            self.model = add_lora_adapters(self.model, peft_config)
        is_lora = peft_config is not None or getattr(self.model, "peft_config", None) is not None
        self.has_reference = with_reference or ref_model is not None
        # With LoRA the reference is the base model itself, with the adapters switched off.
        if ref_model is not None:
            self.ref_model = ref_model.requires_grad_(False)
        else:
            self.ref_model = None if is_lora or not with_reference else copy.deepcopy(self.model).requires_grad_(False)
        self.critic_model: Optional[PreTrainedModel] = None
        self.value_head: Optional[nn.Module] = value_head
        if value_head is None and with_value_head:
            self.critic_model, self.value_head = self._saved_or_new_critic(model_name, shared_backbone)
        for module in (self.model, self.ref_model, self.critic_model):
            if module is not None:
                use_fused_activations(module)
        # The modules the training forward passes go through: the modules themselves, or their
        # distributed wrappers after `wrap_trainable_modules`. A plain dict, so the wrappers are
        # not registered as submodules (the state dict keeps its keys).
        self.training_modules: Dict[str, nn.Module] = {"model": self.model}
        if self.value_head is not None:
            self.training_modules["value_head"] = self.value_head
        if self.critic_model is not None:
            self.training_modules["critic_model"] = self.critic_model
        self.temperature = float(self.generation_kwargs.get("temperature", 1.0))
        if not self.temperature > 0:
            raise ValueError(f"generation_kwargs.temperature must be > 0, got {self.temperature}")
        self.generation_config()  # fail now, not at the first rollout, on bad generation_kwargs
        self.engine: GenerationEngine = build_engine(self, generation_engine, vllm)
        self._set_eval_mode()
        trainable = [p for p in self.parameters() if p.requires_grad]
        self.optimizer = self.optimizer_class(trainable, lr=lr_schedule(1.0), weight_decay=weight_decay,
                                              **with_fused_default(trainable, self.optimizer_kwargs))

    # --- model plumbing -------------------------------------------------------------------------
    def _saved_or_new_critic(self, model_name: str, shared_backbone: bool) -> Tuple[Optional[PreTrainedModel], nn.Module]:
        """The critic of a folder saved with its value head (a continued run keeps its critic), else a
        new value head (on a copy of the actor for ``shared_backbone: false``)."""
        folder = Path(resolve_model_name(model_name))
        head_dir = folder if shared_backbone else folder / CRITIC_DIR
        critic = None
        if not shared_backbone:
            critic = load_model(self.model_class, str(head_dir)) if head_dir.is_dir() else copy.deepcopy(self.model)
        head = ValueHead(hidden_size((critic or self.model).config))
        if (head_dir / VALUE_HEAD_FILE).is_file():
            head.load_state_dict(load_file(str(head_dir / VALUE_HEAD_FILE)))
            logger.info("value head read from %s", head_dir / VALUE_HEAD_FILE)
        elif ((folder / CRITIC_DIR) if shared_backbone else folder).joinpath(VALUE_HEAD_FILE).is_file():
            logger.warning("%s was saved with %s critic; this policy (shared_backbone: %s) starts a new value head",
                           model_name, "a separate" if shared_backbone else "a shared-backbone", shared_backbone)
        return critic, head

    def _check_vocab(self) -> None:
        vocab = self.model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > vocab:
            raise ValueError(f"tokenizer has {len(self.tokenizer)} tokens but model '{self.model_name}' only "
                             f"{vocab} embeddings: tokenizer.model_name and policy.args.model_name must match")

    def positions_needed(self, prompt_length: int, response_length: int) -> Tuple[int, Optional[int]]:
        """(positions a prompt and response of these lengths take, the model's limit or None)."""
        needed = prompt_length + response_length if self.prompt_and_response_share_positions else \
            max(prompt_length, response_length)
        return needed, getattr(self.model.config, "max_position_embeddings", None) or None

    def check_lengths(self, max_prompt_length: int, max_episode_length: int) -> None:
        """Raise if prompts plus generated tokens cannot fit the model's position embeddings."""
        needed, limit = self.positions_needed(max_prompt_length, max_episode_length)
        if limit is not None and needed > limit:
            what = "max_prompt_length + max_episode_length" if self.prompt_and_response_share_positions else \
                "max_prompt_length and max_episode_length"
            raise ValueError(f"env.args: {what} = {needed} exceeds the {limit} positions of model "
                             f"'{self.model_name}'; lower them or truncate prompts further")

    def _set_eval_mode(self) -> None:
        # Dropout stays off in every phase: sampling, old log-probs and the update must see the
        # same distribution for the PPO ratio to mean anything.
        super().train(False)

    def set_training_mode(self, mode: bool) -> None:
        self._set_eval_mode()

    def train(self, mode: bool = True) -> "LMActorCriticPolicy":
        self._set_eval_mode()
        return self

    @abstractmethod
    def _forward(self, model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 response_ids: torch.Tensor, response_mask: torch.Tensor,
                 want_hidden: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits predicting each response token ``[B, T, V]`` and the hidden states there ``[B, T, H]``."""

    @abstractmethod
    def _response_from_sequences(self, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """Strip what ``generate`` returns down to the generated tokens."""

    @abstractmethod
    def start_decoding(self, model: PreTrainedModel, prompt_ids: torch.Tensor,
                       prompt_mask: torch.Tensor) -> Tuple[torch.Tensor, DecodingState]:
        """Logits ``[B, V]`` of ``model`` for the first response token, and the cache to continue from."""

    @abstractmethod
    def continue_decoding(self, model: PreTrainedModel, state: DecodingState, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, V]`` for the token after ``tokens`` ``[B, 1]`` (the last response token), from
        ``state``'s cache, which is advanced by one position."""

    # --- rollout / training API -----------------------------------------------------------------
    def generation_config(self, overrides: Optional[Dict[str, Any]] = None, max_new_tokens: Optional[int] = None,
                          replace_policy_kwargs: bool = False) -> GenerationConfig:
        """Generation settings: the policy's ``generation_kwargs`` updated by ``overrides``, or (with
        ``replace_policy_kwargs``, as evaluation does in RL4LMs) ``overrides`` alone when given."""
        if replace_policy_kwargs and overrides:
            kwargs = dict(overrides)
        else:
            kwargs = {**self.generation_kwargs, **(overrides or {})}
        if kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("generation_kwargs.num_return_sequences must be 1: each prompt is one episode")
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = min(int(kwargs.get("max_new_tokens", max_new_tokens)), max_new_tokens)
        base = self.model.generation_config.to_dict()
        base.update(kwargs)
        base["pad_token_id"] = self.tokenizer.pad_token_id
        # Without terminate_on_eos an episode always runs max_episode_length tokens: EOS is a normal
        # token. An empty list (not None, which falls back to the model default) disables stopping.
        base["eos_token_id"] = self.tokenizer.eos_token_id if self.terminate_on_eos else []
        return GenerationConfig(**base)

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, generation_config: GenerationConfig,
                 logits_processor: Optional[LogitsProcessorList] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sample responses for left-padded prompts through the policy's engine; returns
        ``(response_ids, response_mask)``.

        The mask covers the generated tokens up to and including the first EOS (or all of them
        when ``terminate_on_eos`` is off); positions after it hold the pad id.
        """
        out = self.engine.generate(prompt_ids, prompt_mask, generation_config, logits_processor=logits_processor)
        return self._finish_response(out.response_ids)

    def _finish_response(self, response: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Generated tokens and their mask, pad ids after each episode's end."""
        mask = response_mask_after_eos(response, self.tokenizer.eos_token_id, self.terminate_on_eos)
        response = response.masked_fill(mask == 0, self.tokenizer.pad_token_id)
        return response, mask

    @torch.no_grad()
    def sample_actions(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                       generation_config: GenerationConfig, logits_processor: Optional[LogitsProcessorList] = None,
                       step_outputs: bool = True) -> SampledActions:
        """Rollout generation: the responses plus what the engine computed while sampling (the
        default engine: the actor's raw logits and last hidden states at each generated position,
        so the rollout needs no second forward of the actor; vLLM: its own sampled-token log-probs).
        ``step_outputs`` False: no logits or hidden states are kept (the caller's update computes the
        log-probs in its own forward)."""
        out = self.engine.generate(prompt_ids, prompt_mask, generation_config, logits=step_outputs,
                                   hidden=step_outputs and self.value_head is not None,
                                   logits_processor=logits_processor)
        response, mask = self._finish_response(out.response_ids)
        engine_log_probs = None if out.sampled_log_probs is None else out.sampled_log_probs * mask
        return SampledActions(response, mask, step_logits=out.step_logits, step_hidden=out.step_hidden,
                              engine_log_probs=engine_log_probs)

    @torch.no_grad()
    def rollout_outputs(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        sampled: SampledActions) -> PolicyOutput:
        """Log-probs, entropy and values of sampled responses. With a shared backbone they come from
        the logits and hidden states ``generate`` already computed; a separate critic LM or an
        :meth:`evaluate_actions` override needs :meth:`evaluate_episodes`."""
        if self.rollout_needs_forward(sampled):
            return self.evaluate_episodes(prompt_ids, prompt_mask, sampled.response_ids, sampled.response_mask,
                                          sampled.action_masks)
        values = self.value_head(sampled.step_hidden) if self.value_head is not None else None
        return self._outputs_from_logits(self.temperature_scaled(sampled.step_logits), values, sampled.response_ids,
                                         sampled.response_mask, sampled.action_masks, self.entropy_needs_grad)

    def rollout_needs_forward(self, sampled: SampledActions) -> bool:
        """Whether :meth:`rollout_outputs` needs a forward of its own: a separate critic LM, an
        :meth:`evaluate_actions` override, or an engine that returned no logits (or no hidden
        states for the value head) while sampling."""
        return (self.critic_model is not None or sampled.step_logits is None
                or (self.value_head is not None and sampled.step_hidden is None)
                or type(self).overrides_evaluate_actions)

    def temperature_scaled(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits / temperature``; at temperature 1 the logits themselves (the same values without
        a copy of the ``[B, T, V]`` tensor and its backward step)."""
        return logits if self.temperature == 1.0 else logits / self.temperature

    def response_logits(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                        response_mask: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled logits ``[B, T, V]`` of the actor at each response position."""
        logits, _ = self._forward(self.model, prompt_ids, prompt_mask, response_ids, response_mask, want_hidden=False)
        return self.temperature_scaled(logits)

    def evaluate_episodes(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                          response_mask: torch.Tensor, action_masks: Optional[torch.Tensor] = None) -> PolicyOutput:
        """Log-probs, entropy and values of the response tokens, from one batched forward.

        With ``action_masks`` the log-probs and entropy are those of the masked distribution
        the tokens were sampled from (NLPO); ``unmasked_log_probs`` are always unmasked.
        A subclass that overrides RL4LMs' :meth:`evaluate_actions` is evaluated through it instead,
        one transition per token (:meth:`episodes_through_transitions`).
        """
        if type(self).overrides_evaluate_actions:
            return self.episodes_through_transitions(prompt_ids, prompt_mask, response_ids, response_mask,
                                                     action_masks)
        return self.forward_episodes(prompt_ids, prompt_mask, response_ids, response_mask, action_masks)

    def forward_episodes(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                         response_mask: torch.Tensor, action_masks: Optional[torch.Tensor] = None) -> PolicyOutput:
        """The batched forward behind :meth:`evaluate_episodes` (never routed through an override)."""
        modules = self.training_modules
        has_values = "value_head" in modules
        logits, hidden = self._forward(modules["model"], prompt_ids, prompt_mask, response_ids, response_mask,
                                       want_hidden=self.shared_backbone and has_values)
        logits = self.temperature_scaled(logits)
        if "critic_model" in modules:
            _, hidden = self._forward(modules["critic_model"], prompt_ids, prompt_mask, response_ids, response_mask,
                                      want_hidden=True)
        values = None
        if has_values:
            assert hidden is not None
            values = modules["value_head"](hidden)
        return self._outputs_from_logits(logits, values, response_ids, response_mask, action_masks,
                                         self.entropy_needs_grad)

    # --- RL4LMs' per-transition API ---------------------------------------------------------------
    def evaluate_actions(self, obs: Dict[str, torch.Tensor], actions: torch.Tensor,
                         action_masks: Optional[torch.Tensor] = None) -> EvaluateActionsOutput:
        """RL4LMs' ``evaluate_actions(obs, actions)``: values, log-probs and entropy of one action per
        observation (env observation tensors ``[N, width]``, actions ``[N]``, NLPO's ``action_masks``
        ``[N, vocab]``). Each transition re-reads its whole prompt and context, as RL4LMs does, so this
        is much slower than :meth:`evaluate_episodes`; it serves RL4LMs-style algorithms and overrides."""
        prompt, prompt_mask = obs["prompt_or_input_encoded_pt"], obs["prompt_or_input_attention_mask_pt"]
        history, history_mask = obs["context_encoded_pt"], obs["context_attention_mask_pt"]
        if self.observation_layout is not None and self.observation_layout.context_start_token is not None:
            history, history_mask = history[:, 1:], history_mask[:, 1:]
        lengths = history_mask.sum(1)
        width = int(lengths.max()) + 1 if len(lengths) else 1
        rows = torch.arange(len(actions), device=actions.device)
        response = history.new_full((len(actions), width), self.tokenizer.pad_token_id)
        response_mask = (torch.arange(width, device=actions.device)[None] <= lengths[:, None]).long()
        response[:, :width - 1] = history[:, :width - 1]
        response[rows, lengths] = actions.long()
        masks = None
        if action_masks is not None:
            masks = action_masks.new_ones((len(actions), width, action_masks.shape[-1]))
            masks[rows, lengths] = action_masks
        out = self.forward_episodes(prompt.long(), prompt_mask.long(), response, response_mask, masks)
        return EvaluateActionsOutput(values=out.values[rows, lengths], log_prob=out.log_probs[rows, lengths],
                                     entropy=out.entropy[rows, lengths])

    def episodes_through_transitions(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                                     response_ids: torch.Tensor, response_mask: torch.Tensor,
                                     action_masks: Optional[torch.Tensor] = None) -> PolicyOutput:
        """:meth:`evaluate_episodes` for a subclass that overrides :meth:`evaluate_actions`: every
        response token becomes an observation, the override evaluates them, and the results are put
        back in ``[B, T]`` form. The unmasked log-probs (NLPO's KL) come from the actor's batched forward."""
        if not vars(type(self)).get("_warned_per_transition"):  # once per class, not inherited
            type(self)._warned_per_transition = True
            logger.warning("%s overrides evaluate_actions(obs, actions) (RL4LMs' per-transition signature): "
                           "training evaluates one transition per generated token, which is slower than the "
                           "batched path", type(self).__name__)
        layout = self.observation_layout or ObservationLayout(prompt_ids.shape[1], response_ids.shape[1], None,
                                                              self.tokenizer.pad_token_id)
        obs, actions, rows, cols = layout.transitions(prompt_ids, prompt_mask, response_ids, response_mask)
        extra = {} if action_masks is None else {"action_masks": action_masks[rows, cols]}
        result = self.evaluate_actions(obs, actions, **extra)

        def scattered(values: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(response_ids.shape, dtype=values.dtype, device=values.device)
            out[rows, cols] = values.reshape(-1)
            return out

        log_probs = scattered(result.log_prob)
        unmasked = log_probs
        if action_masks is not None:
            with torch.no_grad():
                unmasked = self.forward_episodes(prompt_ids, prompt_mask, response_ids, response_mask).log_probs
        return PolicyOutput(log_probs=log_probs, entropy=scattered(result.entropy), values=scattered(result.values),
                            unmasked_log_probs=unmasked)

    @staticmethod
    def _outputs_from_logits(logits: torch.Tensor, values: Optional[torch.Tensor], response_ids: torch.Tensor,
                             response_mask: torch.Tensor, action_masks: Optional[torch.Tensor],
                             entropy_grad: bool = True) -> PolicyOutput:
        """Log-probs and entropy of the response tokens under ``logits``; ``values`` None (a policy
        without a value head) become zeros."""
        if values is None:
            values = torch.zeros(response_ids.shape, dtype=torch.float32, device=logits.device)
        if action_masks is None:
            log_probs, entropy = log_probs_and_entropy(logits, response_ids, entropy_grad)
            return PolicyOutput(log_probs=log_probs, entropy=entropy, values=values, unmasked_log_probs=log_probs)
        log_probs, entropy = log_probs_and_entropy(apply_action_masks(logits, action_masks, response_mask),
                                                   response_ids, entropy_grad)
        return PolicyOutput(log_probs=log_probs, entropy=entropy, values=values,
                            unmasked_log_probs=masked_log_probs(logits, response_ids))

    def wrap_trainable_modules(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Route the training forwards through ``wrap(module)`` (e.g. ``accelerator.prepare_model``,
        which adds DDP gradient synchronisation or mixed precision); generation, the reference
        model and the saved weights keep using the modules themselves."""
        self.training_modules = {name: wrap(module) for name, module in self.training_modules.items()}

    def predict_values(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                       response_mask: torch.Tensor) -> torch.Tensor:
        """Values of the response positions where only the critic learns: with a shared backbone
        the backbone's features are detached, so the gradient reaches the value head alone."""
        if self.value_head is None:
            raise RuntimeError("this policy was built without a value head (a critic-free algorithm's policy)")
        if self.critic_model is not None:
            _, hidden = self._forward(self.critic_model, prompt_ids, prompt_mask, response_ids, response_mask,
                                      want_hidden=True)
        else:
            with torch.no_grad():
                _, hidden = self._forward(self.model, prompt_ids, prompt_mask, response_ids, response_mask,
                                          want_hidden=True)
        assert hidden is not None
        return self.value_head(hidden)

    @torch.no_grad()
    def reference_logits(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                         response_mask: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled logits ``[B, T, V]`` of the frozen reference model at each response
        position (with LoRA: the base model, adapters disabled)."""
        if not self.has_reference:
            raise RuntimeError("this policy was built without a reference model (no KL term needs one: "
                               "alg.args.beta is 0 and alg.kl_div.coeff is 0 or absent)")
        if self.ref_model is None:
            with self.model.disable_adapter():
                logits, _ = self._forward(self.model, prompt_ids, prompt_mask, response_ids, response_mask,
                                          want_hidden=False)
        else:
            logits, _ = self._forward(self.ref_model, prompt_ids, prompt_mask, response_ids, response_mask,
                                      want_hidden=False)
        return self.temperature_scaled(logits)

    @torch.no_grad()
    def reference_log_probs(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                            response_mask: torch.Tensor) -> torch.Tensor:
        """Log-probs of the response tokens under the frozen reference model."""
        return masked_log_probs(self.reference_logits(prompt_ids, prompt_mask, response_ids, response_mask),
                                response_ids)

    # --- SB3 BasePolicy API ---------------------------------------------------------------------
    @abstractmethod
    def next_token_logits(self, observation: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, V]`` of the next token for batched env observations."""

    @torch.no_grad()
    def _predict(self, observation: Dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        """Next token for SB3-style ``predict`` on env observations (one token per call)."""
        logits = self.temperature_scaled(self.next_token_logits(observation))
        if deterministic:
            return logits.argmax(-1)
        return torch.distributions.Categorical(logits=logits.float()).sample()

    # --- persistence ----------------------------------------------------------------------------
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """State without the frozen reference model (it is rebuilt from ``model_name``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(REFERENCE_PREFIX)}

    def load_trainable_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(REFERENCE_PREFIX)]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not match the policy: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")

    def save_pretrained(self, out_dir: Path, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """Hugging Face folder of the actor LM + tokenizer, plus the value head's weights. With a
        separate critic LM the head belongs to that LM: both go to ``critic/``, itself a value-head
        model folder. ``state_dict`` (keys of :meth:`trainable_state_dict`) replaces the modules' own
        weights: a sharded run passes its gathered full weights."""
        def part(prefix: str) -> Optional[Dict[str, torch.Tensor]]:
            if state_dict is None:
                return None
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}

        save_model(self.model, out_dir, part("model."))
        self.tokenizer.save_pretrained(out_dir)
        if self.value_head is None:
            return
        head_dir = out_dir
        if self.critic_model is not None:
            head_dir = out_dir / CRITIC_DIR
            save_model(self.critic_model, head_dir, part("critic_model."))
            self.tokenizer.save_pretrained(head_dir)
        save_value_head(self.value_head, head_dir, part("value_head."))


def response_mask_after_eos(response: torch.Tensor, eos_token_id: Optional[int], terminate_on_eos: bool) -> torch.Tensor:
    """1 for tokens up to and including the first EOS, 0 after it (all 1 without ``terminate_on_eos``)."""
    if not terminate_on_eos or eos_token_id is None:
        return torch.ones_like(response)
    is_eos = (response == eos_token_id).long()
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos
    return (eos_before == 0).long()


def ended_with_eos(response_ids: torch.Tensor, response_mask: torch.Tensor, eos_token_id: Optional[int]) -> torch.Tensor:
    """Whether each episode's last token ``[B]`` is EOS, i.e. the completion was not cut at the
    length limit (all False without an EOS token)."""
    if eos_token_id is None:
        return torch.zeros(response_ids.shape[0], dtype=torch.bool, device=response_ids.device)
    last = (response_mask.sum(1) - 1).clamp(min=0)
    return (response_mask.sum(1) > 0) & (response_ids.gather(1, last[:, None]).squeeze(1) == eos_token_id)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers ``module`` holds (a tensor shared by two submodules, such
    as tied embeddings, counted once): ``weight_bytes(policy) / weight_bytes(policy.model)`` is the
    memory a policy holds relative to its actor's weights."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def response_tokens(response_ids: torch.Tensor, response_mask: torch.Tensor) -> List[List[int]]:
    """Each episode's generated token ids, without the padding after its end."""
    return [row[:n] for row, n in zip(response_ids.tolist(), response_mask.sum(1).tolist())]


def module_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: that of its parameters, or for a sharded (DTensor)
    parameter its mesh's device, whose shard may be offloaded to the CPU."""
    param = next(module.parameters())
    mesh = getattr(param, "device_mesh", None)
    return torch.device(mesh.device_type) if mesh is not None else param.device
