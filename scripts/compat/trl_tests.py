"""Run TRL v0.11.4's own test files against ``rl4lms.trl`` (and against the real TRL), changing only
imports and hub model ids.

    python scripts/compat/trl_tests.py                                    # rl4lms.trl, this interpreter
    python scripts/compat/trl_tests.py --trl-python /work/venvs/trl011/bin/python   # ... and the real TRL
    python scripts/compat/trl_tests.py --show-diff                        # what is changed; runs nothing

``bash scripts/bench/trl_side_venv.sh DIR`` builds the side venv with TRL 0.11.4 (add
``pip install pytest parameterized`` there). The test files (``TEST_FILES``) and
``tests/testing_constants.py`` are read at run time from a TRL git checkout (``--trl-repo``,
``--trl-ref``) into ``--workdir``/tests and rewritten by textual substitutions whose counts must match
(as ``trl_examples.py`` does; a mismatch refuses the run):

* imports: ``from trl[.x] import`` becomes ``rl4lms.trl`` (not for the real TRL); ``parameterized``
  (a test-only package) becomes :class:`parameterized` of this module, on both sides;
* hub ids: every ``trl-internal-testing/<name>`` and ``gpt2`` becomes a local folder written first by
  each side's own interpreter, from the recipes in ``STAND_INS``: tiny random models of the same
  architecture (an architecture that one side's transformers lacks stands in as T5, on both sides,
  and the table says so). The GPT-2 ones carry GPT-2's real tokenizer, rebuilt from the BPE ranks
  that ``openai-whisper`` ships (``--gpt2-bpe``; by default fetched with ``pip download``), because
  TRL's tests count tokens of fixed strings.

Each side runs ``pytest`` on the rewritten files (hub and data sets offline, ``WANDB_MODE=disabled``);
each test file runs in its own pytest (``--timeout`` each); the table gives passed / failed / skipped
per file and side (or "timed out"), and the tests that pass on the real TRL
but fail on ``rl4lms.trl`` are listed with their error line. ``--out`` writes the results as JSON.
The exit code is 0 when every test that passes on the real TRL passes here too (without
``--trl-python``: when none failed), 1 otherwise, 2 when a substitution did not match.
"""
from __future__ import annotations

import argparse
import base64
import difflib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from trl_examples import (OFFLINE_ENV, Substitution, SubstitutionMismatch, add_checkout_arguments,
                          read_source, refuse, transform)

COMPAT_DIR = Path(__file__).resolve().parent
MODELS = "<STAND_INS>"
"""Placeholder of the stand-in models' folder in the rewritten tests."""
WHISPER = "openai-whisper==20250625"
GPT2_BPE_MEMBER = "whisper/assets/gpt2.tiktoken"
GPT2_EOS = "<|endoftext|>"


# --- the stand-in models --------------------------------------------------------------------------
@dataclass(frozen=True)
class StandIn:
    """A tiny random model standing in for a hub id: ``model_type`` with ``config`` (sizes), the head
    (``causal``, ``seq2seq``, ``base``: no LM head), the tokenizer (``gpt2``: GPT-2's own, else
    the project's tiny one), and how it is saved (``max_shard_size``, ``safetensors``)."""

    model_type: str
    head: str = "causal"
    config: Dict[str, Any] = field(default_factory=dict)
    tokenizer: str = "tiny"
    max_shard_size: Optional[str] = None
    safetensors: bool = True


GPT2 = {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128}
BART_LIKE = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
             "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
             "max_position_embeddings": 128}
T5_LIKE = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
           "decoder_start_token_id": 0}
