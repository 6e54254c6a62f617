"""The group-level RESTRAIN step on one batch of rollouts: one vote, then the fields verl's actor reads.

:func:`vote` clusters every prompt's answers (written by the ``restrain`` reward manager into
``extra_fields["reward_extra_info"]``), reads u_x or the offline label from the dataset columns and
votes once (:func:`verl_restrain.advantage.restrain_step`); :func:`write_advantages` broadcasts the
result to the rows of a batch, once, and :func:`restrain_advantage_step` does both. The ``restrain``
trainers (:mod:`verl_restrain.adapters.trainer`) call them from verl's advantage step; with
``algorithm.restrain.train_rollouts`` the vote happens over all n rollouts before the batch is cut
to the rollouts trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from verl.protocol import DataProto
from verl.utils.groupwise import as_torch_index

from verl_restrain import answers, defaults
from verl_restrain.adapters.actor_loss import NEGATIVE_FIELD, POSITIVE_FIELD
from verl_restrain.adapters.checks import bad_prompt_weight_rows, describe_bad_rows, prompt_weight_requirement
from verl_restrain.adapters.settings import REWARD_MANAGER_NAME, RestrainConfig
from verl_restrain.advantage import RestrainStep, fixed_label_answer_ids, prompt_weight, restrain_step
from verl_restrain.diagnostics import METRIC_PREFIX, step_metrics
from verl_restrain.entropy import reshape_advantage

__all__ = ["Vote", "clustered_predictions", "restrain_advantage_step", "rollout_answer_ids", "session_key", "vote", "write_advantages"]

CLUSTER_THREADS = 8
"""Prompt groups clustered concurrently; sympy comparisons run in ``answers``' worker processes."""


def session_key(key: str) -> str:
    """``{uid}_{session}`` of a TransferQueue key ``{uid}_{session}_{index}``: one sampled rollout."""
    return key.rsplit("_", 1)[0]


