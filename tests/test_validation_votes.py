"""maj@k in verl's validation metrics votes on answer clusters, as the trainer's vote does."""

from __future__ import annotations

import pytest
from verl.trainer.ppo.metric_utils import process_validation_metrics

from verl_restrain.adapters.step import clustered_predictions
from verl_restrain.adapters.trainer import RestrainColocateAsyncTrainer, RestrainTrainer

# Prompt p0 (gold 1/2): three written forms of one half against two 3s. Prompt p1 (multiple choice):
# letters are compared as letters. p2 has no answers at all.
UIDS = ["p0"] * 5 + ["p1"] * 3 + ["p2"] * 2
PREDS = ["3", "0.5", "3", "1/2", "\\frac{1}{2}", "B", "B", "C", "", ""]
KINDS = ["math"] * 5 + ["choice"] * 3 + ["math"] * 2
ACC = [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_equivalent_answers_take_the_written_form_of_their_clusters_first_member():
    assert clustered_predictions(UIDS, PREDS, KINDS) == ["3", "0.5", "3", "0.5", "0.5", "B", "B", "C", "", ""]


def test_clusters_never_cross_prompts():
    # The same answer in two prompts keeps each prompt's own first written form.
    assert clustered_predictions(["a", "b", "a", "b"], ["1/2", "0.5", "0.5", "1/2"], ["math"] * 4) == [
        "1/2", "0.5", "1/2", "0.5"
    ]


@pytest.mark.parametrize("trainer_class", [RestrainTrainer, RestrainColocateAsyncTrainer])
def test_maj_at_k_counts_equivalent_answers_as_one_vote(trainer_class):
    trainer = trainer_class.__new__(trainer_class)
    sources = ["math500"] * 5 + ["gpqa_diamond"] * 3 + ["amc23"] * 2
    infos = {"reward": ACC, "acc": ACC, "pred": PREDS, "kind": KINDS}
    metrics = trainer._val_metrics_update(sources, UIDS, infos, [])

    # verl's own metrics on the clustered predictions: exactly what the trainer reports.
    reference = process_validation_metrics(sources, UIDS, {**infos, "pred": clustered_predictions(UIDS, PREDS, KINDS)})
    for source, k in (("math500", 5), ("gpqa_diamond", 3)):
        key = f"maj@{k}/mean"
        assert metrics[f"val-core/{source}/acc/{key}"] == pytest.approx(reference[source]["acc"][key])
    # By written form, "3" (two votes) beats each form of one half (one vote each) in most of verl's
    # bootstrap samples of p0; by cluster, one half (three votes) wins most of them.
    raw = process_validation_metrics(sources, UIDS, infos)
    assert reference["math500"]["acc"]["maj@5/mean"] > raw["math500"]["acc"]["maj@5/mean"] + 0.15
    # The input is left as verl built it.
    assert infos["pred"] == PREDS


def test_without_the_restrain_reward_manager_maj_at_k_is_verls():
    trainer = RestrainTrainer.__new__(RestrainTrainer)
    infos = {"reward": ACC, "acc": ACC, "pred": PREDS}  # no "kind": another reward manager
    metrics = trainer._val_metrics_update(["math500"] * 10, UIDS, infos, [])
    raw = process_validation_metrics(["math500"] * 10, UIDS, infos)
    assert metrics["val-core/math500/acc/maj@5/mean"] == pytest.approx(raw["math500"]["acc"]["maj@5/mean"])
