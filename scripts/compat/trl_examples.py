"""Run TRL v0.11.4's classic PPO examples against ``rl4lms.trl``, changing only what a listed swap says.

    python scripts/compat/trl_examples.py                        # all three, on rl4lms.trl
    python scripts/compat/trl_examples.py --show-diff            # print what is changed, run nothing
    python scripts/compat/trl_examples.py --list                 # print the substitution tables
    bash scripts/bench/trl_side_venv.sh /tmp/trlvenv             # the real TRL 0.11.4 ...
    python scripts/compat/trl_examples.py --python /tmp/trlvenv/bin/python --package trl   # ... runs them too

The examples are read at run time from a TRL git checkout (``--trl-repo``, ``--trl-ref``):
``examples/scripts/ppo.py``, the code cells of ``examples/notebooks/gpt2-sentiment.ipynb`` in
order, and ``examples/research_projects/tools/calculator.py``. Each is rewritten by the textual
substitutions in ``EXAMPLES`` (every one says why it is there and how often its text must occur;
a count that does not match refuses the whole run, so the list cannot drift from TRL's code):

* imports: ``from trl[.x] import`` / ``import trl`` become ``rl4lms.trl`` (not with ``--package trl``);
* offline: hub model ids become local folders that this script writes first, with the ``--python``
  interpreter (the embedded ``rl4lms/tiny-gpt2`` LM and a tiny random sentiment classifier whose
  labels are NEGATIVE/POSITIVE, so the real ``pipeline(...)`` runs with its own call and return
  shapes); ``datasets.load_dataset`` and ``transformers.load_tool`` come from this module
  (``offline_load_dataset``: the IMDB fixture rows this project ships; ``offline_load_tool``: the
  project's calculator); ``pipeline`` in ``ppo.py`` is wrapped so that ``return_all_scores=True``
  keeps transformers 4's shape under transformers 5 (``scores_pipeline``); hub uploads are switched off;
* notebook: magics and ``%pip`` lines are dropped and ``display`` becomes ``print``;
* size: loops without a parameter are shortened so that a run takes about a minute on a CPU;
* upstream: the calculator logs a column it never fills, which stops it under the real TRL too.

Command-line arguments of an example (``ppo.py``'s ``HfArgumentParser``) and the number of IMDB
rows are set per example, not by editing. The examples run in a subprocess with ``WANDB_MODE=disabled``
and the Hugging Face hub and data sets offline. A Markdown table (example, substitutions, outcome,
seconds) ends the output; the transformed scripts and their logs stay in ``--workdir``.
The exit code is 0 when every example finished, 1 when one failed, 2 when a substitution did not match.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

COMPAT_DIR = Path(__file__).resolve().parent
DEFAULT_TRL_REPO = Path("/work/.mirror/huggingface+trl/repo")
DEFAULT_TRL_REF = "v0.11.4"
PACKAGES = ("rl4lms.trl", "trl")
TINY_LM = "rl4lms/tiny-gpt2"
TINY_CLASSIFIER = "rl4lms/tiny-sentiment-classifier"
SENTIMENT_LABELS = ("NEGATIVE", "POSITIVE")
IMDB_IDS = ("stanfordnlp/imdb", "imdb")
HH_RLHF_ID = "Anthropic/hh-rlhf"
STACK_EXCHANGE_ID = "lvwerra/stack-exchange-paired"
CALCULATOR_TOOL_ID = "ybelkada/simple-calculator"
IMDB_ROWS_ENV = "TRL_EXAMPLES_IMDB_ROWS"
QUESTION_CHARS = 200
# Placeholders in replacements and arguments, filled with the folders written by write_offline_models.
LM_FOLDER, CLASSIFIER_FOLDER, RM_ADAPTER_FOLDER = "<TINY_GPT2>", "<SENTIMENT_MODEL>", "<RM_ADAPTER>"
OFFLINE_ENV = {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class Substitution:
    """Replace ``old`` by ``new``, which must occur exactly ``count`` times (``count=0``: at least
    once; ``count=-1``: any number of times, for the import forms, of which some must match).

    ``old`` is literal text unless ``regex`` (then a multi-line regular expression and ``new`` its
    replacement template). ``kind`` is imports, offline, notebook, size or upstream (a bug of the
    example that stops it under the real TRL too)."""

    name: str
    old: str
    new: str
    why: str
    kind: str
    count: int = 1
    regex: bool = False

    def occurrences(self, text: str) -> int:
        """How often ``old`` occurs in ``text``."""
        return len(re.findall(self.old, text, flags=re.M)) if self.regex else text.count(self.old)

    def apply(self, text: str, placeholders: Dict[str, str]) -> str:
        """``text`` with ``old`` replaced; each placeholder key in ``new`` becomes its value."""
        new = self.new
        for key, value in placeholders.items():
            new = new.replace(key, value)
        return re.sub(self.old, new, text, flags=re.M) if self.regex else text.replace(self.old, new)


@dataclass(frozen=True)
class Example:
    """One TRL example: where it lives in the TRL repository and how it is made to run offline."""

    name: str
    path: str
    substitutions: Tuple[Substitution, ...]
    args: Tuple[str, ...] = ()
    imdb_rows: Optional[int] = None
    notebook: bool = False
    expected_failure: Optional[str] = None
    """On CPU, the example stops with this message from rl4lms.trl (8-bit loading): the check counts that."""


IMPORTS = (
    Substitution("imports", r"^([ \t]*)from trl((?:\.\w+)*) import ", r"\1from rl4lms.trl\2 import ",
                 "the package under test replaces TRL", "imports", count=-1, regex=True),
    Substitution("import trl", r"^([ \t]*)import trl([ \t]*(?:#.*)?)$", r"\1import rl4lms.trl as trl\2",
                 "the package under test replaces TRL, under TRL's name", "imports", count=-1, regex=True),
)
# Any TRL import left after IMPORTS (e.g. ``import trl.core``) would still load the real TRL.
TRL_IMPORT = re.compile(r"^[ \t]*(?:from|import)[ \t]+trl\b.*$", flags=re.M)
LOAD_DATASET = Substitution(
    "imdb", "from datasets import load_dataset",
    "from trl_examples import offline_load_dataset as load_dataset",
    "IMDB cannot be downloaded: the project's IMDB fixture rows, as a datasets.Dataset", "offline")

EXAMPLES: Tuple[Example, ...] = (
    Example(
        "ppo", "examples/scripts/ppo.py", (
            LOAD_DATASET,
            Substitution("scorer", "is_torch_xpu_available, pipeline\n",
                         "is_torch_xpu_available\nfrom trl_examples import scores_pipeline as pipeline\n",
                         "the stand-in scorer: the real pipeline (on the tiny classifier given as --reward_model) "
                         "that still takes return_all_scores=True, which transformers 5 dropped", "offline"),
        ),
        # 32 rows in batches of 16: two PPO steps. The model ids are script arguments.
        args=("--model_name", LM_FOLDER, "--reward_model", f"sentiment-analysis:{CLASSIFIER_FOLDER}",
              "--batch_size", "16", "--mini_batch_size", "4"),
        imdb_rows=32),
    Example(
        "gpt2-sentiment", "examples/notebooks/gpt2-sentiment.ipynb", (
            Substitution("magics", r"^[ \t]*[%!].*\n", "", "IPython magics and %pip are not Python",
                         "notebook", count=3, regex=True),
            Substitution("model id", 'model_name="lvwerra/gpt2-imdb"', f"model_name={LM_FOLDER}",
                         "hub model: the tiny GPT-2 folder", "offline"),
            LOAD_DATASET,
            Substitution("sentiment model", 'model="lvwerra/distilbert-imdb"', f"model={CLASSIFIER_FOLDER}",
                         "hub classifier: a tiny random classifier folder (labels NEGATIVE/POSITIVE)",
                         "offline"),
            Substitution("display", "display(", "print(", "display is a notebook built-in", "notebook",
                         count=2),
            Substitution("no upload", "push_to_hub=True", "push_to_hub=False",
                         "the hub cannot be reached: save locally only", "offline", count=2),
        ),
        # PPOConfig's default batch_size is 128 and the notebook has no step count: one batch, one step.
        imdb_rows=128, notebook=True),
    Example(
        "calculator", "examples/research_projects/tools/calculator.py", (
            Substitution("calculator tool", "from transformers import AutoTokenizer, load_tool",
                         "from transformers import AutoTokenizer\n"
                         "from trl_examples import offline_load_tool as load_tool",
                         "the hub tool cannot be downloaded: the project's calculator", "offline"),
            Substitution("model id", 'model_id = "gpt2"', f"model_id = {LM_FOLDER}",
                         "hub model: the tiny GPT-2 folder", "offline"),
            Substitution("steps", "for _step in range(100):", "for _step in range(2):",
                         "100 steps of 256 episodes are too long for a CPU check: 2 steps", "size"),
            Substitution("log columns", 'columns_to_log=["query", "response", "answer"]',
                         'columns_to_log=["query", "response"]',
                         "TRL's own bug: `texts` has no 'answer', so with log_with='wandb' TRL 0.11.4's "
                         "log_stats raises ValueError after the first step", "upstream"),
        )),
    Example(
        "ppo_multi_adapter", "examples/scripts/ppo_multi_adapter.py", (
            LOAD_DATASET,
            Substitution("4-bit config", r"^nf4_config = BitsAndBytesConfig\(\n(?:.*\n)*?\)\n", "",
                         "a 4-bit BitsAndBytesConfig (transformers 4 builds it only with bitsandbytes installed): "
                         "4-bit loading needs a CUDA GPU, and this check runs on CPU", "cpu", regex=True),
            Substitution("4-bit loading", "    quantization_config=nf4_config,\n", "",
                         "4-bit loading goes through bitsandbytes on a CUDA GPU; this check runs on CPU", "cpu"),
            Substitution("device map",
                         '    device_map={"": "xpu:0"} if is_torch_xpu_available() else {"": "npu:0"} if '
                         'is_torch_npu_available else {"": 0},\n', "",
                         "places the model on accelerator 0 (the NPU's, as the uncalled is_torch_npu_available is "
                         "always true); this check runs on CPU", "cpu"),
        ),
        # 16 rows in batches of 8: two PPO steps. The model, the reward adapter and safetensors are arguments.
        args=("--model_name", LM_FOLDER, "--rm_adapter", RM_ADAPTER_FOLDER, "--use_safetensors", "True"),
        imdb_rows=16),
    *(Example(
        name, "examples/research_projects/stack_llama/scripts/rl_training.py", (
            LOAD_DATASET,
            Substitution("scorer", "from transformers import Adafactor, AutoTokenizer, HfArgumentParser, pipeline\n",
                         "from transformers import Adafactor, AutoTokenizer, HfArgumentParser\n"
                         "from trl_examples import scores_pipeline as pipeline\n",
                         "the reward pipeline (the tiny classifier given as --reward_model_name) that still takes "
                         "return_all_scores=True and load_in_8bit=False, which transformers 5 dropped", "offline"),
            Substitution("rows", "train_dataset.select(range(100000))", "train_dataset.select(range(16))",
                         "the stand-in data set has 16 rows, not 100,000", "size"),
            Substitution("workers", "num_proc = 24", "num_proc = 1",
                         "24 tokenizing processes for 16 rows on a 2-core machine", "size"),
            *((Substitution("device map", '    device_map={"": current_device},\n', "",
                            "{'': 0} is GPU 0 for the model and the reward pipeline; this check runs on CPU", "cpu",
                            count=2),) if not eight_bit else ()),
        ),
        # Two PPO steps of 8; 8-bit loading as shipped, or --load_in_8bit False.
        args=("--model_name", LM_FOLDER, "--tokenizer_name", LM_FOLDER, "--reward_model_name", CLASSIFIER_FOLDER,
              "--batch_size", "8", "--mini_batch_size", "2", "--gradient_accumulation_steps", "2", "--steps", "16",
              "--output_max_length", "40", *(() if eight_bit else ("--load_in_8bit", "False"))),
        imdb_rows=16,
        expected_failure="load_in_8bit=True loads the model through bitsandbytes, which needs a CUDA GPU"
        if eight_bit else None)
      for name, eight_bit in (("stack_llama", True), ("stack_llama-no-8bit", False))),
)


class SubstitutionMismatch(ValueError):
    """A substitution's text occurs a different number of times than its table says."""


