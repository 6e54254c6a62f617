"""The ``ttrl`` and ``srt_offline`` presets on verl 0.9.1's own loops, on CPU.

``ttrl`` runs on the ``colocate_async`` loop (``trainer.v1.trainer_mode=restrain_colocate_async``): its
advantages must equal verl's own GRPO estimator on the majority-vote reward. ``srt_offline`` runs on the
``sync`` loop: its advantages must equal GRPO on agreement with the base model's stored answer
(``restrain_ref_majority_answer``). Both runs start as ``python -m verl.trainer.main_ppo`` does
(``verl_cpu.harness``); only the FSDP worker group and the vLLM server are stand-ins.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from e2e_script import BATCH, OFFLINE_LABELS, TRAIN, assert_advantages, grpo, trained_groups, vote_metrics


def majority(labels: list[str | None]) -> str | None:
    """The most common answer; a tie goes to the answer sampled first."""
    counts = Counter(label for label in labels if label is not None)  # keeps first-appearance order
    return max(counts, key=counts.get) if counts else None


def label_reference(labels: list[str | None], label: str | None) -> list[float]:
    """GRPO on the reward 1[answer == label]; no rollout matches a missing label."""
    return grpo([float(label is not None and x == label) for x in labels])


@pytest.fixture(scope="module")
def ttrl_run(verl_cpu_session):
    return verl_cpu_session.run("ttrl", "ttrl", method="ttrl", loop="restrain_colocate_async")


@pytest.fixture(scope="module")
def srt_offline_run(verl_cpu_session):
    return verl_cpu_session.run("srt", "srt", method="srt_offline")


def test_get_trainer_cls_returns_the_plugins_trainers(ttrl_run, srt_offline_run):
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync

    for mode, run, sampler in [
        ("restrain_colocate_async", ttrl_run, ReplayBufferAsync),
        ("restrain", srt_offline_run, ReplayBuffer),
    ]:
        registered = get_trainer_cls(mode)
        assert registered.__module__.startswith("verl_restrain."), registered
        assert isinstance(run.trainer, registered)
        assert type(run.trainer.replay_buffer) is sampler  # verl's async or sync sampling


def test_colocate_async_ttrl_equals_verls_grpo_on_the_majority_reward(ttrl_run, tokenizer):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    steps = trained_groups(ttrl_run, tokenizer)
    assert sorted(steps) == [0, 1]
    for call, groups in steps.items():
        assert len(groups) == BATCH
        assert_advantages(groups, lambda prompt, labels: label_reference(labels, majority(labels)))
        # verl's GRPO estimator on TTRL's reward: 1 on the last token of a majority answer.
        rows = [row for group in groups.values() for row in group]
        width = max(len(row["responses"]) for row in rows)
        mask, rewards = torch.zeros(len(rows), width), torch.zeros(len(rows), width)
        for i, row in enumerate(rows):
            length = len(row["responses"])
            mask[i, :length] = 1
            label = majority([r["label"] for r in groups[row["uid"]]])
            rewards[i, length - 1] = float(label is not None and row["label"] == label)
        uids = np.array([row["uid"] for row in rows], dtype=object)
        expected, _ = compute_grpo_outcome_advantage(rewards, mask, uids)
        for i, row in enumerate(rows):
            length = len(row["responses"])
            torch.testing.assert_close(torch.tensor(row["advantages"]), expected[i, :length], rtol=1e-5, atol=1e-5)
        metrics = ttrl_run.metrics(call + 1)
        for name, value in vote_metrics(groups, kappa=0, prompt_weights=False).items():
            assert metrics[name] == pytest.approx(value, abs=1e-6), name
    [server] = ttrl_run.server
    events = {event for event, *_ in server["events"]}
    assert {"abort", "resume", "sleep", "update_weights"} <= events  # colocate_async pauses generation per update


def test_srt_offline_rewards_agreement_with_the_base_models_answer(srt_offline_run, tokenizer):
    steps = trained_groups(srt_offline_run, tokenizer)
    assert sorted(steps) == [0, 1]
    for groups in steps.values():
        assert_advantages(groups, lambda prompt, labels: label_reference(labels, OFFLINE_LABELS[prompt.question]))
    # t2's stored answer (8) is a minority of this sample (majority 7): the 8s are the ones rewarded.
    [t2] = [rows for rows in steps[0].values() if rows[0]["question"] == TRAIN[2].question]
    assert [row["advantages"][0] > 0 for row in t2] == [row["label"] == "8" for row in t2]
