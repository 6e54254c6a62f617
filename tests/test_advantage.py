"""Tests of the RESTRAIN advantage math against a plain-loop reference, hand computations and verl."""

import math
import subprocess
import sys
import zlib
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from label_reference import batches, random_batch

from verl_restrain import defaults
from verl_restrain.advantage import (
    broadcast_to_tokens,
    compute_restrain_advantage,
    count_votes,
    fixed_label_answer_ids,
    prompt_weight,
    pseudo_label_weights,
    shaping,
)

EPS = 1e-6


# --------------------------------------------------------------------------------------------
# Plain-loop reference: one prompt at a time, one candidate label at a time, as the paper writes it.
# --------------------------------------------------------------------------------------------
def reference_advantage(answer_ids, group_index, prompt_weight=None, *, weighting, sigma, center, kappa, delta,
                        norm_adv_by_std=True, epsilon=EPS):
    answer_ids = [int(a) for a in answer_ids]
    group_index = [int(g) for g in group_index]
    rows = defaultdict(list)
    for i, g in enumerate(group_index):
        rows[g].append(i)
    out = [0.0] * len(answer_ids)
    for g, members in rows.items():
        n = len(members)
        counts = Counter(answer_ids[i] for i in members if answer_ids[i] != -1)
        labels = sorted(counts)
        if weighting == "gaussian":
            gs = {a: math.exp(-((counts[a] / n - center) ** 2) / (2 * sigma**2)) for a in labels}
            if labels and sum(gs.values()) == 0.0:  # underflow: fall back to the closest clusters, as log-space does
                best = max(-((counts[a] / n - center) ** 2) for a in labels)
                gs = {a: float(-((counts[a] / n - center) ** 2) == best) for a in labels}
            total = sum(gs.values())
            w = {a: gs[a] / total for a in labels}
        elif weighting == "uniform":
            w = {a: 1 / len(labels) for a in labels}
        else:
            top = max(counts.values()) if counts else 0
            winner = min(a for a in labels if counts[a] == top) if labels else None
            w = {a: float(a == winner) for a in labels}
        majority = max(counts.values()) if counts else 0
        for i in members:
            u = 1.0 if prompt_weight is None else float(prompt_weight[i])
            if majority < kappa:
                out[i] = -u * delta
                continue
            total = 0.0
            for a in labels:
                r = [1.0 if answer_ids[k] == a else 0.0 for k in members]
                if n == 1:
                    mean, std = 0.0, 1.0
                else:
                    mean = sum(r) / n
                    std = math.sqrt(sum((x - mean) ** 2 for x in r) / (n - 1))
                r_i = 1.0 if answer_ids[i] == a else 0.0
                a_ij = (r_i - mean) / (std + epsilon) if norm_adv_by_std else r_i - mean
                total += w[a] * a_ij
            out[i] = u * total
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("weighting", ["gaussian", "uniform", "majority"])
@pytest.mark.parametrize("kappa,delta", [(0, 0.0), (3, 0.5), (5, 1.25)])
@pytest.mark.parametrize("norm_adv_by_std", [True, False])
def test_vectorised_matches_reference_on_random_batches(weighting, kappa, delta, norm_adv_by_std):
    # A seed that does not depend on PYTHONHASHSEED, so every run draws the same batches.
    rng = np.random.default_rng(zlib.crc32(f"{weighting}-{kappa}-{norm_adv_by_std}".encode()))
    for trial in range(25):
        answer_ids, group_index = random_batch(
            rng, num_groups=int(rng.integers(1, 20)), invalid_rate=[0.0, 0.2, 0.7][trial % 3], sparse=trial % 2 == 0
        )
        u = torch.rand(answer_ids.numel(), dtype=torch.float64) if trial % 2 else None
        sigma = [0.05, 0.4, 2.0][trial % 3]
        center = [1.0, 0.5, 0.0][trial % 3]
        kwargs = dict(weighting=weighting, sigma=sigma, center=center, kappa=kappa, delta=delta,
                      norm_adv_by_std=norm_adv_by_std)
        got = compute_restrain_advantage(answer_ids, group_index, u, **kwargs)
        want = reference_advantage(answer_ids, group_index, u, **kwargs)
        assert got.dtype == torch.float32 and got.shape == answer_ids.shape
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Hand-computed cases.
# --------------------------------------------------------------------------------------------
def test_hand_computed_gaussian_group():
    # One prompt, n = 4: answers A, A, B and one rollout without an answer.
    # f_A = 2/4 = 0.5, f_B = 1/4 = 0.25; sigma = 0.4, center = 1, 2 sigma^2 = 0.32.
    # g_A = exp(-0.25 / 0.32) = exp(-0.78125) = 0.457833; g_B = exp(-0.5625 / 0.32) = exp(-1.7578125) = 0.172422
    # w_A = 0.457833 / 0.630255 = 0.726424; w_B = 0.273576.
    # Label A: r = [1, 1, 0, 0], mean 0.5, unbiased std sqrt(1/3) = 0.577350 -> A = +-0.866025.
    # Label B: r = [0, 0, 1, 0], mean 0.25, unbiased std sqrt(0.75 / 3) = 0.5 -> A = 1.5 (B), -0.5 (others).
    # Rollout A:    0.726424 * 0.866025 + 0.273576 * (-0.5) = 0.629103 - 0.136788 = 0.492315
    # Rollout B:   -0.629103 + 0.273576 * 1.5 = -0.629103 + 0.410364 = -0.218739
    # No answer:   -0.629103 - 0.136788 = -0.765891
    adv = compute_restrain_advantage(torch.tensor([7, 7, 3, -1]), torch.tensor([0, 0, 0, 0]),
                                     sigma=0.4, center=1.0, kappa=0, delta=0.5)
    torch.testing.assert_close(adv, torch.tensor([0.492315, 0.492315, -0.218739, -0.765891]), atol=1e-5, rtol=0)