def offline_load_dataset(path: str, split: str = "train", **_: Any) -> Any:
    """``datasets.load_dataset`` for the data sets the examples load, from the project's IMDB fixture
    rows of ``split`` (a slice such as ``train[:1%]`` reads as ``train``), cycled to
    ``$TRL_EXAMPLES_IMDB_ROWS`` rows (default: as many as shipped): IMDB itself with its features;
    Anthropic/hh-rlhf's ``chosen``/``rejected`` and stack-exchange-paired's ``question`` columns as
    texts in those columns' formats (a question is a review's first ``QUESTION_CHARS`` characters, so
    that question and answer fit the tiny LM's 256 positions). Other arguments (``data_dir``, ...)
    are accepted and unused."""
    if path not in (*IMDB_IDS, HH_RLHF_ID, STACK_EXCHANGE_ID):
        raise ValueError(f"offline_load_dataset only stands in for {', '.join((*IMDB_IDS, HH_RLHF_ID, STACK_EXCHANGE_ID))}"
                         f", not {path!r}")
    from datasets import ClassLabel, Dataset, Features, Value
    from rl4lms.data_pools.sources import fixture_path, read_jsonl

    fixture = read_jsonl(fixture_path("imdb", f"{split.split('[')[0]}.jsonl"))
    rows = [fixture[ix % len(fixture)] for ix in range(int(os.environ.get(IMDB_ROWS_ENV, len(fixture))))]
    if path == HH_RLHF_ID:
        return Dataset.from_list([{"chosen": f"\n\nHuman: {row['text']}\n\nAssistant: I agree.",
                                   "rejected": f"\n\nHuman: {row['text']}\n\nAssistant: No."} for row in rows])
    if path == STACK_EXCHANGE_ID:
        return Dataset.from_list([{"qid": ix, "question": row["text"][:QUESTION_CHARS], "date": "2023-01-01",
                                   "metadata": [], "response_j": "Yes.", "response_k": "No."}
                                  for ix, row in enumerate(rows)])
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    return Dataset.from_list(rows, features=features)


