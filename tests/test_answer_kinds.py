"""The one answer-kind rule (verl_restrain.answers.kinds.answer_kind)."""

import pytest

from verl_restrain.answers import answer_kind

RULE = [
    # data_source, extra_info, answer_kinds, default, expected
    # 1. the user's explicit per-source setting wins over everything
    ("my_quiz", {"kind": "math"}, {"my_quiz": "choice"}, "math", "choice"),
    ("gpqa_diamond", {"kind": "choice"}, {"gpqa_diamond": "math"}, "math", "math"),
    # 2. the row's own extra_info.kind comes next
    ("my_quiz", {"kind": "choice"}, {}, "math", "choice"),
    ("gpqa_diamond", {"kind": "math"}, None, "math", "math"),
    ("my_quiz", {"kind": "choice"}, {"other": "math"}, "math", "choice"),
    # an unknown or missing kind in extra_info is ignored
    ("my_quiz", {"kind": "essay"}, None, "math", "math"),
    ("my_quiz", {"index": 3}, None, "choice", "choice"),
    ("my_quiz", "not a mapping", None, "math", "math"),
    # 3. the built-in multiple-choice benchmarks
    ("mmlu_stem", None, None, "math", "choice"),
    ("gpqa_diamond", {}, {}, "math", "choice"),
    # 4. the default
    ("math500", None, None, "math", "math"),
    (None, None, None, "choice", "choice"),
]


@pytest.mark.parametrize("source, extra_info, kinds, default, expected", RULE)
def test_answer_kind_rule(source, extra_info, kinds, default, expected):
    assert answer_kind(source, extra_info, kinds, default) == expected
