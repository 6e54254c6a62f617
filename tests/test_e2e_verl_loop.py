"""RESTRAIN through verl 0.9.1's own v1 training loop, on CPU.

Each run starts as ``python -m verl.trainer.main_ppo`` does (``verl_cpu.harness``: verl's
``validate_config`` and the RESTRAIN startup checks, verl's Ray start, then ``TaskRunnerV1.run``:
TransferQueue, ``get_trainer_cls``, ``init``, ``AgentLoopManagerTQ.create``, ``fit``). verl's agent loop,
reward-loop workers (running the ``restrain`` reward manager), replay buffer, padding, batch balancing,
validation, checkpoints and ``file`` logger all run; only the FSDP worker group and the vLLM server
are CPU stand-ins (``verl_cpu``). The rollout answers each prompt from a scripted pool
(``e2e_script``), so every group's votes are known in advance.

Four runs share one Ray instance:

* ``restrain`` on the ``sync`` loop: 2 data-parallel ranks, the KL loss, validation before and after
  training, a checkpoint per step; then the same run resumed for a third step;
* ``ttrl`` on the ``colocate_async`` loop (``trainer.v1.trainer_mode=restrain_colocate_async``);
* ``srt_offline`` on the ``sync`` loop.

Each group's advantages are checked on the tensors the actor received, against references computed
here from the scripted answers and u_x (for ``ttrl``, also against verl's own GRPO estimator).
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from e2e_script import (
    BATCH,
    MINI_BATCH,
    DELTA,
    KAPPA,
    OFFLINE_LABELS,
    PAD_ROWS,
    TRAIN,
    VAL_N,
    VALIDATION,
    assert_advantages,
    g,
    grpo,
    padding_rows,
    trained_groups,
    u_x,
    vote_metrics,
)

from verl_restrain import defaults


# ----------------------------------------------------------------------------------------------------
# References, from the scripted answers only.


def restrain_reference(prompt, labels: list[str | None]) -> list[float]:
    """u_x * sum_j w_j A_ij with w_j = g(f_j) / sum_l g(f_l), or -delta * u_x for every rollout if M(x) < kappa."""
    counts = Counter(label for label in labels if label is not None)
    if max(counts.values(), default=0) < KAPPA:
        return [-DELTA * u_x(prompt)] * len(labels)
    shaped = {label: g(count / len(labels)) for label, count in counts.items()}
    weights = {label: value / sum(shaped.values()) for label, value in shaped.items()}
    per_label = {label: grpo([float(x == label) for x in labels]) for label in counts}
    return [u_x(prompt) * sum(weights[j] * per_label[j][i] for j in counts) for i in range(len(labels))]


def majority(labels: list[str | None]) -> str | None:
    """The most common answer; a tie goes to the answer sampled first."""
    counts = Counter(label for label in labels if label is not None)  # keeps first-appearance order
    return max(counts, key=counts.get) if counts else None


def label_reference(labels: list[str | None], label: str | None) -> list[float]:
    """GRPO on the reward 1[answer == label]; no rollout matches a missing label."""
    return grpo([float(label is not None and x == label) for x in labels])


# ----------------------------------------------------------------------------------------------------
# restrain on the sync loop: advantages, padding, fields, metrics, validation, checkpoint and resume.


@pytest.fixture(scope="module")
def sync_run(verl_cpu_session):
    extra = [
        "actor_rollout_ref.actor.use_kl_loss=true",
        "trainer.val_before_train=true",
        "trainer.test_freq=2",
        "trainer.save_freq=1",
    ]
    return verl_cpu_session.run("sync", "sync", method="restrain", dp=2, extra=extra)


@pytest.fixture(scope="module")
def resumed_run(sync_run, verl_cpu_session):
    """The same run started again with one more step: verl resumes from its latest checkpoint."""
    extra = ["actor_rollout_ref.actor.use_kl_loss=true", "trainer.save_freq=1", "trainer.resume_mode=auto"]
    return verl_cpu_session.run("sync", "resumed", method="restrain", dp=2, steps=3, extra=extra)


def test_sync_restrain_advantages_equal_the_reference(sync_run, tokenizer):
    steps = trained_groups(sync_run, tokenizer)
    assert sorted(steps) == [0, 1]
    for call in (0, 1):
        groups = steps[call]
        # data.shuffle=false: step s trains on prompts 3(s-1) .. 3s-1, sampled at step s.
        expected = TRAIN[BATCH * call : BATCH * (call + 1)]
        assert {rows[0]["question"] for rows in groups.values()} == {p.question for p in expected}
        assert {row["global_steps"] for rows in groups.values() for row in rows} == {call + 1}
        assert_advantages(groups, restrain_reference)


def test_padding_rows_get_zero_advantage_and_stay_out_of_the_metrics(sync_run, tokenizer):
    steps, padding = trained_groups(sync_run, tokenizer), padding_rows(sync_run)
    for call in (0, 1):
        # 3 prompts x 8 = 24 rows; verl pads them to a multiple of lcm(dp=2, 2 prompts x 8) = 16.
        assert len(padding[call]) == PAD_ROWS
        for row in padding[call]:
            assert not any(row["response_mask"]) and not any(row["advantages"])
        # verl copies the batch's first row as their template: its prompt, dataset columns and reward
        # extra info (the answer) ride along, so only the uid (and the `is_padding` tag) set them apart.
        real = {(row["question"], row["pred"]) for rows in steps[call].values() for row in rows}
        assert {(row["question"], row["pred"]) for row in padding[call]} <= real

        metrics = sync_run.metrics(call + 1)
        for name, value in vote_metrics(steps[call], KAPPA, prompt_weights=True).items():
            assert metrics[name] == pytest.approx(value, abs=1e-6), name
        rows = [row for group in steps[call].values() for row in group]
        gold = sum(row["label"] == row["prompt"].gold for row in rows) / len(rows)
        assert metrics["critic/score/mean"] == pytest.approx(gold)  # verl's own metrics leave padding out too
        assert metrics["response_length/mean"] == pytest.approx(sum(len(r["responses"]) for r in rows) / len(rows))


def test_the_actor_trains_on_transfer_queue_fields_with_kl_and_synced_weights(sync_run):
    # verl's dispatch hands the actor every TransferQueue field of its rows, dataset columns included.
    assert {"advantages", "old_log_probs", "ref_log_prob", "rollout_log_probs", "entropy", "response_mask",
            "responses", "input_ids", "uid", "extra_fields", "data_source", defaults.REF_MAJORITY_COUNT_COLUMN,
            defaults.REF_NUM_SAMPLES_COLUMN} <= set(sync_run.actor_rows()[0]["fields"])
    # The paper's objective (clip_mode=per_label, the default): the trainer installed its loss in the
    # actor with set_loss_fn, and the advantage's two parts reached every micro-batch.
    assert {row["loss_fn"] for row in sync_run.actor_rows()} == {"restrain_ppo_loss"}
    assert {"restrain_positive_advantages", "restrain_negative_advantages"} <= set(sync_run.actor_rows()[0]["fields"])
    saved = {step: checksum for rank in sync_run.received for step, checksum in rank["saved"]}
    assert sorted(saved) == [1, 2] and saved[1] != saved[2]  # a real optimizer step each step
    for step in (1, 2):
        metrics = sync_run.metrics(step)
        assert math.isfinite(metrics["actor/pg_loss"]) and metrics["actor/kl_loss"] >= 0
        # The rollout's log-probs come from the weights synced after the previous step.
        assert metrics["training/rollout_probs_diff_max"] < 1e-4
        assert metrics["training/off_policy/trajectory_staleness/max"] == 0
    [server] = sync_run.server
    # Both ranks hand their weights to the one replica at start and after each step.
    assert [v for event, *v in server["events"] if event == "update_weights"] == [[0], [0], [1], [1], [2], [2]]


def test_restrain_metrics_reach_the_file_logger(sync_run):
    assert sorted({line["step"] for line in sync_run.log}) == [0, 1, 2]
    for step in (1, 2):
        metrics = sync_run.metrics(step)
        assert metrics["training/global_step"] == step
        assert {"restrain/penalized_fraction", "restrain/prompt_weight_mean", "restrain/majority_ratio",
                "restrain/no_answer_fraction", "restrain/gold_accuracy"} <= set(metrics)


def _validation_dump(verl_cpu_session, step: int) -> list[dict]:
    path = verl_cpu_session.workdir / "sync" / "validation" / f"{step}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_validation_is_graded_by_the_restrain_reward_manager(sync_run, verl_cpu_session):
    for step in (0, 2):
        metrics = sync_run.metrics(step)
        # math500: v0 four forms of 1/2, all correct; v1 three forms of 6 and no answer, all wrong.
        # gpqa_diamond: v2 all (C), correct; v3 all (B), wrong. Each prompt agrees with itself, so
        # verl's bootstrapped maj@4 and best@4 are exact.
        for source in ("math500", "gpqa_diamond"):
            for name in ("mean@4", "maj@4/mean", "best@4/mean"):
                assert metrics[f"val-core/{source}/acc/{name}"] == pytest.approx(0.5), (source, name)
        dumped = _validation_dump(verl_cpu_session, step)
        assert len(dumped) == len(VALIDATION) * VAL_N
        for sample in dumped:
            [prompt] = [p for p in VALIDATION if p.question in sample["input"]]
            label = prompt.label(sample["output"])
            assert sample["acc"] == float(label == prompt.gold)
            assert sample["has_answer"] == (label is not None)


def test_resume_continues_at_the_next_step_with_the_dataloader_state(
    sync_run, resumed_run, verl_cpu_session, tokenizer
):
    checkpoints = verl_cpu_session.workdir / "sync" / "checkpoints"
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text() == "3"
    for step in (1, 2, 3):
        assert (checkpoints / f"global_step_{step}" / "data.pt").is_file()
        assert (checkpoints / f"global_step_{step}" / "actor" / "cpu_actor.pt").is_file()

    assert sorted({line["step"] for line in resumed_run.log}) == [3]
    assert resumed_run.metrics(3)["training/global_step"] == 3
    # The resumed trainer installs the paper's objective in the actor again.
    assert {row["loss_fn"] for row in resumed_run.actor_rows()} == {"restrain_ppo_loss"}
    saved = {step: checksum for rank in sync_run.received for step, checksum in rank["saved"]}
    assert [rank["loaded"] for rank in resumed_run.received] == [[saved[2]], [saved[2]]]
    [server] = resumed_run.server
    assert [v for event, *v in server["events"] if event == "update_weights"][0] == [2]

    steps = trained_groups(resumed_run, tokenizer)
    assert list(steps) == [0]
    # The dataloader continues the epoch: the three prompts steps 1 and 2 did not use.
    assert {rows[0]["question"] for rows in steps[0].values()} == {p.question for p in TRAIN[2 * BATCH :]}
    assert {row["global_steps"] for rows in steps[0].values() for row in rows} == {3}
    assert_advantages(steps[0], restrain_reference)
    assert len(padding_rows(resumed_run)[0]) == PAD_ROWS


# ----------------------------------------------------------------------------------------------------
# ttrl on the colocate_async loop, and srt_offline.


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


# ----------------------------------------------------------------------------------------------------
# TTRL's vote/train split: vote on all 8 rollouts of a prompt, train on its first 4.


@pytest.fixture(scope="module")
def split_run(verl_cpu_session):
    return verl_cpu_session.run("split", "split", method="ttrl", steps=1, extra=["algorithm.restrain.train_rollouts=4"])


def test_the_vote_train_split_trains_on_the_first_rollouts_with_the_full_votes_advantages(split_run, tokenizer):
    """The actor's batch is the first 4 sessions of each prompt (plus verl's padding), in mini-batches of
    ppo_mini_batch_size * 4 rows, and each row's advantage is GRPO on the majority of all 8 answers."""
    [groups] = trained_groups(split_run, tokenizer).values()
    assert {rows[0]["prompt"].question for rows in groups.values()} == {p.question for p in TRAIN[:BATCH]}
    for rows in groups.values():
        assert [row["session_id"] for row in rows] == [0, 1, 2, 3]
        pool = [label for _, label in rows[0]["prompt"].samples]  # the 8 answers of the vote
        top = majority(pool)
        rewards = [float(label == top) for label in pool]
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
        for row in rows:
            expected = (float(row["label"] == top) - mean) / (std + defaults.EPSILON)
            torch.testing.assert_close(
                torch.tensor(row["advantages"]), torch.full((len(row["responses"]),), expected), rtol=1e-5, atol=1e-5
            )
    [record] = {row["call"]: row for row in split_run.actor_rows()}.values()
    assert record["mini_batch_size"] == MINI_BATCH * 4
    # 3 prompts x 4 rows, padded to a multiple of lcm(dp=1, 2 prompts x 4 rows) = 8
    assert len(padding_rows(split_run)[0]) == 4
    # The vote's metrics describe all 8 rollouts of each prompt.
    metrics = split_run.metrics(1)
    full_majorities = [max(Counter(x for _, x in p.samples if x is not None).values()) for p in TRAIN[:BATCH]]
    assert metrics["restrain/majority_ratio"] == pytest.approx(sum(m / 8 for m in full_majorities) / BATCH)
