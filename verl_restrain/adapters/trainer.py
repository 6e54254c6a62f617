"""The ``restrain`` trainers: verl's v1 trainers with a group-level vote in their advantage step.

verl's advantage step (``PPOTrainer._compute_advantage``) fetches a fixed list of fields from
TransferQueue and calls the estimator with rewards and uids only. RESTRAIN needs every rollout's
answer, grouped by prompt, and the prompt weight u_x. With ``algorithm.adv_estimator=restrain``
:class:`RestrainTrainer` (``trainer.v1.trainer_mode=restrain``, verl's ``sync`` loop) and
:class:`RestrainColocateAsyncTrainer` (``restrain_colocate_async``) override only that step:

1. fetch the answers the ``restrain`` reward manager wrote (``extra_fields["reward_extra_info"]``)
   and the dataset columns the method reads (the base model's counts, the offline label);
2. apply verl's rollout correction exactly as the base step does;
3. :func:`restrain_advantage_step`: cluster each prompt's answers, vote once
   (:func:`verl_restrain.advantage.restrain_step`), broadcast to tokens once, compute the
   ``restrain/`` metrics from the same vote;
4. write ``advantages`` and ``returns``, the pseudo-label reward as ``token_level_rewards`` (so that
   verl's ``critic/rewards`` shows it) and, for ``clip_mode=per_label``, the advantage's two parts,
   which the actor loss installed at startup (:mod:`verl_restrain.adapters.actor_loss`) reads.

With any other estimator the trainers are verl's own.
"""

from __future__ import annotations

import functools
import logging
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
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.groupwise import as_torch_index
from verl.workers.utils.padding import response_to_nested
from verl_restrain import answers, defaults
from verl_restrain.adapters.actor_loss import NEGATIVE_FIELD, POSITIVE_FIELD, per_label_config, restrain_ppo_loss
from verl_restrain.adapters.checks import (
    bad_prompt_weight_rows,
    describe_bad_rows,
    prompt_weight_requirement,
    validate_training_config,
)
from verl_restrain.adapters.registration import registered
from verl_restrain.adapters.settings import ESTIMATOR_NAME, REWARD_MANAGER_NAME, SCORING_COMMAND, RestrainConfig
from verl_restrain.advantage import fixed_label_answer_ids, prompt_weight, restrain_step
from verl_restrain.diagnostics import step_metrics

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