CODEGEN = {**GPT2, "n_head": 4, "rotary_dim": 4}
"""CodeGen splits its heads over 4 model-parallel groups."""
LLAMA_LIKE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "max_position_embeddings": 128}
INTERNAL = "trl-internal-testing/"
STAND_INS: Dict[str, StandIn] = {
    "gpt2": StandIn("gpt2", config={**GPT2, "pad_token_id": 50256}, tokenizer="gpt2"),
    INTERNAL + "dummy-GPT2-correct-vocab": StandIn("gpt2", config={**GPT2, "pad_token_id": 50256}, tokenizer="gpt2"),
    INTERNAL + "tiny-BloomForCausalLM-correct-vocab": StandIn("bloom", config={"hidden_size": 32, "n_layer": 2,
                                                                              "n_head": 2}),
    INTERNAL + "tiny-T5ForConditionalGeneration-correct-vocab": StandIn("t5", "seq2seq", T5_LIKE),
    INTERNAL + "tiny-random-GPT2Model": StandIn("gpt2", "base", GPT2),
    INTERNAL + "tiny-random-T5Model": StandIn("t5", "base", T5_LIKE),
    INTERNAL + "tiny-random-CodeGenForCausalLM": StandIn("codegen", config=CODEGEN),
    INTERNAL + "tiny-random-CodeGenForCausalLM-sharded": StandIn("codegen", config=CODEGEN, max_shard_size="100KB",
                                                                 safetensors=False),
    INTERNAL + "tiny-random-GPTJForCausalLM": StandIn("gptj", config={**GPT2, "rotary_dim": 8}),
    INTERNAL + "tiny-random-GPTNeoForCausalLM": StandIn("gpt_neo", config={
        "hidden_size": 32, "num_layers": 2, "num_heads": 2, "attention_types": [[["global", "local"], 1]],
        "max_position_embeddings": 128, "window_size": 16}),
    INTERNAL + "tiny-random-GPTNeoXForCausalLM": StandIn("gpt_neox", config=LLAMA_LIKE, safetensors=False),
    INTERNAL + "tiny-random-GPTNeoXForCausalLM-safetensors": StandIn("gpt_neox", config=LLAMA_LIKE),
    INTERNAL + "tiny-random-GPTNeoXForCausalLM-safetensors-sharded": StandIn("gpt_neox", config=LLAMA_LIKE,
                                                                             max_shard_size="100KB"),
    INTERNAL + "tiny-random-OPTForCausalLM": StandIn("opt", config={
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "ffn_dim": 64,
        "word_embed_proj_dim": 32, "max_position_embeddings": 128}),
    INTERNAL + "tiny-random-BloomForCausalLM": StandIn("bloom", config={"hidden_size": 32, "n_layer": 2, "n_head": 2}),
    # create_reference_model's test reads its fifth block.
    INTERNAL + "tiny-random-GPT2LMHeadModel": StandIn("gpt2", config={**GPT2, "n_layer": 5}),
    INTERNAL + "tiny-random-LlamaForCausalLM": StandIn("llama", config=LLAMA_LIKE),
    INTERNAL + "tiny-random-BartForConditionalGeneration": StandIn("bart", "seq2seq", BART_LIKE),
    INTERNAL + "tiny-random-BigBirdPegasusForConditionalGeneration": StandIn(
        "bigbird_pegasus", "seq2seq", {**BART_LIKE, "attention_type": "original_full"}),
    INTERNAL + "tiny-random-BlenderbotForConditionalGeneration": StandIn("blenderbot", "seq2seq", BART_LIKE),
    INTERNAL + "tiny-random-BlenderbotSmallForConditionalGeneration": StandIn("blenderbot-small", "seq2seq",
                                                                              BART_LIKE),
    INTERNAL + "tiny-random-FSMTForConditionalGeneration": StandIn("fsmt", "seq2seq", {
        **BART_LIKE, "src_vocab_size": 512, "tgt_vocab_size": 512, "langs": ["en", "de"]}),
    INTERNAL + "tiny-random-LEDForConditionalGeneration": StandIn("led", "seq2seq", {
        **{k: v for k, v in BART_LIKE.items() if k != "max_position_embeddings"},
        "max_encoder_position_embeddings": 128, "max_decoder_position_embeddings": 128, "attention_window": 8}),
    INTERNAL + "tiny-random-LongT5ForConditionalGeneration": StandIn("longt5", "seq2seq", T5_LIKE),
    INTERNAL + "tiny-random-M2M100ForConditionalGeneration": StandIn("m2m_100", "seq2seq", BART_LIKE),
    INTERNAL + "tiny-random-MarianMTModel": StandIn("marian", "seq2seq", {
        **BART_LIKE, "decoder_vocab_size": 512, "decoder_start_token_id": 0}),
    INTERNAL + "tiny-random-MBartForConditionalGeneration": StandIn("mbart", "seq2seq", BART_LIKE),
    INTERNAL + "tiny-random-MT5ForConditionalGeneration": StandIn("mt5", "seq2seq", T5_LIKE),
    INTERNAL + "tiny-random-MvpForConditionalGeneration": StandIn("mvp", "seq2seq", BART_LIKE),
    INTERNAL + "tiny-random-PegasusForConditionalGeneration": StandIn("pegasus", "seq2seq", BART_LIKE),
    INTERNAL + "tiny-random-PegasusXForConditionalGeneration": StandIn("pegasus_x", "seq2seq", {
        **BART_LIKE, "block_size": 8, "num_global_tokens": 4}),
    INTERNAL + "tiny-random-PLBartForConditionalGeneration": StandIn("plbart", "seq2seq", BART_LIKE),
    INTERNAL + "tiny-random-ProphetNetForConditionalGeneration": StandIn("prophetnet", "seq2seq", {
        "hidden_size": 32, "num_encoder_layers": 1, "num_decoder_layers": 1, "num_encoder_attention_heads": 2,
        "num_decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "ngram": 2,
        "max_position_embeddings": 128}),
    INTERNAL + "tiny-random-SwitchTransformersForConditionalGeneration": StandIn("switch_transformers", "seq2seq", {
        **T5_LIKE, "num_experts": 2, "expert_capacity": 8, "num_sparse_encoder_layers": 1,
        "num_sparse_decoder_layers": 1}),
    INTERNAL + "tiny-random-T5ForConditionalGeneration": StandIn("t5", "seq2seq", T5_LIKE),
}
FALLBACK = StandIn("t5", "seq2seq", T5_LIKE)
"""What an id stands in as when its architecture is missing from either side's transformers."""


