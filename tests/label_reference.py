"""The paper's per-label RESTRAIN terms as a plain loop (test helper, no vectorisation, no package code).

For every prompt group and every candidate label a_j, :func:`label_terms` returns the label's weight
u w_j and each rollout's GRPO advantage A~_ij under it, as the paper writes them; a penalised group
is one term of weight u and advantage -delta (every label gets -delta and the weights sum to 1; a
group without any answer has no label, and the penalty still applies). The tests build the parts
P, N and the per-label PPO loss sum_j u w_j l(rho, A~_ij) from these terms.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import torch
from hypothesis import strategies as st


def random_batch(rng, num_groups, max_n=12, num_answers=5, invalid_rate=0.2, sparse=True):
    """(answer_ids, group_index): random groups of 1..max_n rollouts, rows shuffled across groups."""
    answer_ids, group_index = [], []
    group_values = rng.choice(10_000, size=num_groups, replace=False) if sparse else np.arange(num_groups)
    for g in group_values:
        n = int(rng.integers(1, max_n + 1))
        pool = rng.choice(1_000_000, size=num_answers, replace=False) if sparse else np.arange(num_answers)
        for _ in range(n):
            answer_ids.append(-1 if rng.random() < invalid_rate else int(rng.choice(pool)))
            group_index.append(int(g))
    perm = rng.permutation(len(answer_ids))
    return torch.tensor(answer_ids)[perm], torch.tensor(group_index)[perm]


@st.composite
def batches(draw, max_groups=6, max_n=10, max_answers=5):
    """(answer_ids, group_index): hypothesis batches of contiguous groups, answers -1..max_answers-1."""
    num_groups = draw(st.integers(1, max_groups))
    answer_ids, group_index = [], []
    for g in range(num_groups):
        n = draw(st.integers(1, max_n))
        answer_ids += draw(st.lists(st.integers(-1, max_answers - 1), min_size=n, max_size=n))
        group_index += [g] * n
    return torch.tensor(answer_ids), torch.tensor(group_index)


def _g(f, sigma, center):
    return math.exp(-((f - center) ** 2) / (2 * sigma**2))


def _label_weights(counts, n, weighting, sigma, center):
    labels = sorted(counts)
    if not labels:
        return {}
    if weighting == "gaussian":
        # normalised in log space, as the package documents, so a tiny sigma cannot give 0 / 0
        logs = {a: -((counts[a] / n - center) ** 2) / (2 * sigma**2) for a in labels}
        top = max(logs.values())
        exps = {a: math.exp(logs[a] - top) for a in labels}
        return {a: exps[a] / sum(exps.values()) for a in labels}
    if weighting == "uniform":
        return {a: 1 / len(labels) for a in labels}
    top = max(counts.values())
    winner = min(a for a in labels if counts[a] == top)
    return {a: float(a == winner) for a in labels}


def label_terms(answer_ids, group_index, prompt_weight=None, *, weighting, sigma, center, kappa, delta,
                norm_adv_by_std=True, epsilon=1e-6, rollouts_per_prompt=None, online_prompt_weight=False):
    """List of (weight, {row: A~}) over every (group, label) pair; weight = u w_j, u per rollout row.

    The weight is returned per row (u may differ between rows in the tests): each term is a pair
    (w_j, {row: (u_row, A~_row,j)}).
    """
    answer_ids = [int(a) for a in answer_ids]
    rows = defaultdict(list)
    for i, g in enumerate(int(g) for g in group_index):
        rows[g].append(i)
    terms = []
    for members in rows.values():
        n = len(members)
        counts = Counter(answer_ids[i] for i in members if answer_ids[i] != -1)
        majority = max(counts.values()) if counts else 0
        if online_prompt_weight:
            u = {i: _g(majority / n, sigma, center) for i in members}
        else:
            u = {i: 1.0 if prompt_weight is None else float(prompt_weight[i]) for i in members}
        if rollouts_per_prompt is None:
            penalised = majority < kappa
        else:
            penalised = majority / n < kappa / rollouts_per_prompt
        if penalised:
            terms.append((1.0, {i: (u[i], -delta) for i in members}))
            continue
        weights = _label_weights(counts, n, weighting, sigma, center)
        for label, w in weights.items():
            r = [1.0 if answer_ids[k] == label else 0.0 for k in members]
            if n == 1:
                mean, std = 0.0, 1.0  # verl's GRPO convention for a group of one
            else:
                mean = sum(r) / n
                std = math.sqrt(sum((x - mean) ** 2 for x in r) / (n - 1))
            advantages = {}
            for k, i in enumerate(members):
                a = (r[k] - mean) / (std + epsilon) if norm_adv_by_std else r[k] - mean
                advantages[i] = (u[i], a)
            terms.append((w, advantages))
    return terms


def reference_parts(num_rows, terms):
    """(P, N) float64: P_i = sum over terms with A~ > 0 of u w A~, N_i likewise with A~ < 0."""
    positive, negative = [0.0] * num_rows, [0.0] * num_rows
    for w, advantages in terms:
        for i, (u, a) in advantages.items():
            if a > 0:
                positive[i] += u * w * a
            elif a < 0:
                negative[i] += u * w * a
    return torch.tensor(positive, dtype=torch.float64), torch.tensor(negative, dtype=torch.float64)
