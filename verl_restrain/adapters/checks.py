"""Checks of a whole verl config for a RESTRAIN run, before any worker starts.

:func:`validate_training_config` runs in verl's task runner when it resolves the config (the
``restrain_startup_checks`` key of ``restrain_trainer.yaml``), again when the ``restrain`` trainer is
built, and in ``python -m verl_restrain.adapters.main_ppo`` before Ray starts. Every failure is a
:class:`ValueError` that names the key or file and the fix. Imports neither verl nor Ray.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from verl_restrain.adapters.settings import (
    ESTIMATOR_NAME,
    REWARD_MANAGER_NAME,
    SCORING_COMMAND,
    TRAINER_LOOPS,
    RestrainConfig,
)

__all__ = ["bad_prompt_weight_rows", "validate_training_config"]

logger = logging.getLogger(__name__)

MAX_ROWS_NAMED = 5
"""Bad rows named in an error message (the count of all of them is given too)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any, low: int) -> bool:
    return _is_number(value) and value == int(value) and value >= low


def bad_prompt_weight_rows(restrain: RestrainConfig, columns: Mapping[str, Sequence[Any]]) -> list[int]:
    """Rows whose prompt-weight inputs are unusable, in order.

    Args:
        restrain: the settings; :attr:`RestrainConfig.prompt_weight_columns` says what is read.
        columns: column name -> the values of those columns (nulls as None).

    ``prompt_weight_source=offline`` needs integers 0 <= c_ref <= n_ref with n_ref >= 1;
    ``column`` needs finite numbers >= 0.
    """
    if restrain.prompt_weight_source == "column":
        return [row for row, u in enumerate(columns[restrain.prompt_weight_key]) if not (_is_number(u) and u >= 0)]
    counts, samples = columns[restrain.ref_majority_count_key], columns[restrain.ref_num_samples_key]
    return [
        row
        for row, (c, n) in enumerate(zip(counts, samples, strict=True))
        if not (_is_count(n, 1) and _is_count(c, 0) and c <= n)
    ]


def describe_bad_rows(restrain: RestrainConfig, columns: Mapping[str, Sequence[Any]], rows: Sequence[int]) -> str:
    """'N row(s) (row r: values, ...)' for an error message."""
    names = restrain.prompt_weight_columns
    shown = ", ".join(
        f"row {row}: " + "/".join(repr(columns[name][row]) for name in names) for row in rows[:MAX_ROWS_NAMED]
    )
    more = "" if len(rows) <= MAX_ROWS_NAMED else f", and {len(rows) - MAX_ROWS_NAMED} more"
    return f"{len(rows)} row(s) ({shown}{more})"


def prompt_weight_requirement(restrain: RestrainConfig) -> str:
    """What the prompt-weight columns must hold, and how to fix them."""
    if restrain.prompt_weight_source == "column":
        what = f"column {restrain.prompt_weight_key!r} must hold a finite number >= 0 in every row"
    else:
        what = (
            f"columns {restrain.ref_majority_count_key!r} (c_ref) and {restrain.ref_num_samples_key!r} (n_ref) "
            "must hold integers with 0 <= c_ref <= n_ref and n_ref >= 1 in every row"
        )
    return (
        f"algorithm.restrain.prompt_weight_source={restrain.prompt_weight_source}: {what}. Rescore the training "
        f"data with: {SCORING_COMMAND.format(path='<train.parquet>')}; or train without prompt weights "
        "(restrain_method=no_prompt_weighting or algorithm.restrain.use_prompt_weight=false)"
    )


def _train_files(config: Mapping[str, Any]) -> list[str]:
    files = config["data"].get("train_files", None)
    if files is None:
        return []
    if isinstance(files, str):
        return [files]
    return [str(path) for path in files]


def _check_file(path: str, restrain: RestrainConfig) -> None:
    """Fail unless the local parquet ``path`` has every column the method reads, with usable values.

    Files that are not local parquet files (``hdfs://``, json) are checked when their rows reach the
    advantage step instead.
    """
    local = os.path.expanduser(path)
    if not (local.endswith(".parquet") and os.path.isfile(local)):
        logger.info("not checking %s before training: not a local parquet file", path)
        return
    import pyarrow.parquet as pq

    create = f"create it with the offline scoring job: {SCORING_COMMAND.format(path=path)}, then train on its output"
    available = set(pq.read_schema(local).names)
    if restrain.label_mode == "offline" and restrain.offline_label_key not in available:
        # A null label is a prompt on which the base model gave no answer: no rollout matches it.
        raise ValueError(
            f"algorithm.restrain.label_mode=offline reads column {restrain.offline_label_key!r}, but training "
            f"file {path} has no such column; {create}."
        )
    columns = restrain.prompt_weight_columns
    if not columns:
        return
    missing = [name for name in columns if name not in available]
    if missing:
        raise ValueError(
            f"algorithm.restrain.use_prompt_weight=true (prompt_weight_source={restrain.prompt_weight_source}) "
            f"reads column(s) {missing}, but training file {path} has no such column; {create}; or train "
            "without prompt weights (restrain_method=no_prompt_weighting or algorithm.restrain.use_prompt_weight=false)."
        )
    values = {name: pq.read_table(local, columns=[name]).column(name).to_pylist() for name in columns}
    bad = bad_prompt_weight_rows(restrain, values)
    if bad:
        raise ValueError(
            f"training file {path}: {describe_bad_rows(restrain, values, bad)} cannot give a prompt weight. "
            f"{prompt_weight_requirement(restrain)}."
        )