def gpt2_tokenizer(bpe_ranks: Path) -> Any:
    """GPT-2's byte-level BPE tokenizer (50,257 tokens, ``<|endoftext|>`` as bos/eos/unk), rebuilt
    from a tiktoken ranks file: each multi-byte token's merge is the pair that BPE over the
    lower-ranked tokens leaves."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ranks = {}
    for line in bpe_ranks.read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    byte_char = {**{b: chr(b) for b in printable}, **{b: chr(256 + ix) for ix, b in enumerate(others)}}

    def text(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    def last_merge(token: bytes, rank: int) -> Tuple[bytes, bytes]:
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            candidates = [(ranks.get(a + b, rank), ix) for ix, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, ix = min(candidates)
            if best >= rank:
                break
            parts[ix:ix + 2] = [parts[ix] + parts[ix + 1]]
        return parts[0], parts[1]

    merges = [tuple(map(text, last_merge(token, rank))) for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])
              if len(token) > 1]
    vocab = {text(token): rank for token, rank in ranks.items()}
    vocab[GPT2_EOS] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=GPT2_EOS, eos_token=GPT2_EOS,
                                   unk_token=GPT2_EOS, model_max_length=1024)


def fetch_gpt2_bpe(folder: Path) -> Path:
    """``gpt2.tiktoken`` out of the ``openai-whisper`` sdist (MIT), downloaded into ``folder`` with pip."""
    target = folder / "gpt2.tiktoken"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", WHISPER,
                           "-d", str(folder)], capture_output=True, text=True)
    archives = sorted(folder.glob("openai_whisper-*.tar.gz"))
    if done.returncode or not archives:
        raise FileNotFoundError(f"could not download {WHISPER} for GPT-2's BPE ranks ({done.stderr.strip()[-300:]}); "
                                f"pass --gpt2-bpe PATH to a gpt2.tiktoken file")
    with tarfile.open(archives[0]) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(GPT2_BPE_MEMBER))
        target.write_bytes(archive.extractfile(member).read())
    return target


def build_stand_in(recipe: StandIn, tokenizer: Any) -> Any:
    """The random-init model of ``recipe`` (seeded) sized for ``tokenizer``."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
               "bos_token_id": tokenizer.bos_token_id}
    config = AutoConfig.for_model(recipe.model_type, vocab_size=len(tokenizer),
                                  **{**{k: v for k, v in special.items() if v is not None}, **recipe.config})
    auto = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "base": AutoModel}[recipe.head]
    torch.manual_seed(0)
    return auto.from_config(config)


