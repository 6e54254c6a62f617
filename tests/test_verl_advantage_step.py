"""The group-level RESTRAIN step on real DataProtos built from the reward manager's real outputs."""

import dataclasses
import zlib
from collections import Counter

import numpy as np
import pytest
import torch
from tiny_lm import make_tokenizer
from verl_batches import compose_config, default_groups, rollout_rows, rows_to_dataproto, score_batch

from verl_restrain import answers, defaults
from verl_restrain.advantage import compute_restrain_advantage, prompt_weight
from verl_restrain.methods import METHODS
from verl_restrain.adapters.step import restrain_advantage_step, rollout_answer_ids


@pytest.fixture(scope="module")
def scored():
    """Reward-manager outputs for the default groups with their gold labels, corrupted and removed."""
    from verl.trainer.ppo.reward import load_reward_manager

    tokenizer = make_tokenizer()
    manager = load_reward_manager(compose_config(), tokenizer)
    groups = default_groups()
    corrupted = [dataclasses.replace(group, ground_truth="999") for group in groups]
    removed = [dataclasses.replace(group, ground_truth=None) for group in groups]
    return {name: score_batch(manager, tokenizer, batch)
            for name, batch in [("gold", groups), ("corrupted", corrupted), ("removed", removed)]}


def _with_entropy(data, keys):
    """Token entropies as verl's old-log-prob pass writes them, a fixed value per rollout (so any row
    order gives the same values)."""
    mask = data.batch["response_mask"]
    per_row = torch.tensor([0.2 + (zlib.crc32(key.encode()) % 100) / 50 for key in keys])
    data.batch["entropy"] = per_row.unsqueeze(-1) * mask
    return data


def _step(records, method, *overrides, seed=0):
    keys, rows = rollout_rows(records, seed=seed)
    data = _with_entropy(rows_to_dataproto(rows), keys)
    config = compose_config(f"restrain_method={method}", *overrides)
    metrics = restrain_advantage_step(data, keys, config.algorithm)
    return keys, rows, data, metrics


def _reference_ids(keys, rows):
    """Answer cluster of each row, clustering each group's answers in sampling order."""
    sessions = [int(key.rsplit("_", 2)[1]) for key in keys]
    kinds = [row["extra_fields"]["reward_extra_info"]["kind"] for row in rows]
    ids = [0] * len(rows)
    for uid in {row["uid"] for row in rows}:
        members = sorted((i for i, row in enumerate(rows) if row["uid"] == uid), key=lambda i: sessions[i])
        preds = [rows[i]["extra_fields"]["reward_extra_info"]["pred"] or None for i in members]
        for i, cluster in zip(members, answers.cluster_extracted(preds, kinds[members[0]]), strict=True):
            ids[i] = cluster
    return torch.tensor(ids)


def _last_token(values, mask):
    out = torch.zeros(mask.shape)
    out[torch.arange(len(values)), mask.sum(dim=1) - 1] = values.float()
    return out


def _grpo(rewards, mask, uids):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    advantages, _ = compute_grpo_outcome_advantage(_last_token(rewards, mask), mask, np.array(uids, dtype=object))
    return advantages


def test_ttrl_equals_verls_grpo_on_the_majority_vote_reward(scored):
    keys, rows, data, _ = _step(scored["gold"], "ttrl")
    ids = _reference_ids(keys, rows)
    uids = [row["uid"] for row in rows]
    majority = {}
    for uid in set(uids):
        votes = Counter(int(i) for i, u in zip(ids, uids, strict=True) if u == uid and i >= 0)
        top = max(votes.values())
        majority[uid] = min(answer for answer, count in votes.items() if count == top)  # ties: sampled first
    reward = torch.tensor([float(int(i) == majority[u]) for i, u in zip(ids, uids, strict=True)])
    mask = data.batch["response_mask"]
    torch.testing.assert_close(data.batch["advantages"], _grpo(reward, mask, uids), rtol=1e-5, atol=1e-6)
    assert torch.equal(data.batch["returns"], data.batch["advantages"])
    # verl's critic/rewards shows TTRL's reward
    assert torch.equal(data.batch["token_level_rewards"], _last_token(reward, mask))