def offline_load_tool(task_or_repo_id: str) -> Any:
    """``transformers.load_tool`` for the calculator only: the project's calculator (text in, text out)."""
    if task_or_repo_id != CALCULATOR_TOOL_ID:
        raise ValueError(f"offline_load_tool only stands in for {CALCULATOR_TOOL_ID!r}, not {task_or_repo_id!r}")
    from rl4lms.envs.tool_env import calculator

    return calculator


class ScoresPipeline:
    """A text-classification pipeline that still takes ``return_all_scores`` (transformers 5
    dropped it): ``True`` gives every label's score in label-id order, one list per text, as
    transformers 4 does. Anything else is the wrapped pipeline's."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def __getattr__(self, name: str) -> Any:
        """The wrapped pipeline's attributes (``tokenizer``, ``model``, ...)."""
        return getattr(self.pipe, name)

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        """Classify ``inputs`` (a text or a list of texts)."""
        if not kwargs.pop("return_all_scores", False):
            return self.pipe(inputs, **kwargs)
        label_ids = {label: ix for ix, label in self.pipe.model.config.id2label.items()}

        def in_label_order(scores: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
            return sorted(scores, key=lambda item: label_ids[item["label"]])

        if isinstance(inputs, str):
            return [in_label_order(self.pipe(inputs, top_k=None, **kwargs))]
        return [in_label_order(scores) for scores in self.pipe(inputs, top_k=None, **kwargs)]


def scores_pipeline(task: str, **kwargs: Any) -> ScoresPipeline:
    """``transformers.pipeline(task, **kwargs)`` as a ``ScoresPipeline``. ``model_kwargs`` lose
    ``load_in_8bit=False`` / ``load_in_4bit=False`` (transformers 4's way of saying "not quantized",
    an unknown argument to transformers 5)."""
    from transformers import pipeline

    model_kwargs = {key: value for key, value in kwargs.pop("model_kwargs", {}).items()
                    if not (key in ("load_in_8bit", "load_in_4bit") and value is False)}
    return ScoresPipeline(pipeline(task, **kwargs, **({"model_kwargs": model_kwargs} if model_kwargs else {})))


def write_offline_models(folder: str) -> None:
    """Write the tiny GPT-2 and a tiny sentiment classifier labelled NEGATIVE/POSITIVE (as the
    hub's IMDB classifiers are) under ``folder``, with this interpreter's transformers."""
    from rl4lms.models.tiny import write_tiny_model
    from transformers import AutoConfig

    lm_folder = write_tiny_model(TINY_LM, Path(folder) / "tiny-gpt2")
    write_reward_adapter(lm_folder, Path(folder) / "tiny-gpt2-rm-adapter")
    classifier = write_tiny_model(TINY_CLASSIFIER, Path(folder) / "tiny-sentiment-classifier")
    config = AutoConfig.from_pretrained(classifier)
    config.id2label = dict(enumerate(SENTIMENT_LABELS))
    config.label2id = {label: ix for ix, label in enumerate(SENTIMENT_LABELS)}
    config.save_pretrained(classifier)


def write_reward_adapter(lm_folder: Path, out_dir: Path) -> None:
    """A reward model's LoRA adapter for the LM in ``lm_folder`` (what TRL's ``reward_adapter`` loads):
    a 2-label sequence classifier on that LM with seeded random LoRA weights and score head, saved
    with ``peft`` (adapter weights plus the ``score`` head)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    classifier = AutoModelForSequenceClassification.from_pretrained(lm_folder, num_labels=2)
    adapter = get_peft_model(classifier, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0,
                                                    fan_in_fan_out=True, task_type="SEQ_CLS"))
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    adapter.save_pretrained(out_dir)


def read_source(trl_repo: Path, ref: str, path: str) -> str:
    """The text of ``path`` at ``ref`` in the TRL git repository ``trl_repo``."""
    done = subprocess.run(["git", "-C", str(trl_repo), "show", f"{ref}:{path}"], capture_output=True, text=True)
    if done.returncode:
        raise FileNotFoundError(f"cannot read {ref}:{path} from {trl_repo}: {done.stderr.strip()}")
    return done.stdout


def notebook_code(notebook_json: str) -> str:
    """The notebook's code cells in order, each under a ``# cell N`` comment, as one script."""
    cells = json.loads(notebook_json)["cells"]
    return "\n\n".join(f"# cell {ix}\n" + "".join(cell["source"]).rstrip("\n")
                       for ix, cell in enumerate(cells) if cell["cell_type"] == "code") + "\n"


def original_source(example: Example, trl_repo: Path, ref: str) -> str:
    """The example as TRL has it (for a notebook: its code cells joined)."""
    text = read_source(trl_repo, ref, example.path)
    return notebook_code(text) if example.notebook else text


def substitutions_for(example: Example, package: str) -> Tuple[Substitution, ...]:
    """The example's own substitutions, after the import rewrite when testing ``rl4lms.trl``."""
    return (IMPORTS if package == "rl4lms.trl" else ()) + example.substitutions


def transform(example: Example, source: str, package: str,
              placeholders: Dict[str, str]) -> Tuple[str, List[Tuple[Substitution, int]]]:
    """``source`` with every substitution applied, and how often each matched; raises
    ``SubstitutionMismatch`` naming each one whose count differs from the table."""
    text, applied, problems = source, [], []
    for substitution in substitutions_for(example, package):
        found = substitution.occurrences(text)
        if substitution.count == -1 and found == 0:
            continue
        if found == 0 or substitution.count not in (-1, 0, found):
            expected = substitution.count or "at least 1"
            problems.append(f"{example.name}: '{substitution.name}' ({substitution.old!r}) occurs {found} times, "
                            f"the table expects {expected}")
            continue
        text = substitution.apply(text, placeholders)
        applied.append((substitution, found))
    if package == "rl4lms.trl":
        if not any(substitution.count == -1 for substitution, _ in applied):
            problems.append(f"{example.name}: no TRL import to rewrite")
        problems += [f"{example.name}: TRL import left unrewritten: {line.strip()!r}"
                     for line in TRL_IMPORT.findall(text)]
    if problems:
        raise SubstitutionMismatch("\n".join(problems))
    return text, applied


def last_error_line(output: str) -> str:
    """The last exception line of a Python run's output (else its last non-blank line)."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", output) if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line)]
    return (errors or lines or [""])[-1]


@dataclass
class Outcome:
    """What running one transformed example gave."""

    example: str
    substitutions: List[str]
    outcome: str
    seconds: float
    log: Path
    ok: bool = False


def run_example(example: Example, script: Path, python: str, env: Dict[str, str], timeout: float,
                applied: Sequence[Tuple[Substitution, int]], args: Sequence[str]) -> Outcome:
    """Run ``script`` with ``python`` and ``args`` in its own folder; the output goes to ``<script>.log``."""
    run_env = dict(env, **({IMDB_ROWS_ENV: str(example.imdb_rows)} if example.imdb_rows else {}))
    log = script.with_suffix(".log")
    names = [f"{substitution.name} x{found}" for substitution, found in applied]
    start = time.perf_counter()
    try:
        done = subprocess.run([python, script.name, *args], cwd=script.parent, env=run_env, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output, code = done.stdout, done.returncode
    except subprocess.TimeoutExpired as expired:
        output, code = (expired.stdout or b"").decode(errors="replace"), None
    seconds = time.perf_counter() - start
    log.write_text(output)
    if code == 0:
        return Outcome(example.name, names, "finished", seconds, log, ok=True)
    if example.expected_failure and example.expected_failure in output and not torch_has_cuda(python):
        return Outcome(example.name, names, f"stopped as expected on CPU: {last_error_line(output)}", seconds, log,
                       ok=True)
    outcome = f"timed out after {timeout:.0f} s" if code is None else f"failed: {last_error_line(output)}"
    return Outcome(example.name, names, outcome, seconds, log)


def torch_has_cuda(python: str) -> bool:
    """Whether ``python``'s torch sees a CUDA GPU."""
    done = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True,
                          text=True)
    return done.stdout.strip() == "True"


