"""Builders for the paper's data sets, written as verl-format parquet (one file per benchmark).

Training: ``dapo_math_14k``, DAPO-Math-17k deduplicated by problem text and restricted to English,
as ``open-r1/DAPO-Math-17k-Processed`` (config ``en``) does it. Evaluation: ``math500``, ``aime24``,
``aime25``, ``amc23``, ``gpqa_diamond`` and ``mmlu_stem``.

Each benchmark loads from, in this order unless ``source`` says otherwise: files under
``local_dir`` (``<name>.parquet|jsonl|json|csv`` or a folder ``<name>/``), the copy bundled in the
package (AIME24, AIME25, AMC23, MATH500), the Hugging Face hub; :mod:`verl_restrain.data.records`
turns the records into problems. Each file is written atomically
(:func:`verl_restrain.jobs.files.atomic_write_table`); the output folder is checked to be writable
before anything is read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from tqdm import tqdm

from verl_restrain import __version__
from verl_restrain.data.records import (
    CHOICE_SHUFFLE_SEED,
    MMLU_STEM_SUBJECTS,
    dedup_english,
    parse_choice,
    parse_competition,
    parse_dapo,
    parse_math,
    stem_subjects_only,
)
from verl_restrain.data.rows import Problem, make_row, write_rows
from verl_restrain.data.sources import HubSource, find_local_files, read_bundled, read_hub, read_local
from verl_restrain.jobs.files import WriteError, check_writable, remove_stale_temps

SOURCES = ("auto", "local", "bundled", "hub")


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
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output-dir {output_dir} is a file; give a folder for the <name>.parquet files")
    for name in names:
        remove_stale_temps(output_dir / f"{name}.parquet")
        try:
            check_writable(output_dir / f"{name}.parquet")
        except WriteError as error:
            raise ValueError(f"--output-dir: {error}") from None
    written: dict[str, Path] = {}
    for name in tqdm(names, desc="benchmarks", unit="set"):
        hub = (hub_overrides[name],) if hub_overrides and name in hub_overrides else None
        rows, provenance = build_rows(name, source=source, local_dir=local_dir, hub=hub)
        written[name] = write_rows(rows, output_dir / f"{name}.parquet", provenance)
        tqdm.write(f"{name:>14}: {len(rows):>6} rows from {provenance['source']} -> {written[name]}")
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restrain-prepare-data",
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
    except WriteError as exc:
        raise SystemExit(f"prepare_data: {exc}; make room (or fix the folder) and rerun the same command") from exc
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise SystemExit(f"prepare_data: {exc}") from exc
    return 0


if __name__ == "__main__":
    sys.exit(main())