def _u(row, sigma=defaults.SIGMA, center=defaults.CENTER):
    """u_x = g(c_ref / n_ref) from the row's stored counts."""
    count, samples = row[defaults.REF_MAJORITY_COUNT_COLUMN], row[defaults.REF_NUM_SAMPLES_COLUMN]
    return prompt_weight(count, samples, sigma, center).item()


def test_restrain_is_the_package_estimator_with_prompt_weights(scored):
    keys, rows, data, metrics = _step(scored["gold"], "restrain")
    group_index = torch.tensor([["uid-clear", "uid-forms", "uid-tie", "uid-spread"].index(r["uid"]) for r in rows])
    u = torch.tensor([_u(row) for row in rows])
    expected = compute_restrain_advantage(
        _reference_ids(keys, rows), group_index, u,
        weighting="gaussian", sigma=defaults.SIGMA, center=defaults.CENTER, kappa=defaults.KAPPA, delta=defaults.DELTA,
    )
    mask = data.batch["response_mask"]
    assert torch.equal(data.batch["advantages"], expected.unsqueeze(-1) * mask)
    # uid-tie (3 of 8 agree) and uid-spread (1 of 8) fall below kappa = 4: every rollout gets -u * delta
    for row, advantage in zip(rows, data.batch["advantages"][:, 0], strict=True):
        if row["uid"] in ("uid-tie", "uid-spread"):
            assert advantage.item() == pytest.approx(-_u(row) * defaults.DELTA)
    assert metrics["restrain/penalized_fraction"] == pytest.approx(0.5)
    # c_ref of 16 base-model samples: 15, 8, 12, 3
    assert metrics["restrain/prompt_weight_mean"] == pytest.approx(
        sum(prompt_weight(c, 16).item() for c in (15, 8, 12, 3)) / 4
    )


def test_prompt_weights_follow_the_runs_own_sigma_from_the_stored_counts(scored):
    """One source for u_x: the counts, shaped with the run's sigma and center (no baked-in column)."""
    keys, rows, data, metrics = _step(scored["gold"], "restrain", "algorithm.restrain.sigma=0.8",
                                      "algorithm.restrain.center=0.9", "algorithm.restrain.kappa=0")
    u = {row["uid"]: _u(row, sigma=0.8, center=0.9) for row in rows}
    assert metrics["restrain/prompt_weight_mean"] == pytest.approx(sum(u.values()) / 4)
    unweighted = _step(scored["gold"], "restrain", "algorithm.restrain.sigma=0.8", "algorithm.restrain.center=0.9",
                       "algorithm.restrain.kappa=0", "algorithm.restrain.use_prompt_weight=false")[2]
    for i, row in enumerate(rows):
        torch.testing.assert_close(data.batch["advantages"][i], unweighted.batch["advantages"][i] * u[row["uid"]])


def test_a_user_supplied_prompt_weight_column_is_an_explicit_choice(scored):
    keys, rows = rollout_rows(scored["gold"])
    weights = {"uid-clear": 0.25, "uid-forms": 1.0, "uid-tie": 0.5, "uid-spread": 2.0}
    rows = [dict(row, my_weight=weights[row["uid"]]) for row in rows]
    config = compose_config("algorithm.restrain.prompt_weight_source=column",
                            "algorithm.restrain.prompt_weight_key=my_weight")
    metrics = restrain_advantage_step(rows_to_dataproto(rows), keys, config.algorithm)
    assert metrics["restrain/prompt_weight_mean"] == pytest.approx(sum(weights.values()) / 4)


