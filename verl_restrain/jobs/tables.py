"""The paper's tables from evaluation results, and training curves from verl's logs.

Tables. Each result JSON (written by ``scripts/evaluate.py``) holds one run's metrics per
benchmark; runs are identified by their ``label`` (a method key such as ``restrain``, ``ttrl``,
``srt_offline``, ``grpo_gold``, an ablation key, or any other name). The main table has one row per
method and the columns MATH500, AIME24, AIME25, AMC23, MMLU-STEM, GPQA-D and their average (only
when all six are known); the ablation table has the same columns for RESTRAIN and its ablations.
Cells are Pass@1 in percent (the mean over the k samples). The numbers the paper reports for
Qwen3-4B-Base are printed next to ours exactly as published; the columns it reports that are not
transcribed here stay "—", never filled in.

Curves (``--curve``) are drawn by :mod:`verl_restrain.jobs.curves`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from verl_restrain.jobs.curves import DEFAULT_CURVE_PATTERNS, plot_curves, read_training_log
from verl_restrain.jobs.files import WriteError, atomic_write_text, remove_stale_temps

# Column order and headers of both tables.
BENCHMARK_COLUMNS = {
    "math500": "MATH500",
    "aime24": "AIME24",
    "aime25": "AIME25",
    "amc23": "AMC23",
    "mmlu_stem": "MMLU-STEM",
    "gpqa_diamond": "GPQA-D",
}
AVERAGE = "average"
UNKNOWN = "—"

METHOD_NAMES = {
    "base": "Base model",
    "grpo_gold": "GRPO (gold)",
    "ttrl": "TTRL",
    "srt": "SRT",
    "srt_online": "SRT (online)",
    "srt_offline": "SRT (offline)",
    "restrain": "RESTRAIN",
    "uniform_weighting": "uniform weighting",
    "no_pseudo_label_weighting": "without pseudo-label weighting",
    "no_negative_penalization": "without negative penalization",
    "no_prompt_weighting": "without prompt weighting",
    "online_prompt_weight": "online prompt weights (App. E)",
    "rest_em": "ReST-EM (gold filter)",
    "rest_em_majority": "ReST-EM (majority filter)",
    "testtime_base": "Base model",
    "testtime_ttrl": "TTRL",
    "ettrl": "ETTRL",
    "ettrl_ear_only": "ETTRL (reshaping only)",
    "testtime_restrain": "RESTRAIN",
}
MAIN_METHODS = (
    "base",
    "grpo_gold",
    "ttrl",
    "srt",
    "srt_online",
    "srt_offline",
    "rest_em",
    "rest_em_majority",
    "restrain",
)
ABLATION_METHODS = (
    "restrain",
    "no_pseudo_label_weighting",
    "uniform_weighting",
    "no_negative_penalization",
    "no_prompt_weighting",
    "online_prompt_weight",
)
# The test-time setting: a model trains on one benchmark's own problems and is evaluated on them, so a
# run of method m is labelled ``testtime_<m>`` (ETTRL exists only here) with one result per benchmark.
TESTTIME_METHODS = ("testtime_base", "testtime_ttrl", "ettrl", "ettrl_ear_only", "testtime_restrain")
TESTTIME_COLUMNS = {"aime24": "AIME24", "amc23": "AMC23", "math500": "MATH500"}

# Pass@1 (%) the paper reports for Qwen3-4B-Base, transcribed as published. Absent keys are
# columns not transcribed here and print as unknown. AVERAGE is the paper's average over the six
# benchmarks.
PAPER_MODEL = "Qwen3-4B-Base"
PAPER_MAIN = {
    "grpo_gold": {"aime25": 20.8, "mmlu_stem": 73.7, "gpqa_diamond": 38.7, AVERAGE: 51.4},
    "ttrl": {"aime25": 8.3, "mmlu_stem": 59.4, "gpqa_diamond": 33.6, AVERAGE: 42.2},
    "srt": {"aime25": 12.0, "mmlu_stem": 59.4, "gpqa_diamond": 34.5, AVERAGE: 43.1},
    "restrain": {"aime25": 17.9, "mmlu_stem": 80.9, "gpqa_diamond": 40.2, AVERAGE: 51.0},
}
PAPER_ABLATION = {
    "no_pseudo_label_weighting": {"aime25": 6.0, "mmlu_stem": 59.3, "gpqa_diamond": 33.7, AVERAGE: 37.5},
    "no_negative_penalization": {"aime25": 9.6, "mmlu_stem": 56.4, "gpqa_diamond": 33.0, AVERAGE: 42.1},
    "no_prompt_weighting": {"aime25": 18.1, "mmlu_stem": 63.8, "gpqa_diamond": 37.0},
}
# Our runs of these methods sit next to the paper's row of the same method.
PAPER_ROW_OF = {"srt_online": "srt", "srt_offline": "srt"}



# ---------------------------------------------------------------- results


def load_results(specs: Sequence[str]) -> dict[str, dict[str, dict]]:
    """Per-label benchmark metrics from result JSONs given as ``PATH`` or ``LABEL=PATH``.

    Returns ``{label: {benchmark: metrics}}``. Several files may share a label (benchmarks evaluated
    separately); the same benchmark twice under one label is an error.
    """
    runs: dict[str, dict[str, dict]] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or Path(spec).exists():
            label, path = "", spec
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"result file {path} does not exist")
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON ({error}); give result files of restrain-evaluate") from None
        if not isinstance(result, Mapping) or not isinstance(result.get("benchmarks"), Mapping):
            raise ValueError(f"{path} is not an evaluation result (no 'benchmarks' mapping)")
        label = label or result.get("label") or path.stem
        merged = runs.setdefault(label, {})
        for name, metrics in result["benchmarks"].items():
            if name in merged:
                raise ValueError(f"benchmark {name!r} of run {label!r} appears in two result files")
            merged[name] = {"model": result.get("model"), **metrics}
    return runs


def pass_at_1(metrics: Mapping | None) -> float | None:
    """Pass@1 in percent, or None when unknown."""
    if not metrics or metrics.get("pass@1") is None:
        return None
    return 100.0 * float(metrics["pass@1"])


def row_values(
    benchmarks: Mapping[str, Mapping], columns: Mapping[str, str] = BENCHMARK_COLUMNS
) -> dict[str, float | None]:
    """A run's Pass@1 (%) per table column, with the average over the columns when all are known."""
    values = {name: pass_at_1(benchmarks.get(name)) for name in columns}
    known = [v for v in values.values() if v is not None]
    values[AVERAGE] = sum(known) / len(known) if len(known) == len(columns) else None
    return values


