"""RESTRAIN advantages: pseudo-label weighting, negative rollout penalization, prompt weighting.

Pure torch, vectorised over the whole batch (no Python loop over prompts or answers); imports no
verl, so it can be read, tested and reused alone. The verl adapter lives in
``verl_restrain.adapters.estimator``.

Notation for one prompt x (a *group* of n rollouts, rows need not be contiguous):

* a_j, c_j: the distinct valid answers (clusters) and their counts; f_j = c_j / n. Rollouts without
  a valid answer (``answer_id == -1``) count in n but belong to no cluster.
* g(f) = exp(-(f - center)^2 / (2 sigma^2)), the shaping function (:func:`shaping`).
* w_j: pseudo-label weight of cluster j (:func:`pseudo_label_weights`):
  ``gaussian`` w_j = g(f_j) / sum_l g(f_l); ``uniform`` w_j = 1 / m over the m clusters;
  ``majority`` one-hot on the majority cluster. Majority ties go to the cluster with the smallest
  answer id; :func:`verl_restrain.answers.cluster_extracted` numbers clusters in order of first
  appearance, so that is the tied answer sampled first (as TTRL's ``Counter.most_common``).
* r_ij = 1[answer_i = a_j]; A_ij = (r_ij - mean_i r_ij) / (std_i r_ij + epsilon), with the unbiased
  std (Bessel's correction, as ``torch.std`` in verl's GRPO). With ``norm_adv_by_std=False``,
  A_ij = r_ij - mean_i r_ij (Dr. GRPO). Singleton groups follow verl's GRPO convention: mean 0 and
  std 1, so A_ij = r_ij / (1 + epsilon).
* M = max_j c_j (0 when no answer is valid). If M >= kappa the rollout's advantage is
  u * sum_j w_j A_ij, otherwise every rollout of the group gets -u * delta. ``kappa = 0`` disables
  the penalization. u is the prompt weight u_x (:func:`prompt_weight`), 1 when not given.

Because r_ij is one-hot in j, the weighted sum collapses to a per-cluster term minus a per-group term:

    sum_j w_j A_ij = b_{c(i)} - sum_j b_j mean_j,   b_j = w_j / (std_j + epsilon),

with mean_j = c_j / n and std_j = sqrt(c_j (n - c_j) / (n (n - 1))) in closed form, which is what
the vectorised code computes. A unanimous group has a single cluster with std 0 and mean 1, hence
b - b * 1 = 0 exactly: it gets zero advantage.

The paper clips PPO inside each label's loss. A rollout's own cluster is its only label with
A_ij >= 0, so the per-label sum splits by sign into two parts (:func:`restrain_step`):

    P_i = u * b_{c(i)} (1 - mean_{c(i)}) >= 0 (0 without an answer),   N_i = -u * sum_{j != c(i)} b_j mean_j <= 0,

with P = 0 and N = -u * delta in a penalised group, and P + N the advantage above.
:mod:`verl_restrain.loss` turns (P, N) into the per-label PPO loss.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from verl_restrain.methods import WEIGHTINGS
from verl_restrain.votes import Votes, count_votes

__all__ = [
    "Votes",
    "count_votes",
    "shaping",
    "pseudo_label_weights",
    "prompt_weight",
    "fixed_label_answer_ids",
    "RestrainStep",
    "restrain_step",
    "compute_restrain_advantage",
    "compute_restrain_advantage_parts",
    "broadcast_to_tokens",
]


def _check_shape_params(sigma: float, center: float) -> None:
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not 0.0 <= center <= 1.0:
        raise ValueError(f"center must be in [0, 1], got {center}")


def _log_shaping(f: torch.Tensor, sigma: float, center: float) -> torch.Tensor:
    return -((f - center) ** 2) / (2.0 * sigma**2)


def shaping(f: torch.Tensor | float, sigma: float, center: float) -> torch.Tensor:
    """g(f) = exp(-(f - center)^2 / (2 sigma^2)), elementwise, as float64."""
    _check_shape_params(sigma, center)
    return torch.exp(_log_shaping(torch.as_tensor(f, dtype=torch.float64), sigma, center))


def pseudo_label_weights(
    votes: Votes, weighting: str = "gaussian", sigma: float | None = None, center: float | None = None
) -> torch.Tensor:
    """Normalised pseudo-label weight w_j of every cluster.

    Args:
        votes: from :func:`count_votes`.
        weighting: ``gaussian`` (g(f_j) / sum_l g(f_l)), ``uniform`` (1 / m) or ``majority``
            (one-hot on ``votes.majority_cluster``).
        sigma, center: parameters of g; required for ``gaussian`` only.

    Returns:
        (C,) float64 weights; they sum to 1 over the clusters of every group that has one.
        The gaussian is normalised in log space (max subtracted per group), so a tiny sigma gives
        a one-hot on the clusters closest to ``center`` instead of 0 / 0.
    """
    cluster_group = votes.cluster_group  # (C,)
    num_clusters_total = cluster_group.numel()
    if weighting == "gaussian":
        if sigma is None or center is None:
            raise ValueError("gaussian weighting needs sigma and center")
        _check_shape_params(sigma, center)
        log_g = _log_shaping(votes.frequency, sigma, center)  # (C,)
        group_max = torch.full((votes.num_groups,), -torch.inf, dtype=torch.float64, device=log_g.device)
        group_max.scatter_reduce_(0, cluster_group, log_g, reduce="amax")
        unnormalised = torch.exp(log_g - group_max[cluster_group])  # (C,)
        total = torch.zeros(votes.num_groups, dtype=torch.float64, device=log_g.device)
        total.index_add_(0, cluster_group, unnormalised)
        return unnormalised / total[cluster_group]
    if weighting == "uniform":
        return 1.0 / votes.num_clusters[cluster_group].double()
    if weighting == "majority":
        cluster_ids = torch.arange(num_clusters_total, device=cluster_group.device)
        return (cluster_ids == votes.majority_cluster[cluster_group]).double()
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")


def prompt_weight(
    majority_count: torch.Tensor | int,
    n: torch.Tensor | int,
    sigma: float | None = None,
    center: float | None = None,
) -> torch.Tensor:
    """Prompt-level weight u_x = g(c_ref / n) from the base model's majority count.

    Args:
        majority_count: c_ref, the count of the base model's most common answer over n samples
            (0 when none of its samples had a valid answer).
        n: number of base-model samples.
        sigma, center: parameters of g; default to :mod:`verl_restrain.defaults`.

    Returns:
        float32 tensor with the broadcast shape of the inputs.
    """
    from verl_restrain import defaults

    sigma = defaults.SIGMA if sigma is None else sigma
    center = defaults.CENTER if center is None else center
    majority_count = torch.as_tensor(majority_count, dtype=torch.float64)
    n = torch.as_tensor(n, dtype=torch.float64)
    if bool((n < 1).any()):
        raise ValueError("n must be >= 1")
    if bool(((majority_count < 0) | (majority_count > n)).any()):
        raise ValueError("majority_count must be in [0, n]")
    return shaping(majority_count / n, sigma, center).float()


def fixed_label_answer_ids(matches: torch.Tensor) -> torch.Tensor:
    """Answer ids for a fixed pseudo-label (SRT-offline, gold labels): 0 where a rollout matches it.

    Every other rollout is marked as having no answer, so the label's cluster is the only one and
    ``weighting="majority"`` with ``kappa=0`` reproduces GRPO on the reward 1[answer_i = label].
    """
    return torch.where(matches.bool(), 0, -1).long()


@dataclass(frozen=True)
class RestrainStep:
    """Everything one training step needs from one vote (N rollouts, G groups, C clusters).

    ``advantage`` equals ``positive + negative`` up to float32 rounding (each is rounded from float64
    on its own); exactly when at most one of the two is non-zero, as with one-hot weights.
    """

    votes: Votes
    weights: torch.Tensor  # (C,) float64 w_j
    prompt_weight: torch.Tensor  # (G,) float64 u applied to each group, its rollouts' mean; 1 when none
    penalized: torch.Tensor  # (G,) bool, M < kappa (scaled when rollouts_per_prompt is given)
    advantage: torch.Tensor  # (N,) float32 u * sum_j w_j A_ij, or -u * delta when penalised
    positive: torch.Tensor  # (N,) float32 >= 0, P_i = u * sum_{j: A_ij > 0} w_j A_ij
    negative: torch.Tensor  # (N,) float32 <= 0, N_i = u * sum_{j: A_ij < 0} w_j A_ij; -u * delta when penalised
    reward: torch.Tensor  # (N,) float32 pseudo-label reward w_{c(i)}, 0 without an answer


def _check_step_params(weighting, sigma, center, kappa, delta, rollouts_per_prompt) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    _check_shape_params(sigma, center)
    if kappa < 0:
        raise ValueError(f"kappa must be >= 0, got {kappa}")
    if not delta >= 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    if rollouts_per_prompt is not None and (
        isinstance(rollouts_per_prompt, bool)
        or not isinstance(rollouts_per_prompt, numbers.Integral)
        or rollouts_per_prompt < 1
    ):
        raise ValueError(f"rollouts_per_prompt must be an integer >= 1 or None, got {rollouts_per_prompt!r}")


def _rollout_prompt_weight(
    votes: Votes, prompt_weight: torch.Tensor | None, online: bool, sigma: float, center: float, shape: torch.Size
) -> torch.Tensor | None:
    """(N,) float64 u of each rollout, or None for 1."""
    if online:
        if prompt_weight is not None:
            raise ValueError(
                "prompt_weight and online_prompt_weight=True are exclusive: the online variant computes "
                "u = g(M / n) from this step's own vote; pass prompt_weight=None"
            )
        share = votes.majority_count.double() / votes.group_size.double()  # (G,)
        return torch.exp(_log_shaping(share, sigma, center))[votes.group]
    if prompt_weight is None:
        return None
    if prompt_weight.shape != shape:
        raise ValueError(f"prompt_weight must have shape {tuple(shape)}, got {tuple(prompt_weight.shape)}")
    weight = prompt_weight.double()
    if weight.numel() and not bool((torch.isfinite(weight) & (weight >= 0)).all()):
        raise ValueError("prompt_weight must be finite and >= 0 (u_x = g(c_ref / n) lies in (0, 1])")
    return weight


def restrain_step(
    answer_ids: torch.Tensor,
    group_index: torch.Tensor,
    prompt_weight: torch.Tensor | None = None,
    *,
    weighting: str,
    sigma: float,
    center: float,
    kappa: int,
    delta: float,
    norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
    rollouts_per_prompt: int | None = None,
    online_prompt_weight: bool = False,
) -> RestrainStep:
    """One vote: the advantage of every rollout, its two parts P and N, and the pseudo-label reward.

    Formulas in the module docstring; the computation is vectorised over the batch.

    Args:
        answer_ids: (N,) int64; equal ids inside one group = same answer; -1 = no valid answer.
        group_index: (N,) int64; rollouts of one prompt share a value; rows need not be contiguous.
        prompt_weight: (N,) float >= 0, u_x of each rollout's prompt; None means 1.
        weighting: ``gaussian``, ``uniform`` or ``majority`` (ties: smallest answer id).
        sigma, center: parameters of the shaping function g (``gaussian`` and the online u).
        kappa: a group whose majority count M is below kappa is penalised; 0 disables it.
        delta: the (positive) penalty; penalised rollouts get advantage -u * delta.
        norm_adv_by_std: divide by the unbiased group std + epsilon (GRPO) or not (Dr. GRPO).
        epsilon: added to the std.
        rollouts_per_prompt: None: a group is penalised when M < kappa. An int n: kappa counts out
            of n rollouts, and a group of n_g rollouts (fewer when some failed) is penalised when
            M * n < kappa * n_g, keeping the share threshold kappa / n. The vote shares f_j = c_j / n_g
            always use the group's actual size.
        online_prompt_weight: u = g(M / n_g) of this step's own vote, per group (the paper's online
            variant, Appendix E) instead of ``prompt_weight``, which must then be None.

    Returns:
        The :class:`RestrainStep`.
    """
    _check_step_params(weighting, sigma, center, kappa, delta, rollouts_per_prompt)
    votes = count_votes(answer_ids, group_index)
    row_weight = _rollout_prompt_weight(votes, prompt_weight, online_prompt_weight, sigma, center, answer_ids.shape)

    weights = pseudo_label_weights(votes, weighting, sigma, center)  # (C,)
    n = votes.group_size[votes.cluster_group].double()  # (C,)
    count = votes.cluster_count.double()  # (C,)
    singleton = n == 1
    # verl's GRPO convention for a group of one: mean 0, std 1.
    mean = torch.where(singleton, 0.0, count / n)  # (C,)
    if norm_adv_by_std:
        std = torch.where(singleton, 1.0, torch.sqrt(count * (n - count) / (n * (n - 1.0)).clamp(min=1.0)))
        scale = weights / (std + epsilon)  # (C,) b_j
    else:
        scale = weights
    scaled_mean = scale * mean  # (C,) b_j mean_j
    group_term = torch.zeros(votes.num_groups, dtype=torch.float64, device=weights.device)
    group_term.index_add_(0, votes.cluster_group, scaled_mean)  # (G,) sum_j b_j mean_j

    own_term = _per_rollout(scale, votes)  # (N,) b_{c(i)}, 0 without an answer
    own_mean_term = _per_rollout(scaled_mean, votes)  # (N,) b_{c(i)} mean_{c(i)}
    rollout_group_term = group_term[votes.group]  # (N,)
    advantage = own_term - rollout_group_term
    # The signs hold in floating point too: b * mean <= b as mean <= 1, and a sum of non-negative
    # terms is never below one of them.
    positive = own_term - own_mean_term  # (N,) >= 0
    negative = own_mean_term - rollout_group_term  # (N,) <= 0

    if rollouts_per_prompt is None:
        penalized = votes.majority_count < kappa  # (G,)
    else:
        penalized = votes.majority_count * rollouts_per_prompt < kappa * votes.group_size
    penalized_rollout = penalized[votes.group]  # (N,)
    advantage = torch.where(penalized_rollout, -float(delta), advantage)
    positive = torch.where(penalized_rollout, 0.0, positive)
    negative = torch.where(penalized_rollout, -float(delta), negative)

    group_weight = torch.ones(votes.num_groups, dtype=torch.float64, device=weights.device)  # (G,)
    if row_weight is not None:
        advantage, positive, negative = advantage * row_weight, positive * row_weight, negative * row_weight
        group_weight = torch.zeros_like(group_weight).index_add_(0, votes.group, row_weight)
        group_weight = group_weight / votes.group_size.double()

    return RestrainStep(
        votes=votes,
        weights=weights,
        prompt_weight=group_weight,
        penalized=penalized,
        advantage=advantage.float(),
        positive=positive.float(),
        negative=negative.float(),
        reward=_per_rollout(weights, votes).float(),
    )


def _per_rollout(per_cluster: torch.Tensor, votes: Votes) -> torch.Tensor:
    """(C,) values -> (N,) the value of each rollout's cluster, 0 for a rollout without an answer."""
    # A trailing zero makes cluster id -1 (no answer) index a term of 0.
    return torch.cat([per_cluster, per_cluster.new_zeros(1)])[votes.cluster]


