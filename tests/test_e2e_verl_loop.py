"""RESTRAIN through verl 0.9.1's own v1 training loop, on CPU.

Each run starts as ``python -m verl.trainer.main_ppo`` does (verl's ``validate_config`` and the RESTRAIN
startup checks, verl's Ray start, ``TaskRunnerV1.run``: TransferQueue, ``get_trainer_cls``, ``init``,
``AgentLoopManagerTQ.create``, ``fit``). verl's agent loop, reward-loop workers (running the ``restrain``
reward manager), replay buffer, padding, batch balancing, validation, checkpoints and ``file`` logger all
run for real; only the FSDP worker group and the vLLM server are CPU stand-ins (``e2e_standins``).

The rollout server answers each prompt from a scripted pool, so every group's votes are known in
advance. The tests check what verl logged and the tensors the actor received against references
computed here in plain Python from the scripted answers and u_x (and, for TTRL, verl's own GRPO
estimator on the majority reward).

Four runs share one Ray instance: ``sync`` with the ``restrain`` preset on two data-parallel ranks
(validation, checkpoints, padding), its resumption, ``colocate_async`` with ``ttrl``, and ``sync`` with
``srt_offline``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import pytest
import torch
from e2e_harness import (
    Prompt,
    answers,
    close_transfer_queue,
    compose,
    main_checks,
    run_task,
    start_ray,
    write_dataset,
)

from verl_restrain import defaults

N = 8  # rollouts per training prompt
VAL_N = 4
BATCH = 3  # prompts per step; actor mini-batches of 2 prompts, so each step is padded from 24 to 32 rows
PAD_ROWS = 8
SIGMA, CENTER, KAPPA, DELTA, EPS = defaults.SIGMA, defaults.CENTER, defaults.KAPPA, defaults.DELTA, defaults.EPSILON

HALF = {"1/2": ["\\frac{1}{2}", "0.5", "1/2", "\\dfrac{1}{2}"]}
TRAIN = [
    Prompt("[t0] What is 2 + 2?", "math500", "4", answers(("4", 5), ("5", 2), (None, 1)), 16, 16, "4"),
    Prompt("[t1] Halve one.", "math500", "1/2", answers(("1/2", 4), ("2", 3), (None, 1), forms=HALF), 12, 16, "0.5"),
    Prompt("[t2] What is 3 + 4?", "aime24", "7", answers(("7", 3), ("8", 2), ("9", 1), (None, 2)), 8, 16, "8"),
    Prompt("[t3] What is 2 * 3?", "aime24", "6", answers(("6", 8)), 16, 16, "6"),
    Prompt("[t4] What is 5 + 5?", "math500", "10", answers((None, 8)), 4, 16, None),
    Prompt(
        "[t5] Which option is a prime, (A) 4 (B) 5 (C) 6 (D) 8?",
        "gpqa_diamond",
        "B",
        tuple((f"Checking each option, the answer is ({letter}).", letter) for letter in "BBBBBCCA"),
        12,
        16,
        "B",
    ),
    Prompt("[t6] What is 6 + 6?", "math500", "12", answers(("12", 6), ("13", 2)), 16, 16, "12"),
    Prompt("[t7] What is 1 + 2?", "aime24", "3", answers(("3", 4), ("1", 2), ("2", 2)), 10, 16, "3"),
    Prompt("[t8] What is 3 * 3?", "math500", "9", answers(("9", 5), (None, 3)), 14, 16, "9"),
]
VALIDATION = [
    Prompt("[v0] Write one half.", "math500", "1/2", answers(("1/2", 4), forms=HALF)),
    Prompt("[v1] What is 2 + 3?", "math500", "5", answers(("6", 3), (None, 1), forms={"6": ["6", "6.0", "\\frac{12}{2}"]})),
    Prompt("[v2] Which is even, (A) 3 (B) 5 (C) 4?", "gpqa_diamond", "C",
           tuple(("Only one is even: the answer is (C).", "C") for _ in range(VAL_N))),
    Prompt("[v3] Which is odd, (A) 3 (B) 4 (C) 6?", "gpqa_diamond", "A",
           tuple(("I pick the answer (B).", "B") for _ in range(VAL_N))),
]
OFFLINE_LABELS = ["4", "1/2", "8", "6", None, "B", "12", "3", "9"]  # restrain_ref_majority_answer, as labels
BY_QUESTION = {prompt.question: prompt for prompt in TRAIN + VALIDATION}


# ----------------------------------------------------------------------------------------------------
# References, from the scripted answers only.


def g(share: float) -> float:
    return math.exp(-((share - CENTER) ** 2) / (2 * SIGMA**2))


def u_x(prompt: Prompt) -> float:
    return g(prompt.ref_majority_count / prompt.ref_num_samples)


def grpo(rewards: list[float]) -> list[float]:
    """verl's GRPO normalisation of one group: (r - mean) / (unbiased std + eps)."""
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
    return [(r - mean) / (std + EPS) for r in rewards]