def format_cell(value: float | None) -> str:
    return UNKNOWN if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def ordered_labels(labels: Sequence[str], preferred: Sequence[str]) -> list[str]:
    """``preferred`` labels first (in that order), then the others in order of first appearance."""
    first = [m for m in preferred if m in labels]
    rest = [label for label in dict.fromkeys(labels) if label not in first]
    return first + rest


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_table(
    runs: Mapping[str, Mapping[str, Mapping]],
    methods: Sequence[str],
    paper: Mapping[str, Mapping[str, float]] | None,
    *,
    first_header: str,
    average_header: str = "Avg. of 6",
    benchmark_columns: Mapping[str, str] = BENCHMARK_COLUMNS,
) -> str:
    """Rows for ``methods`` present in ``runs`` or ``paper``: the paper's numbers, then ours."""
    header = [first_header, "Source", *benchmark_columns.values(), average_header]
    columns = [*benchmark_columns, AVERAGE]
    rows = []
    shown_paper: set[str] = set()
    for method in methods:
        name = METHOD_NAMES.get(method, method)
        paper_key = PAPER_ROW_OF.get(method, method)
        if paper is not None and paper_key in paper and paper_key not in shown_paper:
            shown_paper.add(paper_key)
            reported = paper[paper_key]
            paper_name = METHOD_NAMES.get(paper_key, paper_key)
            rows.append([paper_name, f"paper ({PAPER_MODEL})", *(format_cell(reported.get(c)) for c in columns)])
        if method in runs:
            values = row_values(runs[method], benchmark_columns)
            rows.append([name, "ours", *(format_cell(values[c]) for c in columns)])
    return markdown_table(header, rows)


def details_table(runs: Mapping[str, Mapping[str, Mapping]]) -> str:
    """Every run and benchmark: Pass@1 mean ± std over samples, maj@k, pass@k, no-answer share."""
    rows = []
    for label, benchmarks in runs.items():
        for name, m in benchmarks.items():
            k = m.get("k")
            std = m.get("pass@1_std")
            pass1 = format_cell(pass_at_1(m)) + ("" if std is None else f" ± {100 * std:.1f}")
            rows.append(
                [
                    label,
                    Path(str(m.get("model") or UNKNOWN)).name,
                    BENCHMARK_COLUMNS.get(name, name),
                    str(m.get("num_problems", UNKNOWN)),
                    str(k if k is not None else UNKNOWN),
                    pass1,
                    format_cell(_percent(m.get(f"maj@{k}"))),
                    format_cell(_percent(m.get(f"pass@{k}"))),
                    format_cell(_percent(m.get("no_answer"))),
                ]
            )
    header = ["Run", "Model", "Benchmark", "Problems", "k", "Pass@1 (mean ± std)", "maj@k", "pass@k", "No answer (%)"]
    return markdown_table(header, rows)


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * float(value)


