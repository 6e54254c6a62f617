"""The per-label RESTRAIN policy loss against the paper's formula looped over labels and against verl's own loss."""

import importlib.util
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from label_reference import label_terms, random_batch
from verl_restrain.advantage import (
    broadcast_to_tokens,
    compute_restrain_advantage,
    compute_restrain_advantage_parts,
    fixed_label_answer_ids,
)
from verl_restrain.loss import LOSS_AGG_MODES, aggregate_loss, restrain_policy_loss

CLIP = dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
NO_BATCH_INFO = dict(dp_size=1, batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None)


def ppo_token_loss(ratio, advantage, clip_ratio_low, clip_ratio_high, clip_ratio_c):
    """-min(rho A, clip(rho) A) as the paper writes it, with verl's dual clip bounding it by -c A for A < 0."""
    clipped = torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    loss = -torch.minimum(ratio * advantage, clipped * advantage)
    return torch.where(advantage < 0, torch.minimum(loss, -advantage * clip_ratio_c), loss)


def paper_loss(terms, old_log_prob, log_prob, mask, loss_agg_mode, batch_info, rollout_is_weights=None):
    """sum over prompts x and labels a_j of u_x w_j L~_GRPO(x, a_j): one clipped loss per label, then summed.

    Each label's loss is aggregated over the whole micro-batch with verl's own ``agg_loss``.
    """
    from verl.trainer.ppo.core_algos import agg_loss

    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, -20.0, 20.0))
    total = torch.zeros((), dtype=log_prob.dtype)
    for weight, advantages in terms:
        rows = list(advantages)
        label_advantage = torch.zeros(log_prob.shape[0], 1, dtype=log_prob.dtype)
        prompt_weight = torch.zeros(log_prob.shape[0], 1, dtype=log_prob.dtype)
        label_advantage[rows, 0] = torch.tensor([advantages[i][1] for i in rows], dtype=log_prob.dtype)
        prompt_weight[rows, 0] = torch.tensor([advantages[i][0] for i in rows], dtype=log_prob.dtype)
        token_loss = prompt_weight * weight * ppo_token_loss(ratio, label_advantage.expand_as(ratio), **CLIP)
        if rollout_is_weights is not None:
            token_loss = token_loss * rollout_is_weights
        total = total + agg_loss(token_loss, mask, loss_agg_mode, **batch_info)
    return total


def verl_vanilla(old_log_prob, log_prob, advantages, mask, loss_agg_mode, batch_info, rollout_is_weights=None):
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    config = OmegaConf.create(dict(clip_ratio=CLIP["clip_ratio_low"], **CLIP, global_batch_info=batch_info))
    return compute_policy_loss_vanilla(
        old_log_prob, log_prob, advantages, mask, loss_agg_mode, config, rollout_is_weights=rollout_is_weights
    )


def random_tokens(rng, num_rows, *, inside_only=False, dtype=torch.float64):
    """(old_log_prob, log_prob, mask): log-ratios inside the clip range, beyond it, and beyond verl's +-20 clamp."""
    length = int(rng.integers(1, 7))
    lengths = rng.integers(0, length + 1, size=num_rows)  # some responses fully masked
    lengths[0] = length  # but not all: verl's means divide by the unmasked count
    mask = torch.from_numpy(np.arange(length)[None, :] < lengths[:, None])
    old = torch.from_numpy(-rng.random((num_rows, length)) * 4).to(dtype)
    small = rng.uniform(-0.2, 0.2, (num_rows, length))  # ratio in [0.82, 1.22]: inside [0.8, 1.28]
    if inside_only:
        log_ratio = small
    else:
        sign = rng.choice([-1.0, 1.0], (num_rows, length))
        outside = sign * rng.uniform(0.3, 2.0, (num_rows, length))  # clipped; above c = 3 from 1.1 on
        far = sign * rng.uniform(20.5, 30.0, (num_rows, length))  # beyond the clamp of the log-ratio
        kind = rng.integers(0, 3, (num_rows, length))
        log_ratio = np.choose(kind, [small, outside, far])
    log_prob = (old + torch.from_numpy(log_ratio).to(dtype)).requires_grad_()
    return old, log_prob, mask


