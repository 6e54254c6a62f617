"""One vote per step: restrain_step, the parts P and N of the per-label objective, partial groups and
the online prompt weight, against the plain-loop reference, hand computations and properties."""

import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from label_reference import batches, label_terms, random_batch, reference_parts
from verl_restrain.advantage import (
    compute_restrain_advantage,
    compute_restrain_advantage_parts,
    count_votes,
    pseudo_label_weights,
    restrain_step,
)
from verl_restrain.diagnostics import pseudo_label_reward

EPS = 1e-6


@pytest.mark.parametrize("weighting", ["gaussian", "uniform", "majority"])
@pytest.mark.parametrize("kappa,delta", [(0, 0.0), (3, 0.5), (5, 1.25)])
@pytest.mark.parametrize("norm_adv_by_std", [True, False])
@pytest.mark.parametrize("variant", ["offline_u", "online_u", "partial_groups"])
def test_parts_match_the_per_label_reference(weighting, kappa, delta, norm_adv_by_std, variant):
    rng = np.random.default_rng(zlib.crc32(f"{weighting}-{kappa}-{norm_adv_by_std}-{variant}".encode()))
    for trial in range(15):
        answer_ids, group_index = random_batch(
            rng, num_groups=int(rng.integers(1, 15)), invalid_rate=[0.0, 0.2, 0.7][trial % 3], sparse=trial % 2 == 0
        )
        u = torch.rand(answer_ids.numel(), dtype=torch.float64) if variant == "offline_u" and trial % 2 else None
        kwargs = dict(
            weighting=weighting, sigma=[0.05, 0.4, 2.0][trial % 3], center=[1.0, 0.5, 0.0][trial % 3], kappa=kappa,
            delta=delta, norm_adv_by_std=norm_adv_by_std, online_prompt_weight=variant == "online_u",
            rollouts_per_prompt=12 if variant == "partial_groups" else None,  # random_batch draws 1..12 rollouts
        )
        positive, negative = compute_restrain_advantage_parts(answer_ids, group_index, u, **kwargs)
        want_positive, want_negative = reference_parts(answer_ids.numel(), label_terms(answer_ids, group_index, u, **kwargs))
        assert positive.dtype == negative.dtype == torch.float32
        torch.testing.assert_close(positive.double(), want_positive, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(negative.double(), want_negative, atol=1e-5, rtol=1e-5)
        advantage = compute_restrain_advantage(answer_ids, group_index, u, **kwargs)
        torch.testing.assert_close(positive + negative, advantage, atol=1e-6, rtol=1e-6)


def test_step_carries_the_vote_weights_and_reward():
    answer_ids, group_index = torch.tensor([4, 4, 9, -1, 2, 2, 3, 3, 7]), torch.tensor([0, 0, 0, 0, 5, 5, 5, 5, 8])
    u = torch.tensor([0.5] * 4 + [0.25] * 4 + [1.0])
    step = restrain_step(answer_ids, group_index, u, weighting="gaussian", sigma=0.4, center=1.0, kappa=2, delta=0.5)
    votes = count_votes(answer_ids, group_index)
    weights = pseudo_label_weights(votes, "gaussian", 0.4, 1.0)
    assert torch.equal(step.votes.cluster, votes.cluster) and torch.equal(step.weights, weights)
    assert torch.equal(step.reward, pseudo_label_reward(votes, weights))
    # M = 2, 2, 1 against kappa = 2: only the singleton group 8 is penalised
    assert step.penalized.tolist() == [False, False, True]
    torch.testing.assert_close(step.prompt_weight, torch.tensor([0.5, 0.25, 1.0], dtype=torch.float64))
    assert step.prompt_weight.dtype == torch.float64 and step.advantage.shape == (9,)
    no_u = restrain_step(answer_ids, group_index, weighting="gaussian", sigma=0.4, center=1.0, kappa=2, delta=0.5)
    assert torch.equal(no_u.prompt_weight, torch.ones(3, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# Hand-computed cases.
# --------------------------------------------------------------------------------------------
def test_hand_computed_parts_of_a_gaussian_group():
    # As test_advantage's hand case: answers A, A, B, none; w_A = 0.726424, w_B = 0.273576.
    # Label A: A~ = +0.866025 for A rollouts, -0.866025 otherwise. Label B: +1.5 for B, -0.5 otherwise.
    # Rollout A:  P = 0.726424 * 0.866025 = 0.629103;  N = 0.273576 * (-0.5) = -0.136788
    # Rollout B:  P = 0.273576 * 1.5 = 0.410364;       N = 0.726424 * (-0.866025) = -0.629103
    # No answer:  P = 0;                               N = -0.629103 - 0.136788 = -0.765891
    positive, negative = compute_restrain_advantage_parts(
        torch.tensor([7, 7, 3, -1]), torch.zeros(4, dtype=torch.long), weighting="gaussian", sigma=0.4, center=1.0,
        kappa=0, delta=0.5,
    )
    torch.testing.assert_close(positive, torch.tensor([0.629103, 0.629103, 0.410364, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(negative, torch.tensor([-0.136788, -0.136788, -0.629103, -0.765891]), atol=1e-5, rtol=0)


def test_hand_computed_parts_of_a_penalised_group():
    # Answers 1, 2, 3, 3: M = 2 < kappa = 3, u = 0.8, delta = 0.5: P = 0, N = -0.8 * 0.5 = -0.4.
    positive, negative = compute_restrain_advantage_parts(
        torch.tensor([1, 2, 3, 3]), torch.zeros(4, dtype=torch.long), torch.full((4,), 0.8), weighting="gaussian",
        sigma=0.4, center=1.0, kappa=3, delta=0.5,
    )
    assert positive.tolist() == [0.0] * 4
    torch.testing.assert_close(negative, torch.full((4,), -0.4))


def test_hand_computed_partial_groups():
    # n = 8 rollouts per prompt, kappa = 4: the share threshold is 4 / 8 = 0.5.
    # Group 0, 6 of 8 rollouts survived: answers 1, 1, 1, 2, 3, -1 -> M = 3, 3 * 8 = 24 < 4 * 6 = 24? no: kept
    #   (3 / 6 = 0.5 >= 0.5). Majority GRPO on r = [1, 1, 1, 0, 0, 0]: mean 0.5, unbiased std
    #   sqrt(6 * 0.25 / 5) = sqrt(0.3) = 0.547723 -> +-0.5 / 0.547723 = +-0.912871.
    # Group 1, 6 of 8: answers 1, 1, 2, 2, 3, -1 -> M = 2, 16 < 24: penalised, -delta = -0.5.
    # Group 2, all 8: answers 5 x4, 6 x4 -> M = 4, 32 < 32? no: kept; majority (tie: smallest id 5):
    #   r = [1 x4, 0 x4], mean 0.5, std sqrt(8 * 0.25 / 7) = 0.534522 -> +-0.935414.
    answer_ids = torch.tensor([1, 1, 1, 2, 3, -1] + [1, 1, 2, 2, 3, -1] + [5] * 4 + [6] * 4)
    group_index = torch.tensor([0] * 6 + [1] * 6 + [2] * 8)
    params = dict(weighting="majority", sigma=0.4, center=1.0, kappa=4, delta=0.5)
    step = restrain_step(answer_ids, group_index, rollouts_per_prompt=8, **params)
    assert step.penalized.tolist() == [False, True, False]
    want = torch.tensor([0.912871] * 3 + [-0.912871] * 3 + [-0.5] * 6 + [0.935414] * 4 + [-0.935414] * 4)
    torch.testing.assert_close(step.advantage, want, atol=1e-5, rtol=0)
    # Without rollouts_per_prompt, kappa is a raw count: group 0 (M = 3 < 4) is penalised too.
    raw = restrain_step(answer_ids, group_index, **params)
    assert raw.penalized.tolist() == [True, True, False]
    # Full groups: the scaled rule is the raw rule, bit for bit.
    full_ids, full_groups = torch.tensor([5] * 4 + [6] * 4 + [1] * 3 + [2] * 5), torch.tensor([0] * 8 + [1] * 8)
    assert torch.equal(
        compute_restrain_advantage(full_ids, full_groups, rollouts_per_prompt=8, **params),
        compute_restrain_advantage(full_ids, full_groups, **params),
    )


def test_hand_computed_online_prompt_weight():
    # Group 0: answers 1, 1, 1, 2: M / n = 3/4; u = g(0.75) = exp(-(0.25)^2 / 0.32) = exp(-0.1953125) = 0.822578.
    #   Majority GRPO on r = [1, 1, 1, 0]: mean 0.75, std 0.5 -> +0.5, +0.5, +0.5, -1.5, times u:
    #   0.411289, 0.411289, 0.411289, -1.233867.
    # Group 1: answers 3, 4 (n = 2): M = 1 < kappa = 2, penalised; M / n = 1/2, so
    #   u = g(0.5) = exp(-0.25 / 0.32) = 0.457833 -> -u * delta = -0.228917.
    answer_ids, group_index = torch.tensor([1, 1, 1, 2, 3, 4]), torch.tensor([0, 0, 0, 0, 1, 1])
    step = restrain_step(answer_ids, group_index, weighting="majority", sigma=0.4, center=1.0, kappa=2, delta=0.5,
                         online_prompt_weight=True)
    torch.testing.assert_close(step.prompt_weight, torch.tensor([0.822578, 0.457833], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    want = torch.tensor([0.411289, 0.411289, 0.411289, -1.233867, -0.228917, -0.228917])
    torch.testing.assert_close(step.advantage, want, atol=1e-5, rtol=0)
    assert step.positive[4:].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(prompt_weight=torch.ones(3), online_prompt_weight=True), "exclusive"),
        (dict(rollouts_per_prompt=0), "rollouts_per_prompt must be an integer >= 1"),
        (dict(rollouts_per_prompt=2.5), "rollouts_per_prompt must be an integer >= 1"),
        (dict(rollouts_per_prompt=True), "rollouts_per_prompt must be an integer >= 1"),
        (dict(prompt_weight=torch.tensor([1.0, -0.5, 1.0])), "finite and >= 0"),
        (dict(prompt_weight=torch.tensor([1.0, math.nan, 1.0])), "finite and >= 0"),
    ],
)
def test_bad_step_arguments_are_rejected(kwargs, message):
    params = dict(weighting="gaussian", sigma=0.4, center=1.0, kappa=2, delta=0.5) | kwargs
    with pytest.raises(ValueError, match=message):
        restrain_step(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 0]), **params)


def test_empty_step():
    step = restrain_step(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), weighting="gaussian",
                         sigma=0.4, center=1.0, kappa=4, delta=0.5)
    assert step.advantage.shape == step.positive.shape == step.negative.shape == step.reward.shape == (0,)


# --------------------------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------------------------
PARAMS = st.fixed_dictionaries(
    {
        "weighting": st.sampled_from(["gaussian", "uniform", "majority"]),
        "sigma": st.floats(0.01, 5.0),
        "center": st.floats(0.0, 1.0),
        "kappa": st.integers(0, 6),
        "delta": st.floats(0.0, 3.0),
        "norm_adv_by_std": st.booleans(),
        "rollouts_per_prompt": st.one_of(st.none(), st.integers(1, 12)),
        "online_prompt_weight": st.booleans(),
    }
)


def _prompt_weight(params, n):
    return None if params["online_prompt_weight"] else torch.rand(n)


@settings(max_examples=200, deadline=None)
@given(batches(max_groups=8, max_n=20, max_answers=8), PARAMS)
def test_parts_have_their_signs_and_sum_to_the_advantage(batch, params):
    answer_ids, group_index = batch
    u = _prompt_weight(params, answer_ids.numel())
    positive, negative = compute_restrain_advantage_parts(answer_ids, group_index, u, **params)
    advantage = compute_restrain_advantage(answer_ids, group_index, u, **params)
    assert bool((positive >= 0).all()) and bool((negative <= 0).all())
    assert torch.isfinite(positive).all() and torch.isfinite(negative).all()
    torch.testing.assert_close(positive + negative, advantage, atol=1e-6, rtol=1e-6)
    if params["weighting"] == "majority":  # one-hot weights: one part is zero, the sum is exact
        assert bool(((positive == 0) | (negative == 0)).all())
        assert torch.equal(positive + negative, advantage)


@settings(max_examples=150, deadline=None)
@given(batches(), PARAMS, st.data())
def test_permuting_rows_permutes_the_step(batch, params, data):
    answer_ids, group_index = batch
    perm = torch.tensor(data.draw(st.permutations(range(answer_ids.numel()))))
    u = _prompt_weight(params, answer_ids.numel())
    base = restrain_step(answer_ids, group_index, u, **params)
    permuted = restrain_step(answer_ids[perm], group_index[perm], None if u is None else u[perm], **params)
    for name in ("advantage", "positive", "negative", "reward"):
        torch.testing.assert_close(getattr(permuted, name), getattr(base, name)[perm])
    assert torch.equal(permuted.penalized, base.penalized)  # groups are numbered by value, not by row
    torch.testing.assert_close(permuted.prompt_weight, base.prompt_weight)


@settings(max_examples=100, deadline=None)
@given(batches(), PARAMS, st.floats(0.0, 10.0))
def test_parts_scale_linearly_with_the_prompt_weight(batch, params, scale):
    answer_ids, group_index = batch
    params = params | {"online_prompt_weight": False}
    u = torch.rand(answer_ids.numel(), dtype=torch.float64)
    base = compute_restrain_advantage_parts(answer_ids, group_index, u, **params)
    scaled = compute_restrain_advantage_parts(answer_ids, group_index, u * scale, **params)
    for got, want in zip(scaled, base):
        torch.testing.assert_close(got, want * scale, atol=1e-5, rtol=1e-5)