def majority(labels: list[str | None]) -> str | None:
    """The most common answer; a tie goes to the answer sampled first."""
    counts = Counter(label for label in labels if label is not None)
    return max(counts, key=counts.get) if counts else None  # Counter keeps first-appearance order


def restrain_reference(labels: list[str | None], u: float, kappa: int = KAPPA, delta: float = DELTA) -> list[float]:
    """u_x * sum_j w_j A_ij with Gaussian weights, or -delta * u_x for a group with M(x) < kappa."""
    counts = Counter(label for label in labels if label is not None)
    if max(counts.values(), default=0) < kappa:
        return [-delta * u] * len(labels)
    shaped = {label: g(count / len(labels)) for label, count in counts.items()}
    weights = {label: value / sum(shaped.values()) for label, value in shaped.items()}
    per_label = {label: grpo([float(x == label) for x in labels]) for label in counts}
    return [u * sum(weights[label] * per_label[label][i] for label in counts) for i in range(len(labels))]


def label_reference(labels: list[str | None], label: str | None) -> list[float]:
    """GRPO on the reward 1[answer == label] (TTRL: the majority; SRT-offline: the base model's answer)."""
    return grpo([float(label is not None and x == label) for x in labels])


# ----------------------------------------------------------------------------------------------------
# Runs.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def datasets(workdir):
    return {
        "train": write_dataset(workdir / "train.parquet", TRAIN, "train"),
        "val": write_dataset(workdir / "val.parquet", VALIDATION, "test"),
    }


def overrides(workdir, model_dir, datasets, name, *, method, loop="restrain", dp=1, steps=2, extra=()):
    return [
        "algorithm.adv_estimator=restrain",
        "reward.reward_manager.name=restrain",
        f"trainer.v1.trainer_mode={loop}",
        f"restrain_method={method}",
        f"data.train_files={datasets['train']}",
        f"data.val_files={datasets['val']}",
        f"data.train_batch_size={BATCH}",
        "data.max_prompt_length=128",
        "data.max_response_length=48",
        "data.dataloader_num_workers=0",
        "data.shuffle=false",
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.name=scripted",
        f"actor_rollout_ref.rollout.n={N}",
        f"actor_rollout_ref.rollout.tensor_model_parallel_size={dp}",  # one scripted replica for all ranks
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        f"actor_rollout_ref.rollout.val_kwargs.n={VAL_N}",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
        "reward.num_workers=1",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        f"trainer.n_gpus_per_node={dp}",
        "trainer.nnodes=1",
        "trainer.logger=[file]",
        "trainer.project_name=restrain_e2e",
        f"trainer.experiment_name={name}",
        f"trainer.total_training_steps={steps}",
        f"trainer.default_local_dir={workdir / name / 'checkpoints'}",
        "trainer.save_freq=-1",
        "trainer.test_freq=-1",
        "trainer.val_before_train=false",
        "+ray_kwargs.ray_init.num_cpus=4",
        "+ray_kwargs.ray_init.include_dashboard=false",
        "+ray_kwargs.ray_init.log_to_driver=false",
        *extra,
    ]


