"""Model and tokenizer loading: tiny-model builds, local folders, pad-less tokenizers, offline errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import write_small_config
from rl4lms.cli import main
from rl4lms.errors import ModelLoadError
from rl4lms.models.loading import load_model, load_tokenizer, resolve_model_name
from rl4lms.models.tiny import write_tiny_model


def test_tiny_models_are_built_deterministically(tmp_path: Path) -> None:
    first = write_tiny_model("rl4lms/tiny-gpt2", tmp_path / "a")
    second = write_tiny_model("rl4lms/tiny-gpt2", tmp_path / "b")
    a, b = AutoModelForCausalLM.from_pretrained(first), AutoModelForCausalLM.from_pretrained(second)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name
    assert AutoTokenizer.from_pretrained(first).get_vocab() == AutoTokenizer.from_pretrained(second).get_vocab()


def test_tiny_name_resolves_to_a_cached_folder() -> None:
    folder = Path(resolve_model_name("rl4lms/tiny-t5"))
    assert (folder / "config.json").exists() and (folder / "tokenizer.json").exists()
    assert resolve_model_name("rl4lms/tiny-t5") == str(folder)
    assert resolve_model_name("gpt2") == "gpt2"


def test_tiny_tokenizer_has_distinct_special_tokens(tiny_tokenizer) -> None:
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.padding_side == "left"


def test_missing_model_path_raises_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="(?s)could not load model .*missing.*the folder does not exist"):
        load_model(AutoModelForCausalLM, str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="not in the local cache and the hub .* cannot be reached .*rl4lms/tiny-gpt2"):
        load_model(AutoModelForCausalLM, "rl4lms-no-such-org/no-such-model")


def test_an_unreachable_hub_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from rl4lms.models.loading import hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://rl4lms-no-such-host.invalid")
    hub_reachable.cache_clear()
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="hub \\(https://rl4lms-no-such-host.invalid\\) cannot be reached"):
        load_model(AutoModelForCausalLM, "rl4lms-no-such-org/no-such-model")
    assert time.perf_counter() - start < 10  # no retries against a hub that is not there
    hub_reachable.cache_clear()


def _padless_tiny_gpt2(folder: Path) -> Path:
    """A GPT-2-like folder whose tokenizer, like GPT-2's, has no pad token."""
    write_tiny_model("rl4lms/tiny-gpt2", folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    return folder


def test_a_saved_model_with_a_flipped_byte_is_refused_before_it_loads(tmp_path: Path) -> None:
    from rl4lms.manifest import write_manifest

    folder = tmp_path / "model"
    write_tiny_model("rl4lms/tiny-gpt2", folder)
    write_manifest(folder)
    assert load_model(AutoModelForCausalLM, str(folder)) is not None
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    (folder / "manifest.json").touch()  # a new modification time: checked again in this process
    with pytest.raises(ModelLoadError, match="model.safetensors differs from what was written") as excinfo:
        load_model(AutoModelForCausalLM, str(folder))
    assert "\n" not in str(excinfo.value)


def test_tokenizer_without_pad_token(tmp_path: Path) -> None:
    folder = _padless_tiny_gpt2(tmp_path / "padless")
    with pytest.raises(ModelLoadError, match="pad_token_as_eos_token"):
        load_tokenizer(str(folder))
    tokenizer = load_tokenizer(str(folder), pad_token_as_eos_token=True, padding_side="left")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


@pytest.mark.slow
def test_training_with_pad_equal_to_eos_from_a_local_folder(tmp_path: Path) -> None:
    """RL4LMs' GPT-2 setting (pad = EOS), loaded from a save_pretrained folder instead of the hub."""
    folder = _padless_tiny_gpt2(tmp_path / "padless")
    config = yaml.safe_load(write_small_config(tmp_path, n_iters=2, eval_every=1, save_every=1).read_text())
    config["tokenizer"].update(model_name=str(folder), pad_token_as_eos_token=True)
    config["alg"]["policy"]["args"]["model_name"] = str(folder)
    path = tmp_path / "padless.yml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config_path", str(path), "--base_path_to_store_results", str(tmp_path),
                 "--experiment_name", "pad_is_eos"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pad_is_eos" / "model")
    assert model.config.vocab_size == 512


def test_fused_activations_keep_the_model_s_outputs() -> None:
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.activations import GELUTanh

    from rl4lms.models.fused_activations import use_fused_activations
    from rl4lms.models.loading import load_model

    model = load_model(GPT2LMHeadModel, "rl4lms/tiny-gpt2")
    tokens = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(tokens).logits
        assert use_fused_activations(model) == model.config.n_layer
        after = model(tokens).logits
    assert all(isinstance(block.mlp.act, GELUTanh) for block in model.transformer.h)
    assert torch.allclose(before, after, atol=1e-5) and model.config.activation_function == "gelu_new"
