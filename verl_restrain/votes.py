"""Counting each prompt's answers: the vote every method reads (pure torch, no verl).

:func:`count_votes` groups N rollouts by prompt and their answer ids into clusters, vectorised over
the batch. Re-exported by :mod:`verl_restrain.advantage`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Votes", "count_votes"]


@dataclass(frozen=True)
class Votes:
    """Vote statistics of a batch, with N rollouts in G groups and C answer clusters.

    Groups are numbered 0..G-1 in increasing order of ``group_index``; clusters are numbered
    0..C-1 sorted by (group, answer id).
    """

    group: torch.Tensor  # (N,) int64, dense group id
    cluster: torch.Tensor  # (N,) int64, dense cluster id, -1 for no valid answer
    group_size: torch.Tensor  # (G,) int64, n, rollouts without an answer included
    cluster_group: torch.Tensor  # (C,) int64, group of each cluster
    cluster_count: torch.Tensor  # (C,) int64, c_j
    majority_count: torch.Tensor  # (G,) int64, M = max_j c_j, 0 when no answer is valid
    majority_cluster: torch.Tensor  # (G,) int64, cluster id of the majority, -1 when none
    num_clusters: torch.Tensor  # (G,) int64, m

    @property
    def num_groups(self) -> int:
        return self.group_size.numel()

    @property
    def frequency(self) -> torch.Tensor:
        """(C,) float64 vote share f_j = c_j / n of each cluster."""
        return self.cluster_count.double() / self.group_size[self.cluster_group].double()


def _check_ids(answer_ids: torch.Tensor, group_index: torch.Tensor) -> None:
    if answer_ids.dim() != 1 or group_index.dim() != 1:
        raise ValueError(
            f"answer_ids and group_index must be 1-D, got shapes {tuple(answer_ids.shape)} "
            f"and {tuple(group_index.shape)}"
        )
    if answer_ids.shape != group_index.shape:
        raise ValueError(
            f"answer_ids and group_index must have the same length, got {answer_ids.numel()} "
            f"and {group_index.numel()}"
        )
    if answer_ids.is_floating_point() or group_index.is_floating_point():
        raise ValueError("answer_ids and group_index must be integer tensors")
    if answer_ids.numel() and int(answer_ids.min()) < -1:
        raise ValueError("answer_ids must be >= 0 for a valid answer or -1 for no answer")


def count_votes(answer_ids: torch.Tensor, group_index: torch.Tensor) -> Votes:
    """Group the rollouts by prompt and count each group's answers.

    Args:
        answer_ids: (N,) int64; equal ids inside one group are the same answer, -1 is no answer.
            Ids of different groups are unrelated.
        group_index: (N,) int64; rollouts of one prompt share a value.

    Returns:
        The :class:`Votes` of the batch.
    """
    _check_ids(answer_ids, group_index)
    device = answer_ids.device
    answer_ids = answer_ids.long()
    _, group = torch.unique(group_index.long(), return_inverse=True)  # (N,)
    num_groups = int(group.max()) + 1 if group.numel() else 0
    group_size = torch.bincount(group, minlength=num_groups)  # (G,)

    valid = answer_ids >= 0  # (N,)
    # Rank answer ids so that one int64 key (group, answer) sorts by group, then by answer id.
    _, answer_rank = torch.unique(answer_ids, return_inverse=True)  # (N,)
    num_ranks = int(answer_rank.max()) + 1 if answer_rank.numel() else 1
    cluster_keys, valid_cluster = torch.unique(group[valid] * num_ranks + answer_rank[valid], return_inverse=True)
    num_clusters_total = cluster_keys.numel()
    cluster = torch.full_like(answer_ids, -1)
    cluster[valid] = valid_cluster
    cluster_group = cluster_keys // num_ranks  # (C,)
    cluster_count = torch.bincount(valid_cluster, minlength=num_clusters_total)  # (C,)

    majority_count = torch.zeros(num_groups, dtype=torch.long, device=device)
    majority_count.scatter_reduce_(0, cluster_group, cluster_count, reduce="amax")  # (G,)
    # Clusters are sorted by answer id inside a group: the first one at the maximum count wins ties.
    at_max = cluster_count == majority_count[cluster_group]
    candidate = torch.where(at_max, torch.arange(num_clusters_total, device=device), num_clusters_total)
    majority_cluster = torch.full((num_groups,), num_clusters_total, dtype=torch.long, device=device)
    majority_cluster.scatter_reduce_(0, cluster_group, candidate, reduce="amin")
    majority_cluster[majority_cluster == num_clusters_total] = -1
    num_clusters = torch.bincount(cluster_group, minlength=num_groups)  # (G,)

    return Votes(
        group=group,
        cluster=cluster,
        group_size=group_size,
        cluster_group=cluster_group,
        cluster_count=cluster_count,
        majority_count=majority_count,
        majority_cluster=majority_cluster,
        num_clusters=num_clusters,
    )
