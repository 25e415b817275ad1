"""Every error a user can cause or meet, in two kinds that say how the command line ends.

* :class:`SetupError`: the run cannot start, or cannot go on, as configured (a bad config, a model,
  data set or tool that is missing, a run folder that cannot be written or holds another run). The
  command prints one ``error:`` line and exits 2; fixing the setup and running again goes on.
* :class:`RunStoppedError`: the run started and stopped on something it met while training (a NaN
  loss, a reward or metric that returned unusable scores, a launcher that died). The command prints
  ``error: training stopped: ...`` and exits 1; what was written before the stop is intact.

Each concrete error also derives from the built-in exception that describes it (``ValueError``,
``OSError``, ``KeyError``, ...), so code that catches those keeps working. The modules that raise an
error import it from here; this module imports nothing of the project.
"""
from __future__ import annotations

from typing import List, Optional


class SetupError(Exception):
    """The run cannot start (or go on) as configured; the command exits with ``exit_status`` (2)."""

    exit_status = 2


class RunStoppedError(Exception):
    """A started run stopped on something it met while training; the command exits 1."""

    exit_status = 1


# -- setup: the config and the command line -----------------------------------------------------------

class ConfigError(SetupError, ValueError):
    """One or more problems in a config; ``errors`` lists them, each starting with its key path."""

    def __init__(self, errors: List[str], source: Optional[str] = None) -> None:
        self.errors = errors
        where = f" in {source}" if source else ""
        listed = f" {errors[0]}" if len(errors) == 1 else "".join(f"\n  - {e}" for e in errors)
        super().__init__(f"invalid config{where}:{listed}")


class DescribeError(SetupError, ValueError):
    """``--describe`` was given something that is neither a config path nor a component id."""


class RegistryError(SetupError, KeyError):
    """An unknown or conflicting registry id, or an entry point that cannot be loaded; the message lists
    the valid ids or names the entry point."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class ComponentBuildError(SetupError, ValueError):
    """A component named in the config rejected its arguments or data; the message names the section."""


class DistributedSetupError(SetupError, ValueError):
    """A launch or sharding set-up this project cannot train correctly; the message says what to change."""


class ExecutorError(SetupError, RuntimeError):
    """A sweep executor that cannot start (bad worker count, ray missing, cluster unreachable)."""


# -- setup: models, data and tools ---------------------------------------------------------------------

class ModelLoadError(SetupError, OSError):
    """A model or tokenizer could not be loaded; the message says what to try instead."""


class GGUFError(SetupError, OSError):
    """A GGUF checkpoint or the package that ships it is missing; the message says how to get it."""


class ChatTemplateError(SetupError, ValueError):
    """A chat-template option was given for a tokenizer that has no chat template."""


class ValueHeadMissingError(SetupError, FileNotFoundError):
    """The folder has LM weights but no ``value_head.safetensors``."""


class VLLMUnavailableError(SetupError, ValueError):
    """vLLM is not installed, or cannot serve this policy; the message says what to do."""


class DataSourceError(SetupError, OSError):
    """A data set could not be loaded (offline, missing file); the message says what to use instead."""


class EmptyDataPoolError(SetupError, ValueError):
    """A data pool split holds no samples."""


class WordNetMissingError(SetupError, LookupError):
    """Neither NLTK's WordNet nor Debian's WordNet packages are installed."""


class SpiceUnavailableError(SetupError, ValueError):
    """Java, the SPICE jar or Stanford CoreNLP's jars are missing; the message says how to install them."""


# -- setup: the run folder -----------------------------------------------------------------------------

class ArtifactWriteError(SetupError, OSError):
    """A file of the run could not be written (unwritable folder, full disk); earlier files are intact."""


class RunLockedError(SetupError, RuntimeError):
    """Another live process holds the run folder; the command exits 3, so a sweep can tell it apart."""

    exit_status = 3


class ConfigMismatchError(SetupError, ValueError):
    """The run folder holds a run made with a different config, or more iterations than asked for."""


class CheckpointFormatError(SetupError, ValueError):
    """A checkpoint that cannot be read safely (an older pickle format) or at all."""


class DamagedArtifactError(SetupError, ValueError):
    """A file of the run differs from what was written (flipped or missing bytes, a missing file)."""


# -- a started run that stopped ------------------------------------------------------------------------

class NonFiniteLossError(RunStoppedError, FloatingPointError):
    """A training loss became NaN or infinite."""


class RewardOutputError(RunStoppedError, ValueError):
    """A reward function returned something unusable (not numbers, a wrong count, NaN or infinite values)."""


class MetricOutputError(RunStoppedError, ValueError):
    """A metric returned per-sample scores that do not line up with the samples."""


class SpiceRunError(RunStoppedError, RuntimeError):
    """SPICE's Java process failed or timed out while scoring."""


class LauncherGoneError(RunStoppedError, RuntimeError):
    """The launcher of a multi-process run is gone (killed); the processes stopped at an iteration boundary."""


# -- raised and caught inside the project: never reaches the command line -----------------------------

class ToolCallError(ValueError):
    """The text closes a tool call that cannot be parsed (in the project's syntax: one that is not
    ``<call>name(argument)</call>``); the tool env answers it with an error observation."""
