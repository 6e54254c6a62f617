"""The restrain/ metrics on hand-computed batches (pure torch, no verl)."""

import math

import pytest
import torch

from verl_restrain.advantage import count_votes, pseudo_label_weights, restrain_step
from verl_restrain.diagnostics import pseudo_label_reward, restrain_metrics, step_metrics

SIGMA, CENTER = 0.4, 1.0


def _ids(values):
    return torch.tensor(values, dtype=torch.long)


def _two_groups():
    # Group 0 (n = 4): answers a, a, b, none; u = 0.8; gold present, answer a is gold.
    # Group 1 (n = 2): no answers at all; u = 0.2; no gold label.
    answer_ids = _ids([0, 0, 1, -1, -1, -1])
    group_index = _ids([7, 7, 7, 7, 3, 3])
    prompt_weight = torch.tensor([0.8, 0.8, 0.8, 0.8, 0.2, 0.2])
    correct = torch.tensor([True, True, False, False, False, False])
    has_gold = torch.tensor([True, True, True, True, False, False])
    return answer_ids, group_index, prompt_weight, correct, has_gold


def test_unconditional_metrics_by_hand():
    answer_ids, group_index, prompt_weight, correct, has_gold = _two_groups()
    metrics = restrain_metrics(
        answer_ids, group_index, weighting="majority", sigma=SIGMA, center=CENTER, kappa=2,
        prompt_weight=prompt_weight, correct=correct, has_gold=has_gold,
    )
    # majority ratio: group 0 M/n = 2/4, group 1 0/2 -> (0.5 + 0) / 2
    assert metrics["restrain/majority_ratio"] == pytest.approx(0.25)
    # kappa = 2: group 0 has M = 2 (not < 2), group 1 M = 0 < 2 -> 1 of 2 penalised
    assert metrics["restrain/penalized_fraction"] == pytest.approx(0.5)
    # clusters: 2 and 0 -> mean 1
    assert metrics["restrain/num_clusters"] == pytest.approx(1.0)
    # rollouts without an answer: 1 + 2 of 6
    assert metrics["restrain/no_answer_fraction"] == pytest.approx(0.5)
    # majority weighting is one-hot: entropy 0 everywhere
    assert metrics["restrain/pseudo_label_entropy"] == pytest.approx(0.0)
    # u per prompt: (0.8 + 0.2) / 2, not weighted by group size
    assert metrics["restrain/prompt_weight_mean"] == pytest.approx(0.5)


def test_gold_metrics_only_over_groups_with_gold():
    answer_ids, group_index, prompt_weight, correct, has_gold = _two_groups()
    metrics = restrain_metrics(
        answer_ids, group_index, weighting="gaussian", sigma=SIGMA, center=CENTER, kappa=2,
        prompt_weight=prompt_weight, correct=correct, has_gold=has_gold,
    )
    # Only group 0 has gold. Its majority (a, 2 votes) is gold.
    assert metrics["restrain/pseudo_label_accuracy"] == pytest.approx(1.0)
    # gaussian weights of f = 2/4 and 1/4: log g = -(0.5)^2/0.32 = -0.78125 and -(0.75)^2/0.32 = -1.7578125
    w_a = 1.0 / (1.0 + math.exp(-1.7578125 + 0.78125))
    assert metrics["restrain/weighted_label_accuracy"] == pytest.approx(w_a)
    # entropy: group 0 has H(w_a, 1 - w_a), group 1 none (0) -> mean over the two groups
    entropy = -(w_a * math.log(w_a) + (1 - w_a) * math.log(1 - w_a))
    assert metrics["restrain/pseudo_label_entropy"] == pytest.approx(entropy / 2)
    # at least one correct rollout in group 0
    assert metrics["restrain/pass_at_n"] == pytest.approx(1.0)
    # 2 of the 4 rollouts of group 0 are correct (group 1 is left out)
    assert metrics["restrain/gold_accuracy"] == pytest.approx(0.5)


def test_wrong_majority_and_group_without_answers_count_as_wrong():
    # Group 0: answers a, a, a, b; gold is b. Group 1: no answer; gold exists.
    answer_ids = _ids([0, 0, 0, 1, -1, -1])
    group_index = _ids([0, 0, 0, 0, 1, 1])
    correct = torch.tensor([False, False, False, True, False, False])
    has_gold = torch.ones(6, dtype=torch.bool)
    metrics = restrain_metrics(
        answer_ids, group_index, weighting="uniform", sigma=SIGMA, center=CENTER, kappa=0,
        correct=correct, has_gold=has_gold,
    )
    assert metrics["restrain/pseudo_label_accuracy"] == pytest.approx(0.0)  # a wins in 0, nothing in 1
    assert metrics["restrain/weighted_label_accuracy"] == pytest.approx((0.5 + 0.0) / 2)  # uniform: w_b = 1/2
    assert metrics["restrain/pass_at_n"] == pytest.approx(0.5)  # group 0 has the correct b
    assert metrics["restrain/gold_accuracy"] == pytest.approx(1 / 6)
    assert metrics["restrain/penalized_fraction"] == 0.0  # kappa = 0 turns penalization off
    assert metrics["restrain/prompt_weight_mean"] == 1.0  # no prompt weights: u = 1