def architecture_available(model_type: str) -> bool:
    """Whether this interpreter's transformers knows ``model_type``."""
    from transformers import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def write_stand_ins(folder: str, hub_ids: Sequence[str], gpt2_bpe: str, fallback_types: Sequence[str]) -> None:
    """Write the stand-in of each hub id into ``folder/<hub id>`` with this interpreter's transformers;
    an id whose architecture is in ``fallback_types`` is written as :data:`FALLBACK`."""
    from rl4lms.models.tiny import build_tokenizer

    tokenizers = {"tiny": build_tokenizer(), "gpt2": gpt2_tokenizer(Path(gpt2_bpe))}
    for hub_id in hub_ids:
        recipe = STAND_INS[hub_id]
        recipe = FALLBACK if recipe.model_type in fallback_types else recipe
        out = Path(folder) / hub_id
        tokenizer = tokenizers[recipe.tokenizer]
        model = build_stand_in(recipe, tokenizer)
        model.save_pretrained(out, **({"max_shard_size": recipe.max_shard_size} if recipe.max_shard_size else {}),
                              **({} if recipe.safetensors else {"safe_serialization": False}))
        tokenizer.save_pretrained(out)
        # transformers 5 names its fast tokenizer class TokenizersBackend, which transformers 4 does not know.
        config_file = out / "tokenizer_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                           "tokenizer_class": "PreTrainedTokenizerFast"}))


# --- the test files -------------------------------------------------------------------------------
class parameterized:  # noqa: N801 (the package's own spelling, which the tests use)
    """``parameterized.expand`` of the ``parameterized`` package, for the tests that use it: one test
    method per argument list, named ``<name>_<index>_<first argument>``."""

    @staticmethod
    def expand(cases: Sequence[Sequence[Any]]) -> Callable[[Callable], None]:
        def decorate(function: Callable) -> None:
            namespace = sys._getframe(1).f_locals  # the class body being executed

            def bind(args: Sequence[Any]) -> Callable:
                def method(self: Any) -> Any:
                    return function(self, *args)
                return method

            for ix, args in enumerate(cases):
                name = re.sub(r"\W", "_", f"{function.__name__}_{ix}_{args[0]}")
                namespace[name] = bind(args)
        return decorate


@dataclass(frozen=True)
class TestFile:
    """One TRL test file and its own substitutions (besides the imports and hub ids)."""

    name: str
    path: str
    substitutions: Tuple[Substitution, ...] = ()


HUB_IDS = Substitution("hub ids", r'"(trl-internal-testing/[\w.-]+)"', f'"{MODELS}/\\1"',
                       "hub models: tiny local models of the same architecture (STAND_INS)", "offline", count=0,
                       regex=True)
PARAMETERIZED = Substitution("parameterized", "from parameterized import parameterized",
                             "from trl_tests import parameterized",
                             "a test-only package: the same expand, from this module", "imports")
TEST_FILES: Tuple[TestFile, ...] = (
    TestFile("test_core.py", "tests/test_core.py"),
    TestFile("test_environments.py", "tests/test_environments.py", (HUB_IDS,)),
    TestFile("test_modeling_value_head.py", "tests/test_modeling_value_head.py", (HUB_IDS,)),
    TestFile("test_ppo_trainer.py", "tests/test_ppo_trainer.py", (
        HUB_IDS, PARAMETERIZED,
        Substitution("gpt2", 'from_pretrained("gpt2")', f'from_pretrained("{MODELS}/gpt2")',
                     "the hub's gpt2: a tiny GPT-2 with GPT-2's tokenizer", "offline", count=4))),
)
SUPPORT_FILES = ("tests/testing_constants.py",)


def hub_ids_in(sources: Sequence[str]) -> List[str]:
    """The hub ids the test sources load (those the stand-ins replace)."""
    found = set()
    for source in sources:
        found.update(re.findall(r'"(trl-internal-testing/[\w.-]+)"', source))
        if 'from_pretrained("gpt2")' in source:
            found.add("gpt2")
    return sorted(found)


