"""TRL's ``AutoModelForCausalLMWithValueHead`` / ``AutoModelForSeq2SeqLMWithValueHead``.

The project's value-head models (:mod:`rl4lms.models.value_head`) with TRL's behaviour:

* ``from_pretrained`` takes TRL's keyword arguments: ``summary_dropout_prob`` (dropout before the
  head, default 0.1 as in TRL; a ``summary_dropout_prob`` in the LM's config wins, as in TRL),
  ``v_head_init_strategy`` (None: torch's default ``Linear`` init, as TRL's; "normal": normal with
  std ``v_head_initializer_range``, default 0.2, and a zero bias), ``peft_config`` (a ``peft``
  config object or a dict of LoRA arguments), ``reward_adapter`` / ``reward_adapter_name`` (a
  reward model's LoRA adapter for :meth:`compute_reward_score`), ``is_trainable`` (whether the
  adapters of a LoRA folder train); ``load_in_8bit`` / ``load_in_4bit`` become a
  ``BitsAndBytesConfig`` on a GPU and a clear refusal without one; the others go to the LM's
  ``from_pretrained``;
* a plain LM gets a fresh head (TRL's behaviour; the project's own classes refuse instead); an LM
  without an LM head (none of ``lm_head_namings``) is refused;
* checkpoints go both ways: the head is read from ``value_head.safetensors`` (this project) or from
  the ``v_head.*`` keys inside the LM's weights file (TRL: ``model.safetensors``, its shards, or
  ``pytorch_model.bin``), and ``save_pretrained`` writes both, so TRL reads the folder with its head.
  A LoRA folder (``adapter_config.json``) loads its base model and adapters; saved here it also
  holds the head in ``pytorch_model.bin``, where TRL reads it.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from rl4lms.models.loading import load_model, resolve_model_name
from rl4lms.models.lora import add_lora_adapters, quantization_kwargs
from rl4lms.models.value_head import AutoModelForCausalLMWithValueHead as _CausalWithValueHead
from rl4lms.models.value_head import AutoModelForSeq2SeqLMWithValueHead as _Seq2SeqWithValueHead
from rl4lms.models.value_head import _ModelWithValueHead, save_value_head

logger = logging.getLogger(__name__)

V_HEAD_PREFIX = "v_head."
VALUE_HEAD_ARGS = ("summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
TRL_PEFT_HEAD_FILE = "pytorch_model.bin"
"""Where TRL keeps the value head of a LoRA model's folder (``v_head.*`` keys only)."""
POLICY_ADAPTER = "default"
SCORE_MODULE = "score"
"""The reward model's head inside a sequence-classification adapter (TRL's ``supported_rm_modules``)."""
QUANTIZATION_FLAGS = {"load_in_8bit": "8bit", "load_in_4bit": "4bit"}


def trl_value_head_weights(folder: Path) -> Dict[str, torch.Tensor]:
    """The ``v_head.*`` tensors TRL stores inside a model folder's weights, keys without the prefix."""
    files = []
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index_name).is_file():
            weight_map = json.loads((folder / index_name).read_text())["weight_map"]
            files = sorted({folder / name for key, name in weight_map.items() if key.startswith(V_HEAD_PREFIX)})
            break
    else:
        files = [path for path in (folder / "model.safetensors", folder / "pytorch_model.bin") if path.is_file()][:1]
    weights: Dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                weights.update({key[len(V_HEAD_PREFIX):]: handle.get_tensor(key) for key in handle.keys()
                                if key.startswith(V_HEAD_PREFIX)})
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            weights.update({key[len(V_HEAD_PREFIX):]: value for key, value in state.items()
                            if key.startswith(V_HEAD_PREFIX)})
    return weights


def _translate_quantization_flags(kwargs: Dict[str, Any]) -> None:
    """Turn transformers 4's ``load_in_8bit=True`` / ``load_in_4bit=True`` (which transformers 5
    rejects) into a ``BitsAndBytesConfig`` on a GPU, or one clear refusal without one."""
    for flag, quantization in QUANTIZATION_FLAGS.items():
        if kwargs.pop(flag, False):
            for key, value in quantization_kwargs(quantization, key=flag, setting=f"{flag}=True").items():
                kwargs.setdefault(key, value)


def _adapter_folder(adapter: str) -> Path:
    """The local folder of a LoRA adapter given as a folder or hub id (downloaded)."""
    if Path(adapter).is_dir():
        return Path(adapter)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(adapter, allow_patterns=[ADAPTER_CONFIG, *ADAPTER_WEIGHTS]))
    except Exception as error:  # any hub failure: offline, unknown repo, no access
        raise ValueError(f"reward_adapter {adapter!r} is neither a folder nor a reachable hub repository "
                         f"({type(error).__name__}); pass the folder of a saved LoRA adapter") from error


