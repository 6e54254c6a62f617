"""The paper's RESTRAIN policy loss: the PPO clip inside each candidate label's loss (pure torch, no verl).

The paper's objective for one prompt x is u_x sum_j w_j L~_GRPO(x, a_j), each label's GRPO loss with
its own PPO clip. With the importance ratio rho = exp(log_prob - old_log_prob) of a token, verl's
token loss (``compute_policy_loss_vanilla``, clip range [1 - eps_low, 1 + eps_high], dual clip c) is

    l(rho, A) = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high))            for A >= 0,
    l(rho, A) = min(-A c, max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high)))   for A < 0,

that is l(rho, A) = -A min(rho, 1 + eps_high) for A >= 0 and l(rho, A) = -A clamp(rho, 1 - eps_low, c)
for A < 0: positively homogeneous in A within each sign. A rollout's advantage under label a_j,
A~_ij, is >= 0 only for its own cluster, so the per-label sum of one rollout collapses to two terms,

    sum_j u w_j l(rho, A~_ij) = l(rho, P_i) + l(rho, N_i),

with the parts P_i >= 0 and N_i <= 0 of :func:`verl_restrain.advantage.restrain_step`. The loss is
therefore one elementwise pass, whatever the number of labels, followed by one aggregation
(:func:`aggregate_loss`, verl's ``agg_loss`` semantics; aggregation is linear, so aggregating the
summed token loss equals summing the per-label aggregated losses). ``log_prob - old_log_prob`` is
clamped to [-20, 20] before ``exp``, as verl does. With one-hot weights (TTRL, SRT) one part is zero
and the loss is verl's vanilla loss on P + N; with every ratio inside the clip range it is verl's
vanilla loss on P + N for any weights.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["LOSS_AGG_MODES", "LOG_RATIO_LIMIT", "aggregate_loss", "restrain_policy_loss"]

LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean")
LOG_RATIO_LIMIT = 20.0
"""|log_prob - old_log_prob| is clamped to this before ``exp`` (verl's vanilla loss does the same)."""


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where() first, so that NaN or inf on masked tokens cannot reach the sum.
    return (torch.where(mask.bool(), values, 0.0) * mask).sum()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _masked_sum(values, mask) / (mask.sum() + 1e-8)


def aggregate_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    *,
    dp_size: int = 1,
    batch_num_tokens: int | torch.Tensor | None = None,
    global_batch_size: int | torch.Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> torch.Tensor:
    """Aggregate a (B, T) token loss to a scalar with the semantics of verl 0.9.1's ``agg_loss``.

    With m_bt the mask, S the sequences with at least one unmasked token and D = ``dp_size``:

    * ``token-mean``: D * sum_bt m_bt l_bt / K, K = ``batch_num_tokens`` (the global batch's tokens;
      sum_bt m_bt when None, allowed only for D = 1);
    * ``token-sum``: D * sum_bt m_bt l_bt;
    * ``seq-mean-token-sum``: D * sum_{b in S} (sum_t m_bt l_bt) / Q, Q = ``global_batch_size`` (|S|
      when None, allowed only for D = 1); ``seq-mean-token-sum-norm`` divides that further by
      ``loss_scale_factor`` (T when None);
    * ``seq-mean-token-mean``: D * sum_{b in S} (sum_t m_bt l_bt / (sum_t m_bt + 1e-8)) / Q.

    Args:
        loss_mat: (B, T) token loss.
        loss_mask: (B, T) bool or float mask of the tokens that count.
        loss_agg_mode: one of :data:`LOSS_AGG_MODES`.
        dp_size, batch_num_tokens, global_batch_size, loss_scale_factor: verl's global-batch
            normalisation (the keys of its ``ActorConfig.global_batch_info``), so that the gradients
            summed over micro-batches and averaged over data-parallel ranks are the global batch's.
    """
    if loss_agg_mode == "token-mean":
        if batch_num_tokens is None:
            if dp_size > 1:
                raise ValueError("token-mean needs the global batch_num_tokens when dp_size > 1")
            batch_num_tokens = loss_mask.sum()
        return _masked_sum(loss_mat, loss_mask) / batch_num_tokens * dp_size
    if loss_agg_mode == "token-sum":
        return _masked_sum(loss_mat, loss_mask) * dp_size
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"):
        token_count = loss_mask.sum(dim=-1)  # (B,)
        seq_loss = (loss_mat * loss_mask).sum(dim=-1)  # (B,)
        if loss_agg_mode == "seq-mean-token-mean":
            seq_loss = seq_loss / (token_count + 1e-8)
        seq_mask = (token_count > 0).float()  # (B,) fully masked sequences do not count
        if global_batch_size is None:
            if dp_size > 1:
                raise ValueError(f"{loss_agg_mode} needs the global_batch_size when dp_size > 1")
            global_batch_size = seq_mask.sum()
        loss = _masked_sum(seq_loss, seq_mask) / global_batch_size * dp_size
        if loss_agg_mode == "seq-mean-token-sum-norm":
            loss = loss / (loss_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)
        return loss
    raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}; expected one of {LOSS_AGG_MODES}")


