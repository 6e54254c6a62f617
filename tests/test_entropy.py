"""Tests of ETTRL's entropy math (verl_restrain.entropy): hand cases, a plain-loop reference, properties."""

import math
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_restrain.advantage import restrain_step
from verl_restrain.entropy import (
    CLIP_BOUND,
    clip_advantage_scale,
    entropy_advantage_scale,
    fork_positions,
    reshape_advantage,
    response_entropy,
    top_logprob_entropy,
)


# --------------------------------------------------------------------------------------------
# Plain-loop references, written as the paper states the formulas.
# --------------------------------------------------------------------------------------------
def reference_response_entropy(token_entropy, mask):
    out, has = [], []
    for row, row_mask in zip(token_entropy.tolist(), mask.tolist(), strict=True):
        values = [max(h, 0.0) for h, m in zip(row, row_mask, strict=True) if m]
        out.append(sum(values) / len(values) if values else 0.0)
        has.append(bool(values))
    return out, has


def reference_scale(entropy, group_index, has_tokens):
    members = defaultdict(list)
    for i, g in enumerate(group_index):
        if has_tokens[i]:
            members[g].append(entropy[i])
    out = []
    for i, g in enumerate(group_index):
        h_bar = sum(members[g]) / len(members[g]) if members[g] else 0.0
        if not has_tokens[i] or h_bar == 0.0:
            out.append(1.0)
            continue
        y = 1.0 + (h_bar - entropy[i]) / h_bar  # the paper's Y_i
        out.append(min(max(y, 0.0), 2.0))
    return out


def random_batch(seed, num_rows=40, width=12, num_groups=5):
    generator = torch.Generator().manual_seed(seed)
    group_index = torch.randint(0, num_groups, (num_rows,), generator=generator) * 7 + 3  # sparse ids
    lengths = torch.randint(0, width + 1, (num_rows,), generator=generator)  # some rows are empty
    mask = (torch.arange(width) < lengths[:, None]).long()
    entropy = torch.rand(num_rows, width, generator=generator) * 3.0
    entropy[torch.rand(num_rows, generator=generator) < 0.1] = 0.0  # deterministic responses
    entropy = torch.where(mask.bool(), entropy, torch.nan)  # padding holds garbage
    return entropy, mask, group_index