def _score_head(folder: Path) -> torch.nn.Linear:
    """The reward model's ``score`` layer, read from the adapter's weights file in ``folder``."""
    path = next((folder / name for name in ADAPTER_WEIGHTS if (folder / name).is_file()), None)
    if path is None:
        raise ValueError(f"reward adapter {folder} has no {' or '.join(ADAPTER_WEIGHTS)}")
    state = load_file(str(path)) if path.suffix == ".safetensors" else \
        torch.load(str(path), map_location="cpu", weights_only=True)
    score = {key.rsplit(".", 1)[-1]: value for key, value in state.items() if SCORE_MODULE in key.split(".")}
    if "weight" not in score:
        raise ValueError(f"reward adapter {folder} has no '{SCORE_MODULE}' head in {path.name}: save the reward "
                         "model's adapter from a sequence classifier (task_type='SEQ_CLS')")
    num_labels, hidden = score["weight"].shape
    head = torch.nn.Linear(hidden, num_labels, bias="bias" in score)
    head.load_state_dict(score)
    return head


class _ValueHeadKeysFilter(logging.Filter):
    """Drops transformers' load report when the only keys it reports are the ``v_head.*`` ones that a
    TRL folder keeps inside the LM's weights (they are read separately, not lost)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        reported = [line.split("|")[0].strip() for line in message.splitlines()
                    if line.count("|") >= 2 and line.split("|")[1].strip() in ("UNEXPECTED", "MISSING", "MISMATCH")]
        return not reported or not all(key.startswith(V_HEAD_PREFIX) for key in reported)


@contextlib.contextmanager
def _quiet_about_value_head_keys() -> Iterator[None]:
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    quiet = _ValueHeadKeysFilter()
    transformers_logger.addFilter(quiet)
    try:
        yield
    finally:
        transformers_logger.removeFilter(quiet)


class _TRLModelWithValueHead(_ModelWithValueHead):
    """TRL's loading and saving on top of the project's value-head model."""

    def __init__(self, pretrained_model: Any, summary_dropout_prob: Optional[float] = 0.1,
                 v_head_initializer_range: float = 0.2, v_head_init_strategy: Optional[str] = None) -> None:
        # As in TRL, a ``summary_dropout_prob`` in the LM's config wins over the argument.
        summary_dropout_prob = getattr(pretrained_model.config, "summary_dropout_prob", summary_dropout_prob)
        super().__init__(pretrained_model, summary_dropout_prob)
        if v_head_init_strategy is None:
            self.v_head.summary.reset_parameters()  # TRL's head: torch's default Linear init, bias included
        elif v_head_init_strategy == "normal":
            torch.nn.init.normal_(self.v_head.summary.weight, std=v_head_initializer_range)
            torch.nn.init.zeros_(self.v_head.summary.bias)
        else:
            raise ValueError(f"v_head_init_strategy must be None or 'normal', got {v_head_init_strategy!r}")
        self.score: Optional[torch.nn.Linear] = None
        """The reward adapter's frozen score head (``reward_adapter``), None without one."""
        self.rm_adapter_name: Optional[str] = None
        self.policy_adapter_name = POLICY_ADAPTER

    @property
    def supports_rm_adapter(self) -> bool:
        """Whether a reward adapter was loaded (TRL's attribute)."""
        return self.score is not None

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """The LM's gradient checkpointing (TRL's wrapper passes the call on)."""
        self.pretrained_model.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.pretrained_model.gradient_checkpointing_disable()

    @property
    def is_peft_model(self) -> bool:
        """Whether the LM carries ``peft`` adapters (TRL's attribute)."""
        return getattr(self.pretrained_model, "peft_config", None) is not None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any:
        """A hub id, folder (a LoRA adapter folder too) or built LM with a value head: read from the
        folder when it has one (either format), a fresh one otherwise. See the module docstring for
        the arguments."""
        head_args = {name: kwargs.pop(name) for name in VALUE_HEAD_ARGS if name in kwargs}
        peft_config = kwargs.pop("peft_config", None)
        reward_adapter = kwargs.pop("reward_adapter", None)
        reward_adapter_name = kwargs.pop("reward_adapter_name", "reward_adapter")
        is_trainable = kwargs.pop("is_trainable", False)
        _translate_quantization_flags(kwargs)
        if isinstance(pretrained_model_name_or_path, torch.nn.Module):
            lm, folder = pretrained_model_name_or_path, None
        elif not isinstance(pretrained_model_name_or_path, (str, Path)):
            raise ValueError(f"pretrained_model_name_or_path must be a model name, a folder or a model, got "
                             f"{type(pretrained_model_name_or_path).__name__}")
        else:
            folder = Path(resolve_model_name(str(pretrained_model_name_or_path)))
            if (folder / ADAPTER_CONFIG).is_file():
                if peft_config is not None:
                    logger.warning("peft_config is ignored: %s holds trained LoRA adapters", folder)
                    peft_config = None
                lm = cls._load_adapter_folder(folder, is_trainable, **kwargs)
            else:
                with _quiet_about_value_head_keys():
                    lm = load_model(cls.transformers_parent_class, str(pretrained_model_name_or_path), **kwargs)
        if peft_config is not None:
            lm = add_lora_adapters(lm, peft_config, key="peft_config")
        model = cls(lm, **head_args)
        model.v_head.to(next(lm.parameters()).device)
        if reward_adapter is not None:
            model.load_reward_adapter(reward_adapter, reward_adapter_name)
        if folder is not None and model.load_saved_value_head(folder):
            return model
        weights = trl_value_head_weights(folder) if folder is not None and folder.is_dir() else {}
        if weights:
            model.v_head.load_state_dict(weights)
        else:
            logger.info("%s has no value head weights; starting a new value head", pretrained_model_name_or_path)
        return model

    @classmethod
    def _load_adapter_folder(cls, folder: Path, is_trainable: bool, **kwargs: Any) -> Any:
        """The base model named in ``folder``'s adapter config with the folder's LoRA adapters
        (trainable with ``is_trainable``, as in TRL)."""
        from peft import PeftConfig, PeftModel

        base_name = PeftConfig.from_pretrained(str(folder)).base_model_name_or_path
        if not base_name:
            raise ValueError(f"{folder / ADAPTER_CONFIG} names no base_model_name_or_path to load the adapters onto")
        base = load_model(cls.transformers_parent_class, base_name, **kwargs)
        return PeftModel.from_pretrained(base, str(folder), is_trainable=is_trainable)

    def load_reward_adapter(self, adapter: Union[str, Path], adapter_name: str = "reward_adapter") -> None:
        """Load a reward model's LoRA adapter (a folder or hub id saved from a ``peft`` sequence
        classifier: adapters plus its ``score`` head) next to the policy's adapters, frozen, for
        :meth:`compute_reward_score` (TRL's ``reward_adapter`` argument)."""
        if not isinstance(adapter, (str, Path)):
            raise ValueError(f"reward_adapter must be a folder or hub id of a reward model's LoRA adapter, got "
                             f"{type(adapter).__name__}")
        if not self.is_peft_model:
            raise ValueError("reward_adapter needs a model with LoRA adapters (peft): pass peft_config=... to "
                             "from_pretrained, or a peft model")
        folder = _adapter_folder(str(adapter))
        self.pretrained_model.load_adapter(str(folder), adapter_name, is_trainable=False)
        self.pretrained_model.set_adapter(self.policy_adapter_name)
        lm_weight = next(self.pretrained_model.parameters())
        self.score = _score_head(folder).to(device=lm_weight.device, dtype=lm_weight.dtype).requires_grad_(False)
        self.rm_adapter_name = adapter_name

    def compute_reward_score(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                             **kwargs: Any) -> torch.Tensor:
        """The reward adapter's scores ``[batch, length, labels]`` at every position (TRL's method:
        the caller picks the last token's), with the policy's adapters active again afterwards."""
        if self.score is None:
            raise ValueError("this model has no reward adapter: load it with from_pretrained(..., "
                             "reward_adapter=<folder of a reward model's LoRA adapter>)")
        lm, training = self.pretrained_model, self.pretrained_model.training
        lm.set_adapter(self.rm_adapter_name)
        lm.eval()
        try:
            with torch.no_grad():
                output = lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                            return_dict=True, **kwargs)
                return self.score(output.hidden_states[-1].to(self.score.weight.dtype))
        finally:
            lm.set_adapter(self.policy_adapter_name)  # (peft also makes the active adapter trainable again)
            lm.train(training)

    def state_dict(self, *args: Any, **kwargs: Any) -> Dict[str, torch.Tensor]:
        """TRL's layout: the LM's keys (no ``pretrained_model.`` prefix) plus ``v_head.*``."""
        state = self.pretrained_model.state_dict(*args, **kwargs)
        state.update({V_HEAD_PREFIX + key: value for key, value in self.v_head.state_dict().items()})
        return state

    def save_pretrained(self, out_dir: Any, **kwargs: Any) -> None:
        """The LM's folder with ``v_head.*`` inside its weights file (TRL reads it) and
        ``value_head.safetensors`` (this project reads it). A LoRA model: the adapters, with the head
        in ``pytorch_model.bin`` (where TRL keeps it for LoRA models) and ``value_head.safetensors``."""
        out_dir = Path(out_dir)
        if self.is_peft_model:
            kwargs.pop("state_dict", None)
            super().save_pretrained(out_dir, **kwargs)
            torch.save({V_HEAD_PREFIX + key: value for key, value in self.v_head.state_dict().items()},
                       out_dir / TRL_PEFT_HEAD_FILE)
            return
        kwargs.setdefault("state_dict", self.state_dict())
        self.pretrained_model.save_pretrained(out_dir, **kwargs)
        save_value_head(self.v_head, out_dir)


class AutoModelForCausalLMWithValueHead(_TRLModelWithValueHead, _CausalWithValueHead):
    """TRL's causal LM with a value head (``v_head``, ``pretrained_model``); ``forward`` returns
    ``(lm_logits, loss, value)``."""


class AutoModelForSeq2SeqLMWithValueHead(_TRLModelWithValueHead, _Seq2SeqWithValueHead):
    """TRL's encoder-decoder LM with a value head on the decoder's last hidden state."""


__all__ = ["AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead"]