def fill_args(example: Example, placeholders: Dict[str, str]) -> List[str]:
    """The example's command-line arguments with the model folders filled in."""
    args = list(example.args)
    for key, value in placeholders.items():
        args = [arg.replace(key, value) for arg in args]
    return args


def markdown(outcomes: Sequence[Outcome]) -> str:
    """The results as a Markdown table."""
    lines = ["| example | substitutions applied | outcome | seconds |", "|---|---|---|---|"]
    for row in outcomes:
        outcome = row.outcome.replace("|", "\\|")[:200]
        lines.append(f"| {row.example} | {', '.join(row.substitutions) or '-'} | {outcome} | {row.seconds:.1f} |")
    return "\n".join(lines)


def substitution_table(examples: Sequence[Example], package: str) -> str:
    """Every substitution of ``examples`` as a Markdown table (pattern, replacement, count, why)."""
    lines = ["| example | kind | pattern | replacement | count | why |", "|---|---|---|---|---|---|"]
    for example in examples:
        for sub in substitutions_for(example, package):
            cells = [example.name, sub.kind, ("regex " if sub.regex else "") + repr(sub.old), repr(sub.new),
                     {-1: "any", 0: ">=1"}.get(sub.count, str(sub.count)), sub.why]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        if example.args or example.imdb_rows:
            lines.append(f"| {example.name} | arguments | - | {' '.join(example.args) or '-'} | - | "
                         f"IMDB rows: {example.imdb_rows or 'as shipped'} |")
    return "\n".join(lines)


