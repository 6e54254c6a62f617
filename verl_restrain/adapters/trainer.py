"""The ``restrain`` trainers: verl's v1 trainers with a group-level vote in their advantage step.

verl's advantage step (``PPOTrainer._compute_advantage``) fetches a fixed list of fields from
TransferQueue and calls the estimator with rewards and uids only. RESTRAIN needs every rollout's
answer, grouped by prompt, and the prompt weight u_x. With ``algorithm.adv_estimator=restrain``
:class:`RestrainTrainer` (``trainer.v1.trainer_mode=restrain``, verl's ``sync`` loop) and
:class:`RestrainColocateAsyncTrainer` (``restrain_colocate_async``) override only that step:

1. fetch the answers the ``restrain`` reward manager wrote (``extra_fields["reward_extra_info"]``)
   and the dataset columns the method reads (the base model's counts, the offline label);
2. apply verl's rollout correction exactly as the base step does;
3. :mod:`verl_restrain.adapters.step`: cluster each prompt's answers, vote once
   (:func:`verl_restrain.advantage.restrain_step`), compute the ``restrain/`` metrics from the same
   vote, broadcast to tokens once;
4. write ``advantages`` and ``returns``, the pseudo-label reward as ``token_level_rewards`` (so that
   verl's ``critic/rewards`` shows it) and, for ``clip_mode=per_label``, the advantage's two parts,
   which the actor loss installed at startup (:mod:`verl_restrain.adapters.actor_loss`) reads.

With ``algorithm.restrain.train_rollouts`` = n smaller than ``actor_rollout_ref.rollout.n`` = N
(TTRL's vote/train split), the vote over all N rollouts happens as soon as the batch is sampled,
before verl balances it; the batch is then cut to the first n rollouts of each prompt in sampling
order, so that log-probabilities, the actor's loss (numerator and denominator of every aggregation
mode) and verl's batch metrics see those n rows only, in mini-batches of
``ppo_mini_batch_size * n`` rows.

With any other estimator the trainers are verl's own.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import transfer_queue as tq
from omegaconf import open_dict
from tensordict import TensorDict
from transfer_queue import KVBatchMeta

from verl.protocol import DataProto
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.workers.utils.padding import response_to_nested
from verl_restrain.adapters.actor_loss import NEGATIVE_FIELD, POSITIVE_FIELD, per_label_config, restrain_ppo_loss
from verl_restrain.adapters.checks import validate_training_config
from verl_restrain.adapters.registration import registered
from verl_restrain.adapters.settings import ESTIMATOR_NAME, SCORING_COMMAND
from verl_restrain.adapters.step import Vote, clustered_predictions, session_key, vote, write_advantages

__all__ = ["RestrainColocateAsyncTrainer", "RestrainTrainer"]

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

VERL_ADVANTAGE_FIELDS = ["uid", "response_mask", "rollout_log_probs", "old_log_probs"]
"""Fields of verl's advantage step that a RESTRAIN step uses (no rewards, values or reference)."""


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
        self._rollouts_per_prompt = int(config.actor_rollout_ref.rollout.n)
        self._train_rollouts = None
        self._early_vote: Vote | None = None
        if config.algorithm.adv_estimator == ESTIMATOR_NAME:
            self.restrain = validate_training_config(config)
            logger.info("RESTRAIN settings: %s", self.restrain)
            train_rollouts = self.restrain.train_rollouts
            if train_rollouts is not None and train_rollouts < self._rollouts_per_prompt:
                self._train_rollouts = train_rollouts
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

    def _vote_fields(self) -> list[str]:
        fields = ["extra_fields", *self.restrain.prompt_weight_columns]
        if self.restrain.label_mode == "offline":
            fields.append(self.restrain.offline_label_key)
        return fields

    def _check_fields(self, fetched: Any) -> None:
        missing = [name for name in self._vote_fields() if name not in fetched.keys()]
        if missing:
            raise ValueError(
                f"the training rows have no field(s) {missing}; the method reads them from the dataset "
                f"(algorithm.restrain.*_key). Create them with: {SCORING_COMMAND.format(path='<train.parquet>')}"
            )

    def _vote(self, batch: KVBatchMeta, non_tensor: dict[str, list]) -> Vote:
        return vote(
            non_tensor,
            batch.keys,
            self.restrain,
            norm_adv_by_std=bool(self.config.algorithm.get("norm_adv_by_std_in_grpo", True)),
            rollouts_per_prompt=self._rollouts_per_prompt,
            is_padding=[tag.get("is_padding", False) for tag in batch.tags],
        )

    # -- the vote/train split (algorithm.restrain.train_rollouts) --------------------------------

    def _balance_batch(self, batch: KVBatchMeta, metrics, *args, **kwargs):
        if self.restrain is None or self._train_rollouts is None:
            return super()._balance_batch(batch, metrics, *args, **kwargs)
        fields = ["uid", *self._vote_fields()]
        fetched = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        self._check_fields(fetched)
        self._early_vote = self._vote(batch, {name: _as_list(fetched.get(name)) for name in fields})
        metrics.update(self._early_vote.metrics)
        return super()._balance_batch(self._trained_rows(batch), metrics, *args, **kwargs)

    def _trained_rows(self, batch: KVBatchMeta) -> KVBatchMeta:
        """The first ``train_rollouts`` rollouts of each prompt (sampling order); the rest leave TransferQueue."""
        keep = [int(session_key(key).rsplit("_", 1)[1]) < self._train_rollouts for key in batch.keys]
        dropped = [key for key, kept in zip(batch.keys, keep, strict=True) if not kept]
        if dropped:
            tq.kv_clear(keys=dropped, partition_id=batch.partition_id)
        return KVBatchMeta(
            partition_id=batch.partition_id,
            keys=[key for key, kept in zip(batch.keys, keep, strict=True) if kept],
            tags=[tag for tag, kept in zip(batch.tags, keep, strict=True) if kept],
            fields=batch.fields,
            extra_info=batch.extra_info,
        )

    @contextmanager
    def _rows_per_prompt_in_updates(self) -> Iterator[None]:
        """verl sizes actor mini-batches (and the batch multiple it pads to) as ``ppo_mini_batch_size *
        rollout.n`` rows; a prompt brings ``train_rollouts`` rows to the update, so that is the n they see."""
        rollout = self.config.actor_rollout_ref.rollout
        with open_dict(rollout):
            rollout.n = self._train_rollouts
        try:
            yield
        finally:
            with open_dict(rollout):
                rollout.n = self._rollouts_per_prompt

    def _get_required_batch_multiple(self, dp_size: int) -> int:
        if self.restrain is None or self._train_rollouts is None:
            return super()._get_required_batch_multiple(dp_size)
        with self._rows_per_prompt_in_updates():
            return super()._get_required_batch_multiple(dp_size)

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        if self.restrain is None or self._train_rollouts is None:
            return super()._update_actor(batch, metrics)
        with self._rows_per_prompt_in_updates():
            return super()._update_actor(batch, metrics)

    # -- validation ----------------------------------------------------------------------------

    def _val_metrics_update(self, data_sources, sample_uids, reward_extra_infos_dict, *args, **kwargs):
        """verl's validation metrics, with maj@k voting on answer clusters (the ``restrain`` reward
        manager's ``pred`` and ``kind``) rather than on written forms."""
        infos = reward_extra_infos_dict
        if "pred" in infos and "kind" in infos and len(infos["pred"]) == len(sample_uids):
            infos = {**infos, "pred": clustered_predictions(sample_uids, infos["pred"], infos["kind"])}
        return super()._val_metrics_update(data_sources, sample_uids, infos, *args, **kwargs)

    # -- the advantage step --------------------------------------------------------------------

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        if self.config.algorithm.adv_estimator != ESTIMATOR_NAME:
            return super()._compute_advantage(batch, metrics)

        vote_fields = [] if self._early_vote is not None else self._vote_fields()
        entropy = ["entropy"] if self.restrain.advantage_reshaping == "entropy" else []
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=VERL_ADVANTAGE_FIELDS + vote_fields + entropy
        )
        if entropy and "entropy" not in data.keys():
            raise ValueError(
                "algorithm.restrain.advantage_reshaping=entropy needs the token entropies of verl's old-log-prob "
                "pass, and the batch has none (algorithm.rollout_correction.bypass_mode skips that pass)"
            )
        if vote_fields:
            self._check_fields(data)
        non_tensor = {name: _as_list(data.get(name)) for name in ["uid", *vote_fields]}
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

        result, self._early_vote = self._early_vote, None
        if result is None:
            result = self._vote(batch, data.non_tensor_batch)
            metrics.update(result.metrics)
        metrics.update(write_advantages(data, batch.keys, result, self.restrain))

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