def restrain_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    positive_advantages: torch.Tensor,
    negative_advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    rollout_is_weights: torch.Tensor | None = None,
    dp_size: int = 1,
    batch_num_tokens: int | torch.Tensor | None = None,
    global_batch_size: int | torch.Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The per-label clipped policy-gradient loss, aggregated over the batch (module docstring).

    Token loss, with rho = exp(clamp(log_prob - old_log_prob, -20, 20)), P >= 0 and N <= 0:

        l_bt = -P_bt min(rho_bt, 1 + eps_high) - N_bt clamp(rho_bt, 1 - eps_low, c),

    times ``rollout_is_weights`` when given (as verl's vanilla loss applies them), then
    :func:`aggregate_loss`. A part's clip zeroes that part's gradient only: a positive part once
    rho > 1 + eps_high, a negative part once rho < 1 - eps_low or, the dual clip, rho > c.

    Args:
        old_log_prob, log_prob: (B, T) log-probabilities under the behaviour and the current policy.
        positive_advantages: (B, T) P >= 0 per token (the rollout's P broadcast over its response).
        negative_advantages: (B, T) N <= 0 per token. The signs are a precondition, not checked (a
            check would cost a device synchronisation per micro-batch).
        response_mask: (B, T) bool or float mask of response tokens.
        clip_ratio_low, clip_ratio_high: eps_low and eps_high (verl's ``actor.clip_ratio_low/high``).
        clip_ratio_c: the dual-clip bound c > 1 on rho for a negative part (verl's ``clip_ratio_c``).
        loss_agg_mode: one of :data:`LOSS_AGG_MODES`.
        rollout_is_weights: (B, T) rollout-correction importance weights, or None.
        dp_size, batch_num_tokens, global_batch_size, loss_scale_factor: verl's global-batch
            normalisation; pass ``**actor_config.global_batch_info``.

    Returns:
        (loss, metrics). The metrics are floats, each a mean over the unmasked tokens:
        ``actor/pg_clipfrac`` tokens on which either part is clipped (verl's ``pg_clipfrac`` when a
        part is zero), ``actor/pg_clipfrac_lower`` tokens whose negative part is dual-clipped,
        ``actor/ppo_kl`` the mean of old_log_prob - log_prob after the clamp (verl's three names), and
        ``actor/pg_clipfrac_positive`` / ``actor/pg_clipfrac_negative`` tokens on which the
        positive (rho > 1 + eps_high) / negative (rho < 1 - eps_low) part is clipped.
    """
    if not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (the dual-clip bound on the ratio), got {clip_ratio_c}")
    upper = 1.0 + clip_ratio_high
    lower = 1.0 - clip_ratio_low
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-LOG_RATIO_LIMIT, max=LOG_RATIO_LIMIT)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    token_loss = -positive_advantages * torch.clamp(ratio, max=upper) - negative_advantages * torch.clamp(
        ratio, min=lower, max=clip_ratio_c
    )  # (B, T)
    if rollout_is_weights is not None:
        token_loss = token_loss * rollout_is_weights
    loss = aggregate_loss(
        token_loss,
        response_mask,
        loss_agg_mode,
        dp_size=dp_size,
        batch_num_tokens=batch_num_tokens,
        global_batch_size=global_batch_size,
        loss_scale_factor=loss_scale_factor,
    )

    with torch.no_grad():
        ratio = ratio.detach()
        negative = negative_advantages < 0  # (B, T)
        clipped_positive = (positive_advantages > 0) & (ratio > upper)
        clipped_negative = negative & (ratio < lower)
        metrics = {
            "actor/pg_clipfrac": _masked_mean(clipped_positive | clipped_negative, response_mask).item(),
            "actor/ppo_kl": _masked_mean(-log_ratio.detach(), response_mask).item(),
            "actor/pg_clipfrac_lower": _masked_mean(negative & (ratio > clip_ratio_c), response_mask).item(),
            "actor/pg_clipfrac_positive": _masked_mean(clipped_positive, response_mask).item(),
            "actor/pg_clipfrac_negative": _masked_mean(clipped_negative, response_mask).item(),
        }
    return loss, metrics
