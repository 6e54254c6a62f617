"""Builders for the paper's data sets, written as verl-format parquet (one file per benchmark).

Training: ``dapo_math_14k``, DAPO-Math-17k deduplicated by problem text and restricted to English,
as ``open-r1/DAPO-Math-17k-Processed`` (config ``en``) does it. Evaluation: ``math500``, ``aime24``,
``aime25``, ``amc23``, ``gpqa_diamond`` and ``mmlu_stem``.

Each benchmark loads from, in this order unless ``source`` says otherwise: files under
``local_dir`` (``<name>.parquet|jsonl|json|csv`` or a folder ``<name>/``), the copy bundled in the
package (AIME24, AIME25, AMC23, MATH500), the Hugging Face hub. Field names are matched
case-insensitively, so the hub's files, the bundled copies and the usual re-distributions (e.g. the
Qwen2.5-Math evaluation files) all load with the same builder.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from verl_restrain import __version__
from verl_restrain.data.rows import Problem, make_row, option_letters, write_rows
from verl_restrain.data.sources import HubSource, find_local_files, read_bundled, read_hub, read_local

# Seed of the option order of GPQA-Diamond (the source lists the correct answer first).
CHOICE_SHUFFLE_SEED = 0

# MMLU's STEM category: the 18 subjects of the "STEM" group of the MMLU paper's categorisation
# (physics, chemistry, biology, computer science, math, engineering), 3,018 test questions. The
# same list makes up the ``mmlu_stem`` evaluation set of Qwen2.5-Math and math-evaluation-harness.
MMLU_STEM_SUBJECTS = (
    "abstract_algebra",
    "astronomy",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "electrical_engineering",
    "elementary_mathematics",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_mathematics",
    "high_school_physics",
    "high_school_statistics",
    "machine_learning",
)

# DAPO-Math-17k wraps every problem in an "Answer:" instruction; we strip it and use our template.
DAPO_PREFIX = "Solve the following math problem step by step."
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
# CJK ideographs, the filter open-r1 uses to split DAPO-Math-17k into its "en" and "cn" configs.
CJK = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff]")

SOURCES = ("auto", "local", "bundled", "hub")


def pick(record: Mapping, *names: str, required: bool = True) -> Any:
    """The first non-empty field of ``record`` among ``names`` (case-insensitive; ``a.b`` for nesting)."""
    lowered = {str(k).lower(): v for k, v in record.items()}
    for name in names:
        head, _, rest = name.partition(".")
        value = lowered.get(head.lower())
        if rest and isinstance(value, Mapping):
            value = pick(value, rest, required=False)
        elif rest:
            value = None
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value
    if required:
        raise KeyError(f"record has none of the fields {list(names)}; its fields are {sorted(record)}")
    return None


def as_text(value: Any) -> str:
    """A question as text: a string, or the user turn of a chat-message list."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and isinstance(value[0], Mapping):
        users = [m["content"] for m in value if m.get("role", "user") == "user"]
        if users:
            return users[-1]
    raise ValueError(f"cannot read a question from {type(value).__name__}: {str(value)[:80]!r}")