def train(workdir, name, args):
    config = compose(args)
    main_checks(config)
    script = {prompt.question: prompt.responses for prompt in TRAIN + VALIDATION}
    return run_task(config, script, workdir / f"{name}.jsonl")


@pytest.fixture(scope="module")
def ray_session(workdir, tiny_model_dir, datasets):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("the end-to-end runs start their own Ray instance, as verl's run_ppo does")
    start_ray(compose(overrides(workdir, tiny_model_dir, datasets, "ray", method="restrain")))
    yield
    close_transfer_queue()
    ray.shutdown()


@pytest.fixture(scope="module")
def sync_run(ray_session, workdir, tiny_model_dir, datasets):
    """``restrain`` on the ``sync`` loop: 2 ranks, KL loss, validation before and after, a checkpoint per step."""
    extra = [
        "actor_rollout_ref.actor.use_kl_loss=true",
        "trainer.val_before_train=true",
        "trainer.test_freq=2",
        "trainer.save_freq=1",
        f"trainer.validation_data_dir={workdir / 'sync' / 'validation'}",
    ]
    return train(workdir, "sync", overrides(workdir, tiny_model_dir, datasets, "sync", method="restrain", dp=2, extra=extra))


@pytest.fixture(scope="module")
def resumed_run(sync_run, workdir, tiny_model_dir, datasets):
    """The same run, started again with one more step: verl resumes from its last checkpoint."""
    extra = ["actor_rollout_ref.actor.use_kl_loss=true", "trainer.save_freq=1", "trainer.resume_mode=auto"]
    args = overrides(workdir, tiny_model_dir, datasets, "sync", method="restrain", dp=2, steps=3, extra=extra)
    return train(workdir, "resumed", args)


@pytest.fixture(scope="module")
def ttrl_run(ray_session, workdir, tiny_model_dir, datasets):
    args = overrides(workdir, tiny_model_dir, datasets, "ttrl", method="ttrl", loop="restrain_colocate_async")
    return train(workdir, "ttrl", args)


@pytest.fixture(scope="module")
def srt_offline_run(ray_session, workdir, tiny_model_dir, datasets):
    return train(workdir, "srt", overrides(workdir, tiny_model_dir, datasets, "srt", method="srt_offline"))


# ----------------------------------------------------------------------------------------------------
# Reading what the actor received.


def trained_groups(run, tokenizer) -> dict[int, dict[str, list[dict]]]:
    """update_actor call -> prompt uid -> its rows in sampling order, each with its decoded answer label.

    Padding rows (uid ``pad...``) are left out; :func:`padding_rows` returns them.
    """
    steps: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in run.actor_rows():
        if row["uid"].startswith("pad"):
            continue
        prompt = BY_QUESTION[row["question"]]
        text = tokenizer.decode(row["responses"], skip_special_tokens=True)
        labels = {label for written, label in prompt.samples if written == text}
        assert len(labels) == 1, f"the actor trained on a response that is not in the script: {text!r}"
        steps[row["call"]][row["uid"]].append({**row, "prompt": prompt, "label": labels.pop()})
    return {call: {uid: sorted(rows, key=lambda r: r["session_id"]) for uid, rows in groups.items()}
            for call, groups in steps.items()}


def padding_rows(run) -> dict[int, list[dict]]:
    rows = defaultdict(list)
    for row in run.actor_rows():
        if row["uid"].startswith("pad"):
            rows[row["call"]].append(row)
    return rows


