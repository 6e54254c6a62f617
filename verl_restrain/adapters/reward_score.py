"""Gold-label reward for verl's ``naive`` reward manager (the GRPO-with-gold-labels baseline).

verl's default reward (``verl.utils.reward_score.default_compute_score``) does not know the
``gpqa_diamond``, ``mmlu_stem`` or ``amc23`` data sources. Point verl at this file instead:

    reward.reward_manager.name=naive
    reward.custom_reward_function.path=<path of this file>
    reward.custom_reward_function.name=compute_score

It grades with the same answer code as RESTRAIN's votes (:func:`verl_restrain.answers.is_correct`)
and returns ``acc`` and ``pred`` too, so validation reports the same ``acc`` and ``maj@k`` metrics
as a RESTRAIN run. A row's answer kind follows the same rule as training
(:func:`verl_restrain.answers.kinds.answer_kind`); ``reward.custom_reward_function.reward_kwargs``
may set ``answer_kinds`` (explicit data_source -> kind) and ``default_answer_kind``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verl_restrain import answers

__all__ = ["compute_score"]


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    answer_kinds: Mapping[str, str] | None = None,
    default_answer_kind: str = "math",
    **kwargs: Any,
) -> dict[str, Any]:
    """1.0 if the response's final answer equals ``ground_truth``, else 0.0.

    Returns:
        ``{"score", "acc", "pred"}``: the score twice (verl logs ``acc`` in validation) and the
        canonical answer ("" when none), which verl's validation uses for majority voting.
    """
    kind = answers.answer_kind(data_source, extra_info, answer_kinds, answers.check_kind(default_answer_kind))
    prediction = answers.extract_answer(solution_str, kind)
    gold = None if ground_truth is None else str(ground_truth).strip()
    correct = bool(gold) and prediction is not None and answers.is_correct(solution_str, gold, kind)
    score = 1.0 if correct else 0.0
    return {"score": score, "acc": score, "pred": prediction or ""}