def batch_info_for(trial, mask):
    """verl's global-batch normalisation as its actor sets it, for a micro-batch of a larger batch on 2 ranks."""
    if trial % 2 == 0:
        return dict(NO_BATCH_INFO)
    return dict(dp_size=2, batch_num_tokens=int(mask.sum()) * 3 + 1, global_batch_size=mask.shape[0] * 3 + 1,
                loss_scale_factor=[None, 7.0][trial // 2 % 2])


# --------------------------------------------------------------------------------------------
# The paper's formula, label by label.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["gaussian", "uniform", "majority"])
@pytest.mark.parametrize("kappa,delta", [(0, 0.0), (3, 0.5), (5, 1.25)])
@pytest.mark.parametrize("norm_adv_by_std", [True, False])
@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
def test_loss_on_the_parts_equals_the_per_label_reference(weighting, kappa, delta, norm_adv_by_std, loss_agg_mode):
    rng = np.random.default_rng(zlib.crc32(f"{weighting}-{kappa}-{norm_adv_by_std}-{loss_agg_mode}".encode()))
    for trial in range(4):
        answer_ids, group_index = random_batch(rng, num_groups=int(rng.integers(1, 6)), max_n=8,
                                               invalid_rate=[0.0, 0.3][trial % 2])
        u = torch.rand(answer_ids.numel(), dtype=torch.float64) if trial % 2 else None
        params = dict(weighting=weighting, sigma=[0.4, 0.1][trial % 2], center=1.0, kappa=kappa, delta=delta,
                      norm_adv_by_std=norm_adv_by_std)
        positive, negative = compute_restrain_advantage_parts(answer_ids, group_index, u, **params)
        old, log_prob, mask = random_tokens(rng, answer_ids.numel())
        info = batch_info_for(trial, mask)
        is_weights = torch.from_numpy(rng.uniform(0.5, 2.0, mask.shape)) if trial in (1, 2) else None

        got, metrics = restrain_policy_loss(
            old, log_prob, broadcast_to_tokens(positive.double(), mask), broadcast_to_tokens(negative.double(), mask),
            mask, **CLIP, loss_agg_mode=loss_agg_mode, rollout_is_weights=is_weights, **info,
        )
        (got_grad,) = torch.autograd.grad(got, log_prob)
        want = paper_loss(label_terms(answer_ids, group_index, u, **params), old, log_prob, mask, loss_agg_mode,
                          info, is_weights)
        (want_grad,) = torch.autograd.grad(want, log_prob)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_grad, want_grad, atol=1e-5, rtol=1e-5)
        assert all(0.0 <= metrics[name] <= 1.0 for name in metrics if "clipfrac" in name)


@pytest.mark.parametrize("weighting", ["gaussian", "uniform", "majority"])
@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
def test_inside_the_clip_range_it_is_verls_loss_on_the_combined_advantage(weighting, loss_agg_mode):
    rng = np.random.default_rng(zlib.crc32(f"inside-{weighting}-{loss_agg_mode}".encode()))
    for trial in range(6):
        answer_ids, group_index = random_batch(rng, num_groups=int(rng.integers(1, 6)), max_n=8)
        u = torch.rand(answer_ids.numel()) if trial % 2 else None
        params = dict(weighting=weighting, sigma=0.4, center=1.0, kappa=[0, 3][trial % 2], delta=0.5,
                      norm_adv_by_std=trial % 3 != 0)
        positive, negative = compute_restrain_advantage_parts(answer_ids, group_index, u, **params)
        advantage = compute_restrain_advantage(answer_ids, group_index, u, **params)
        old, log_prob, mask = random_tokens(rng, answer_ids.numel(), inside_only=True, dtype=torch.float32)
        info = batch_info_for(trial, mask)
        got, _ = restrain_policy_loss(old, log_prob, broadcast_to_tokens(positive, mask),
                                      broadcast_to_tokens(negative, mask), mask, **CLIP,
                                      loss_agg_mode=loss_agg_mode, **info)
        want, want_metrics = verl_vanilla(old, log_prob, broadcast_to_tokens(advantage, mask), mask, loss_agg_mode, info)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(torch.autograd.grad(got, log_prob)[0], torch.autograd.grad(want, log_prob)[0],
                                   atol=1e-6, rtol=1e-5)
        assert want_metrics["actor/pg_clipfrac"] == 0.0  # the premise: no ratio is clipped


@pytest.mark.parametrize("method", ["ttrl", "no_pseudo_label_weighting", "srt_offline"])
@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
def test_one_hot_weights_give_verls_vanilla_loss_exactly(method, loss_agg_mode):
    # One-hot weights leave one part zero for every rollout: the per-label loss is verl's own, bit for bit,
    # whatever the ratios, with its clip fractions and KL.
    rng = np.random.default_rng(zlib.crc32(f"one-hot-{method}-{loss_agg_mode}".encode()))
    for trial in range(6):
        answer_ids, group_index = random_batch(rng, num_groups=int(rng.integers(1, 8)), max_n=10)
        if method == "srt_offline":
            answer_ids = fixed_label_answer_ids(answer_ids == answer_ids[0])
        u = torch.rand(answer_ids.numel()) if method == "no_pseudo_label_weighting" else None
        params = dict(weighting="majority", sigma=0.4, center=1.0, delta=0.5,
                      kappa=3 if method == "no_pseudo_label_weighting" else 0)
        positive, negative = compute_restrain_advantage_parts(answer_ids, group_index, u, **params)
        advantage = compute_restrain_advantage(answer_ids, group_index, u, **params)
        old, log_prob, mask = random_tokens(rng, answer_ids.numel(), dtype=torch.float32)
        info = batch_info_for(trial, mask)
        is_weights = torch.from_numpy(rng.uniform(0.5, 2.0, mask.shape)).float() if trial % 3 == 0 else None
        got, metrics = restrain_policy_loss(old, log_prob, broadcast_to_tokens(positive, mask),
                                            broadcast_to_tokens(negative, mask), mask, **CLIP,
                                            loss_agg_mode=loss_agg_mode, rollout_is_weights=is_weights, **info)
        want, want_metrics = verl_vanilla(old, log_prob, broadcast_to_tokens(advantage, mask), mask, loss_agg_mode,
                                          info, is_weights)
        assert torch.equal(got, want)
        assert torch.equal(torch.autograd.grad(got, log_prob)[0], torch.autograd.grad(want, log_prob)[0])
        for name in ("actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl"):
            assert metrics[name] == want_metrics[name], name


# --------------------------------------------------------------------------------------------
# Hand-computed case, gradients, aggregation.
# --------------------------------------------------------------------------------------------
def test_hand_computed_loss_metrics_and_gradient():
    # One response, P = 1 and N = -0.5 on every token, eps_low 0.2, eps_high 0.28, c = 3; the last token masked.
    # l = -P min(rho, 1.28) - N clamp(rho, 0.8, 3):
    #   rho 0.5: -0.5 + 0.5 * 0.8 = -0.1      (N clipped below)
    #   rho 1.0: -1.0 + 0.5 * 1.0 = -0.5
    #   rho 1.5: -1.28 + 0.5 * 1.5 = -0.53    (P clipped above)
    #   rho 4.0: -1.28 + 0.5 * 3 = 0.22       (P clipped above, N dual-clipped)
    # token-mean over 4 tokens: (-0.1 - 0.5 - 0.53 + 0.22) / 4 = -0.2275.
    # d l / d log_prob = rho * dl/drho: -0.5 (P only), -1 + 0.5 = -0.5, 0.5 * 1.5 = 0.75 (N only), 0; / 4.
    # (verl's loss on the combined advantage 0.5 would be -0.5 * (0.5 + 1 + 1.28 + 1.28) / 4 = -0.5075.)
    ratio = torch.tensor([[0.5, 1.0, 1.5, 4.0, 1.1]], dtype=torch.float64)
    log_prob = ratio.log().requires_grad_()
    mask = torch.tensor([[True, True, True, True, False]])
    loss, metrics = restrain_policy_loss(torch.zeros_like(ratio), log_prob, torch.ones_like(ratio),
                                         torch.full_like(ratio, -0.5), mask, **CLIP)
    assert loss.item() == pytest.approx(-0.2275)
    (grad,) = torch.autograd.grad(loss, log_prob)
    torch.testing.assert_close(grad, torch.tensor([[-0.125, -0.125, 0.1875, 0.0, 0.0]], dtype=torch.float64))
    assert metrics["actor/pg_clipfrac_positive"] == pytest.approx(2 / 4)  # rho 1.5, 4.0
    assert metrics["actor/pg_clipfrac_negative"] == pytest.approx(1 / 4)  # rho 0.5
    assert metrics["actor/pg_clipfrac"] == pytest.approx(3 / 4)  # a part clipped on rho 0.5, 1.5, 4.0
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(1 / 4)  # rho 4.0 > c
    # mean of -log rho: -(ln 0.5 + 0 + ln 1.5 + ln 4) / 4 = -ln 3 / 4 = -0.274653
    assert metrics["actor/ppo_kl"] == pytest.approx(-math.log(3) / 4, rel=1e-6)


@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
def test_gradcheck(loss_agg_mode):
    # Ratios away from the kinks at 0.8, 1.28 and c = 3, where the loss is not differentiable.
    torch.manual_seed(0)
    log_ratio = torch.tensor([-0.5, -0.1, 0.1, 0.5, 1.5], dtype=torch.float64)  # rho 0.61, 0.90, 1.11, 1.65, 4.48
    log_ratio = log_ratio[torch.randint(0, 5, (4, 6))]
    old = -torch.rand(4, 6, dtype=torch.float64)
    log_prob = (old + log_ratio).requires_grad_()
    positive = (torch.rand(4, 1, dtype=torch.float64) * (torch.rand(4, 1) < 0.7)).expand(4, 6).clone().requires_grad_()
    negative = (-torch.rand(4, 1, dtype=torch.float64)).expand(4, 6).clone().requires_grad_()
    mask = torch.rand(4, 6) < 0.8
    weights = torch.rand(4, 6, dtype=torch.float64) + 0.5

    def loss(log_prob, old, positive, negative):
        return restrain_policy_loss(old, log_prob, positive, negative, mask, **CLIP, loss_agg_mode=loss_agg_mode,
                                    rollout_is_weights=weights)[0]

    assert torch.autograd.gradcheck(loss, (log_prob, old.requires_grad_(), positive, negative))


@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
@pytest.mark.parametrize(
    "info",
    [
        {},
        NO_BATCH_INFO,
        dict(dp_size=4, batch_num_tokens=123, global_batch_size=17, loss_scale_factor=None),
        dict(dp_size=2, batch_num_tokens=torch.tensor(50), global_batch_size=9, loss_scale_factor=256),
    ],
)
@pytest.mark.parametrize("float_mask", [False, True])
def test_aggregation_equals_verls_agg_loss(loss_agg_mode, info, float_mask):
    from verl.trainer.ppo.core_algos import agg_loss

    generator = torch.Generator().manual_seed(1)
    loss_mat = torch.randn(7, 9, generator=generator)
    mask = torch.rand(7, 9, generator=generator) < 0.6
    mask[2] = False  # a fully masked response
    loss_mat[~mask] = math.nan  # whatever sits on masked tokens; verl's seq modes let NaN through too
    mask = mask.float() if float_mask else mask
    got = aggregate_loss(loss_mat, mask, loss_agg_mode, **info)
    want = agg_loss(loss_mat, mask, loss_agg_mode, **info)
    torch.testing.assert_close(got, want, equal_nan=True)


def test_aggregation_needs_the_global_batch_with_several_ranks():
    loss_mat, mask = torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="batch_num_tokens"):
        aggregate_loss(loss_mat, mask, "token-mean", dp_size=2)
    with pytest.raises(ValueError, match="global_batch_size"):
        aggregate_loss(loss_mat, mask, "seq-mean-token-mean", dp_size=2)
    with pytest.raises(ValueError, match="unknown loss_agg_mode"):
        aggregate_loss(loss_mat, mask, "token-median")


def test_dual_clip_bound_must_exceed_one():
    ones = torch.ones(1, 2)
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        restrain_policy_loss(ones, ones, ones, -ones, ones.bool(), clip_ratio_low=0.2, clip_ratio_high=0.2,
                             clip_ratio_c=1.0)


def test_benchmark_script_runs_at_toy_scale():
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_loss.py"
    spec = importlib.util.spec_from_file_location("bench_loss", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--rows", "8", "--tokens", "16", "--rollouts", "4", "--repeats", "1"])
    assert result["ratio"] > 0 and result["verl_vanilla"] > 0