def assert_advantages(groups: dict[str, list[dict]], reference) -> None:
    """Every row's advantage equals ``reference(prompt, labels)[session]`` on each of its tokens."""
    for rows in groups.values():
        prompt = rows[0]["prompt"]
        assert Counter(r["question"] for r in rows) == {prompt.question: N}
        assert [r["session_id"] for r in rows] == list(range(N))
        # The rollout served the prompt's whole pool, one response per sampled session.
        assert Counter(row["label"] for row in rows) == Counter(label for _, label in prompt.samples)
        expected = reference(prompt, [row["label"] for row in rows])
        for row, value in zip(rows, expected, strict=True):
            assert row["response_mask"] == [1] * len(row["responses"])
            torch.testing.assert_close(
                torch.tensor(row["advantages"]), torch.full((len(row["responses"]),), value), rtol=1e-5, atol=1e-5
            )


def restrain_preset(prompt: Prompt, labels: list) -> list[float]:
    return restrain_reference(labels, u_x(prompt))


def step_metrics_reference(groups: dict[str, list[dict]], kappa: int, prompt_weights: bool) -> dict[str, float]:
    """The restrain/ metrics of one step, from its real prompts only."""
    label_lists = [[row["label"] for row in rows] for rows in groups.values()]
    majority_counts = [max(Counter(x for x in labels if x is not None).values(), default=0) for labels in label_lists]
    us = [u_x(rows[0]["prompt"]) if prompt_weights else 1.0 for rows in groups.values()]
    return {
        "restrain/penalized_fraction": sum(m < kappa for m in majority_counts) / len(label_lists),
        "restrain/majority_ratio": sum(m / N for m in majority_counts) / len(label_lists),
        "restrain/no_answer_fraction": sum(x is None for labels in label_lists for x in labels) / (N * len(label_lists)),
        "restrain/prompt_weight_mean": sum(us) / len(us),
    }


# ----------------------------------------------------------------------------------------------------
# The sync loop with the restrain preset.


def test_get_trainer_cls_returns_the_plugins_trainers(sync_run, ttrl_run):
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync

    for mode, run, buffer in [("restrain", sync_run, ReplayBuffer), ("restrain_colocate_async", ttrl_run, ReplayBufferAsync)]:
        registered = get_trainer_cls(mode)
        assert registered.__module__.startswith("verl_restrain."), registered
        assert isinstance(run.trainer, registered)
        assert type(run.trainer.replay_buffer) is buffer  # verl's sync or async sampling


def test_sync_restrain_advantages_equal_the_reference(sync_run, tokenizer):
    steps = trained_groups(sync_run, tokenizer)
    assert sorted(steps) == [0, 1]
    questions = [{rows[0]["question"] for rows in steps[call].values()} for call in (0, 1)]
    assert questions == [{p.question for p in TRAIN[:3]}, {p.question for p in TRAIN[3:6]}]  # data.shuffle=false
    for call in (0, 1):
        assert {row["global_steps"] for rows in steps[call].values() for row in rows} == {call + 1}
        assert_advantages(steps[call], restrain_preset)


def test_padding_rows_get_zero_advantage_and_stay_out_of_the_metrics(sync_run, tokenizer):
    steps, padding = trained_groups(sync_run, tokenizer), padding_rows(sync_run)
    for call in (0, 1):
        # 3 prompts x 8 = 24 rows, padded to the mini-batch multiple 2 x 8 = 16 (lcm with dp=2): 8 padding rows.
        assert len(padding[call]) == PAD_ROWS
        assert {row["rank"] for row in padding[call]} <= {0, 1}
        for row in padding[call]:
            assert not any(row["response_mask"]) and not any(row["advantages"])
        # verl copies the batch's first row as their template: its prompt, dataset columns and reward
        # extra info (the answer) ride along, so only the uid/`is_padding` tag tells them apart.
        real = {(row["question"], row["pred"]) for rows in steps[call].values() for row in rows}
        assert len({(row["question"], row["pred"]) for row in padding[call]} | real) == len(real)
        metrics = sync_run.metrics(call + 1)
        for name, value in step_metrics_reference(steps[call], KAPPA, prompt_weights=True).items():
            assert metrics[name] == pytest.approx(value, abs=1e-6), name
        real = [row for rows in steps[call].values() for row in rows]
        gold = sum(row["label"] == row["prompt"].gold for row in real) / len(real)
        assert metrics["critic/score/mean"] == pytest.approx(gold)  # verl's gold accuracy, padding left out
        length = sum(len(row["responses"]) for row in real) / len(real)
        assert metrics["response_length/mean"] == pytest.approx(length)


