"""The ``restrain`` trainer: verl's v1 trainer with a group-level vote in its advantage step.

verl's advantage step (``PPOTrainer._compute_advantage``) fetches a fixed list of fields from
TransferQueue and calls the estimator with rewards and uids only. RESTRAIN needs every rollout's
answer, grouped by prompt, and the prompt weight u_x. :class:`RestrainTrainer` (registered as
``trainer.v1.trainer_mode=restrain`` by ``verl_restrain.adapters.plugin``) overrides only that step when
``algorithm.adv_estimator=restrain``:

1. fetch the answers the ``restrain`` reward manager wrote (``extra_fields["reward_extra_info"]``),
   ``data_source`` and the u_x / offline-label dataset columns, besides verl's own fields;
2. apply verl's rollout correction exactly as the base step does;
3. :func:`restrain_advantage_step`: cluster the answers of each prompt group
   (:func:`verl_restrain.answers.cluster_extracted`) or match them against the fixed offline label,
   call the registered ``restrain`` estimator with ``answer_ids`` and ``prompt_weight``, and compute
   the ``restrain/`` metrics;
4. write ``advantages``, ``returns`` and the pseudo-label reward (as ``token_level_rewards``, so
   that verl's ``critic/rewards`` shows it) back to TransferQueue.

With any other estimator the trainer is verl's own. The loop is verl's ``sync`` loop
(:class:`RestrainTrainer`) or ``colocate_async`` loop (:class:`RestrainColocateAsyncTrainer`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta

from verl.protocol import DataProto
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.workers.utils.padding import response_to_nested
from verl_restrain import answers
from verl_restrain.advantage import count_votes, fixed_label_answer_ids, pseudo_label_weights
from verl_restrain.adapters.settings import (
    ESTIMATOR_NAME,
    REWARD_MANAGER_NAME,
    SCORING_COMMAND,
    RestrainConfig,
    validate_training_config,
)
from verl_restrain.diagnostics import pseudo_label_reward, restrain_metrics
from verl_restrain.adapters.estimator import group_index_from_uids

__all__ = ["RestrainColocateAsyncTrainer", "RestrainTrainer", "restrain_advantage_step", "rollout_answer_ids"]

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

VERL_ADVANTAGE_FIELDS = ["uid", "response_mask", "rollout_log_probs", "old_log_probs"]
"""Fields of verl's advantage step that a RESTRAIN step uses (no rewards, values or reference)."""
CLUSTER_THREADS = 8
"""Prompt groups clustered concurrently; sympy comparisons run in ``answers``' worker processes."""


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
    if not isinstance(info, dict) or "pred" not in info:
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


def _prompt_weights(values: Sequence[Any], key: str) -> torch.Tensor:
    weights = []
    for value in values:
        weight = float("nan") if value is None else float(value)
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(
                f"prompt weight column {key!r} holds {value!r}; u_x must be a finite number >= 0. Rescore the "
                f"training data with: {SCORING_COMMAND.format(path='<train.parquet>')}"
            )
        weights.append(weight)
    return torch.tensor(weights, dtype=torch.float32)


def _last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """(N,) index of each row's last response token, -1 for a row without one."""
    width = response_mask.shape[1]
    last = width - 1 - response_mask.bool().flip(dims=[1]).to(torch.uint8).argmax(dim=1)
    return torch.where(response_mask.bool().any(dim=1), last, -1)


def _last_token_values(values: torch.Tensor, last_token: torch.Tensor, width: int) -> torch.Tensor:
    """(N, width) float32 with ``values`` (N,) on each row's last response token, as verl places rm_scores."""
    out = torch.zeros(len(values), width, dtype=torch.float32)
    rows = torch.nonzero(last_token >= 0).squeeze(1)
    out[rows, last_token[rows]] = values[rows].float()
    return out