# --------------------------------------------------------------------------------------------
# Hand-computed cases.
# --------------------------------------------------------------------------------------------
def test_response_entropy_is_the_mean_over_response_tokens():
    token_entropy = torch.tensor([[1.0, 2.0, 3.0, 99.0], [0.5, 0.0, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    entropy, has_tokens = response_entropy(token_entropy, mask)
    # (1 + 2 + 3) / 3 = 2; 0.5 / 1; no token -> 0 and has_tokens False
    assert entropy.tolist() == [2.0, 0.5, 0.0]
    assert has_tokens.tolist() == [True, True, False]


def test_entropy_scale_hand_case():
    # group 0: H = 1, 2, 3 -> H_bar = 2; Y = 2 - H / 2 = 1.5, 1.0, 0.5
    # group 1: H = 0.2, 1.0 -> H_bar = 0.6; Y = 2 - 0.2/0.6 = 5/3, 2 - 1/0.6 = 1/3
    entropy = torch.tensor([1.0, 2.0, 3.0, 0.2, 1.0])
    group_index = torch.tensor([0, 0, 0, 1, 1])
    scale = entropy_advantage_scale(entropy, group_index)
    assert scale.tolist() == pytest.approx([1.5, 1.0, 0.5, 5 / 3, 1 / 3])


def test_entropy_scale_clamps_at_zero_when_a_response_exceeds_twice_the_mean():
    # H = 0, 0, 0.3 -> H_bar = 0.1; Y = 2, 2, 2 - 3 = -1 -> clamped to 0
    scale = entropy_advantage_scale(torch.tensor([0.0, 0.0, 0.3]), torch.tensor([4, 4, 4]))
    assert scale.tolist() == pytest.approx([2.0, 2.0, 0.0])


def test_entropy_scale_special_groups():
    # singleton: H_bar = H -> Y = 1; all-zero entropy: H_bar = 0 -> Y = 1; a row without tokens is
    # left out of its group's mean (group 9: H_bar = (1 + 3) / 2 = 2 -> Y = 1.5, 0.5) and gets Y = 1.
    entropy = torch.tensor([0.7, 0.0, 0.0, 1.0, 3.0, 0.0])
    group_index = torch.tensor([1, 2, 2, 9, 9, 9])
    has_tokens = torch.tensor([True, True, True, True, True, False])
    scale = entropy_advantage_scale(entropy, group_index, has_tokens)
    assert scale.tolist() == pytest.approx([1.0, 1.0, 1.0, 1.5, 0.5, 1.0])


def test_clip_hand_case():
    # beta = 2: 3 -> 2 (c = 2/3), -5 -> -2 (c = 2/5), 1.5 and 0 unchanged (c = 1)
    advantage = torch.tensor([3.0, -5.0, 1.5, 0.0])
    assert clip_advantage_scale(advantage).tolist() == pytest.approx([2 / 3, 2 / 5, 1.0, 1.0])
    reshaped = reshape_advantage(advantage, reshaping="clip")
    assert reshaped.advantage.tolist() == [2.0, -2.0, 1.5, 0.0]
    assert reshape_advantage(advantage, reshaping="clip", clip_bound=1.0).advantage.tolist() == [1.0, -1.0, 1.0, 0.0]


def test_entropy_reshaping_of_a_ttrl_group_by_hand():
    # 4 rollouts, answers a a a b; majority a. GRPO on r = 1, 1, 1, 0: mean 0.75, unbiased std
    # sqrt(0.75 * 0.25 * 4/3) = 0.5 -> A = 0.5, 0.5, 0.5, -1.5 (epsilon 0).
    # Mean token entropies 1, 1, 2, 4 -> H_bar = 2 -> Y = 1.5, 1.5, 1, 0 -> A' = 0.75, 0.75, 0.5, 0.
    step = restrain_step(torch.tensor([0, 0, 0, 1]), torch.zeros(4, dtype=torch.long), weighting="majority",
                         sigma=0.4, center=1.0, kappa=0, delta=0.5, epsilon=0.0)
    assert step.advantage.tolist() == pytest.approx([0.5, 0.5, 0.5, -1.5])
    token_entropy = torch.tensor([[1.0, 1.0], [0.5, 1.5], [2.0, 2.0], [4.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]])
    reshaped = reshape_advantage(step.advantage, torch.zeros(4, dtype=torch.long), reshaping="entropy",
                                 positive=step.positive, negative=step.negative,
                                 token_entropy=token_entropy, response_mask=mask)
    assert reshaped.entropy.tolist() == [1.0, 1.0, 2.0, 4.0]
    assert reshaped.scale.tolist() == pytest.approx([1.5, 1.5, 1.0, 0.0])
    assert reshaped.advantage.tolist() == pytest.approx([0.75, 0.75, 0.5, 0.0])
    # one-hot label: the majority's rollouts have only a positive part, the others only a negative one
    assert reshaped.positive.tolist() == pytest.approx([0.75, 0.75, 0.5, 0.0])
    assert reshaped.negative.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0])


# --------------------------------------------------------------------------------------------
# Against the plain loops on random batches.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(30))
def test_matches_the_plain_loop_reference(seed):
    token_entropy, mask, group_index = random_batch(seed)
    entropy, has_tokens = response_entropy(token_entropy, mask)
    ref_entropy, ref_has = reference_response_entropy(torch.nan_to_num(token_entropy, nan=123.0), mask)
    assert entropy.tolist() == pytest.approx(ref_entropy, rel=1e-12, abs=1e-12)
    assert has_tokens.tolist() == ref_has
    scale = entropy_advantage_scale(entropy, group_index, has_tokens)
    assert scale.tolist() == pytest.approx(reference_scale(ref_entropy, group_index.tolist(), ref_has), rel=1e-12)

    advantage = torch.randn(len(group_index), generator=torch.Generator().manual_seed(seed)) * 3
    reshaped = reshape_advantage(advantage, group_index, reshaping="entropy", token_entropy=token_entropy,
                                 response_mask=mask)
    expected = [a * y for a, y in zip(advantage.tolist(), reference_scale(ref_entropy, group_index.tolist(), ref_has))]
    assert reshaped.advantage.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    clipped = reshape_advantage(advantage, reshaping="clip")
    assert clipped.advantage.tolist() == pytest.approx([min(max(a, -2.0), 2.0) for a in advantage.tolist()])


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("reshaping", ["entropy", "clip"])
def test_parts_of_a_restrain_step_keep_their_signs_and_sum(seed, reshaping):
    generator = torch.Generator().manual_seed(seed)
    group_index = torch.randint(0, 4, (48,), generator=generator)
    answer_ids = torch.randint(-1, 4, (48,), generator=generator)
    step = restrain_step(answer_ids, group_index, weighting="gaussian", sigma=0.4, center=1.0, kappa=3, delta=0.5)
    token_entropy, mask, _ = random_batch(seed, num_rows=48)
    reshaped = reshape_advantage(step.advantage, group_index, reshaping=reshaping, positive=step.positive,
                                 negative=step.negative, token_entropy=token_entropy, response_mask=mask,
                                 clip_bound=0.5)
    assert bool((reshaped.positive >= 0).all()) and bool((reshaped.negative <= 0).all())
    torch.testing.assert_close(reshaped.positive + reshaped.negative, reshaped.advantage, atol=1e-5, rtol=1e-5)
    expected_positive = step.positive.double() * reshaped.scale
    torch.testing.assert_close(reshaped.positive.double(), expected_positive, atol=1e-6, rtol=1e-6)
    if reshaping == "clip":
        assert bool((reshaped.advantage.abs() <= 0.5).all())


def test_clip_of_a_one_hot_step_clips_each_part():
    # TTRL's one-hot label on 8 distinct answers (the tie goes to the first): r = 1 once, mean 1/8,
    # unbiased std sqrt(1 * 7 / (8 * 7)) = 0.354 -> A = 0.875 / 0.354 = 2.47 > 2, clipped to 2; the
    # others get -0.125 / 0.354 = -0.35. At most one part is non-zero, so clip(P) and clip(N).
    answer_ids = torch.arange(8)
    step = restrain_step(answer_ids, torch.zeros(8, dtype=torch.long), weighting="majority", sigma=0.4,
                         center=1.0, kappa=0, delta=0.5)
    assert float(step.advantage.max()) > CLIP_BOUND
    reshaped = reshape_advantage(step.advantage, reshaping="clip", positive=step.positive, negative=step.negative)
    torch.testing.assert_close(reshaped.positive, step.positive.clamp(max=CLIP_BOUND))
    torch.testing.assert_close(reshaped.negative, step.negative.clamp(min=-CLIP_BOUND))


# --------------------------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------------------------
batches = st.integers(1, 30).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 3), min_size=n, max_size=n),  # group
        st.lists(st.lists(st.sampled_from([0.0, 0.0, 1e-9, 0.3, 1.0, 2.5, 11.0]), min_size=4, max_size=4),
                 min_size=n, max_size=n),  # token entropies
        st.lists(st.integers(0, 4), min_size=n, max_size=n),  # response lengths
        st.lists(st.floats(-5, 5), min_size=n, max_size=n),  # advantages
    )
)