def test_hand_computed_uniform_and_majority():
    # Same group: uniform w = 1/2 each.
    # Rollout A: 0.5 * 0.866025 + 0.5 * (-0.5) = 0.183013; rollout B: -0.433013 + 0.75 = 0.316987;
    # no answer: -0.433013 - 0.25 = -0.683013.
    ids, grp = torch.tensor([7, 7, 3, -1]), torch.zeros(4, dtype=torch.long)
    uniform = compute_restrain_advantage(ids, grp, weighting="uniform", sigma=0.4, center=1.0, kappa=0, delta=0.5)
    torch.testing.assert_close(uniform, torch.tensor([0.183013, 0.183013, 0.316987, -0.683013]), atol=1e-5, rtol=0)
    # Majority: one-hot on A, so plain GRPO on r = [1, 1, 0, 0]: +-0.866025.
    majority = compute_restrain_advantage(ids, grp, weighting="majority", sigma=0.4, center=1.0, kappa=0, delta=0.5)
    torch.testing.assert_close(majority, torch.tensor([0.866025, 0.866025, -0.866025, -0.866025]), atol=1e-5, rtol=0)


def test_hand_computed_penalization_and_prompt_weight():
    # Group 0: answers 1, 2, 3, 3 -> M = 2 < kappa = 3: every rollout gets -u * delta = -0.5 * 0.8 = -0.4.
    # Group 1: answers 4, 4, 4, 5 -> M = 3 >= 3: majority GRPO on r = [1, 1, 1, 0]:
    #   mean 0.75, unbiased std sqrt((3 * 0.0625 + 0.5625) / 3) = 0.5 -> +0.5, +0.5, +0.5, -1.5, times u = 2.
    ids = torch.tensor([1, 2, 3, 3, 4, 4, 4, 5])
    grp = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    u = torch.tensor([0.8] * 4 + [2.0] * 4)
    adv = compute_restrain_advantage(ids, grp, u, weighting="majority", sigma=0.4, center=1.0, kappa=3, delta=0.5)
    torch.testing.assert_close(adv, torch.tensor([-0.4] * 4 + [1.0, 1.0, 1.0, -3.0]), atol=1e-5, rtol=0)


def test_no_valid_answer_is_penalised_with_positive_kappa_and_zero_without():
    ids, grp = torch.tensor([-1, -1, -1]), torch.tensor([4, 4, 4])
    penalised = compute_restrain_advantage(ids, grp, sigma=0.4, center=1.0, kappa=1, delta=0.3)
    torch.testing.assert_close(penalised, torch.full((3,), -0.3))
    free = compute_restrain_advantage(ids, grp, sigma=0.4, center=1.0, kappa=0, delta=0.3)
    torch.testing.assert_close(free, torch.zeros(3))


