"""Settings shared by the sampling jobs (offline scoring and evaluation), written once.

:class:`SamplingConfig` holds the model, the engine, the sampling settings and the inputs of the
answer-kind rule (:func:`verl_restrain.answers.kinds.answer_kind`), and checks them all in
``__post_init__``: a bad value raises :class:`JobInputError` naming its command-line flag, before
anything loads. Each job's config subclasses it (keyword-only fields) and may change a default.
:func:`progress_field` is the ``--progress/--quiet`` field of every job config; :func:`read_parquet` reads a
job's input file, reporting a missing or unreadable one as a :class:`JobInputError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from verl_restrain.answers.kinds import KINDS, answer_kind
from verl_restrain.jobs.generation import ENGINES, check_model

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "JobInputError",
    "SamplingConfig",
    "batch_seed",
    "flag",
    "override",
    "progress_field",
    "read_parquet",
]

# Prompts per generate call when batch_size is not set. vLLM schedules a batch's sequences itself,
# so large batches keep the GPUs busy; HF generate pads a batch to its longest prompt, so small ones
# waste less.
DEFAULT_BATCH_SIZE = {"vllm": 1024, "hf": 8}

SAMPLING = "sampling"
ANSWERS = "answers"


class JobInputError(ValueError):
    """A problem with a job's input files or settings, reported before any model loads."""


def read_parquet(path: str, what: str) -> pa.Table:
    """The parquet file ``path``, the job's ``what`` (``input``, ``--samples``, ...)."""
    if not Path(path).is_file():
        raise JobInputError(f"{what} file not found: {path}")
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise JobInputError(f"cannot read {path} as parquet: {error}") from None


def progress_field() -> Any:
    """The ``--progress/--quiet`` field of a job config (on by default)."""
    return field(
        default=True,
        metadata={
            "help": "show a progress bar and the summary",
            "negative_flags": ("--quiet",),
            "negative_help": "no progress bar and no summary (also --quiet)",
        },
    )


def flag(name: str) -> str:
    """The command-line flag of a config field: ``top_p`` -> ``--top-p``."""
    return "--" + name.replace("_", "-")


def batch_seed(seed: int, *position: int) -> int:
    """The sampling seed of one batch: a function of the run's seed and the batch's position only.

    Scoring passes the global batch index, evaluation the benchmark's CRC-32 and the batch index.
    """
    return int(np.random.SeedSequence([seed, *position]).generate_state(1)[0])


def override(config: type, name: str, default: Any) -> Any:
    """A field of ``config`` with another default and the same help (for a subclass)."""
    return field(default=default, metadata=config.__dataclass_fields__[name].metadata)


@dataclass(kw_only=True)
class SamplingConfig:
    """Model, engine, sampling and answer-kind settings of a sampling job."""

    model: str = field(metadata={"help": "model to sample: a Hugging Face model folder or a hub id", "group": SAMPLING})
    engine: str = field(
        default="auto",
        metadata={
            "group": SAMPLING,
            "help": "auto (vLLM if installed and a GPU is visible), vllm or hf. vLLM's default tensor parallel size "
            "is the largest power of two <= the visible GPUs that divides the attention heads; set it with "
            "--engine-kwargs",
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "0 for greedy", "group": SAMPLING})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling threshold, in (0, 1]", "group": SAMPLING})
    max_new_tokens: int = field(default=4096, metadata={"help": "tokens generated per sample at most", "group": SAMPLING})
    seed: int = field(default=42, metadata={"help": "the seed every batch's sampling seed derives from", "group": SAMPLING})
    batch_size: int | None = field(
        default=None,
        metadata={
            "group": SAMPLING,
            "help": f"prompts per generate call (default {DEFAULT_BATCH_SIZE['vllm']} with vllm, "
            f"{DEFAULT_BATCH_SIZE['hf']} with hf); the samples depend on it",
        },
    )
    engine_kwargs: dict = field(
        default_factory=dict,
        metadata={
            "group": SAMPLING,
            "flags": ("--engine-kwarg",),
            "metavar": "JSON|KEY=VALUE",
            "help": 'for the engine (repeatable), e.g. \'{"dtype": "bfloat16"}\' or tensor_parallel_size=2',
        },
    )
    apply_chat_template_kwargs: dict = field(
        default_factory=dict,
        metadata={
            "group": SAMPLING,
            "flags": ("--chat-template-kwarg",),
            "metavar": "JSON|KEY=VALUE",
            "help": "verl's data.apply_chat_template_kwargs (repeatable), e.g. enable_thinking=false",
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "let transformers run the model's own code", "group": SAMPLING}
    )
    answer_kind_map: dict = field(
        default_factory=dict,
        metadata={
            "group": ANSWERS,
            "metavar": "DATA_SOURCE=KIND",
            "help": "answer kind (math or choice) of every row of one data_source, before the row's extra_info.kind "
            "and the built-in choice benchmarks (repeatable)",
        },
    )
    default_answer_kind: str = field(
        default="math",
        metadata={"help": "answer kind (math or choice) of a row nothing else decides", "metavar": "KIND", "group": ANSWERS},
    )
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        self.validate()
        try:
            check_model(self.model)
        except (ValueError, FileNotFoundError) as error:
            raise JobInputError(f"--model: {error}") from None

    def validate(self) -> None:
        """Check every setting but the model (a subclass extends it); the model is checked last."""
        if self.engine not in ENGINES:
            raise JobInputError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.temperature < 0:
            raise JobInputError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise JobInputError(f"--top-p must be in (0, 1], got {self.top_p}")
        self.at_least("max_new_tokens", 1)
        if self.batch_size is not None:
            self.at_least("batch_size", 1)
        for source, kind in self.answer_kind_map.items():
            if kind not in KINDS:
                raise JobInputError(f"--answer-kind-map {source}={kind}: the kind must be math or choice")
        if self.default_answer_kind not in KINDS:
            raise JobInputError(f"--default-answer-kind must be math or choice, got {self.default_answer_kind!r}")

    def at_least(self, name: str, minimum: int) -> None:
        """Raise :class:`JobInputError` unless the field ``name`` is >= ``minimum``."""
        value = getattr(self, name)
        if value < minimum:
            raise JobInputError(f"{flag(name)} must be >= {minimum}, got {value}")

    def batch_size_for(self, engine: str) -> int:
        """``batch_size``, else the default of the resolved ``engine``."""
        return self.batch_size or DEFAULT_BATCH_SIZE[engine]

    def row_kind(self, data_source: Any, extra_info: Any, default: str | None = None) -> str:
        """The answer kind of one row by the package's one rule, with this job's settings.

        ``default`` (say, a known benchmark's kind) replaces ``default_answer_kind`` when given.
        """
        return answer_kind(data_source, extra_info, self.answer_kind_map, default or self.default_answer_kind)