def _tensors(batch):
    groups, values, lengths, advantages = batch
    group_index = torch.tensor(groups)
    mask = (torch.arange(4) < torch.tensor(lengths)[:, None]).long()
    return group_index, torch.tensor(values), mask, torch.tensor(advantages)


@settings(max_examples=200, deadline=None)
@given(batches)
def test_properties_of_the_entropy_scale(batch):
    group_index, token_entropy, mask, advantage = _tensors(batch)
    entropy, has_tokens = response_entropy(token_entropy, mask)
    scale = entropy_advantage_scale(entropy, group_index, has_tokens)
    assert bool(torch.isfinite(scale).all()) and bool(((scale >= 0) & (scale <= 2)).all())
    assert bool((scale[~has_tokens] == 1).all())

    # Y depends on entropies relative to the group mean only: a positive rescale changes nothing
    torch.testing.assert_close(entropy_advantage_scale(entropy * 7.5, group_index, has_tokens), scale)
    # relabelling groups changes nothing; permuting rows permutes the scale
    torch.testing.assert_close(entropy_advantage_scale(entropy, group_index * 13 - 4, has_tokens), scale)
    perm = torch.randperm(len(scale), generator=torch.Generator().manual_seed(len(scale)))
    torch.testing.assert_close(entropy_advantage_scale(entropy[perm], group_index[perm], has_tokens[perm]), scale[perm])

    # without clamping, Y averages to 1 over each group's rows with tokens (sum of 2 - H/H_bar = n)
    for g in group_index.unique():
        rows = (group_index == g) & has_tokens
        if rows.any() and float(scale[rows].min()) > 0:
            assert float(scale[rows].mean()) == pytest.approx(1.0, abs=1e-9)

    # masked tokens never matter, NaN included
    garbage = torch.where(mask.bool(), token_entropy, torch.nan)
    reshaped = reshape_advantage(advantage, group_index, reshaping="entropy", token_entropy=garbage,
                                 response_mask=mask)
    torch.testing.assert_close(reshaped.scale, scale)
    assert bool(torch.isfinite(reshaped.advantage).all())
    # a zero advantage (unanimous group) stays zero; the sign never flips
    assert bool((reshaped.advantage * advantage >= 0).all())