def test_online_prompt_weights_come_from_the_steps_own_vote(scored):
    keys, rows, data, metrics = _step(scored["gold"], "restrain", "algorithm.restrain.prompt_weight_source=online")
    # majorities of 8 rollouts: clear 5 (12), forms 4 (3; 1/2 in three forms has 3), tie 3, spread 1
    expected = sum(prompt_weight(m, 8).item() for m in (5, 4, 3, 1)) / 4
    assert metrics["restrain/prompt_weight_mean"] == pytest.approx(expected)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_label_free_advantages_never_read_the_gold_labels(scored, method):
    runs = {name: _step(records, method) for name, records in scored.items()}
    gold, corrupted, removed = (runs[name][2].batch["advantages"] for name in ("gold", "corrupted", "removed"))
    assert torch.equal(gold, corrupted)
    assert torch.equal(gold, removed)
    # The gold labels did reach the step (the diagnostics read them), so the equality is not vacuous.
    gold_metrics, corrupted_metrics, removed_metrics = (runs[name][3] for name in ("gold", "corrupted", "removed"))
    assert gold_metrics["restrain/gold_accuracy"] > corrupted_metrics["restrain/gold_accuracy"] == 0.0
    assert "restrain/gold_accuracy" not in removed_metrics


def test_gold_diagnostics_of_the_default_batch(scored):
    _, _, _, metrics = _step(scored["gold"], "ttrl")
    # majorities: clear -> 12 (gold), forms -> 3 (gold 1/2), tie -> B sampled first (gold), spread -> 1 (gold 5)
    assert metrics["restrain/pseudo_label_accuracy"] == pytest.approx(2 / 4)
    assert metrics["restrain/pass_at_n"] == pytest.approx(1.0)
    # correct rollouts: 5 + 3 (three forms of 1/2) + 3 + 1 of 32
    assert metrics["restrain/gold_accuracy"] == pytest.approx(12 / 32)
    # clusters: {12, 7}, {1/2, 3, 4}, {B, C, A}, {1..7}
    assert metrics["restrain/num_clusters"] == pytest.approx((2 + 3 + 3 + 7) / 4)
    assert metrics["restrain/no_answer_fraction"] == pytest.approx(3 / 32)


def test_srt_offline_equals_grpo_on_agreement_with_the_base_models_answer(scored):
    keys, rows, data, _ = _step(scored["gold"], "srt_offline")
    kinds = {"gpqa_diamond": "choice"}
    reward = torch.tensor([
        float(row[defaults.REF_MAJORITY_ANSWER_COLUMN] is not None and answers.same_answer(
            row["extra_fields"]["reward_extra_info"]["pred"], row[defaults.REF_MAJORITY_ANSWER_COLUMN],
            kinds.get(row["data_source"], "math")))
        for row in rows
    ])
    mask = data.batch["response_mask"]
    expected = _grpo(reward, mask, [row["uid"] for row in rows])
    torch.testing.assert_close(data.batch["advantages"], expected, rtol=1e-5, atol=1e-6)
    assert reward.sum() == 5 + 4 + 0 + 1  # 12 x5; 3 x4; no label; 5 x1


def test_the_vote_does_not_depend_on_the_row_order(scored):
    def by_key(seed):
        keys, _, data, metrics = _step(scored["gold"], "restrain", seed=seed)
        return {key: data.batch["advantages"][i, 0].item() for i, key in enumerate(keys)}, metrics

    first, first_metrics = by_key(0)
    second, second_metrics = by_key(1)
    assert first == second and first_metrics == second_metrics


def test_equivalent_forms_share_a_cluster():
    predictions = ["\\frac{1}{2}", "3", "0.5", None, "1/2", "3", "B", "b", ""]
    uids = ["x"] * 6 + ["y"] * 3
    kinds = ["math"] * 6 + ["choice"] * 3
    ids = rollout_answer_ids(predictions, uids, kinds, sessions=[5, 0, 1, 2, 3, 4, 0, 1, 2])
    # session order puts "3" (session 0) first: it gets id 0 and the 1/2 cluster id 1
    assert ids.tolist() == [1, 0, 1, -1, 1, 0, 0, 1, -1]
    offline = rollout_answer_ids(predictions, uids, kinds, labels=["0.5"] * 6 + [None] * 3)
    assert offline.tolist() == [0, -1, 0, -1, 0, -1, -1, -1, -1]