def build_tables(runs: Mapping[str, Mapping[str, Mapping]], *, with_paper: bool = True) -> str:
    """The main and ablation tables, the test-time table (when a ``testtime_*`` or ETTRL run is given)
    and the per-run details, as one markdown document. Labels outside the known methods join the main
    table."""
    labels = list(runs)
    testtime = [m for m in TESTTIME_METHODS if m in labels]
    main_methods = ordered_labels([*labels, *(PAPER_MAIN if with_paper else ())], MAIN_METHODS)
    main_methods = [m for m in main_methods if (m not in ABLATION_METHODS or m == "restrain") and m not in testtime]
    ablations = [m for m in ABLATION_METHODS if m in labels or (with_paper and m in PAPER_ABLATION)]
    paper_main = PAPER_MAIN if with_paper else None
    # RESTRAIN's benchmark columns are the main table's (same model and method); its ablation "Avg."
    # is not transcribed, so it is not carried over from the main table's "Avg. of 6".
    restrain_columns = {key: value for key, value in PAPER_MAIN["restrain"].items() if key != AVERAGE}
    paper_ablation = {**PAPER_ABLATION, "restrain": restrain_columns} if with_paper else None
    parts = [
        "## Main results (Pass@1, %, mean over k samples)",
        comparison_table(runs, main_methods, paper_main, first_header="Method"),
        "## Ablations (Pass@1, %)",
        comparison_table(runs, ablations, paper_ablation, first_header="Ablation", average_header="Avg."),
    ]
    if testtime:
        parts += [
            "## Test-time setting (Pass@1, %, trained and evaluated on each benchmark's own problems)",
            comparison_table(
                runs,
                testtime,
                None,
                first_header="Method",
                average_header="Avg. of 3",
                benchmark_columns=TESTTIME_COLUMNS,
            ),
        ]
    parts += [
        "## Per-run details",
        details_table(runs) if runs else "(no results)",
        f"{UNKNOWN} = not known: the paper's column is not transcribed here, or the run was not evaluated "
        "on it. Our averages are the mean over the table's benchmarks and need all of them. The paper's ablation "
        "\"Avg.\" is copied as published (it is not the mean of the three columns shown).",
    ]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restrain-make-tables",
        description="Build the paper's main and ablation tables from evaluation results, and plot training curves."
    )
    parser.add_argument(
        "results", nargs="*", metavar="[LABEL=]RESULT.json",
        help="result files of scripts/evaluate.py; LABEL (e.g. restrain, ttrl, grpo_gold) overrides the file's label",
    )
    parser.add_argument("--output", default=None, help="also write the tables to this markdown file")
    parser.add_argument(
        "--no-paper", action="store_true", help=f"do not print the paper's {PAPER_MODEL} numbers (other models)"
    )
    parser.add_argument(
        "--curve", action="append", default=[], metavar="LABEL=LOG",
        help="a run's verl log: file-logger .jsonl or tensorboard folder (repeatable)",
    )
    parser.add_argument("--curves-png", default="training_curves.png", help="where to draw the curves")
    parser.add_argument(
        "--curve-metrics", action="append", default=None, metavar="REGEX",
        help=f"metrics to draw (repeatable; default: {' and '.join(DEFAULT_CURVE_PATTERNS)})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``scripts/make_tables.py``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not args.results and not args.curve:
        raise SystemExit("make_tables: give result JSON files and/or --curve LABEL=LOG")
    try:
        if args.results:
            text = build_tables(load_results(args.results), with_paper=not args.no_paper)
            print(text)
            if args.output:
                Path(args.output).parent.mkdir(parents=True, exist_ok=True)
                remove_stale_temps(args.output)
                atomic_write_text(text, args.output)
        if args.curve:
            logs = {}
            for spec in args.curve:
                label, sep, path = spec.partition("=")
                if not sep:
                    raise ValueError(f"--curve {spec!r}: expected LABEL=LOG")
                logs[label] = read_training_log(path)
            drawn = plot_curves(logs, args.curves_png, args.curve_metrics or DEFAULT_CURVE_PATTERNS)
            print(f"drew {len(drawn)} metrics for {len(logs)} runs to {args.curves_png}")
    except WriteError as exc:
        raise SystemExit(f"make_tables: {exc}; make room (or fix the folder) and rerun the same command") from exc
    except (ValueError, OSError, RuntimeError) as exc:
        raise SystemExit(f"make_tables: {exc}") from exc
    return 0


if __name__ == "__main__":
    sys.exit(main())
