"""ETTRL's entropy statistics: advantage reshaping (EAR) and the fork points of tree rollouts (ETMR).

ETTRL (Liu et al., 2025, arXiv 2508.11356) changes TTRL in two places; both read token entropies
H_t = -sum_v p(v | o_<t) log p(v | o_<t). Pure torch, vectorised over the batch; imports no verl.

**Entropy-based advantage reshaping** (the paper's Adv-Res, its main EAR strategy). With the
majority-vote GRPO advantage A_i of response o_i and its mean token entropy
H_i = H_resp(o_i) = (1 / |o_i|) sum_t H_t (:func:`response_entropy`), every response of a prompt's
group is rescaled by its entropy relative to the group's mean H_bar = mean_i H_i:

    A_i' = Y_i A_i,   Y_i = 1 + (H_bar - H_i) / H_bar = 2 - H_i / H_bar.

Confident (low-entropy) responses get Y > 1, uncertain ones Y < 1. The paper leaves three cases
open; here (:func:`entropy_advantage_scale`):

* Y is clamped to [0, 2]. Y <= 2 always holds (H_i >= 0); Y < 0 happens when H_i > 2 H_bar and
  would flip the sign of the vote's advantage (a rollout agreeing with the majority pushed down),
  which contradicts the method's stated intent of *suppressing* uncertain responses. Y = 0 is that
  suppression's limit. Y >= 0 also keeps the signs of the per-label parts below.
* H_bar = 0 (every response of the group is deterministic, e.g. greedy decoding): the ratio is
  0 / 0; Y = 1, the value it has whenever all responses of a group have equal entropy.
* A response without any token (empty, or a padding row) has no entropy: it is left out of H_bar
  and gets Y = 1 (its advantage touches no token anyway). A singleton group has H_bar = H_i: Y = 1.

**Advantage clipping** (the paper's Adv-Clip, EAR's alternative strategy, compared with Adv-Res
in its Table 2, never combined with it): A_i' = clip(A_i, -beta, beta) with beta = 2.

Both are a non-negative per-rollout scale s_i (Y_i, or clip(A_i, -beta, beta) / A_i and 1 when
A_i = 0). RESTRAIN's per-label loss needs the advantage split by sign, A_i = P_i + N_i with P >= 0
and N <= 0 (:func:`verl_restrain.advantage.restrain_step`); scaling every candidate label's
advantage A_ij by s_i >= 0 keeps each sign, so the parts become s_i P_i >= 0 and s_i N_i <= 0
(:func:`reshape_advantage`). With TTRL's one-hot majority label at most one part is non-zero and
the clipped parts are exactly clip(P) and clip(N).

**Fork points** (ETMR): a tree branches at the N highest-entropy positions of its first response
(:func:`fork_positions`). An inference server returns only the top-k log-probs of each position;
:func:`top_logprob_entropy` turns them into an entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "RESHAPINGS",
    "CLIP_BOUND",
    "NEGATIVE_ENTROPY_TOLERANCE",
    "ReshapedAdvantage",
    "response_entropy",
    "entropy_advantage_scale",
    "clip_advantage_scale",
    "reshape_advantage",
    "top_logprob_entropy",
    "fork_positions",
]

RESHAPINGS = ("entropy", "clip")
"""``entropy``: the paper's Adv-Res (A' = Y A); ``clip``: its Adv-Clip (A' = clip(A, -beta, beta))."""
CLIP_BOUND = 2.0
"""beta of Adv-Clip, the paper's value."""
NEGATIVE_ENTROPY_TOLERANCE = 1e-3
"""Token entropies down to -tolerance are rounding noise of a bf16 forward pass and read as 0; below
it the input is not an entropy (log-probabilities passed by mistake) and is refused."""


def _dense_groups(group_index: torch.Tensor) -> tuple[torch.Tensor, int]:
    _, group = torch.unique(group_index.long(), return_inverse=True)  # (N,)
    return group, (int(group.max()) + 1 if group.numel() else 0)


def response_entropy(token_entropy: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean token entropy H_i = sum_t m_it H_it / sum_t m_it of every response.

    Args:
        token_entropy: (N, T) per-token entropies (verl's ``entropy`` field of the old-log-prob
            pass, padded). Values on masked-out tokens are ignored, NaN included.
        response_mask: (N, T), non-zero on the response's tokens.

    Returns:
        ``(entropy, has_tokens)``: (N,) float64 H_i (0 for a row without tokens) and (N,) bool.
    """
    if token_entropy.dim() != 2 or token_entropy.shape != response_mask.shape:
        raise ValueError(
            f"token_entropy and response_mask must both be (N, T), got {tuple(token_entropy.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    mask = response_mask != 0  # (N, T)
    values = token_entropy.double()
    if not bool(torch.isfinite(values[mask]).all()):
        raise ValueError("token_entropy has NaN or inf on response tokens")
    if mask.any() and float(values[mask].min()) < -NEGATIVE_ENTROPY_TOLERANCE:
        raise ValueError(
            f"token_entropy has values below -{NEGATIVE_ENTROPY_TOLERANCE} on response tokens; an entropy is "
            f">= 0 (were log-probabilities passed instead of verl's 'entropy' field?)"
        )
    values = torch.where(mask, values.clamp(min=0.0), 0.0)  # (N, T)
    count = mask.sum(dim=1)  # (N,)
    has_tokens = count > 0
    return values.sum(dim=1) / count.clamp(min=1).double(), has_tokens


def entropy_advantage_scale(
    entropy: torch.Tensor, group_index: torch.Tensor, has_tokens: torch.Tensor | None = None
) -> torch.Tensor:
    """Adv-Res factor Y_i = clamp(2 - H_i / H_bar, 0, 2), H_bar the mean H over the response's group.

    Args:
        entropy: (N,) H_i >= 0, the mean token entropy of each response (:func:`response_entropy`).
        group_index: (N,) int; responses of one prompt share a value (rows need not be contiguous).
        has_tokens: (N,) bool; False rows are left out of H_bar and get Y = 1. None: all True.

    Returns:
        (N,) float64 Y in [0, 2]; 1 in groups with H_bar = 0 and for rows without tokens (module
        docstring).
    """
    if entropy.dim() != 1 or entropy.shape != group_index.shape:
        raise ValueError(
            f"entropy and group_index must be 1-D of one length, got {tuple(entropy.shape)} "
            f"and {tuple(group_index.shape)}"
        )
    if group_index.is_floating_point():
        raise ValueError("group_index must be an integer tensor")
    if has_tokens is None:
        has_tokens = torch.ones_like(entropy, dtype=torch.bool)
    elif has_tokens.shape != entropy.shape:
        raise ValueError(f"has_tokens must have shape {tuple(entropy.shape)}, got {tuple(has_tokens.shape)}")
    entropy = entropy.double()
    if not bool(torch.isfinite(entropy[has_tokens]).all()) or bool((entropy[has_tokens] < 0).any()):
        raise ValueError("entropy must be finite and >= 0 on rows with tokens")
    group, num_groups = _dense_groups(group_index)
    counted = has_tokens.double()  # (N,)
    total = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, torch.where(has_tokens, entropy, 0.0))
    size = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, counted)
    mean = (total / size.clamp(min=1.0))[group]  # (N,) H_bar of each row's group
    defined = has_tokens & (mean > 0)
    ratio = torch.where(defined, entropy / torch.where(defined, mean, 1.0), 1.0)  # (N,) H_i / H_bar
    return (2.0 - ratio).clamp(0.0, 2.0)


def clip_advantage_scale(advantage: torch.Tensor, bound: float = CLIP_BOUND) -> torch.Tensor:
    """Adv-Clip as a factor: c_i = clip(A_i, -beta, beta) / A_i, and 1 where A_i = 0.

    Args:
        advantage: (N,) A_i.
        bound: beta > 0.

    Returns:
        (N,) float64 in (0, 1]; c_i A_i = clip(A_i, -beta, beta).
    """
    if not bound > 0:
        raise ValueError(f"the clip bound beta must be > 0, got {bound}")
    advantage = advantage.double()
    if not bool(torch.isfinite(advantage).all()):
        raise ValueError("advantage must be finite")
    magnitude = advantage.abs()
    return torch.where(magnitude > bound, bound / torch.where(magnitude > bound, magnitude, 1.0), 1.0)


@dataclass(frozen=True)
class ReshapedAdvantage:
    """The reshaped advantage of N rollouts and the scale that produced it.

    ``advantage`` is computed from the input advantage directly (exactly clip(A, -beta, beta) for
    ``clip``); ``positive + negative`` equals it up to float32 rounding.
    """

    scale: torch.Tensor  # (N,) float64 s_i >= 0 (Y_i or c_i)
    advantage: torch.Tensor  # (N,) float32 A'
    positive: torch.Tensor | None  # (N,) float32 s_i P_i >= 0, None when no parts were given
    negative: torch.Tensor | None  # (N,) float32 s_i N_i <= 0, None when no parts were given
    entropy: torch.Tensor | None  # (N,) float64 H_i for ``entropy``, else None


def reshape_advantage(
    advantage: torch.Tensor,
    group_index: torch.Tensor | None = None,
    *,
    reshaping: str,
    positive: torch.Tensor | None = None,
    negative: torch.Tensor | None = None,
    token_entropy: torch.Tensor | None = None,
    response_mask: torch.Tensor | None = None,
    clip_bound: float = CLIP_BOUND,
) -> ReshapedAdvantage:
    """ETTRL's EAR applied to per-rollout advantages and, when given, their parts P >= 0, N <= 0.

    Args:
        advantage: (N,) A_i, one per rollout (e.g. ``RestrainStep.advantage``).
        group_index: (N,) int prompt of each rollout; required for ``entropy``.
        reshaping: ``entropy`` (A' = Y A, :func:`entropy_advantage_scale`) or ``clip``
            (A' = clip(A, -beta, beta), :func:`clip_advantage_scale`).
        positive, negative: (N,) the parts of ``advantage`` (``RestrainStep.positive/negative``);
            both or neither.
        token_entropy, response_mask: (N, T) per-token entropies and the response mask of each
            rollout; required for ``entropy``.
        clip_bound: beta of ``clip``.

    Returns:
        The :class:`ReshapedAdvantage`; every output is the input times the same s_i >= 0.
    """
    if advantage.dim() != 1:
        raise ValueError(f"advantage must be 1-D (one value per rollout), got shape {tuple(advantage.shape)}")
    if (positive is None) != (negative is None):
        raise ValueError("give both parts (positive and negative) or neither")
    for name, part in (("positive", positive), ("negative", negative)):
        if part is not None and part.shape != advantage.shape:
            raise ValueError(f"{name} must have shape {tuple(advantage.shape)}, got {tuple(part.shape)}")

    entropy = None
    if reshaping == "entropy":
        if group_index is None or token_entropy is None or response_mask is None:
            raise ValueError("reshaping='entropy' needs group_index, token_entropy and response_mask")
        if token_entropy.shape[0] != advantage.shape[0]:
            raise ValueError(
                f"token_entropy has {token_entropy.shape[0]} rows for {advantage.shape[0]} advantages"
            )
        entropy, has_tokens = response_entropy(token_entropy, response_mask)
        scale = entropy_advantage_scale(entropy, group_index, has_tokens)
        reshaped = advantage.double() * scale
    elif reshaping == "clip":
        scale = clip_advantage_scale(advantage, clip_bound)
        reshaped = advantage.double().clamp(-clip_bound, clip_bound)
    else:
        raise ValueError(f"unknown reshaping {reshaping!r}; expected one of {RESHAPINGS}")

    def scaled(part: torch.Tensor | None) -> torch.Tensor | None:
        return None if part is None else (part.double() * scale).float()

    return ReshapedAdvantage(
        scale=scale,
        advantage=reshaped.float(),
        positive=scaled(positive),
        negative=scaled(negative),
        entropy=entropy,
    )


def top_logprob_entropy(top_logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy of next-token distributions known only through their top-k log-probabilities.

    With p_1..p_k the top-k probabilities and r = max(0, 1 - sum_v p_v) the mass of the rest,

        H_k = -sum_v p_v log p_v - r log r,

    the entropy of the distribution with the rest merged into one outcome. H_k <= H (merging
    outcomes never raises entropy) and H_k = H when the rest is empty or a single token; it is the
    largest lower bound the top-k determine.

    Args:
        top_logprobs: (..., k) log-probabilities; -inf or NaN mark missing entries.

    Returns:
        (...) float64 H_k >= 0.
    """
    logp = top_logprobs.double()
    present = torch.isfinite(logp)
    p = torch.where(present, logp.exp(), 0.0)
    top_term = -(p * torch.where(present, logp, 0.0)).sum(dim=-1)
    rest = (1.0 - p.sum(dim=-1)).clamp(min=0.0)
    rest_term = -torch.special.xlogy(rest, rest)
    return (top_term + rest_term).clamp(min=0.0)


def fork_positions(token_entropy: torch.Tensor, num_forks: int) -> torch.Tensor:
    """The ``num_forks`` highest-entropy positions of one response, highest first.

    Args:
        token_entropy: (T,) entropy of each token; NaN marks a position that cannot be a fork
            point (no entropy known).
        num_forks: N >= 0.

    Returns:
        (min(N, #known),) int64 distinct positions by decreasing entropy; ties go to the earlier
        position.
    """
    if token_entropy.dim() != 1:
        raise ValueError(f"token_entropy must be 1-D (one response), got shape {tuple(token_entropy.shape)}")
    if num_forks < 0:
        raise ValueError(f"num_forks must be >= 0, got {num_forks}")
    known = torch.nonzero(~torch.isnan(token_entropy)).squeeze(1)  # (K,) in increasing position
    order = torch.sort(token_entropy[known].double(), descending=True, stable=True).indices
    return known[order[:num_forks]]
