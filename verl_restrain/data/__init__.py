"""The paper's data sets in verl's row format (see :mod:`verl_restrain.data.prepare`)."""

from verl_restrain.data.prepare import (
    BENCHMARKS,
    EVAL_BENCHMARKS,
    MMLU_STEM_SUBJECTS,
    TRAIN_BENCHMARKS,
    benchmark_kind,
    build_rows,
    prepare_benchmarks,
    resolve_names,
)
from verl_restrain.data.rows import ROW_SCHEMA, Problem, make_row, read_provenance, render_question, write_rows

__all__ = [
    "BENCHMARKS",
    "EVAL_BENCHMARKS",
    "MMLU_STEM_SUBJECTS",
    "ROW_SCHEMA",
    "TRAIN_BENCHMARKS",
    "Problem",
    "benchmark_kind",
    "build_rows",
    "make_row",
    "prepare_benchmarks",
    "read_provenance",
    "render_question",
    "resolve_names",
    "write_rows",
]
