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


@pytest.mark.parametrize(
    "reward_model, expected",
    [
        ({"style": "rule", "ground_truth": " 1/2 "}, "1/2"),
        ({"ground_truth": 12}, "12"),
        ({"ground_truth": "  "}, None),
        ({"ground_truth": None}, None),
        ({"style": "rule"}, None),
        (None, None),
        ("1/2", None),
    ],
)
def test_ground_truth_is_read_one_way(reward_model, expected):
    from verl_restrain.adapters.reward_manager import ground_truth_of
    from verl_restrain.answers.kinds import ground_truth

    assert ground_truth(reward_model) == expected
    assert ground_truth_of({"reward_model": reward_model}) == expected