# --- running --------------------------------------------------------------------------------------
@dataclass
class SideResult:
    """One side's outcome per test: ``passed``, ``failed`` or ``skipped``, with the failure's line."""

    package: str
    python: str
    outcomes: Dict[str, str] = field(default_factory=dict)
    messages: Dict[str, str] = field(default_factory=dict)
    timed_out: List[str] = field(default_factory=list)
    """The test files whose pytest ran out of ``--timeout`` (their tests are not counted)."""

    def counts(self, file_name: str) -> Tuple[int, int, int]:
        stem = file_name[:-3]
        states = [state for test, state in self.outcomes.items() if test.startswith(stem + "::")]
        return states.count("passed"), states.count("failed"), states.count("skipped")


def junit_outcomes(report: Path) -> Tuple[Dict[str, str], Dict[str, str]]:
    """``file::Class::test`` -> outcome, and the first line of each failure, from pytest's JUnit XML."""
    outcomes, messages = {}, {}
    for case in ElementTree.parse(report).iter("testcase"):
        module = case.get("classname", "").split(".")
        test = f"{module[1]}::{'::'.join(module[2:])}::{case.get('name')}" if len(module) > 2 else case.get("name")
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            outcomes[test] = "failed"
            messages[test] = (problem.get("message") or "").splitlines()[0][:200] if problem.get("message") else ""
        elif case.find("skipped") is not None:
            outcomes.setdefault(test, "skipped")
        else:
            outcomes.setdefault(test, "passed")
    return outcomes, messages