def restrain_advantage_step(
    data: DataProto,
    keys: Sequence[str],
    algorithm_config: Any,
    is_padding: Sequence[bool] | None = None,
) -> dict[str, float]:
    """The group-level RESTRAIN step on one batch; writes advantages, returns, token_level_rewards.

    Args:
        data: ``batch`` with ``response_mask`` (N, T); ``non_tensor_batch`` with ``uid``,
            ``extra_fields`` (the reward manager's ``reward_extra_info``), ``data_source`` and, when
            the method reads them, the prompt-weight and offline-label columns
            (:class:`RestrainConfig` names them).
        keys: TransferQueue key ``{uid}_{session}_{index}`` of each row.
        algorithm_config: verl's ``algorithm`` config (``algorithm.restrain``,
            ``norm_adv_by_std_in_grpo``); passed to the registered estimator.
        is_padding: rows verl added to fill the batch; left out of the metrics.

    Returns:
        The ``restrain/`` metrics of the batch (padding left out).

    The answers come from ``pred``; ``acc``/``has_gold`` (gold) are read only for the diagnostics.
    """
    restrain = RestrainConfig.from_algorithm(algorithm_config)
    non_tensor = data.non_tensor_batch
    response_mask = data.batch["response_mask"]  # (N, T)
    final, session, session_id = _final_outputs(keys)  # (S,), (N,), (S,)

    infos = [_reward_extra_info(non_tensor["extra_fields"][row]) for row in final]
    predictions = [info["pred"] or None for info in infos]
    uids = [non_tensor["uid"][row] for row in final]
    sources = non_tensor.get("data_source", None)
    kinds = [restrain.answer_kind("" if sources is None else sources[row]) for row in final]

    labels = None
    if restrain.label_mode == "offline":
        labels = [non_tensor[restrain.offline_label_key][row] for row in final]
    prompt_weight = None
    if restrain.use_prompt_weight:
        column = non_tensor[restrain.prompt_weight_key]
        prompt_weight = _prompt_weights([column[row] for row in final], restrain.prompt_weight_key)  # (S,)

    answer_ids = rollout_answer_ids(predictions, uids, kinds, labels, session_id.tolist())  # (S,)
    group_index = group_index_from_uids(uids)  # (S,)
    votes = count_votes(answer_ids, group_index)
    weights = pseudo_label_weights(votes, restrain.weighting, restrain.sigma, restrain.center)
    reward = pseudo_label_reward(votes, weights)  # (S,)

    single_output = len(final) == len(keys)  # every session one output: final is the identity
    final_mask = response_mask if single_output else response_mask[final]  # (S, T)
    last_token = _last_token_index(response_mask)  # (N,)
    width = response_mask.shape[1]
    estimator = core_algos.get_adv_estimator_fn(ESTIMATOR_NAME)
    advantages, _ = estimator(
        token_level_rewards=_last_token_values(reward, last_token[final], width),
        response_mask=final_mask,
        config=algorithm_config,
        index=np.array(uids, dtype=object),
        answer_ids=answer_ids,
        prompt_weight=prompt_weight,
    )  # (S, T)
    # One scalar per session, broadcast to all its outputs (verl's multi-trajectory GRPO rule).
    first_token = final_mask.argmax(dim=1)
    per_session = advantages[torch.arange(len(final)), first_token]  # (S,)
    session_index = torch.from_numpy(session)
    data.batch["advantages"] = per_session[session_index].unsqueeze(-1) * response_mask
    data.batch["returns"] = data.batch["advantages"]
    data.batch["token_level_rewards"] = _last_token_values(reward[session_index], last_token, width)

    keep = np.ones(len(final), dtype=bool)
    if is_padding is not None:
        keep = ~np.asarray(is_padding, dtype=bool)[final]
    if not keep.any():
        return {}
    keep_rows = torch.from_numpy(np.flatnonzero(keep))
    correct = torch.tensor([float(info.get("acc", 0.0)) > 0.5 for info in infos])
    has_gold = torch.tensor([bool(info.get("has_gold", False)) for info in infos])
    return restrain_metrics(
        answer_ids[keep_rows],
        group_index[keep_rows],
        weighting=restrain.weighting,
        sigma=restrain.sigma,
        center=restrain.center,
        kappa=restrain.kappa,
        prompt_weight=None if prompt_weight is None else prompt_weight[keep_rows],
        correct=correct[keep_rows],
        has_gold=has_gold[keep_rows],
    )


def _as_list(value: Any) -> list:
    """A TransferQueue non-tensor column (NonTensorStack, LinkedList, ndarray or tensor) as a list."""
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _object_array(values: list) -> np.ndarray:
    """A 1-D object array of ``values`` (numpy would make lists of lists 2-D)."""
    array = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        array[i] = value
    return array