def restrain_advantage_step(
    data: DataProto,
    keys: Sequence[str],
    algorithm_config: Any,
    is_padding: Sequence[bool] | None = None,
    *,
    restrain: RestrainConfig | None = None,
    rollouts_per_prompt: int | None = None,
) -> dict[str, float]:
    """The group-level RESTRAIN step on one batch; writes the advantage fields into ``data.batch``.

    Args:
        data: ``batch`` with ``response_mask`` (N, T); ``non_tensor_batch`` with ``uid``,
            ``extra_fields`` (the reward manager's ``reward_extra_info``) and the dataset columns
            the method reads (:attr:`RestrainConfig.prompt_weight_columns`, ``offline_label_key``).
        keys: TransferQueue key ``{uid}_{session}_{index}`` of each row.
        algorithm_config: verl's ``algorithm`` config (``norm_adv_by_std_in_grpo``, and
            ``algorithm.restrain`` unless ``restrain`` is given).
        is_padding: rows verl added to fill the batch: zero advantage, left out of the vote and metrics.
        restrain: the parsed settings (parsed from ``algorithm_config`` when None).
        rollouts_per_prompt: n (``actor_rollout_ref.rollout.n``): kappa keeps its share kappa / n in
            a group that arrives with fewer rollouts. None compares M with kappa directly.

    Writes:
        ``advantages`` and ``returns`` (N, T), the combined advantage on every response token;
        ``token_level_rewards`` (N, T), the pseudo-label reward on each row's last token; and for
        ``clip_mode=per_label`` the parts ``restrain_positive_advantages`` / ``..._negative_...``.

    Returns:
        The ``restrain/`` metrics of the batch (padding left out).

    The answers come from ``pred``; ``acc``/``has_gold`` (gold) are read only for the diagnostics.
    """
    if restrain is None:
        restrain = RestrainConfig.from_algorithm(algorithm_config)
    non_tensor = data.non_tensor_batch
    response_mask = data.batch["response_mask"]  # (N, T)
    rows = np.arange(len(keys))
    if is_padding is not None:
        rows = rows[~np.asarray(is_padding, dtype=bool)]
    final, session, session_id = _final_outputs([keys[row] for row in rows])  # (S,), (R,), (S,)
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
        norm_adv_by_std=bool(algorithm_config.get("norm_adv_by_std_in_grpo", True)),
        epsilon=defaults.EPSILON,
        rollouts_per_prompt=rollouts_per_prompt,
        online_prompt_weight=restrain.online_prompt_weight,
    )

    # One scalar per session, broadcast to all its outputs (verl's multi-trajectory GRPO rule) and
    # to every response token, once; padding rows keep zeros.
    session_of_row = torch.full((len(keys),), -1, dtype=torch.long)
    session_of_row[torch.from_numpy(rows)] = torch.from_numpy(session)

    def per_row(values: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([values.float(), values.new_zeros(1, dtype=torch.float32)])
        return padded[session_of_row]  # (N,); index -1 picks the trailing zero

    def to_tokens(values: torch.Tensor) -> torch.Tensor:
        return per_row(values).unsqueeze(-1) * response_mask

    data.batch["advantages"] = to_tokens(step.advantage)
    data.batch["returns"] = data.batch["advantages"]
    data.batch["token_level_rewards"] = _last_token_values(per_row(step.reward), response_mask)
    if restrain.clip_mode == "per_label":
        data.batch[POSITIVE_FIELD] = to_tokens(step.positive)
        data.batch[NEGATIVE_FIELD] = to_tokens(step.negative)

    if len(final_rows) == 0:
        return {}
    correct = torch.tensor([float(info.get("acc", 0.0)) > 0.5 for info in infos])
    has_gold = torch.tensor([bool(info.get("has_gold", False)) for info in infos])
    return step_metrics(step, correct=correct, has_gold=has_gold)


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
    """The RESTRAIN advantage step, startup checks and actor loss, mixed into one of verl's v1 trainers.

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

    def on_init_end(self):
        if self.restrain is not None and self.restrain.clip_mode == "per_label":
            self._install_per_label_loss()
        super().on_init_end()

    def _install_per_label_loss(self) -> None:
        """Install :func:`restrain_ppo_loss` in the actor, as verl's trainer installs the critic's loss."""
        from verl.utils.config import omega_conf_to_dataclass

        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        loss_fn = functools.partial(restrain_ppo_loss, config=actor_config, per_label=per_label_config(actor_config))
        self.actor_rollout_wg.set_loss_fn(loss_fn)
        logger.info("RESTRAIN: the actor's policy loss clips inside each candidate label (clip_mode=per_label)")

    def _restrain_fields(self) -> list[str]:
        fields = ["extra_fields", *self.restrain.prompt_weight_columns]
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
        missing = [name for name in restrain_fields if name not in data.keys()]
        if missing:
            raise ValueError(
                f"the training rows have no field(s) {missing}; the method reads them from the dataset "
                f"(algorithm.restrain.*_key). Create them with: {SCORING_COMMAND.format(path='<train.parquet>')}"
            )
        non_tensor = {name: _as_list(data.get(name)) for name in ["uid", *restrain_fields]}
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
        metrics.update(
            restrain_advantage_step(
                data,
                batch.keys,
                self.config.algorithm,
                is_padding,
                restrain=self.restrain,
                rollouts_per_prompt=int(self.config.actor_rollout_ref.rollout.n),
            )
        )

        fields = ["advantages", "returns", "token_level_rewards"]
        if self.restrain.clip_mode == "per_label":
            fields += [POSITIVE_FIELD, NEGATIVE_FIELD]
        if rollout_correction:
            fields.append("response_mask")
            if "rollout_is_weights" in data.batch:
                fields.append("rollout_is_weights")
        output = TensorDict(
            {field: response_to_nested(data.batch[field], response_mask) for field in fields}, batch_size=len(batch)
        )
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)


@registered("trainers", "verl.trainer.ppo.v1.trainer_base", "TRAINER_REGISTRY", "register_trainer", "restrain")
class RestrainTrainer(RestrainAdvantageMixin, PPOTrainerSync):
    """verl's synchronous v1 trainer with the RESTRAIN advantage step (``trainer_mode=restrain``)."""

    loop_mode = "sync"


@registered(
    "trainers", "verl.trainer.ppo.v1.trainer_base", "TRAINER_REGISTRY", "register_trainer", "restrain_colocate_async"
)
class RestrainColocateAsyncTrainer(RestrainAdvantageMixin, PPOTrainerColocateAsync):
    """verl's colocated asynchronous v1 trainer with the RESTRAIN advantage step
    (``trainer_mode=restrain_colocate_async``)."""

    loop_mode = "colocate_async"