def test_gold_metrics_absent_without_any_gold_group():
    answer_ids, group_index, _, correct, _ = _two_groups()
    no_gold = torch.zeros(6, dtype=torch.bool)
    metrics = restrain_metrics(
        answer_ids, group_index, weighting="gaussian", sigma=SIGMA, center=CENTER, kappa=2,
        correct=correct, has_gold=no_gold,
    )
    assert not any(name.endswith(("accuracy", "pass_at_n")) for name in metrics)
    assert restrain_metrics(
        _ids([]), _ids([]), weighting="gaussian", sigma=SIGMA, center=CENTER, kappa=2
    ) == {}


def test_metric_names_avoid_verl_aggregation_keywords():
    # verl's MetricsAggregator reduces names containing max/min/sum/total with max/min/sum.
    answer_ids, group_index, prompt_weight, correct, has_gold = _two_groups()
    metrics = restrain_metrics(
        answer_ids, group_index, weighting="gaussian", sigma=SIGMA, center=CENTER, kappa=2,
        prompt_weight=prompt_weight, correct=correct, has_gold=has_gold,
    )
    assert len(metrics) == 11
    for name, value in metrics.items():
        assert name.startswith("restrain/") and isinstance(value, float)
        assert not any(word in name.lower() for word in ("max", "min", "sum", "total"))


def test_pseudo_label_reward_is_the_weight_of_the_own_cluster():
    answer_ids = _ids([0, 1, 0, -1, 2, 2, 2])
    group_index = _ids([0, 0, 0, 0, 1, 1, 1])
    votes = count_votes(answer_ids, group_index)
    majority = pseudo_label_reward(votes, pseudo_label_weights(votes, "majority"))
    # TTRL's reward: 1 for the majority answer, 0 otherwise and without an answer
    assert majority.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    weights = pseudo_label_weights(votes, "gaussian", SIGMA, CENTER)
    gaussian = pseudo_label_reward(votes, weights)
    # group 0: clusters (0: 2 votes, 1: 1 vote) of n = 4; rows take their cluster's weight
    assert gaussian[0] == gaussian[2] == pytest.approx(weights[0].item())
    assert gaussian[1] == pytest.approx(weights[1].item())
    assert gaussian[3] == 0.0
    assert gaussian[4:].tolist() == [1.0, 1.0, 1.0]


def test_reward_accuracy_by_hand():
    # Group 0 (gold): answers a, a, b, none; gold is b. Majority reward 1[answer = a]: 1, 1, 0, 0;
    #   gold reward 1[correct]: 0, 0, 1, 0 -> they agree on the rollout without an answer only: 1 of 4.
    # Group 1 (gold): answers c, c, c, d; gold is c -> majority reward 1, 1, 1, 0 = gold reward: 4 of 4.
    # Group 2 (no gold): left out. Share over the 8 rollouts with gold: 5 / 8.
    answer_ids = _ids([0, 0, 1, -1, 5, 5, 5, 6, 2, 2])
    group_index = _ids([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    correct = torch.tensor([False, False, True, False, True, True, True, False, True, True])
    has_gold = torch.tensor([True] * 8 + [False] * 2)
    metrics = restrain_metrics(
        answer_ids, group_index, weighting="gaussian", sigma=SIGMA, center=CENTER, kappa=0,
        correct=correct, has_gold=has_gold,
    )
    assert metrics["restrain/reward_accuracy"] == pytest.approx(5 / 8)


def test_step_metrics_read_the_steps_own_vote():
    # Partial groups and the online prompt weight come from the step, not from a second vote.
    # n = 8, kappa = 4 (share 1/2). Group 0: 6 rollouts, M = 3: 3 * 8 < 4 * 6? no -> kept.
    # Group 1: 4 rollouts, M = 1: 8 < 16 -> penalised. penalized_fraction = 1/2 (a raw count would give 2/2).
    # u = g(M / n_g): g(3/6) = exp(-0.25 / 0.32) = 0.457833, g(1/4) = exp(-0.5625 / 0.32) = 0.172422.
    answer_ids = _ids([0, 0, 0, 1, 2, -1, 3, 4, 5, -1])
    group_index = _ids([0] * 6 + [1] * 4)
    step = restrain_step(answer_ids, group_index, weighting="gaussian", sigma=SIGMA, center=CENTER, kappa=4,
                         delta=0.5, rollouts_per_prompt=8, online_prompt_weight=True)
    metrics = step_metrics(step)
    assert metrics["restrain/penalized_fraction"] == pytest.approx(0.5)
    assert metrics["restrain/prompt_weight_mean"] == pytest.approx((0.457833 + 0.172422) / 2, abs=1e-6)
    assert metrics["restrain/majority_ratio"] == pytest.approx((3 / 6 + 1 / 4) / 2)
    assert metrics["restrain/no_answer_fraction"] == pytest.approx(2 / 10)
    assert not any("accuracy" in name for name in metrics)  # no gold given


def test_restrain_metrics_is_step_metrics_of_one_step():
    answer_ids, group_index, prompt_weight, correct, has_gold = _two_groups()
    params = dict(weighting="gaussian", sigma=SIGMA, center=CENTER, kappa=2)
    step = restrain_step(answer_ids, group_index, prompt_weight, delta=0.5, **params)
    assert step_metrics(step, correct=correct, has_gold=has_gold) == restrain_metrics(
        answer_ids, group_index, prompt_weight=prompt_weight, correct=correct, has_gold=has_gold, **params
    )
    empty = restrain_step(_ids([]), _ids([]), delta=0.5, **params)
    assert step_metrics(empty) == {}