def as_answer(value: Any) -> str:
    """A gold answer as text; integral floats lose their ``.0`` (JSON loaders turn 27 into 27.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def as_integer_answer(value: Any) -> str:
    """Competition answers (AIME, AMC) are integers: ``"025"`` and ``25.0`` both become ``"25"``."""
    text = as_answer(value)
    return str(int(text)) if re.fullmatch(r"[+-]?\d+", text) else text


def source_id(record: Mapping, index: int) -> str:
    value = pick(record, "id", "unique_id", "record id", "idx", "extra_info.index", required=False)
    return str(index if value is None else value)


def parse_math(record: Mapping, index: int) -> Problem:
    """A free-form math item: question, final answer, and subject/level where given."""
    level = pick(record, "level", required=False)
    return Problem(
        question=as_text(pick(record, "problem", "question", "prompt")),
        answer=as_answer(pick(record, "answer", "ground_truth", "reward_model.ground_truth")),
        source_id=source_id(record, index),
        subject=str(pick(record, "subject", "type", required=False) or ""),
        level="" if level is None else str(level),
    )


def parse_competition(record: Mapping, index: int) -> Problem:
    """An AIME/AMC item (integer answers)."""
    problem = parse_math(record, index)
    return Problem(problem.question, as_integer_answer(problem.answer), problem.source_id)


def strip_dapo_instruction(text: str) -> str:
    """The bare problem of a DAPO-Math prompt (its "Answer:" instruction removed)."""
    text = text.strip()
    if text.startswith(DAPO_PREFIX):
        _, sep, body = text.partition("\n\n")
        text = body if sep else text
    return text.split(DAPO_SUFFIX, 1)[0].strip()


def parse_dapo(record: Mapping, index: int) -> Problem:
    """A DAPO-Math-17k item, from the original data set or from ``open-r1``'s processed copy."""
    return Problem(
        question=strip_dapo_instruction(as_text(pick(record, "source_prompt", "prompt", "problem", "question"))),
        answer=as_answer(pick(record, "reward_model.ground_truth", "solution", "answer", "ground_truth")),
        source_id=source_id(record, index),
    )


def shuffled_options(options: Sequence[str], seed: int, index: int) -> tuple[list[str], list[int]]:
    """``options`` in a fixed pseudo-random order drawn from ``(seed, index)``, and that permutation."""
    order = np.random.default_rng([seed, index]).permutation(len(options)).tolist()
    return [options[i] for i in order], order


def parse_choice(record: Mapping, index: int, *, seed: int = CHOICE_SHUFFLE_SEED) -> Problem:
    """A multiple-choice item in one of two layouts.

    * GPQA's: ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``. The options are shuffled
      with :func:`shuffled_options` (the source always lists the correct answer first).
    * MMLU's: ``question``, ``choices`` (list), ``answer`` (0-based index or letter), kept in order.
    """
    question = as_text(pick(record, "question", "problem"))
    subject = str(pick(record, "subject", "type", "subdomain", "high-level domain", required=False) or "")
    correct = pick(record, "correct answer", required=False)
    if correct is not None:
        options = [str(correct).strip()] + [
            str(pick(record, f"incorrect answer {k}")).strip() for k in (1, 2, 3)
        ]
        shown, order = shuffled_options(options, seed, index)
        gold = option_letters(len(shown))[order.index(0)]
        return Problem(question, gold, source_id(record, index), tuple(shown), subject, shuffle_seed=seed)
    options = [str(o).strip() for o in pick(record, "choices", "options")]
    letters = option_letters(len(options))
    answer = pick(record, "answer", "label")
    if isinstance(answer, str) and answer.strip().upper() in letters:
        gold = answer.strip().upper()
    else:
        gold = letters[int(answer)]
    return Problem(question, gold, source_id(record, index), tuple(options), subject)


def dedup_english(problems: list[Problem]) -> list[Problem]:
    """Keep the first item of each distinct problem text, and only problems without CJK characters."""
    seen: set[str] = set()
    kept = []
    for problem in problems:
        key = " ".join(problem.question.split())
        if key in seen or CJK.search(key):
            continue
        seen.add(key)
        kept.append(problem)
    return kept


def stem_subjects_only(problems: list[Problem]) -> list[Problem]:
    """MMLU items of the STEM subjects (files without a subject column are taken as already STEM)."""
    if all(not p.subject for p in problems):
        return problems
    return [p for p in problems if p.subject in MMLU_STEM_SUBJECTS]


def _keep_all(problems: list[Problem]) -> list[Problem]:
    return problems