def test_the_actor_trains_on_transfer_queue_fields_with_kl_and_synced_weights(sync_run):
    rows = sync_run.actor_rows()
    fields = set(rows[0]["fields"])
    # What verl's dispatch hands the actor: every TransferQueue field of its rows, dataset columns included.
    assert {"advantages", "old_log_probs", "ref_log_prob", "rollout_log_probs", "entropy", "response_mask",
            "input_ids", "responses", "uid", "extra_fields", "data_source", defaults.PROMPT_WEIGHT_COLUMN} <= fields
    saved = {step: checksum for state in sync_run.received for step, checksum in state["saved"]}
    assert sorted(saved) == [1, 2] and saved[1] != saved[2]  # real optimizer steps
    for step in (1, 2):
        metrics = sync_run.metrics(step)
        assert math.isfinite(metrics["actor/pg_loss"]) and metrics["actor/kl_loss"] >= 0
        # The rollout's log-probs come from the weights synced after the previous step: no mismatch.
        assert metrics["training/rollout_probs_diff_max"] < 1e-4
        assert metrics["training/off_policy/trajectory_staleness/max"] == 0
    [server] = sync_run.server
    assert [v for event, *v in server["events"] if event == "update_weights"] == [[0], [0], [1], [1], [2], [2]]


def test_restrain_metrics_reach_the_file_logger(sync_run):
    assert sorted({line["step"] for line in sync_run.log}) == [0, 1, 2]
    for step in (1, 2):
        metrics = sync_run.metrics(step)
        assert metrics["training/global_step"] == step
        restrain = {name for name in metrics if name.startswith("restrain/")}
        assert {"restrain/penalized_fraction", "restrain/prompt_weight_mean", "restrain/majority_ratio",
                "restrain/no_answer_fraction", "restrain/gold_accuracy"} <= restrain


def test_validation_is_graded_by_the_restrain_reward_manager(sync_run, workdir):
    import json

    for step in (0, 2):
        metrics = sync_run.metrics(step)
        # math500: v0 four forms of 1/2, all correct; v1 three forms of 6 and no answer, all wrong.
        # gpqa_diamond: v2 all (C), correct; v3 all (B), wrong. Every prompt agrees with itself, so
        # verl's bootstrapped maj@4 and best@4 are exact.
        for source in ("math500", "gpqa_diamond"):
            for name in ("mean@4", "maj@4/mean", "best@4/mean"):
                assert metrics[f"val-core/{source}/acc/{name}"] == pytest.approx(0.5), (source, name)

        dumped = [json.loads(line) for line in (workdir / "sync" / "validation" / f"{step}.jsonl").read_text().splitlines()]
        assert len(dumped) == len(VALIDATION) * VAL_N
        for sample in dumped:
            [prompt] = [p for p in VALIDATION if p.question in sample["input"]]
            [label] = {label for written, label in prompt.samples if written == sample["output"]}
            assert sample["acc"] == float(label == prompt.gold)
            assert sample["has_answer"] == (label is not None)


@pytest.mark.xfail(
    strict=True,
    reason="the restrain reward manager's `pred` is extract_answer's written form ('0.5', '1/2', '\\frac{1}{2}'), "
    "and verl's maj@k (metric_utils.calc_maj_val) votes by exact `pred`, so equivalent answers split the vote",
)
def test_validation_maj_at_k_counts_equivalent_answers_as_one_vote(sync_run, workdir):
    import json

    dumped = [json.loads(line) for line in (workdir / "sync" / "validation" / "0.jsonl").read_text().splitlines()]
    halves = {sample["pred"] for sample in dumped if VALIDATION[0].question in sample["input"]}
    assert len(halves) == 1, halves


