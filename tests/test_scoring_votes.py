"""Votes of the scoring job: output columns, ties, answer kinds, summary (no model involved)."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_restrain import defaults
from verl_restrain.jobs.scoring.votes import (
    ANSWER_COUNTS_TYPE,
    SAMPLES_SCHEMA,
    prompt_columns,
    row_kinds,
    samples_table,
    summarize,
    vote_batch,
)


def columns_as_lists(columns: dict) -> dict:
    return {name: array.to_pylist() for name, array in columns.items()}


def test_hand_computed_prompts():
    n = 4
    answers = [
        "7", "7", "3", None,  # c_ref = 2 ("7"), u = g(2/4)
        None, None, None, None,  # no valid answer: c_ref = 0, u = g(0)
        "3", "7", "7", "3",  # tie 2-2: the answer sampled first ("3") is the majority
        "1/2", "0.5", "1/2", "5",  # one cluster of three spellings: named by its first sample
    ]  # fmt: skip
    clusters = [0, 0, 1, -1, -1, -1, -1, -1, 0, 1, 1, 0, 0, 0, 0, 1]
    columns, majority_id = prompt_columns(answers, clusters, n)
    got = columns_as_lists(columns)
    assert list(got) == [
        defaults.REF_MAJORITY_COUNT_COLUMN,
        defaults.REF_NUM_SAMPLES_COLUMN,
        defaults.REF_MAJORITY_ANSWER_COLUMN,
        defaults.REF_ANSWER_COUNTS_COLUMN,
    ], "no u_x column: training derives it from the counts with its own sigma and center"
    assert got[defaults.REF_MAJORITY_COUNT_COLUMN] == [2, 0, 2, 3]
    assert got[defaults.REF_NUM_SAMPLES_COLUMN] == [4, 4, 4, 4]
    assert got[defaults.REF_MAJORITY_ANSWER_COLUMN] == ["7", None, "3", "1/2"]
    assert got[defaults.REF_ANSWER_COUNTS_COLUMN] == [
        [{"answer": "7", "count": 2}, {"answer": "3", "count": 1}],
        [],
        [{"answer": "3", "count": 2}, {"answer": "7", "count": 2}],
        [{"answer": "1/2", "count": 3}, {"answer": "5", "count": 1}],
    ]
    assert majority_id == [0, -1, 0, 0]
    assert columns[defaults.REF_ANSWER_COUNTS_COLUMN].type == ANSWER_COUNTS_TYPE


def test_empty_and_malformed_inputs():
    columns, majority_id = prompt_columns([], [], 3)
    assert all(len(array) == 0 for array in columns.values()) and majority_id == []
    with pytest.raises(ValueError, match="n=3"):
        prompt_columns(["1"] * 4, [0] * 4, 3)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 6),
    groups=st.lists(st.lists(st.integers(-1, 3), min_size=6, max_size=6), min_size=1, max_size=6),
)
def test_matches_a_plain_loop(n, groups):
    """Per prompt: c_ref = most common cluster's count, majority = first-appearing cluster among the
    most common, counts in first-appearance order."""
    ids = [group[:n] for group in groups]
    # Renumber by first appearance within each prompt, as cluster_extracted does.
    clusters = []
    for group in ids:
        order: dict[int, int] = {}
        clusters.append([-1 if a < 0 else order.setdefault(a, len(order)) for a in group])
    answers = [None if c < 0 else f"ans{c}" for group in clusters for c in group]
    flat = [c for group in clusters for c in group]
    columns, majority_id = prompt_columns(answers, flat, n)
    got = columns_as_lists(columns)
    for g_index, group in enumerate(clusters):
        counts = Counter(c for c in group if c >= 0)
        c_ref = max(counts.values(), default=0)
        majority = min((c for c, k in counts.items() if k == c_ref), default=-1)
        assert got[defaults.REF_MAJORITY_COUNT_COLUMN][g_index] == c_ref
        assert majority_id[g_index] == majority
        assert got[defaults.REF_MAJORITY_ANSWER_COLUMN][g_index] == (None if majority < 0 else f"ans{majority}")
        assert got[defaults.REF_ANSWER_COUNTS_COLUMN][g_index] == [
            {"answer": f"ans{c}", "count": counts[c]} for c in sorted(counts)
        ]


def test_vote_batch_uses_answer_equivalence():
    responses = [
        ["So the answer is \\boxed{\\frac{1}{2}}.", "\\boxed{0.5}", "I give up.", "\\boxed{3}"],
        ["The answer is \\boxed{B}.", "Answer: (b)", "\\boxed{C}", "nothing"],
    ]
    answers, clusters = vote_batch(responses, ["math", "choice"])
    assert clusters == [[0, 0, -1, 1], [0, 0, 1, -1]]
    assert answers[0][2] is None and answers[0][3] == "3"
    assert answers[1][:3] == ["B", "B", "C"]


def test_row_kinds_follow_the_one_rule():
    table = pa.table(
        {
            "data_source": ["dapo_math_14k", "gpqa_diamond", "mmlu_stem", "math500", "custom", "custom_mc"],
            "extra_info": [{"kind": None}, {"kind": None}, {"kind": None}, {"kind": None}, {"kind": "choice"}, None],
        }
    )
    assert row_kinds(table) == ["math", "choice", "choice", "math", "choice", "math"]
    # The explicit map wins over extra_info.kind and the built-in benchmarks.
    assert row_kinds(table, {"custom_mc": "choice", "gpqa_diamond": "math", "custom": "math"}) == [
        "math", "math", "choice", "math", "math", "choice"
    ]  # fmt: skip
    assert row_kinds(table, default="choice") == ["choice", "choice", "choice", "choice", "choice", "choice"]
    assert row_kinds(pa.table({"prompt": [1, 2]})) == ["math", "math"]
    assert row_kinds(pa.table({"prompt": [1, 2]}), default="choice") == ["choice", "choice"]


def test_samples_table():
    checkpoint = pa.table(
        {
            "row": [4, 5],
            "responses": [["a", "b", "c"], ["d", "e", "f"]],
            "answers": [["1", None, "2"], ["3", "3", None]],
            "clusters": [[0, -1, 1], [0, 0, -1]],
        }
    )
    table = samples_table(checkpoint, [0, 0])
    assert table.schema == SAMPLES_SCHEMA
    assert table.to_pydict() == {
        "prompt_index": [4, 4, 4, 5, 5, 5],
        "sample_index": [0, 1, 2, 0, 1, 2],
        "response": ["a", "b", "c", "d", "e", "f"],
        "answer": ["1", None, "2", "3", "3", None],
        "cluster_id": [0, -1, 1, 0, 0, -1],
        "is_majority": [True, False, False, True, True, False],
    }


def test_summarize():
    table = pa.table({defaults.REF_MAJORITY_COUNT_COLUMN: [4, 2, 1, 0], defaults.REF_NUM_SAMPLES_COLUMN: [4, 4, 4, 4]})
    # c_ref/n = 1, 0.5, 0.25, 0: mean 0.4375; two of four >= 0.5; one without a valid answer.
    assert summarize(table) == {
        "prompts": 4,
        "mean_majority_share": pytest.approx(0.4375),
        "share_majority_at_least_half": 0.5,
        "share_no_valid_answer": 0.25,
    }