@dataclass(frozen=True)
class Benchmark:
    """How to build one data set: where it comes from and how its records become problems."""

    name: str
    kind: str
    ability: str
    split: str
    hub: tuple[HubSource, ...]
    parse: Callable[[Mapping, int], Problem]
    finalize: Callable[[list[Problem]], list[Problem]] = _keep_all
    description: str = ""
    bundled: bool = False

    def problems(self, records: Sequence[Mapping]) -> list[Problem]:
        parsed = []
        for index, record in enumerate(records):
            try:
                parsed.append(self.parse(record, index))
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise ValueError(f"{self.name}: record {index} cannot be read: {exc}") from exc
        return self.finalize(parsed)


BENCHMARKS: dict[str, Benchmark] = {
    "dapo_math_14k": Benchmark(
        "dapo_math_14k",
        "math",
        "math",
        "train",
        (HubSource("open-r1/DAPO-Math-17k-Processed", "en", "train"),),
        parse_dapo,
        dedup_english,
        "DAPO-Math-17k, deduplicated by problem text, English only",
    ),
    "math500": Benchmark(
        "math500", "math", "math", "test", (HubSource("HuggingFaceH4/MATH-500", None, "test"),), parse_math,
        description="MATH500 (the PRM800K test subset of MATH)", bundled=True,
    ),
    "aime24": Benchmark(
        "aime24", "math", "math", "test", (HubSource("HuggingFaceH4/aime_2024", None, "train"),), parse_competition,
        description="AIME 2024 I and II", bundled=True,
    ),
    "aime25": Benchmark(
        "aime25", "math", "math", "test", (HubSource("math-ai/aime25", None, "test"),), parse_competition,
        description="AIME 2025 I and II", bundled=True,
    ),
    "amc23": Benchmark(
        "amc23", "math", "math", "test", (HubSource("math-ai/amc23", None, "test"),), parse_competition,
        description="AMC 2023 (40 problems with numeric answers)", bundled=True,
    ),
    "gpqa_diamond": Benchmark(
        "gpqa_diamond", "choice", "stem", "test", (HubSource("Idavidrein/gpqa", "gpqa_diamond", "train"),), parse_choice,
        description=f"GPQA-Diamond, options shuffled with seed {CHOICE_SHUFFLE_SEED}",
    ),
    "mmlu_stem": Benchmark(
        "mmlu_stem",
        "choice",
        "stem",
        "test",
        tuple(HubSource("cais/mmlu", subject, "test") for subject in MMLU_STEM_SUBJECTS),
        parse_choice,
        stem_subjects_only,
        "MMLU, test split of the 18 STEM subjects",
    ),
}

TRAIN_BENCHMARKS = ("dapo_math_14k",)
EVAL_BENCHMARKS = ("math500", "aime24", "aime25", "amc23", "gpqa_diamond", "mmlu_stem")


def benchmark_kind(name: str) -> str:
    """The answer kind (``math`` or ``choice``) of a benchmark's gold answers."""
    return get_benchmark(name).kind


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


def resolve_names(spec: str | Sequence[str]) -> list[str]:
    """Benchmark names from ``"all"``, ``"train"``, ``"eval"`` or a comma-separated list."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in (i.strip() for i in items):
        group = {"all": list(BENCHMARKS), "train": list(TRAIN_BENCHMARKS), "eval": list(EVAL_BENCHMARKS)}.get(item)
        for name in group or [item]:
            get_benchmark(name)
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError("no benchmark given")
    return names


def load_records(
    benchmark: Benchmark,
    *,
    source: str = "auto",
    local_dir: str | Path | None = None,
    hub: tuple[HubSource, ...] | None = None,
) -> tuple[list[dict], str]:
    """Records of ``benchmark`` and a description of where they came from (see module docstring)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if source == "local" or (source == "auto" and local_dir and find_local_files(local_dir, benchmark.name)):
        if not local_dir:
            raise ValueError("source 'local' needs a local directory (--local-dir)")
        return read_local(local_dir, benchmark.name)
    if source == "bundled" or (source == "auto" and benchmark.bundled):
        return read_bundled(benchmark.name)
    sources = hub or benchmark.hub
    records = [record for _, record in read_hub(sources)]
    return records, ", ".join(s.describe() for s in sources)


