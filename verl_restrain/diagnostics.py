"""Per-step RESTRAIN diagnostics from one vote, vectorised over the batch (pure torch, no verl).

For a batch of N rollouts in G prompt groups (n_g rollouts each) with C answer clusters, votes and
pseudo-label weights w_j as in :mod:`verl_restrain.advantage`, read off a
:class:`~verl_restrain.advantage.RestrainStep` (no second vote):

Label-free, logged every step:

* ``majority_ratio``: mean over groups of M / n_g (M = majority count, 0 when no answer is valid).
* ``penalized_fraction``: fraction of penalised groups (the step's rule; 0 when kappa = 0).
* ``num_clusters``: mean over groups of the number of distinct valid answers m.
* ``no_answer_fraction``: fraction of rollouts without a valid answer.
* ``pseudo_label_entropy``: mean over groups of H(w) = -sum_j w_j ln w_j (nats; 0 for a group with
  one cluster or none).
* ``prompt_weight_mean``: mean over groups of u (1 when prompt weighting is off).

Gold diagnostics, only over the groups whose every rollout has a gold label (never used for
training). A cluster is correct when any of its rollouts was graded correct (its members are one
answer, so they grade alike):

* ``pseudo_label_accuracy``: fraction of groups whose majority answer is correct (a group without
  a valid answer counts as wrong).
* ``weighted_label_accuracy``: mean over groups of sum_j w_j 1[a_j = gold].
* ``pass_at_n``: fraction of groups with at least one correct rollout.
* ``gold_accuracy``: fraction of correct rollouts.
* ``reward_accuracy``: fraction of rollouts whose majority-label reward 1[a_i = majority answer]
  (0 without an answer) equals their gold reward 1[a_i = gold] (TTRL's reward accuracy).
"""

from __future__ import annotations

import torch

from verl_restrain.advantage import RestrainStep, Votes, restrain_step

__all__ = ["METRIC_PREFIX", "pseudo_label_reward", "restrain_metrics", "step_metrics"]

METRIC_PREFIX = "restrain/"


def pseudo_label_reward(votes: Votes, weights: torch.Tensor) -> torch.Tensor:
    """(N,) float32 expected pseudo-label reward sum_j w_j 1[a_i = a_j] = w_{c(i)}, 0 without an answer.

    For ``majority`` weighting this is TTRL's reward 1[a_i = majority answer]. ``RestrainStep.reward``.
    """
    padded = torch.cat([weights, weights.new_zeros(1)])  # cluster id -1 indexes the trailing 0
    return padded[votes.cluster].float()


def step_metrics(
    step: RestrainStep, *, correct: torch.Tensor | None = None, has_gold: torch.Tensor | None = None
) -> dict[str, float]:
    """The metrics listed in the module docstring, keyed ``restrain/<name>``.

    Args:
        step: the step's vote, from :func:`verl_restrain.advantage.restrain_step`.
        correct: (N,) bool, the rollout's answer equals the gold label (meaningful where has_gold).
        has_gold: (N,) bool, the rollout's prompt has a gold label. The gold metrics are left out
            when ``correct`` or ``has_gold`` is None, or no group has gold labels throughout.

    Returns:
        Python floats, for verl's metric tracker. Empty for an empty batch.
    """
    votes, weights = step.votes, step.weights
    if votes.group.numel() == 0:
        return {}
    num_groups = votes.num_groups
    majority_ratio = votes.majority_count.double() / votes.group_size.double()  # (G,)
    entropy_terms = torch.where(weights > 0, -weights * torch.log(weights), torch.zeros_like(weights))  # (C,)
    entropy = torch.zeros(num_groups, dtype=torch.float64, device=weights.device)
    entropy.index_add_(0, votes.cluster_group, entropy_terms)  # (G,)

    metrics = {
        "majority_ratio": majority_ratio.mean().item(),
        "penalized_fraction": step.penalized.double().mean().item(),
        "num_clusters": votes.num_clusters.double().mean().item(),
        "no_answer_fraction": (votes.cluster < 0).double().mean().item(),
        "pseudo_label_entropy": entropy.mean().item(),
        "prompt_weight_mean": step.prompt_weight.mean().item(),
    }
    if correct is not None and has_gold is not None:
        metrics.update(_gold_metrics(votes, weights, correct.bool(), has_gold.bool()))
    return {METRIC_PREFIX + name: float(value) for name, value in metrics.items()}


def restrain_metrics(
    answer_ids: torch.Tensor,
    group_index: torch.Tensor,
    *,
    weighting: str,
    sigma: float,
    center: float,
    kappa: int,
    prompt_weight: torch.Tensor | None = None,
    correct: torch.Tensor | None = None,
    has_gold: torch.Tensor | None = None,
) -> dict[str, float]:
    """:func:`step_metrics` of the vote on ``answer_ids`` (arguments as ``restrain_step``)."""
    if answer_ids.numel() == 0:
        return {}
    step = restrain_step(
        answer_ids, group_index, prompt_weight, weighting=weighting, sigma=sigma, center=center, kappa=kappa,
        delta=0.0,
    )
    return step_metrics(step, correct=correct, has_gold=has_gold)


def _gold_metrics(votes: Votes, weights: torch.Tensor, correct: torch.Tensor, has_gold: torch.Tensor) -> dict:
    num_groups = votes.num_groups
    group = votes.group  # (N,)
    gold_group = torch.ones(num_groups, dtype=torch.long, device=group.device)
    gold_group.scatter_reduce_(0, group, has_gold.long(), reduce="amin")
    gold_group = gold_group.bool()  # (G,)
    if not bool(gold_group.any()):
        return {}

    valid = votes.cluster >= 0  # (N,)
    cluster_correct = torch.zeros(votes.cluster_group.numel(), dtype=torch.long, device=group.device)
    cluster_correct.scatter_reduce_(0, votes.cluster[valid], correct[valid].long(), reduce="amax")  # (C,)

    has_majority = votes.majority_cluster >= 0  # (G,)
    majority_correct = torch.zeros(num_groups, dtype=torch.bool, device=group.device)
    majority_correct[has_majority] = cluster_correct[votes.majority_cluster[has_majority]].bool()

    weighted = torch.zeros(num_groups, dtype=torch.float64, device=group.device)
    weighted.index_add_(0, votes.cluster_group, weights * cluster_correct.double())  # (G,)

    any_correct = torch.zeros(num_groups, dtype=torch.long, device=group.device)
    any_correct.scatter_reduce_(0, group, correct.long(), reduce="amax")  # (G,)

    majority_reward = (votes.cluster >= 0) & (votes.cluster == votes.majority_cluster[group])  # (N,)

    gold_rows = gold_group[group]  # (N,)
    return {
        "pseudo_label_accuracy": majority_correct[gold_group].double().mean().item(),
        "weighted_label_accuracy": weighted[gold_group].mean().item(),
        "pass_at_n": any_correct[gold_group].double().mean().item(),
        "gold_accuracy": correct[gold_rows].double().mean().item(),
        "reward_accuracy": (majority_reward == correct)[gold_rows].double().mean().item(),
    }