def _check_switches(config: Mapping[str, Any]) -> None:
    """The verl settings RESTRAIN cannot run with, each with the key and the fix."""
    algorithm = config["algorithm"]
    trainer = config["trainer"]
    if not trainer.get("use_v1", True):
        raise ValueError(
            "algorithm.adv_estimator=restrain runs on verl's v1 trainer; set trainer.use_v1=true (got false: the "
            "legacy trainer cannot pass the rollouts' answers to the estimator)."
        )
    trainer_mode = trainer["v1"]["trainer_mode"]
    if trainer_mode not in TRAINER_LOOPS:
        raise ValueError(
            f"algorithm.adv_estimator=restrain needs the trainer that votes per prompt: set "
            f"trainer.v1.trainer_mode=restrain (or one of {sorted(TRAINER_LOOPS)}), got {trainer_mode!r}."
        )
    critic = config.get("critic", None)
    if critic is not None and critic.get("enable", None) is True:
        raise ValueError(
            "critic.enable=true does not apply to algorithm.adv_estimator=restrain: the advantage comes from the "
            "votes, not from a value function. Set critic.enable=false (or leave it unset)."
        )
    if algorithm.get("use_kl_in_reward", False):
        raise ValueError(
            "algorithm.use_kl_in_reward=true does not apply to algorithm.adv_estimator=restrain: the RESTRAIN "
            "advantage comes from the votes, not from the reward. Set algorithm.use_kl_in_reward=false and use "
            "actor_rollout_ref.actor.use_kl_loss=true for a KL term."
        )
    filter_groups = algorithm.get("filter_groups", None)
    if filter_groups is not None and filter_groups.get("enable", False):
        raise ValueError(
            "algorithm.filter_groups.enable=true selects prompts by the reward manager's scores, which are "
            "computed from the gold labels; that would break the label-free guarantee of "
            "algorithm.adv_estimator=restrain. Set algorithm.filter_groups.enable=false."
        )
    reward_manager = config["reward"]["reward_manager"]
    if reward_manager.get("source", "register") == "register" and reward_manager.get("name") != REWARD_MANAGER_NAME:
        raise ValueError(
            f"algorithm.adv_estimator=restrain votes on the answers written by the '{REWARD_MANAGER_NAME}' reward "
            f"manager; set reward.reward_manager.name={REWARD_MANAGER_NAME} "
            f"(got {reward_manager.get('name')!r})."
        )
    if config["reward"]["reward_model"].get("enable", False):
        raise ValueError(
            "reward.reward_model.enable=true scores rollouts with a reward model instead of the "
            f"'{REWARD_MANAGER_NAME}' reward manager, so no answers reach the vote; set "
            "reward.reward_model.enable=false with algorithm.adv_estimator=restrain."
        )


def _check_reshaping(config: Mapping[str, Any], restrain: RestrainConfig) -> None:
    if restrain.advantage_reshaping != "entropy":
        return
    rollout_correction = config["algorithm"].get("rollout_correction", None)
    if rollout_correction is not None and rollout_correction.get("bypass_mode", False):
        raise ValueError(
            "algorithm.restrain.advantage_reshaping=entropy reads the token entropies verl computes with the old "
            "log-probabilities, which algorithm.rollout_correction.bypass_mode=true skips; set "
            "algorithm.rollout_correction.bypass_mode=false, or algorithm.restrain.advantage_reshaping=clip."
        )


def _check_loss(config: Mapping[str, Any], restrain: RestrainConfig) -> None:
    if restrain.clip_mode != "per_label":
        return
    loss_mode = config["actor_rollout_ref"]["actor"].get("policy_loss", {}).get("loss_mode", "vanilla")
    if loss_mode != "vanilla":
        raise ValueError(
            "algorithm.restrain.clip_mode=per_label computes verl's vanilla clipped loss inside each candidate "
            f"label's loss; actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode} cannot be combined with it. "
            "Set actor_rollout_ref.actor.policy_loss.loss_mode=vanilla, or algorithm.restrain.clip_mode=combined "
            f"to train with loss_mode={loss_mode} on the combined advantage."
        )


def validate_training_config(config: Mapping[str, Any]) -> RestrainConfig:
    """Check a composed verl config for a RESTRAIN run before any worker starts.

    Checks ``algorithm.restrain`` itself, kappa <= ``actor_rollout_ref.rollout.n``, the verl settings
    RESTRAIN cannot run with (the legacy trainer, a trainer that does not vote, a critic, gold-derived
    rewards or filters, another reward manager, a policy loss the per-label clip cannot wrap), and
    that every local training parquet has the columns the method reads, with usable values.

    Returns:
        The parsed :class:`RestrainConfig`.

    Raises:
        ValueError: naming the offending key or file, and the fix.
    """
    restrain = RestrainConfig.from_algorithm(config["algorithm"])
    restrain.check_rollouts(int(config["actor_rollout_ref"]["rollout"]["n"]))
    _check_switches(config)
    _check_loss(config, restrain)
    _check_reshaping(config, restrain)
    for path in _train_files(config):
        _check_file(path, restrain)
    return restrain


def startup_checks(root: Mapping[str, Any]) -> str:
    """The ``restrain_startup_checks`` resolver: :func:`validate_training_config` for RESTRAIN runs."""
    if root["algorithm"].get("adv_estimator", None) != ESTIMATOR_NAME:
        return "not a RESTRAIN run"
    validate_training_config(root)
    return "passed"