def build_rows(
    name: str,
    *,
    source: str = "auto",
    local_dir: str | Path | None = None,
    hub: tuple[HubSource, ...] | None = None,
) -> tuple[list[dict], dict]:
    """verl rows of benchmark ``name`` and their provenance (source, counts, settings)."""
    benchmark = get_benchmark(name)
    records, origin = load_records(benchmark, source=source, local_dir=local_dir, hub=hub)
    problems = benchmark.problems(records)
    if not problems:
        raise ValueError(f"{name}: no items left from {origin}")
    rows = [
        make_row(p, data_source=name, ability=benchmark.ability, split=benchmark.split, index=i)
        for i, p in enumerate(problems)
    ]
    provenance = {
        "benchmark": name,
        "description": benchmark.description,
        "source": origin,
        "records_read": len(records),
        "rows": len(rows),
        "package_version": __version__,
    }
    if benchmark.kind == "choice":
        provenance["choice_shuffle_seed"] = CHOICE_SHUFFLE_SEED
    return rows, provenance


def prepare_benchmarks(
    names: str | Sequence[str],
    output_dir: str | Path,
    *,
    source: str = "auto",
    local_dir: str | Path | None = None,
    hub_overrides: Mapping[str, HubSource] | None = None,
) -> dict[str, Path]:
    """Write ``<output_dir>/<name>.parquet`` for each benchmark; return the written paths."""
    names = resolve_names(names)
    if local_dir is not None and not Path(local_dir).is_dir():
        raise FileNotFoundError(f"--local-dir {local_dir} is not a directory")
    unknown = set(hub_overrides or {}) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"--hub given for unknown benchmark(s) {sorted(unknown)}")
    written: dict[str, Path] = {}
    for name in tqdm(names, desc="benchmarks", unit="set"):
        hub = (hub_overrides[name],) if hub_overrides and name in hub_overrides else None
        rows, provenance = build_rows(name, source=source, local_dir=local_dir, hub=hub)
        written[name] = write_rows(rows, Path(output_dir) / f"{name}.parquet", provenance)
        tqdm.write(f"{name:>14}: {len(rows):>6} rows from {provenance['source']} -> {written[name]}")
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write the paper's training and evaluation sets as verl-format parquet.",
        epilog="Benchmarks: " + "; ".join(f"{b.name}: {b.description}" for b in BENCHMARKS.values()),
    )
    parser.add_argument(
        "--benchmarks", default="all",
        help="comma-separated names, or 'all', 'train' (dapo_math_14k), 'eval' (the six test sets)",
    )
    parser.add_argument("--output-dir", required=True, help="folder for <name>.parquet")
    parser.add_argument(
        "--local-dir", default=None,
        help="folder with <name>.parquet|jsonl|json|csv (or <name>/) to use instead of the hub",
    )
    parser.add_argument(
        "--source", choices=SOURCES, default="auto",
        help="auto: local file if present, else the bundled copy, else the hub",
    )
    parser.add_argument(
        "--hub", action="append", default=[], metavar="NAME=REPO[:CONFIG[:SPLIT]]",
        help="load NAME from another hub data set (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``scripts/prepare_data.py``; returns the exit status."""
    args = build_parser().parse_args(argv)
    overrides = {}
    for item in args.hub:
        name, sep, spec = item.partition("=")
        if not sep:
            raise SystemExit(f"--hub {item!r}: expected NAME=REPO[:CONFIG[:SPLIT]]")
        overrides[name.strip()] = HubSource.parse(spec.strip())
    try:
        prepare_benchmarks(
            args.benchmarks, args.output_dir, source=args.source, local_dir=args.local_dir, hub_overrides=overrides
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise SystemExit(f"prepare_data: {exc}") from exc
    return 0