class RestrainAdvantageMixin:
    """The RESTRAIN advantage step and startup checks, mixed into one of verl's v1 trainers.

    Attributes:
        loop_mode: verl's trainer mode whose loop this trainer runs. verl's base trainer branches on
            ``self.trainer_mode == "sync"`` (replay buffer, refill, TransferQueue checkpoints), so the
            attribute reads as the loop's mode; the registered name is kept in ``registered_mode``.
    """

    loop_mode: str = "sync"

    def __init__(self, config):
        # Before any worker, dataset or replay buffer exists.
        self.restrain = None
        if config.algorithm.adv_estimator == ESTIMATOR_NAME:
            self.restrain = validate_training_config(config)
            logger.info("RESTRAIN settings: %s", self.restrain)
        super().__init__(config)

    @property
    def trainer_mode(self) -> str:
        return self.loop_mode

    @trainer_mode.setter
    def trainer_mode(self, registered_mode: str) -> None:
        self.registered_mode = registered_mode

    def _restrain_fields(self) -> list[str]:
        fields = ["extra_fields", "data_source"]
        if self.restrain.use_prompt_weight:
            fields.append(self.restrain.prompt_weight_key)
        if self.restrain.label_mode == "offline":
            fields.append(self.restrain.offline_label_key)
        return fields

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        if self.config.algorithm.adv_estimator != ESTIMATOR_NAME:
            return super()._compute_advantage(batch, metrics)

        restrain_fields = self._restrain_fields()
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=VERL_ADVANTAGE_FIELDS + restrain_fields
        )
        missing = [name for name in restrain_fields if name not in data.keys() and name != "data_source"]
        if missing:
            raise ValueError(
                f"the training rows have no field(s) {missing}; the method reads them from the dataset "
                f"(algorithm.restrain.*_key). Create them with: {SCORING_COMMAND.format(path='<train.parquet>')}"
            )
        non_tensor = {name: _as_list(data.get(name)) for name in ["uid", *restrain_fields] if name in data.keys()}
        response_mask = data["response_mask"]  # nested (N, j)
        data = DataProto(
            batch=data.exclude(*non_tensor).to_padded_tensor(),
            non_tensor_batch={name: _object_array(values) for name, values in non_tensor.items()},
        )

        # verl's rollout correction, exactly as in PPOTrainer._compute_advantage.
        rollout_corr_config = self.config.algorithm.get("rollout_correction", None)
        bypass_recomputing_logprobs = rollout_corr_config and rollout_corr_config.get("bypass_mode", False)
        rollout_correction = (
            rollout_corr_config is not None and "rollout_log_probs" in data.batch and not bypass_recomputing_logprobs
        )
        if rollout_correction:
            data, is_metrics = compute_rollout_correction_and_add_to_batch(data, rollout_corr_config)
            metrics.update(is_metrics)

        is_padding = [tag.get("is_padding", False) for tag in batch.tags]
        metrics.update(restrain_advantage_step(data, batch.keys, self.config.algorithm, is_padding))

        fields = ["advantages", "returns", "token_level_rewards"]
        if rollout_correction:
            fields.append("response_mask")
            if "rollout_is_weights" in data.batch:
                fields.append("rollout_is_weights")
        output = TensorDict(
            {field: response_to_nested(data.batch[field], response_mask) for field in fields}, batch_size=len(batch)
        )
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)


class RestrainTrainer(RestrainAdvantageMixin, PPOTrainerSync):
    """verl's synchronous v1 trainer with the RESTRAIN advantage step (``trainer_mode=restrain``)."""

    loop_mode = "sync"


class RestrainColocateAsyncTrainer(RestrainAdvantageMixin, PPOTrainerColocateAsync):
    """verl's colocated asynchronous v1 trainer with the RESTRAIN advantage step
    (``trainer_mode=restrain_colocate_async``)."""

    loop_mode = "colocate_async"


# Last: when this module was imported before verl, verl's plugin loader ran while it was half-done.
from verl_restrain.adapters import plugin as verl_plugin  # noqa: E402

verl_plugin.complete_registration("trainers")