@settings(max_examples=200, deadline=None)
@given(batches, st.floats(0.05, 10))
def test_properties_of_clipping(batch, bound):
    _, _, _, advantage = _tensors(batch)
    reshaped = reshape_advantage(advantage, reshaping="clip", clip_bound=bound)
    assert bool((reshaped.advantage.abs() <= bound + 1e-6).all())
    inside = advantage.abs() <= bound
    assert torch.equal(reshaped.advantage[inside], advantage[inside])
    assert bool((reshaped.advantage * advantage >= 0).all())
    torch.testing.assert_close(reshaped.advantage.double(), advantage.double() * reshaped.scale, atol=1e-5, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Top-k entropy and fork points.
# --------------------------------------------------------------------------------------------
def _exact_entropy(logp):
    return float(-(logp.exp() * logp).sum())


def test_top_logprob_entropy_hand_case():
    # p = 0.5, 0.25 (top-2), rest 0.25 in one bucket: H = 0.5 ln 2 + 0.25 ln 4 + 0.25 ln 4 = 1.5 ln 2
    logp = torch.tensor([math.log(0.5), math.log(0.25)])
    assert float(top_logprob_entropy(logp)) == pytest.approx(1.5 * math.log(2))
    # missing entries (-inf, NaN) count as absent
    assert float(top_logprob_entropy(torch.tensor([math.log(0.5), -math.inf, math.nan, math.log(0.25)]))) == (
        pytest.approx(1.5 * math.log(2)))
    # a certain token: H = 0
    assert float(top_logprob_entropy(torch.tensor([0.0, -math.inf]))) == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_top_logprob_entropy_bounds_the_full_entropy(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 50, generator=generator, dtype=torch.float64) * 2.5
    logp = torch.log_softmax(logits, dim=-1)
    top = torch.sort(logp, dim=-1, descending=True).values
    for row in range(6):
        exact = _exact_entropy(logp[row])
        # exact when the rest is empty or one token
        assert float(top_logprob_entropy(top[row])) == pytest.approx(exact, rel=1e-10)
        assert float(top_logprob_entropy(top[row, :49])) == pytest.approx(exact, rel=1e-10)
        previous = 0.0
        for k in (1, 2, 5, 20):
            estimate = float(top_logprob_entropy(top[row, :k]))
            truncated = _exact_entropy(top[row, :k])
            assert truncated - 1e-12 <= estimate <= exact + 1e-12
            assert estimate >= previous - 1e-12  # more entries never lower the bound
            previous = estimate
    # batched over leading dimensions, order of the entries irrelevant
    torch.testing.assert_close(top_logprob_entropy(top[:, :5]), top_logprob_entropy(top[:, :5].flip(-1)))


def test_fork_positions():
    entropy = torch.tensor([0.1, 2.0, 0.5, 2.0, torch.nan, 3.0])
    # 3.0 at 5, then the tie 2.0 at 1 and 3 (earlier first), NaN never chosen
    assert fork_positions(entropy, 2).tolist() == [5, 1]
    assert fork_positions(entropy, 3).tolist() == [5, 1, 3]
    assert fork_positions(entropy, 10).tolist() == [5, 1, 3, 2, 0]
    assert fork_positions(entropy, 0).tolist() == []
    assert fork_positions(torch.tensor([]), 2).tolist() == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, math.nan]), max_size=12), st.integers(0, 6))
def test_fork_positions_match_a_sort_reference(values, num_forks):
    known = [(i, v) for i, v in enumerate(values) if not math.isnan(v)]
    expected = [i for i, _ in sorted(known, key=lambda item: (-item[1], item[0]))][:num_forks]
    assert fork_positions(torch.tensor(values, dtype=torch.float64), num_forks).tolist() == expected


# --------------------------------------------------------------------------------------------
# Errors name the problem.
# --------------------------------------------------------------------------------------------
def test_bad_inputs_are_refused():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="log-probabilities"):
        response_entropy(-torch.rand(2, 3) - 0.1, mask)
    with pytest.raises(ValueError, match="NaN or inf"):
        response_entropy(torch.full((2, 3), math.nan), mask)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        response_entropy(torch.rand(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="unknown reshaping"):
        reshape_advantage(torch.zeros(2), reshaping="entropy_clip")
    with pytest.raises(ValueError, match="needs group_index"):
        reshape_advantage(torch.zeros(2), reshaping="entropy")
    with pytest.raises(ValueError, match="both parts"):
        reshape_advantage(torch.zeros(2), reshaping="clip", positive=torch.zeros(2))
    with pytest.raises(ValueError, match="beta must be > 0"):
        reshape_advantage(torch.zeros(2), reshaping="clip", clip_bound=0.0)
    # rounding noise of a bf16 forward pass reads as zero entropy
    entropy, _ = response_entropy(torch.tensor([[-1e-7, 0.0, 0.0]]), torch.ones(1, 3))
    assert entropy.tolist() == [0.0]
