"""The paper's data sets in verl's row format (see :mod:`verl_restrain.data.prepare`).

The names below load their module on first use, so that ``python -m verl_restrain.data.prepare``
runs the module once.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BENCHMARKS": "prepare",
    "EVAL_BENCHMARKS": "prepare",
    "MMLU_STEM_SUBJECTS": "prepare",
    "TRAIN_BENCHMARKS": "prepare",
    "benchmark_kind": "prepare",
    "build_rows": "prepare",
    "prepare_benchmarks": "prepare",
    "resolve_names": "prepare",
    "ROW_SCHEMA": "rows",
    "Problem": "rows",
    "make_row": "rows",
    "read_provenance": "rows",
    "render_question": "rows",
    "write_rows": "rows",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