def add_checkout_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--trl-repo`` and ``--trl-ref``: the TRL git clone and the tag or commit to read ``what`` at."""
    parser.add_argument("--trl-repo", type=Path, default=DEFAULT_TRL_REPO,
                        help="a git clone of huggingface/trl (default: %(default)s)")
    parser.add_argument("--trl-ref", default=DEFAULT_TRL_REF, help=f"the TRL tag or commit to read {what} at")


def refuse(problems: Sequence[str], ref: str) -> int:
    """Print why the substitutions do not fit TRL ``ref``; exit code 2."""
    print(f"error: refusing to run, the substitution table does not match TRL {ref}:\n" + "\n".join(problems),
          file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    """Transform the chosen examples and run them (or print their diffs or the tables); the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkout_arguments(parser, "the examples")
    parser.add_argument("--only", action="append", choices=[example.name for example in EXAMPLES],
                        help="run only this example (repeatable)")
    parser.add_argument("--package", choices=PACKAGES, default="rl4lms.trl",
                        help="rl4lms.trl rewrites the imports; trl keeps them (to run with the real TRL)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the examples")
    parser.add_argument("--workdir", type=Path, help="folder for models, scripts and logs (default: a new temp dir)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per example")
    parser.add_argument("--show-diff", action="store_true", help="print each unified diff and run nothing")
    parser.add_argument("--list", action="store_true", help="print the substitution tables and run nothing")
    args = parser.parse_args(argv)
    examples = [example for example in EXAMPLES if not args.only or example.name in args.only]
    if args.list:
        print(substitution_table(examples, args.package))
        return 0

    # --show-diff writes nothing, so its model folders are shown under a placeholder.
    workdir = args.workdir or (Path("$WORKDIR") if args.show_diff else Path(tempfile.mkdtemp(prefix="trl_examples-")))
    models = workdir / "models"
    placeholders = {LM_FOLDER: str(models / "tiny-gpt2"), CLASSIFIER_FOLDER: str(models / "tiny-sentiment-classifier"),
                    RM_ADAPTER_FOLDER: str(models / "tiny-gpt2-rm-adapter")}
    quoted = {key: repr(value) for key, value in placeholders.items()}
    prepared, problems = [], []
    for example in examples:
        try:
            source = original_source(example, args.trl_repo, args.trl_ref)
            prepared.append((example, source, *transform(example, source, args.package, quoted)))
        except (FileNotFoundError, SubstitutionMismatch) as error:
            problems.append(str(error))
    if problems:
        return refuse(problems, args.trl_ref)
    if args.show_diff:
        for example, source, text, _ in prepared:
            sys.stdout.writelines(difflib.unified_diff(source.splitlines(True), text.splitlines(True),
                                                       f"trl {args.trl_ref}: {example.path}",
                                                       f"{example.name} ({args.package})"))
        return 0

    env = dict(os.environ, **OFFLINE_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(COMPAT_DIR), env.get("PYTHONPATH")]))
    print(f"workdir: {workdir}\nwriting the offline models with {args.python} ...", flush=True)
    subprocess.run([args.python, "-c", "import sys; from trl_examples import write_offline_models; "
                    "write_offline_models(sys.argv[1])", str(models)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    outcomes = []
    for example, _, text, applied in prepared:
        script = workdir / example.name / f"{example.name}.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(text)
        outcomes.append(run_example(example, script, args.python, env, args.timeout, applied,
                                    fill_args(example, placeholders)))
        print(f"{outcomes[-1].example}: {outcomes[-1].outcome} ({outcomes[-1].seconds:.1f} s, log "
              f"{outcomes[-1].log})", flush=True)
    print(f"\npackage {args.package}, python {args.python}, TRL examples at {args.trl_ref}\n")
    print(markdown(outcomes))
    return 0 if all(outcome.ok for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
