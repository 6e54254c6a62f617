"""Votes of the scoring job: output columns, ties, answer kinds, summary (no model involved)."""

from __future__ import annotations

import math
from collections import Counter

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_restrain import defaults
from verl_restrain.advantage import prompt_weight
from verl_restrain.jobs.scoring.votes import (
    ANSWER_COUNTS_TYPE,
    SAMPLES_SCHEMA,
    answer_kinds,
    prompt_columns,
    samples_table,
    summarize,
    vote_batch,
)


def g(f: float, sigma: float = defaults.SIGMA, center: float = defaults.CENTER) -> float:
    return math.exp(-((f - center) ** 2) / (2 * sigma**2))


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
    columns, majority_id = prompt_columns(answers, clusters, n, defaults.SIGMA, defaults.CENTER)
    got = columns_as_lists(columns)
    assert got[defaults.REF_MAJORITY_COUNT_COLUMN] == [2, 0, 2, 3]
    assert got[defaults.REF_NUM_SAMPLES_COLUMN] == [4, 4, 4, 4]
    assert got[defaults.REF_MAJORITY_ANSWER_COLUMN] == ["7", None, "3", "1/2"]
    assert got[defaults.REF_ANSWER_COUNTS_COLUMN] == [
        [{"answer": "7", "count": 2}, {"answer": "3", "count": 1}],
        [],
        [{"answer": "3", "count": 2}, {"answer": "7", "count": 2}],
        [{"answer": "1/2", "count": 3}, {"answer": "5", "count": 1}],
    ]
    # g(0.5) = exp(-0.25 / 0.32) = 0.4578; g(0) = exp(-1 / 0.32) = 0.0439; g(0.75) = exp(-0.0625 / 0.32) = 0.8226
    assert got[defaults.PROMPT_WEIGHT_COLUMN] == pytest.approx([g(0.5), g(0.0), g(0.5), g(0.75)], rel=1e-6)
    assert got[defaults.PROMPT_WEIGHT_COLUMN][1] == pytest.approx(0.0439, abs=1e-4)
    assert majority_id == [0, -1, 0, 0]
    assert columns[defaults.PROMPT_WEIGHT_COLUMN].type == pa.float32()
    assert columns[defaults.REF_ANSWER_COUNTS_COLUMN].type == ANSWER_COUNTS_TYPE


def test_sigma_and_center_reach_the_weight():
    columns, _ = prompt_columns(["1", "1", "2", None], [0, 0, 1, -1], 4, sigma=0.2, center=0.5)
    assert columns[defaults.PROMPT_WEIGHT_COLUMN].to_pylist() == pytest.approx([1.0])
    columns, _ = prompt_columns(["1", "1", "2", None], [0, 0, 1, -1], 4, sigma=0.2, center=1.0)
    assert columns[defaults.PROMPT_WEIGHT_COLUMN].to_pylist() == pytest.approx([g(0.5, 0.2, 1.0)], rel=1e-6)


def test_empty_and_malformed_inputs():
    columns, majority_id = prompt_columns([], [], 3, defaults.SIGMA, defaults.CENTER)
    assert all(len(array) == 0 for array in columns.values()) and majority_id == []
    with pytest.raises(ValueError, match="n=3"):
        prompt_columns(["1"] * 4, [0] * 4, 3, defaults.SIGMA, defaults.CENTER)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 6),
    groups=st.lists(st.lists(st.integers(-1, 3), min_size=6, max_size=6), min_size=1, max_size=6),
)
def test_matches_a_plain_loop(n, groups):
    """Per prompt: c_ref = most common cluster's count, majority = first-appearing cluster among the
    most common, counts in first-appearance order, u = g(c_ref / n)."""
    ids = [group[:n] for group in groups]
    # Renumber by first appearance within each prompt, as cluster_extracted does.
    clusters = []
    for group in ids:
        order: dict[int, int] = {}
        clusters.append([-1 if a < 0 else order.setdefault(a, len(order)) for a in group])
    answers = [None if c < 0 else f"ans{c}" for group in clusters for c in group]
    flat = [c for group in clusters for c in group]
    columns, majority_id = prompt_columns(answers, flat, n, defaults.SIGMA, defaults.CENTER)
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
        expected = prompt_weight(c_ref, n).item()
        assert got[defaults.PROMPT_WEIGHT_COLUMN][g_index] == pytest.approx(expected, rel=1e-6)


def test_vote_batch_uses_answer_equivalence():
    responses = [
        ["So the answer is \\boxed{\\frac{1}{2}}.", "\\boxed{0.5}", "I give up.", "\\boxed{3}"],
        ["The answer is \\boxed{B}.", "Answer: (b)", "\\boxed{C}", "nothing"],
    ]
    answers, clusters = vote_batch(responses, ["math", "choice"])
    assert clusters == [[0, 0, -1, 1], [0, 0, 1, -1]]
    assert answers[0][2] is None and answers[0][3] == "3"
    assert answers[1][:3] == ["B", "B", "C"]


def test_answer_kinds():
    table = pa.table(
        {
            "data_source": ["dapo_math_14k", "gpqa_diamond", "mmlu_stem", "math500", "custom", "custom_mc"],
            "extra_info": [{"kind": None}, {"kind": None}, {"kind": None}, {"kind": None}, {"kind": "choice"}, None],
        }
    )
    assert answer_kinds(table) == ["math", "choice", "choice", "math", "choice", "math"]
    assert answer_kinds(table, "auto", {"custom_mc": "choice", "gpqa_diamond": "math"}) == [
        "math", "math", "choice", "math", "choice", "choice"
    ]  # fmt: skip
    assert answer_kinds(table, "math") == ["math"] * 6
    assert answer_kinds(pa.table({"prompt": [1, 2]})) == ["math", "math"]


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
    table = pa.table(
        {
            defaults.PROMPT_WEIGHT_COLUMN: pa.array([1.0, 0.5, 0.25, 0.25], pa.float32()),
            defaults.REF_MAJORITY_COUNT_COLUMN: [4, 2, 1, 0],
            defaults.REF_NUM_SAMPLES_COLUMN: [4, 4, 4, 4],
        }
    )
    assert summarize(table) == {
        "prompts": 4,
        "mean_prompt_weight": pytest.approx(0.5),
        "share_majority_at_least_half": 0.5,
        "share_no_valid_answer": 0.25,
    }