def test_singleton_groups_follow_verl_grpo_convention():
    # verl: a group of one has mean 0 and std 1, so the advantage is the reward / (1 + eps).
    ids, grp = torch.tensor([3, -1]), torch.tensor([0, 1])
    adv = compute_restrain_advantage(ids, grp, weighting="majority", sigma=0.4, center=1.0, kappa=0, delta=0.5)
    torch.testing.assert_close(adv, torch.tensor([1 / (1 + EPS), 0.0]))
    dr = compute_restrain_advantage(ids, grp, weighting="majority", sigma=0.4, center=1.0, kappa=0, delta=0.5,
                                    norm_adv_by_std=False)
    torch.testing.assert_close(dr, torch.tensor([1.0, 0.0]))


def test_majority_ties_go_to_the_smallest_answer_id():
    # Answers 9, 2, 9, 2: a 2-2 tie; the one-hot goes to id 2.
    votes = count_votes(torch.tensor([9, 2, 9, 2]), torch.zeros(4, dtype=torch.long))
    weights = pseudo_label_weights(votes, "majority")
    assert votes.majority_count.tolist() == [2]
    chosen = votes.cluster[weights[votes.cluster] == 1.0]
    assert chosen.unique().tolist() == [int(votes.cluster[1])]


def test_count_votes_statistics():
    votes = count_votes(torch.tensor([5, -1, 5, 8, 1, 1, -1]), torch.tensor([30, 30, 30, 30, 10, 10, 20]))
    # groups sorted by value: 10 -> 0, 20 -> 1, 30 -> 2
    assert votes.group.tolist() == [2, 2, 2, 2, 0, 0, 1]
    assert votes.group_size.tolist() == [2, 1, 4]
    assert votes.majority_count.tolist() == [2, 0, 2]
    assert votes.num_clusters.tolist() == [1, 0, 2]
    assert votes.cluster_group.tolist() == [0, 2, 2]
    assert votes.cluster_count.tolist() == [2, 2, 1]
    assert votes.majority_cluster.tolist() == [0, -1, 1]
    assert votes.cluster.tolist() == [1, -1, 1, 2, 0, 0, -1]
    torch.testing.assert_close(votes.frequency, torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))


def test_shaping_and_prompt_weight():
    # g(f) = exp(-(f - k)^2 / (2 sigma^2)); sigma = 0.4, k = 1: g(0.5) = exp(-0.78125) = 0.457833.
    assert float(shaping(0.5, 0.4, 1.0)) == pytest.approx(0.457833, abs=1e-6)
    assert float(shaping(1.0, 0.4, 1.0)) == 1.0
    # u_x = g(c_ref / n): 8 of 16 -> 0.457833; 0 of 16 -> exp(-1 / 0.32) = 0.043937.
    u = prompt_weight(torch.tensor([8, 0, 16]), 16)
    torch.testing.assert_close(u, torch.tensor([0.457833, 0.043937, 1.0]), atol=1e-6, rtol=0)
    assert u.dtype == torch.float32
    assert float(prompt_weight(4, 16, sigma=1.0, center=0.25)) == 1.0
    assert float(prompt_weight(12, 16)) == pytest.approx(float(shaping(0.75, defaults.SIGMA, defaults.CENTER)))


def test_fixed_label_answer_ids_give_grpo_on_the_label_reward():
    matches = torch.tensor([True, False, True, False, False])
    ids = fixed_label_answer_ids(matches)
    assert ids.tolist() == [0, -1, 0, -1, -1]
    adv = compute_restrain_advantage(ids, torch.zeros(5, dtype=torch.long), weighting="majority",
                                     sigma=0.4, center=1.0, kappa=0, delta=0.5)
    reward = matches.float()
    want = (reward - reward.mean()) / (reward.std() + EPS)
    torch.testing.assert_close(adv, want)