def _final_outputs(keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The last output of every session and each row's session, as verl's GRPO step picks them.

    Rows are keyed ``{uid}_{session}_{index}``; a multi-output agent loop writes several outputs per
    session, all carrying the reward of the last one, so a session votes once.

    Returns:
        final (S,) row of each session's last output, in order of first appearance;
        session (N,) position in ``final`` of each row's session;
        session_id (S,) the sampling index ``{session}`` of each final row within its prompt.
    """
    last: dict[str, tuple[int, int]] = {}
    session_keys, session_ids = [], {}
    for row, key in enumerate(keys):
        uid, session_id, output_index = key.rsplit("_", 2)
        session_key = f"{uid}_{session_id}"
        session_keys.append(session_key)
        session_ids[session_key] = int(session_id)
        if session_key not in last or last[session_key][0] < int(output_index):
            last[session_key] = (int(output_index), row)
    position = {session_key: i for i, session_key in enumerate(last)}
    final = np.array([row for _, row in last.values()], dtype=np.int64)
    session = np.array([position[session_key] for session_key in session_keys], dtype=np.int64)
    session_id = np.array([session_ids[session_key] for session_key in last], dtype=np.int64)
    return final, session, session_id


def _reward_extra_info(extra_fields: Any) -> dict:
    info = extra_fields.get("reward_extra_info", None) if isinstance(extra_fields, dict) else None
    if not isinstance(info, dict) or "pred" not in info or "kind" not in info:
        raise ValueError(
            "a rollout reached the RESTRAIN advantage step without an extracted answer: set "
            f"reward.reward_manager.name={REWARD_MANAGER_NAME} (with no colocated reward model), got "
            f"reward_extra_info={info!r}"
        )
    return info


def rollout_answer_ids(
    predictions: Sequence[str | None],
    uids: Sequence[Any],
    kinds: Sequence[str],
    labels: Sequence[str | None] | None = None,
    sessions: Sequence[int] | None = None,
) -> torch.Tensor:
    """(N,) int64 answer cluster of every rollout within its prompt group, -1 for no answer.

    Args:
        predictions: canonical answer of each rollout (None or "" for none).
        uids: prompt of each rollout; rows of one prompt need not be contiguous.
        kinds: answer kind of each rollout (constant within a prompt).
        labels: None to vote among the rollouts (``label_mode=self``: clusters of equivalent
            answers); else the fixed label of each rollout's prompt (``label_mode=offline``): 0
            where the answer equals it, -1 elsewhere.
        sessions: sampling index of each rollout within its prompt (None: row order). Clusters
            are numbered by first appearance in this order, so a majority tie goes to the answer
            sampled first whatever order verl's batch balancing left the rows in.
    """
    groups: dict[Any, list[int]] = {}
    for row, uid in enumerate(uids):
        groups.setdefault(uid, []).append(row)
    if sessions is not None:
        groups = {uid: sorted(rows, key=lambda row: sessions[row]) for uid, rows in groups.items()}

    def group_ids(rows: list[int]) -> list[int]:
        kind = kinds[rows[0]]
        group_predictions = [predictions[row] or None for row in rows]
        if labels is None:
            return answers.cluster_extracted(group_predictions, kind)
        label = labels[rows[0]]
        matches = [isinstance(label, str) and answers.same_answer(p, label, kind) for p in group_predictions]
        return fixed_label_answer_ids(torch.tensor(matches, dtype=torch.bool)).tolist()

    row_groups = list(groups.values())
    if len(row_groups) > 1:
        with ThreadPoolExecutor(max_workers=min(CLUSTER_THREADS, len(row_groups))) as pool:
            group_answer_ids = list(pool.map(group_ids, row_groups))
    else:
        group_answer_ids = [group_ids(rows) for rows in row_groups]
    answer_ids = torch.full((len(predictions),), -1, dtype=torch.long)
    for rows, ids in zip(row_groups, group_answer_ids, strict=True):
        answer_ids[rows] = torch.tensor(ids, dtype=torch.long)
    return answer_ids


def rollout_prompt_weights(restrain: RestrainConfig, columns: dict[str, Sequence[Any]]) -> torch.Tensor | None:
    """(S,) float32 u_x of every rollout from the dataset columns the settings name, or None for none.

    ``prompt_weight_source=offline`` computes u_x = g(c_ref / n_ref) with the run's sigma and center;
    ``column`` takes the numbers as they are. Unusable values fail, naming the rows and the fix.
    """
    if not restrain.prompt_weight_columns:
        return None
    bad = bad_prompt_weight_rows(restrain, columns)
    if bad:
        raise ValueError(
            f"the training batch has {describe_bad_rows(restrain, columns, bad)} that cannot give a prompt weight. "
            f"{prompt_weight_requirement(restrain)}."
        )
    if restrain.prompt_weight_source == "column":
        return torch.tensor([float(u) for u in columns[restrain.prompt_weight_key]], dtype=torch.float32)
    counts = torch.tensor([int(c) for c in columns[restrain.ref_majority_count_key]])
    samples = torch.tensor([int(n) for n in columns[restrain.ref_num_samples_key]])
    return prompt_weight(counts, samples, restrain.sigma, restrain.center)


def _last_token_values(values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) float32 with ``values`` (N,) on each row's last response token, as verl places rm_scores."""
    mask = response_mask.bool()
    width = mask.shape[1]
    last = width - 1 - mask.flip(dims=[1]).to(torch.uint8).argmax(dim=1)
    out = torch.zeros(mask.shape, dtype=torch.float32)
    rows = torch.nonzero(mask.any(dim=1)).squeeze(1)
    out[rows, last[rows]] = values[rows].float()
    return out


@dataclass(frozen=True)
class Vote:
    """One vote over a batch: the step's per-session values and where each session sits in them."""

    step: RestrainStep
    position: Mapping[str, int]  # session key -> index into the step's per-rollout tensors
    metrics: dict[str, float]


def vote(
    non_tensor: Mapping[str, Sequence[Any]],
    keys: Sequence[str],
    restrain: RestrainConfig,
    *,
    norm_adv_by_std: bool = True,
    rollouts_per_prompt: int | None = None,
    is_padding: Sequence[bool] | None = None,
) -> Vote:
    """Cluster each prompt's answers and vote once (:func:`verl_restrain.advantage.restrain_step`).

    Args:
        non_tensor: per row: ``uid``, ``extra_fields`` (the reward manager's ``reward_extra_info``)
            and the dataset columns the method reads (:attr:`RestrainConfig.prompt_weight_columns`,
            ``offline_label_key``).
        keys: TransferQueue key ``{uid}_{session}_{index}`` of each row; a multi-output session
            votes once, with its last output (verl's multi-trajectory rule).
        restrain: the settings.
        norm_adv_by_std: verl's ``algorithm.norm_adv_by_std_in_grpo``.
        rollouts_per_prompt: n (``actor_rollout_ref.rollout.n``): kappa keeps its share kappa / n in
            a group that arrives with fewer rollouts. None compares M with kappa directly.
        is_padding: rows verl added to fill a batch: left out of the vote and the metrics.

    The answers come from ``pred``; ``acc``/``has_gold`` (gold) are read only for the metrics.
    """
    rows = np.arange(len(keys))
    if is_padding is not None:
        rows = rows[~np.asarray(is_padding, dtype=bool)]
    final, _, session_id = _final_outputs([keys[row] for row in rows])  # (S,), (R,), (S,)
    final_rows = rows[final]  # (S,) row of each session's last output

    infos = [_reward_extra_info(non_tensor["extra_fields"][row]) for row in final_rows]
    uids = [non_tensor["uid"][row] for row in final_rows]
    labels = None
    if restrain.label_mode == "offline":
        labels = [non_tensor[restrain.offline_label_key][row] for row in final_rows]
    columns = {name: [non_tensor[name][row] for row in final_rows] for name in restrain.prompt_weight_columns}

    answer_ids = rollout_answer_ids(
        [info["pred"] or None for info in infos], uids, [info["kind"] for info in infos], labels, session_id.tolist()
    )  # (S,)
    step = restrain_step(
        answer_ids,
        as_torch_index(np.array(uids, dtype=object), device="cpu"),
        rollout_prompt_weights(restrain, columns),
        weighting=restrain.weighting,
        sigma=restrain.sigma,
        center=restrain.center,
        kappa=restrain.kappa,
        delta=restrain.delta,
        norm_adv_by_std=norm_adv_by_std,
        epsilon=defaults.EPSILON,
        rollouts_per_prompt=rollouts_per_prompt,
        online_prompt_weight=restrain.online_prompt_weight,
    )
    metrics = {}
    if len(final_rows):
        correct = torch.tensor([float(info.get("acc", 0.0)) > 0.5 for info in infos])
        has_gold = torch.tensor([bool(info.get("has_gold", False)) for info in infos])
        metrics = step_metrics(step, correct=correct, has_gold=has_gold)
    position = {session_key(keys[row]): i for i, row in enumerate(final_rows)}
    return Vote(step=step, position=position, metrics=metrics)


def write_advantages(
    data: DataProto, keys: Sequence[str], result: Vote, restrain: RestrainConfig
) -> dict[str, float]:
    """Write the vote's values to the rows of ``data``, broadcast over each response once.

    Every output of a session gets its session's scalar (verl's multi-trajectory GRPO rule); a row
    whose session did not vote (padding) gets zeros. With ``advantage_reshaping`` each row's
    advantage and parts are then scaled by ETTRL's factor (:func:`verl_restrain.entropy.reshape_advantage`;
    ``entropy`` reads ``data.batch["entropy"]``, the token entropies of verl's old-log-prob pass, and
    compares each response with the other rows of its prompt in ``data``).

    Writes:
        ``advantages`` and ``returns`` (N, T), the combined advantage on every response token;
        ``token_level_rewards`` (N, T), the pseudo-label reward on each row's last token; and for
        ``clip_mode=per_label`` the parts ``restrain_positive_advantages`` / ``..._negative_...``.

    Returns:
        The reshaping's metrics (``restrain/reshaping_scale``, and ``restrain/response_entropy`` for
        ``entropy``) over the voting rows; empty without reshaping.
    """
    response_mask = data.batch["response_mask"]  # (N, T)
    step = result.step
    index = torch.tensor([result.position.get(session_key(key), -1) for key in keys], dtype=torch.long)

    def per_row(values: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([values.float(), values.new_zeros(1, dtype=torch.float32)])
        return padded[index]  # (N,); index -1 picks the trailing zero

    advantage, positive, negative = per_row(step.advantage), per_row(step.positive), per_row(step.negative)
    metrics = {}
    if restrain.advantage_reshaping is not None:
        voting = index >= 0  # (N,) rows of a session that voted
        group = torch.cat([step.votes.group, step.votes.group.new_full((1,), -1)])[index]  # (N,), -1 for padding
        reshaped = reshape_advantage(
            advantage[voting],
            group[voting],
            reshaping=restrain.advantage_reshaping,
            positive=positive[voting],
            negative=negative[voting],
            token_entropy=data.batch["entropy"][voting] if restrain.advantage_reshaping == "entropy" else None,
            response_mask=response_mask[voting],
            clip_bound=restrain.reshaping_clip_bound,
        )
        advantage[voting], positive[voting], negative[voting] = reshaped.advantage, reshaped.positive, reshaped.negative
        if voting.any():
            metrics[METRIC_PREFIX + "reshaping_scale"] = reshaped.scale.mean().item()
            if reshaped.entropy is not None:
                metrics[METRIC_PREFIX + "response_entropy"] = reshaped.entropy.mean().item()

    data.batch["advantages"] = advantage.unsqueeze(-1) * response_mask
    data.batch["returns"] = data.batch["advantages"]
    data.batch["token_level_rewards"] = _last_token_values(per_row(step.reward), response_mask)
    if restrain.clip_mode == "per_label":
        data.batch[POSITIVE_FIELD] = positive.unsqueeze(-1) * response_mask
        data.batch[NEGATIVE_FIELD] = negative.unsqueeze(-1) * response_mask
    return metrics


def restrain_advantage_step(
    data: DataProto,
    keys: Sequence[str],
    algorithm_config: Any,
    is_padding: Sequence[bool] | None = None,
    *,
    restrain: RestrainConfig | None = None,
    rollouts_per_prompt: int | None = None,
) -> dict[str, float]:
    """:func:`vote` on ``data.non_tensor_batch`` and :func:`write_advantages` into ``data.batch``.

    Args:
        data: ``batch`` with ``response_mask`` (N, T); ``non_tensor_batch`` as :func:`vote` reads it.
        keys, is_padding, rollouts_per_prompt: as for :func:`vote`.
        algorithm_config: verl's ``algorithm`` config (``norm_adv_by_std_in_grpo``, and
            ``algorithm.restrain`` unless ``restrain`` is given).
        restrain: the parsed settings.

    Returns:
        The ``restrain/`` metrics of the batch (padding left out).
    """
    if restrain is None:
        restrain = RestrainConfig.from_algorithm(algorithm_config)
    result = vote(
        data.non_tensor_batch,
        keys,
        restrain,
        norm_adv_by_std=bool(algorithm_config.get("norm_adv_by_std_in_grpo", True)),
        rollouts_per_prompt=rollouts_per_prompt,
        is_padding=is_padding,
    )
    return {**result.metrics, **write_advantages(data, keys, result, restrain)}


def clustered_predictions(uids: Sequence[Any], preds: Sequence[Any], kinds: Sequence[Any]) -> list[Any]:
    """Each prompt's predictions with equivalent answers written alike, for verl's maj@k.

    verl's ``calc_maj_val`` votes by exact ``pred``, so ``0.5``, ``1/2`` and ``\\frac{1}{2}`` would be
    three votes. Within each uid, every answer is replaced by the written form of its cluster's first
    member (:func:`verl_restrain.answers.cluster_extracted`), the vote the trainer takes; "" and None
    (no answer) are kept as they are.
    """
    rows_of: dict[Any, list[int]] = {}
    for i, uid in enumerate(uids):
        rows_of.setdefault(uid, []).append(i)
    result = list(preds)
    for rows in rows_of.values():
        kind = kinds[rows[0]] or "math"
        answered = [i for i in rows if isinstance(preds[i], str) and preds[i]]
        cluster_ids = answers.cluster_extracted([preds[i] for i in answered], kind)
        first_form: dict[int, str] = {}
        for i, cluster in zip(answered, cluster_ids, strict=True):
            result[i] = first_form.setdefault(cluster, preds[i])
    return result