def compute_restrain_advantage(
    answer_ids: torch.Tensor,
    group_index: torch.Tensor,
    prompt_weight: torch.Tensor | None = None,
    *,
    weighting: str = "gaussian",
    sigma: float,
    center: float,
    kappa: int,
    delta: float,
    norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
    rollouts_per_prompt: int | None = None,
    online_prompt_weight: bool = False,
) -> torch.Tensor:
    """(N,) float32 RESTRAIN advantage of every rollout: ``restrain_step(...).advantage``.

    Arguments as :func:`restrain_step` (formulas in the module docstring).
    """
    return restrain_step(
        answer_ids, group_index, prompt_weight, weighting=weighting, sigma=sigma, center=center, kappa=kappa,
        delta=delta, norm_adv_by_std=norm_adv_by_std, epsilon=epsilon, rollouts_per_prompt=rollouts_per_prompt,
        online_prompt_weight=online_prompt_weight,
    ).advantage


def compute_restrain_advantage_parts(
    answer_ids: torch.Tensor,
    group_index: torch.Tensor,
    prompt_weight: torch.Tensor | None = None,
    *,
    weighting: str,
    sigma: float,
    center: float,
    kappa: int,
    delta: float,
    norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
    rollouts_per_prompt: int | None = None,
    online_prompt_weight: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative), both (N,) float32: the parts of :func:`restrain_step`.

    positive >= 0, negative <= 0, and positive + negative == :func:`compute_restrain_advantage` with the
    same arguments (up to float32 rounding).
    """
    step = restrain_step(
        answer_ids, group_index, prompt_weight, weighting=weighting, sigma=sigma, center=center, kappa=kappa,
        delta=delta, norm_adv_by_std=norm_adv_by_std, epsilon=epsilon, rollouts_per_prompt=rollouts_per_prompt,
        online_prompt_weight=online_prompt_weight,
    )
    return step.positive, step.negative


def broadcast_to_tokens(advantage: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(N,) per-rollout advantage -> (N, T) token-level advantage, zero on masked tokens."""
    return advantage.unsqueeze(-1) * response_mask
