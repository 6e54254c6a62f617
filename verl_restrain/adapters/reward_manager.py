"""The ``restrain`` reward manager: extracts each rollout's final answer in verl's reward workers.

Registered where it is defined, in ``verl.experimental.reward_loop.reward_manager``'s registry, and
chosen with ``reward.reward_manager.name=restrain``. verl runs it on one rollout at a time, in parallel reward
workers, as soon as the rollout finishes; what it returns travels with the rollout in
TransferQueue (``rm_scores`` and ``extra_fields["reward_extra_info"]``).

``reward_extra_info`` (the same keys for every rollout):

* ``kind``: the row's answer kind (``math`` or ``choice``, by
  :func:`verl_restrain.answers.kinds.answer_kind` from its ``data_source`` and ``extra_info``); the
  trainer votes and matches offline labels with the same kind.
* ``pred``: the canonical final answer (:func:`verl_restrain.answers.extract_answer`), "" when
  there is none. The ``restrain`` trainer votes on it; verl's validation turns it into ``maj@k``.
* ``has_answer``: whether ``pred`` is a valid answer.
* ``acc``: 1.0 if the answer equals ``reward_model.ground_truth``, else 0.0 (also 0.0 without one).
* ``has_gold``: whether the row has a non-empty ground truth.

``reward_score`` is ``acc``. It feeds verl's validation accuracy and the ``critic/score`` metric;
RESTRAIN's training signal never reads it, nor ``acc``/``has_gold`` (only the gold diagnostics do).
"""

from __future__ import annotations

from typing import Any

from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from verl_restrain import answers
from verl_restrain.adapters.registration import registered
from verl_restrain.adapters.settings import REWARD_MANAGER_NAME, RestrainConfig
from verl_restrain.answers.kinds import ground_truth

__all__ = ["RestrainRewardManager", "ground_truth_of"]


def ground_truth_of(non_tensor: dict) -> str | None:
    """The gold answer of a row as a string, or None when the row has none."""
    return ground_truth(non_tensor.get("reward_model"))


@registered(
    "reward manager", "verl.experimental.reward_loop.reward_manager.registry", "REWARD_MANAGER", "register",
    REWARD_MANAGER_NAME,
)
class RestrainRewardManager(RewardManagerBase):
    """Decodes a rollout, extracts its final answer and grades it against gold when present."""

    def __init__(self, config, tokenizer, compute_score, reward_router_address=None, reward_model_tokenizer=None):
        super().__init__(config, tokenizer, compute_score)
        self.restrain = RestrainConfig.from_algorithm(config.get("algorithm", None))

    def score_text(
        self, response: str, data_source: Any, ground_truth: str | None, extra_info: Any = None
    ) -> dict[str, Any]:
        """``reward_score`` and ``reward_extra_info`` of one decoded response."""
        kind = self.restrain.answer_kind(data_source, extra_info)
        prediction = answers.extract_answer(response, kind)
        has_gold = ground_truth is not None
        correct = has_gold and prediction is not None and answers.is_correct(response, ground_truth, kind)
        acc = 1.0 if correct else 0.0
        return {
            "reward_score": acc,
            "reward_extra_info": {
                "acc": acc,
                "kind": kind,
                "pred": prediction or "",
                "has_answer": prediction is not None,
                "has_gold": has_gold,
            },
        }

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        # As verl's naive manager: a multi-output trajectory is scored on its last output.
        data_item = data[-1]
        response_ids = data_item.batch["responses"]
        response_length = response_ids.shape[-1]
        valid_response_length = data_item.batch["attention_mask"][-response_length:].sum()
        valid_response_ids = response_ids[:valid_response_length]
        non_tensor = data_item.non_tensor_batch

        response = await self.loop.run_in_executor(
            None, lambda: self.tokenizer.decode(valid_response_ids, skip_special_tokens=True)
        )
        # Extraction and Math-Verify are CPU work with their own time bounds; keep the event loop free.
        return await self.loop.run_in_executor(
            None,
            lambda: self.score_text(
                response, non_tensor.get("data_source", ""), ground_truth_of(non_tensor), non_tensor.get("extra_info")
            ),
        )