def test_broadcast_to_tokens_zeroes_masked_tokens():
    adv = torch.tensor([1.5, -2.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(broadcast_to_tokens(adv, mask), torch.tensor([[1.5, 1.5, 0.0], [-2.0, 0.0, 0.0]]))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(weighting="softmax"), "unknown weighting"),
        (dict(sigma=0.0), "sigma must be > 0"),
        (dict(center=1.5), "center must be in"),
        (dict(kappa=-1), "kappa must be >= 0"),
        (dict(delta=-0.1), "delta must be >= 0"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, message):
    params = dict(weighting="gaussian", sigma=0.4, center=1.0, kappa=2, delta=0.5) | kwargs
    with pytest.raises(ValueError, match=message):
        compute_restrain_advantage(torch.tensor([0, 1]), torch.tensor([0, 0]), **params)


def test_bad_inputs_are_rejected():
    params = dict(sigma=0.4, center=1.0, kappa=0, delta=0.5)
    with pytest.raises(ValueError, match="same length"):
        compute_restrain_advantage(torch.tensor([0, 1]), torch.tensor([0]), **params)
    with pytest.raises(ValueError, match="-1 for no answer"):
        compute_restrain_advantage(torch.tensor([0, -2]), torch.tensor([0, 0]), **params)
    with pytest.raises(ValueError, match="integer"):
        compute_restrain_advantage(torch.tensor([0.0, 1.0]), torch.tensor([0, 0]), **params)
    with pytest.raises(ValueError, match="prompt_weight must have shape"):
        compute_restrain_advantage(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.ones(3), **params)
    with pytest.raises(ValueError, match="majority_count must be in"):
        prompt_weight(5, 4)


def test_empty_batch():
    out = compute_restrain_advantage(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                     sigma=0.4, center=1.0, kappa=4, delta=0.5)
    assert out.shape == (0,)


# --------------------------------------------------------------------------------------------
# Equality with verl's own GRPO on the majority-vote reward.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_adv_by_std", [True, False])
def test_majority_without_penalty_equals_verl_grpo_on_majority_reward(norm_adv_by_std):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rng = np.random.default_rng(0)
    for _ in range(10):
        answer_ids, group_index = random_batch(rng, num_groups=12, max_n=10)
        votes = count_votes(answer_ids, group_index)
        majority_reward = (votes.cluster >= 0) & (votes.cluster == votes.majority_cluster[votes.group])
        length = 5
        token_rewards = torch.zeros(answer_ids.numel(), length)
        token_rewards[:, -1] = majority_reward.float()
        response_mask = torch.ones(answer_ids.numel(), length)
        want, _ = compute_grpo_outcome_advantage(
            token_level_rewards=token_rewards,
            response_mask=response_mask,
            index=np.array(group_index.tolist(), dtype=object),
            norm_adv_by_std_in_grpo=norm_adv_by_std,
        )
        got = compute_restrain_advantage(answer_ids, group_index, weighting="majority", sigma=0.4, center=1.0,
                                         kappa=0, delta=0.5, norm_adv_by_std=norm_adv_by_std)
        torch.testing.assert_close(broadcast_to_tokens(got, response_mask), want, atol=1e-5, rtol=1e-5)


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
    }
)


@settings(max_examples=150, deadline=None)
@given(batches(), PARAMS, st.data())
def test_permuting_rows_permutes_outputs(batch, params, data):
    answer_ids, group_index = batch
    perm = torch.tensor(data.draw(st.permutations(range(answer_ids.numel()))))
    u = torch.rand(answer_ids.numel())
    base = compute_restrain_advantage(answer_ids, group_index, u, **params)
    permuted = compute_restrain_advantage(answer_ids[perm], group_index[perm], u[perm], **params)
    torch.testing.assert_close(permuted, base[perm])


@settings(max_examples=150, deadline=None)
@given(batches(), PARAMS, st.data())
def test_relabelling_ids_changes_nothing(batch, params, data):
    answer_ids, group_index = batch
    # Any injective relabelling of answers and groups; for majority weighting it must keep the order
    # of answer ids, because ties go to the smallest id.
    new_answer = data.draw(st.lists(st.integers(0, 10**9), min_size=5, max_size=5, unique=True))
    if params["weighting"] == "majority":
        new_answer = sorted(new_answer)
    new_group = data.draw(st.lists(st.integers(-(10**9), 10**9), min_size=6, max_size=6, unique=True))
    relabelled_answers = torch.tensor([-1 if a < 0 else new_answer[a] for a in answer_ids.tolist()])
    relabelled_groups = torch.tensor([new_group[g] for g in group_index.tolist()])
    base = compute_restrain_advantage(answer_ids, group_index, **params)
    relabelled = compute_restrain_advantage(relabelled_answers, relabelled_groups, **params)
    torch.testing.assert_close(relabelled, base)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20), st.integers(0, 50), PARAMS)