def run_side(package: str, python: str, workdir: Path, sources: Dict[str, str], hub_ids: Sequence[str],
             gpt2_bpe: Path, fallback_types: Sequence[str], timeout: float) -> SideResult:
    """Write the stand-ins and the rewritten tests for ``package`` under ``workdir/<package>``, run
    pytest there with ``python``; the per-test outcomes."""
    side = workdir / package
    models, tests = side / "models", side / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    (tests / "__init__.py").write_text("")
    env = dict(os.environ, **OFFLINE_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(COMPAT_DIR), env.get("PYTHONPATH")]))
    subprocess.run([python, "-c", "import sys, json; from trl_tests import write_stand_ins; "
                    "write_stand_ins(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]))",
                    str(models), json.dumps(list(hub_ids)), str(gpt2_bpe), json.dumps(list(fallback_types))],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    for path, text in sources.items():
        (tests / Path(path).name).write_text(text.replace(MODELS, str(models)))
    result = SideResult(package, python)
    for test in TEST_FILES:  # one pytest a file, so a file that runs out of time loses only its own results
        stem = test.name[:-3]
        report, log = side / f"{stem}.xml", side / f"{stem}.log"
        command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "-o",
                   "junit_family=xunit1", f"tests/{test.name}"]
        report.unlink(missing_ok=True)
        try:
            done = subprocess.run(command, cwd=side, env=env, timeout=timeout, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            log.write_text(done.stdout)
        except subprocess.TimeoutExpired as expired:
            log.write_text((expired.stdout or b"").decode(errors="replace"))
            result.timed_out.append(test.name)
        if report.is_file():
            outcomes, messages = junit_outcomes(report)
            result.outcomes.update(outcomes)
            result.messages.update(messages)
    print(f"{package}: {sum(s == 'passed' for s in result.outcomes.values())} passed of {len(result.outcomes)} "
          f"(logs {side})", flush=True)
    return result


def fallback_architectures(pythons: Sequence[str], hub_ids: Sequence[str]) -> List[str]:
    """The stand-in architectures that one of the interpreters' transformers lacks."""
    types = sorted({STAND_INS[hub_id].model_type for hub_id in hub_ids})
    missing = set()
    for python in pythons:
        done = subprocess.run([python, "-c", "import sys, json; from transformers import CONFIG_MAPPING; "
                               "print(json.dumps([t for t in json.loads(sys.argv[1]) if t not in CONFIG_MAPPING]))",
                               json.dumps(types)], capture_output=True, text=True, check=True)
        missing.update(json.loads(done.stdout))
    return sorted(missing)


def markdown(results: Sequence[SideResult], fallback_types: Sequence[str]) -> str:
    """The pass / fail / skip table per file and side, then the tests that pass on TRL only."""
    header = "| file | " + " | ".join(f"{r.package}: pass / fail / skip" for r in results) + " |"
    lines = [header, "|---|" + "---|" * len(results)]
    for test in TEST_FILES:
        lines.append(f"| `{test.name}` | " + " | ".join("timed out" if test.name in r.timed_out else
                                                         "%d / %d / %d" % r.counts(test.name) for r in results) + " |")
    if fallback_types:
        lines.append(f"\nStand in as T5 on both sides (missing from one side's transformers): "
                     f"{', '.join(fallback_types)}")
    if len(results) == 2:
        trl, ours = results[1], results[0]
        regressions = sorted(t for t, state in trl.outcomes.items() if state == "passed"
                             and ours.outcomes.get(t) != "passed")
        lines.append(f"\nPass on the real TRL, not on rl4lms.trl: {len(regressions) or 'none'}")
        lines += [f"- `{t}`: {ours.messages.get(t, ours.outcomes.get(t, 'not run'))}" for t in regressions]
        extra = sorted(t for t, state in ours.outcomes.items() if state == "passed" and trl.outcomes.get(t) != "passed")
        lines.append(f"\nPass on rl4lms.trl, not on the real TRL: {len(extra) or 'none'}")
        lines += [f"- `{t}`: {trl.messages.get(t, trl.outcomes.get(t, 'not run'))}" for t in extra]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Rewrite the test files, run them on each side, print the table; the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkout_arguments(parser, "the tests")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs rl4lms.trl")
    parser.add_argument("--trl-python", help="an interpreter with the real TRL 0.11.4 (the control side)")
    parser.add_argument("--gpt2-bpe", type=Path, help="GPT-2's gpt2.tiktoken (default: fetched from openai-whisper)")
    parser.add_argument("--workdir", type=Path, help="folder for models, tests and logs (default: a new temp dir)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per test file and side")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--show-diff", action="store_true", help="print each unified diff and run nothing")
    args = parser.parse_args(argv)

    packages = [("rl4lms.trl", args.python)] + ([("trl", args.trl_python)] if args.trl_python else [])
    rewritten: Dict[str, Dict[str, str]] = {package: {} for package, _ in packages}
    originals, problems = {}, []
    for test in TEST_FILES:
        try:
            originals[test.path] = read_source(args.trl_repo, args.trl_ref, test.path)
            for package, _ in packages:
                rewritten[package][test.path] = transform(test, originals[test.path], package, {})[0]
        except (FileNotFoundError, SubstitutionMismatch) as error:
            problems.append(str(error))
    if problems:
        return refuse(problems, args.trl_ref)
    if args.show_diff:
        for path, source in originals.items():
            sys.stdout.writelines(difflib.unified_diff(source.splitlines(True),
                                                       rewritten["rl4lms.trl"][path].splitlines(True),
                                                       f"trl {args.trl_ref}: {path}", f"{path} (rl4lms.trl)"))
        return 0
    for package in rewritten:
        rewritten[package].update({path: read_source(args.trl_repo, args.trl_ref, path) for path in SUPPORT_FILES})

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trl_tests-"))
    hub_ids = hub_ids_in(list(originals.values()))
    unknown = [hub_id for hub_id in hub_ids if hub_id not in STAND_INS]
    if unknown:
        print(f"error: no stand-in for the hub ids {', '.join(unknown)}: add them to STAND_INS", file=sys.stderr)
        return 2
    try:
        gpt2_bpe = args.gpt2_bpe or fetch_gpt2_bpe(workdir / "downloads")
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    fallback_types = fallback_architectures([python for _, python in packages], hub_ids)
    print(f"workdir: {workdir}", flush=True)
    results = [run_side(package, python, workdir, rewritten[package], hub_ids, gpt2_bpe, fallback_types,
                        args.timeout) for package, python in packages]
    print(f"\nTRL's test files at {args.trl_ref}, only imports and hub ids changed\n")
    print(markdown(results, fallback_types))
    if args.out:
        args.out.write_text(json.dumps({"trl_ref": args.trl_ref, "fallback_architectures": fallback_types,
                                        "sides": [vars(result) for result in results]}, indent=1))
    ours = results[0]
    if len(results) == 2:
        return int(any(state == "passed" and ours.outcomes.get(test) != "passed"
                       for test, state in results[1].outcomes.items()))
    return int(any(state == "failed" for state in ours.outcomes.values()))


if __name__ == "__main__":
    sys.exit(main())