def test_multi_output_sessions_vote_once_and_share_the_advantage(scored):
    keys, rows, data, metrics = _step(scored["gold"], "restrain")
    # Session 0 of uid-clear becomes two outputs: index 0 (earlier turn) and index 1 (final).
    target = keys.index("uid-clear_0_0")
    keys2 = list(keys) + ["uid-clear_0_1"]
    rows2 = list(rows) + [dict(rows[target])]
    data2 = rows_to_dataproto(rows2)
    metrics2 = restrain_advantage_step(data2, keys2, compose_config("restrain_method=restrain").algorithm)
    assert torch.equal(data2.batch["advantages"][: len(rows)], data.batch["advantages"])
    assert data2.batch["advantages"][-1, 0] == data.batch["advantages"][target, 0]
    assert metrics2 == metrics


def test_padding_rows_get_no_advantage_and_no_metrics(scored):
    keys, rows, data, metrics = _step(scored["gold"], "restrain")
    pad = dict(rows[0], uid="padabc", response_mask=torch.zeros(4, dtype=torch.int64))
    keys2 = list(keys) + ["padabc_0_0", "padabc_1_0"]
    data2 = rows_to_dataproto(list(rows) + [pad, dict(pad)])
    metrics2 = restrain_advantage_step(
        data2, keys2, compose_config("restrain_method=restrain").algorithm, is_padding=[False] * len(rows) + [True] * 2
    )
    assert metrics2 == metrics
    assert torch.equal(data2.batch["advantages"][-2:], torch.zeros(2, data2.batch["advantages"].shape[1]))


def test_rollouts_without_the_restrain_reward_manager_fail_clearly(scored):
    keys, rows = rollout_rows(scored["gold"])
    rows[3] = dict(rows[3], extra_fields={"reward_extra_info": {"acc": 1.0}})
    with pytest.raises(ValueError, match="reward.reward_manager.name=restrain"):
        restrain_advantage_step(rows_to_dataproto(rows), keys, compose_config().algorithm)


@pytest.mark.parametrize(
    "column, bad",
    [
        (defaults.REF_MAJORITY_COUNT_COLUMN, None),
        (defaults.REF_MAJORITY_COUNT_COLUMN, -1),
        (defaults.REF_MAJORITY_COUNT_COLUMN, 17),  # more than n_ref = 16
        (defaults.REF_MAJORITY_COUNT_COLUMN, 2.5),
        (defaults.REF_MAJORITY_COUNT_COLUMN, "twelve"),
        (defaults.REF_NUM_SAMPLES_COLUMN, 0),
        (defaults.REF_NUM_SAMPLES_COLUMN, float("nan")),
    ],
)
def test_bad_prompt_weight_counts_fail_clearly(scored, column, bad):
    keys, rows = rollout_rows(scored["gold"])
    rows[0] = dict(rows[0], **{column: bad})
    with pytest.raises(ValueError, match="cannot give a prompt weight") as error:
        restrain_advantage_step(rows_to_dataproto(rows), keys, compose_config().algorithm)
    assert defaults.REF_MAJORITY_COUNT_COLUMN in str(error.value) and "restrain-score-prompts" in str(error.value)


@pytest.mark.parametrize("bad", [None, -0.5, float("nan"), "heavy"])
def test_bad_prompt_weights_in_a_user_column_fail_clearly(scored, bad):
    keys, rows = rollout_rows(scored["gold"])
    rows = [dict(row, my_weight=1.0) for row in rows]
    rows[0]["my_weight"] = bad
    config = compose_config("algorithm.restrain.prompt_weight_source=column",
                            "algorithm.restrain.prompt_weight_key=my_weight")
    with pytest.raises(ValueError, match="column 'my_weight' must hold a finite number >= 0"):
        restrain_advantage_step(rows_to_dataproto(rows), keys, config.algorithm)


