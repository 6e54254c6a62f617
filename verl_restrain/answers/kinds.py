"""Which answer kind a dataset row has: the one rule training, scoring and evaluation share.

A row's answer is either free-form math (``math``) or an option letter (``choice``). In order, the
first that applies decides:

1. ``answer_kinds[data_source]``: the user's explicit per-source setting
   (``algorithm.restrain.answer_kinds``, ``--answer-kind-map``);
2. ``extra_info["kind"]``: what the row says of itself (this package's data preparation writes it);
3. :data:`BUILTIN_ANSWER_KINDS` ``[data_source]``: the multiple-choice benchmarks this package knows;
4. ``default``: ``math`` unless configured otherwise.

:func:`ground_truth` reads a row's gold label the one way the reward manager and the jobs share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["BUILTIN_ANSWER_KINDS", "KINDS", "answer_kind", "check_kind", "ground_truth"]

KINDS = ("math", "choice")
"""The answer kinds."""

BUILTIN_ANSWER_KINDS: Mapping[str, str] = {"gpqa_diamond": "choice", "mmlu_stem": "choice"}
"""data_source -> kind of the multiple-choice benchmarks this package prepares."""


def check_kind(kind: Any, what: str = "answer kind") -> str:
    """``kind`` itself if it is one of :data:`KINDS`, else a ValueError naming ``what``."""
    if kind not in KINDS:
        raise ValueError(f"{what} must be one of {KINDS}, got {kind!r}")
    return kind


def answer_kind(
    data_source: Any = None,
    extra_info: Any = None,
    answer_kinds: Mapping[str, str] | None = None,
    default: str = "math",
) -> str:
    """The answer kind of one row, by the rule in the module docstring.

    Args:
        data_source: the row's ``data_source`` (any value; compared as a string).
        extra_info: the row's ``extra_info`` (a mapping, or anything else, which is ignored); an
            unknown ``kind`` in it is ignored too.
        answer_kinds: the user's explicit data_source -> kind settings.
        default: the kind when nothing else applies.
    """
    source = None if data_source is None else str(data_source)
    if answer_kinds and source in answer_kinds:
        return answer_kinds[source]
    if isinstance(extra_info, Mapping):
        kind = extra_info.get("kind", None)
        if kind in KINDS:
            return kind
    if source in BUILTIN_ANSWER_KINDS:
        return BUILTIN_ANSWER_KINDS[source]
    return default


def ground_truth(reward_model: Any) -> str | None:
    """A row's gold label: ``reward_model["ground_truth"]`` as a stripped string, None when the row
    has no ``reward_model`` dict or the label is missing or empty."""
    if not isinstance(reward_model, dict):
        return None
    gold = reward_model.get("ground_truth")
    if gold is None:
        return None
    return str(gold).strip() or None