def test_unanimous_groups_get_zero_advantage(n, answer, params):
    params = params | {"kappa": min(params["kappa"], n)}  # M = n >= kappa
    adv = compute_restrain_advantage(torch.full((n,), answer), torch.zeros(n, dtype=torch.long), **params)
    if n == 1:  # verl's singleton convention: the reward itself, 1 / (1 + eps) or 1
        assert torch.allclose(adv, torch.ones(1), atol=1e-5)
    else:
        assert torch.equal(adv, torch.zeros(n))


@settings(max_examples=150, deadline=None)
@given(batches(), PARAMS, st.floats(0.0, 10.0))
def test_prompt_weight_scales_linearly(batch, params, scale):
    answer_ids, group_index = batch
    u = torch.rand(answer_ids.numel(), dtype=torch.float64)
    base = compute_restrain_advantage(answer_ids, group_index, u, **params)
    scaled = compute_restrain_advantage(answer_ids, group_index, u * scale, **params)
    torch.testing.assert_close(scaled, base * scale, atol=1e-5, rtol=1e-5)
    unit = compute_restrain_advantage(answer_ids, group_index, **params)
    torch.testing.assert_close(compute_restrain_advantage(answer_ids, group_index, torch.ones_like(u), **params), unit)


@settings(max_examples=200, deadline=None)
@given(batches(max_groups=8, max_n=20, max_answers=8), PARAMS)
def test_finite_for_every_composition(batch, params):
    answer_ids, group_index = batch
    adv = compute_restrain_advantage(answer_ids, group_index, **params)
    assert torch.isfinite(adv).all()
    votes = count_votes(answer_ids, group_index)
    weights = pseudo_label_weights(votes, params["weighting"], params["sigma"], params["center"])
    totals = torch.zeros(votes.num_groups, dtype=torch.float64).index_add_(0, votes.cluster_group, weights)
    has_cluster = votes.num_clusters > 0
    torch.testing.assert_close(totals[has_cluster], torch.ones(int(has_cluster.sum()), dtype=torch.float64))


@settings(max_examples=100, deadline=None)
@given(batches(), st.integers(0, 3), st.booleans())
def test_sigma_to_zero_approaches_majority_weighting(batch, kappa, norm_adv_by_std):
    # With center = 1, g increases with the vote share, so sigma -> 0 puts all weight on the most
    # frequent answers. Ties aside (gaussian splits them evenly), that is majority weighting.
    answer_ids, group_index = batch
    votes = count_votes(answer_ids, group_index)
    at_max = votes.cluster_count == votes.majority_count[votes.cluster_group]
    unique_majority = torch.bincount(votes.cluster_group[at_max], minlength=votes.num_groups) <= 1
    keep = unique_majority[votes.group]
    common = dict(center=1.0, kappa=kappa, delta=0.5, norm_adv_by_std=norm_adv_by_std)
    majority = compute_restrain_advantage(answer_ids, group_index, weighting="majority", sigma=0.4, **common)
    previous_gap = None
    for sigma in (0.3, 0.1, 0.03, 0.005):
        gaussian = compute_restrain_advantage(answer_ids, group_index, weighting="gaussian", sigma=sigma, **common)
        gap = float((gaussian[keep] - majority[keep]).abs().max()) if keep.any() else 0.0
        if previous_gap is not None:
            assert gap <= previous_gap + 1e-6
        previous_gap = gap
    assert previous_gap < 1e-4


@settings(max_examples=50, deadline=None)
@given(batches(), PARAMS, st.integers(1, 8))
def test_masked_tokens_never_matter(batch, params, length):
    answer_ids, group_index = batch
    adv = compute_restrain_advantage(answer_ids, group_index, **params)
    mask = (torch.rand(answer_ids.numel(), length) < 0.6).float()
    tokens = broadcast_to_tokens(adv, mask)
    assert torch.equal(tokens[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert torch.equal(tokens[mask == 1], adv.unsqueeze(-1).expand_as(mask)[mask == 1])


@pytest.mark.parametrize(
    "module", ["advantage", "votes", "loss", "entropy", "methods", "defaults", "answers", "diagnostics"]
)
def test_math_modules_import_no_verl(module):
    code = (
        f"import sys; import verl_restrain.{module}; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('verl', 'ray', 'vllm')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_benchmark_script_runs_at_toy_scale():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_advantage.py"
    spec = importlib.util.spec_from_file_location("bench_advantage", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--prompts", "4", "--rollouts", "4", "--tokens", "8", "--repeats", "1"])
    assert result["ratio_a"] > 0 and result["ratio_b"] > 0