def test_the_estimator_in_a_stock_trainer_says_which_trainer_to_use(scored):
    from verl.trainer.ppo.ray_trainer import compute_advantage

    _, rows = rollout_rows(scored["gold"])
    data = rows_to_dataproto(rows)
    data.batch["token_level_rewards"] = data.batch["response_mask"].float()
    with pytest.raises(ValueError, match="set trainer.v1.trainer_mode=restrain"):
        compute_advantage(data, adv_estimator="restrain", config=compose_config().algorithm)


def test_a_partial_group_keeps_kappa_as_a_share_of_n(scored):
    """verl's replay buffer can hand over a group in which some rollouts failed. With n = 8 and kappa = 4,
    uid-clear without two of its five "12" rollouts has 6 rollouts and M = 3: 3 * 8 = 24 is not below
    4 * 6 = 24, so it is not penalised; an absolute count (3 < 4) would penalise it."""
    keys, rows = rollout_rows(scored["gold"])
    dropped = [i for i, row in enumerate(rows)
               if row["uid"] == "uid-clear" and row["extra_fields"]["reward_extra_info"]["pred"] == "12"][:2]
    keys = [key for i, key in enumerate(keys) if i not in dropped]
    rows = [row for i, row in enumerate(rows) if i not in dropped]
    algorithm = compose_config("restrain_method=restrain").algorithm

    def clear_advantages(rollouts_per_prompt):
        data = rows_to_dataproto(rows)
        metrics = restrain_advantage_step(data, keys, algorithm, rollouts_per_prompt=rollouts_per_prompt)
        clear = [i for i, row in enumerate(rows) if row["uid"] == "uid-clear"]
        return data.batch["advantages"][clear, 0], metrics

    shared, shared_metrics = clear_advantages(8)
    absolute, absolute_metrics = clear_advantages(None)
    u = _u(next(row for row in rows if row["uid"] == "uid-clear"))
    assert torch.allclose(absolute, torch.full_like(absolute, -u * defaults.DELTA))
    assert len(set(shared.tolist())) == 3  # 12, 7 and no answer get their own advantages
    # tie and spread are penalised either way; clear only under the absolute count
    assert shared_metrics["restrain/penalized_fraction"] == pytest.approx(2 / 4)
    assert absolute_metrics["restrain/penalized_fraction"] == pytest.approx(3 / 4)


def test_ettrl_scales_ttrls_advantage_by_the_responses_entropy(scored):
    """ETTRL's advantage reshaping on the trainer step: A'_i = clamp(2 - H_i / H_mean, 0, 2) * A_i with
    H_i the mean token entropy of response i and H_mean the mean over its prompt's rollouts."""
    keys, rows = rollout_rows(scored["gold"])
    generator = torch.Generator().manual_seed(0)
    data = rows_to_dataproto(rows)
    mask = data.batch["response_mask"]
    data.batch["entropy"] = torch.rand(mask.shape, generator=generator) * 2 * mask
    ttrl = rows_to_dataproto(rows)
    restrain_advantage_step(ttrl, keys, compose_config("restrain_method=ttrl").algorithm)
    metrics = restrain_advantage_step(data, keys, compose_config("restrain_method=ettrl_ear_only").algorithm)

    mean_entropy = [(data.batch["entropy"][i] * mask[i]).sum().item() / mask[i].sum().item() for i in range(len(rows))]
    for i, row in enumerate(rows):
        group = [j for j, other in enumerate(rows) if other["uid"] == row["uid"]]
        h_mean = sum(mean_entropy[j] for j in group) / len(group)
        scale = min(max(2 - mean_entropy[i] / h_mean, 0.0), 2.0)
        torch.testing.assert_close(data.batch["advantages"][i], ttrl.batch["advantages"][i] * scale)
        torch.testing.assert_close(
            data.batch["restrain_positive_advantages"][i] + data.batch["restrain_negative_advantages"][i],
            data.batch["advantages"][i],
        )
    assert metrics["restrain/response_entropy"] == pytest.approx(sum(mean_entropy) / len(rows), rel=1e-5)
    assert 0 <= metrics["restrain/reshaping_scale"] <= 2
