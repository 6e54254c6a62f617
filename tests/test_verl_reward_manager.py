"""The restrain reward manager on real decoded text, loaded through verl's own reward loading."""

import pytest
from verl_batches import Group, boxed, compose_config, score_batch, updated

from verl_restrain.adapters.reward_manager import RestrainRewardManager
from verl_restrain.adapters.reward_score import compute_score


def _manager(tokenizer, config=None):
    from verl.trainer.ppo.reward import load_reward_manager

    return load_reward_manager(config if config is not None else compose_config(), tokenizer)


def _score(manager, tokenizer, response, data_source="math500", ground_truth="12", kind=None):
    [record] = score_batch(manager, tokenizer, [Group("u", data_source, ground_truth, [response], kind=kind)])
    return record["result"]


def test_verl_resolves_the_registered_manager(tokenizer):
    assert isinstance(_manager(tokenizer), RestrainRewardManager)


@pytest.mark.parametrize(
    "response, data_source, ground_truth, pred, acc",
    [
        # math: boxed answer, canonical form, graded against gold
        (boxed("12"), "math500", "12", "12", 1.0),
        (boxed("\\frac{1}{2}"), "aime24", "0.5", "\\frac{1}{2}", 1.0),
        (boxed("7"), "math500", "12", "7", 0.0),
        ("The final answer is 12.", "dapo_math_14k", "12", "12", 1.0),
        # no answer
        ("I cannot solve this.", "math500", "12", "", 0.0),
        # the built-in multiple-choice benchmarks
        ("So the answer is (B).", "gpqa_diamond", "B", "B", 1.0),
        ("Answer: C", "mmlu_stem", "B", "C", 0.0),
    ],
)
def test_run_single_extracts_and_grades(tokenizer, response, data_source, ground_truth, pred, acc):
    result = _score(_manager(tokenizer), tokenizer, response, data_source, ground_truth)
    assert result == {
        "reward_score": acc,
        "reward_extra_info": {
            "acc": acc, "kind": "choice" if data_source in ("gpqa_diamond", "mmlu_stem") else "math",
            "pred": pred, "has_answer": bool(pred), "has_gold": True,
        },
    }


@pytest.mark.parametrize("ground_truth", [None, "", "   "])
def test_rows_without_gold_score_zero_but_still_extract(tokenizer, ground_truth):
    result = _score(_manager(tokenizer), tokenizer, boxed("12"), ground_truth=ground_truth)
    assert result["reward_score"] == 0.0
    assert result["reward_extra_info"] == {
        "acc": 0.0, "kind": "math", "pred": "12", "has_answer": True, "has_gold": False
    }


def test_answer_kinds_come_from_the_config(tokenizer):
    base = compose_config("+algorithm.restrain.answer_kinds.my_quiz=choice")
    as_choice = _score(_manager(tokenizer, base), tokenizer, "The answer is (D).", "my_quiz", "D")
    assert as_choice["reward_extra_info"]["pred"] == "D" and as_choice["reward_score"] == 1.0
    everything_choice = updated(compose_config(), {"algorithm.restrain.default_answer_kind": "choice"})
    result = _score(_manager(tokenizer, everything_choice), tokenizer, "The answer is (A).", "some_quiz", "A")
    assert result["reward_extra_info"]["pred"] == "A"


def test_a_rows_own_kind_decides_unless_the_config_names_its_source(tokenizer):
    # A multiple-choice set under an unlisted data_source, prepared with extra_info.kind=choice, is
    # trained as choice (the rule scoring and evaluation use); an explicit per-source setting wins.
    manager = _manager(tokenizer)
    as_choice = _score(manager, tokenizer, "The answer is (C).", "my_quiz", "C", kind="choice")
    assert as_choice["reward_extra_info"]["kind"] == "choice" and as_choice["reward_score"] == 1.0
    assert _score(manager, tokenizer, "The answer is (C).", "my_quiz", "C")["reward_extra_info"]["kind"] == "math"
    explicit = _manager(tokenizer, compose_config("+algorithm.restrain.answer_kinds.my_quiz=math"))
    assert _score(explicit, tokenizer, boxed("3"), "my_quiz", "3", kind="choice")["reward_extra_info"]["kind"] == "math"


@pytest.mark.parametrize(
    "data_source, solution, ground_truth, score, pred",
    [
        ("math500", boxed("0.5"), "\\frac{1}{2}", 1.0, "0.5"),
        ("amc23", boxed("27"), "27", 1.0, "27"),
        ("aime25", boxed("26"), "27", 0.0, "26"),
        ("gpqa_diamond", "The answer is (A)", "A", 1.0, "A"),
        ("mmlu_stem", "The answer is (A)", "C", 0.0, "A"),
        ("math500", "no final answer", "3", 0.0, ""),
        ("math500", boxed("3"), None, 0.0, "3"),
    ],
)
def test_gold_reward_for_verls_naive_manager(data_source, solution, ground_truth, score, pred):
    assert compute_score(data_source, solution, ground_truth) == {"score": score, "acc": score, "pred": pred}


def test_gold_reward_accepts_extra_answer_kinds():
    result = compute_score("my_quiz", "The answer is (B)", "B", extra_info={}, answer_kinds={"my_quiz": "choice"})
    assert result["score"] == 1.0
    # the same rule as training: the row's extra_info.kind, unless a setting names the source
    assert compute_score("my_quiz", "The answer is (B)", "B", extra_info={"kind": "choice"})["pred"] == "B"
    assert compute_score("my_quiz", boxed("3"), "3", extra_info={"kind": "choice"}, answer_kinds={"my_quiz": "math"})[
        "score"
    ] == 1.0