# ----------------------------------------------------------------------------------------------------
# Checkpoint and resume.


def test_resume_continues_at_the_next_step_with_the_dataloader_state(sync_run, resumed_run, workdir, tokenizer):
    checkpoints = workdir / "sync" / "checkpoints"
    assert (checkpoints / "global_step_2" / "data.pt").is_file()
    assert (checkpoints / "global_step_2" / "actor" / "cpu_actor.pt").is_file()

    assert sorted({line["step"] for line in resumed_run.log}) == [3]
    assert resumed_run.metrics(3)["training/global_step"] == 3
    saved = {step: checksum for state in sync_run.received for step, checksum in state["saved"]}
    assert [state["loaded"] for state in resumed_run.received] == [[saved[2]], [saved[2]]]
    [server] = resumed_run.server
    assert [v for event, *v in server["events"] if event == "update_weights"][0] == [2]

    steps = trained_groups(resumed_run, tokenizer)
    assert list(steps) == [0]
    # The dataloader continues the epoch: the three prompts that steps 1 and 2 did not use.
    assert {rows[0]["question"] for rows in steps[0].values()} == {p.question for p in TRAIN[6:]}
    assert {row["global_steps"] for rows in steps[0].values() for row in rows} == {3}
    assert_advantages(steps[0], restrain_preset)
    assert (checkpoints / "global_step_3" / "data.pt").is_file()


# ----------------------------------------------------------------------------------------------------
# The colocate_async loop with TTRL, and SRT-offline.


def test_colocate_async_ttrl_equals_verls_grpo_on_the_majority_reward(ttrl_run, tokenizer):
    import numpy as np

    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    steps = trained_groups(ttrl_run, tokenizer)
    assert sorted(steps) == [0, 1]
    for call, groups in steps.items():
        assert len(groups) == BATCH
        assert_advantages(groups, lambda prompt, labels: label_reference(labels, majority(labels)))
        # verl's own GRPO estimator on TTRL's reward, 1 on the last token of a majority answer.
        rows = [row for group in groups.values() for row in group]
        width = max(len(row["responses"]) for row in rows)
        mask = torch.zeros(len(rows), width)
        rewards = torch.zeros(len(rows), width)
        for i, row in enumerate(rows):
            length = len(row["responses"])
            mask[i, :length] = 1
            group_labels = [r["label"] for r in groups[row["uid"]]]
            rewards[i, length - 1] = float(row["label"] is not None and row["label"] == majority(group_labels))
        grpo_advantages, _ = compute_grpo_outcome_advantage(rewards, mask, np.array([row["uid"] for row in rows], dtype=object))
        for i, row in enumerate(rows):
            torch.testing.assert_close(torch.tensor(row["advantages"]), grpo_advantages[i, : len(row["responses"])],
                                       rtol=1e-5, atol=1e-5)
        metrics = ttrl_run.metrics(call + 1)
        for name, value in step_metrics_reference(groups, kappa=0, prompt_weights=False).items():
            assert metrics[name] == pytest.approx(value, abs=1e-6), name
    [server] = ttrl_run.server
    events = [event for event, *_ in server["events"]]
    assert "abort" in events and "resume" in events  # colocate_async pauses and resumes generation around updates


def test_srt_offline_rewards_agreement_with_the_base_models_answer(srt_offline_run, tokenizer):
    steps = trained_groups(srt_offline_run, tokenizer)
    assert sorted(steps) == [0, 1]
    label_of = {prompt.question: label for prompt, label in zip(TRAIN, OFFLINE_LABELS, strict=True)}
    for groups in steps.values():
        assert_advantages(groups, lambda prompt, labels: label_reference(labels, label_of[prompt.question]))
    # t2's base-model answer (8) is not this rollout's majority (7): the 8s are rewarded.
    [t2] = [rows for rows in steps[0].values() if rows[0]["question"] == TRAIN[2].question]
    assert all((row["advantages"][0] > 0) == (row["label"] == "8") for row in t2)
