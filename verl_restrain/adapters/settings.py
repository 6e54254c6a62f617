"""RESTRAIN's configuration: the ``algorithm.restrain`` dataclass and the checks run at startup.

The Hydra configs in :mod:`verl_restrain.config` mirror :class:`RestrainConfig`:
``restrain_trainer.yaml`` (verl's ``ppo_trainer`` plus ``algorithm.restrain``) and the method presets
``restrain_method/*.yaml`` (one per entry of :data:`verl_restrain.methods.METHODS`).

This module imports neither verl nor Ray: it reads verl's config as an OmegaConf tree and the
training parquet schemas with pyarrow.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from verl_restrain import defaults
from verl_restrain.methods import LABEL_MODES, WEIGHTINGS

__all__ = [
    "DEFAULT_ANSWER_KINDS",
    "ESTIMATOR_NAME",
    "REWARD_MANAGER_NAME",
    "TRAINER_LOOPS",
    "RestrainConfig",
    "validate_training_config",
]

logger = logging.getLogger(__name__)

ESTIMATOR_NAME = "restrain"
"""``algorithm.adv_estimator`` of every label-free method."""
REWARD_MANAGER_NAME = "restrain"
"""``reward.reward_manager.name`` that writes each rollout's answer for the vote."""
TRAINER_LOOPS = {"restrain": "sync", "restrain_colocate_async": "colocate_async"}
"""``trainer.v1.trainer_mode`` names registered by this package -> verl's loop each one runs."""

DEFAULT_ANSWER_KINDS = {"gpqa_diamond": "choice", "mmlu_stem": "choice"}
"""Data sources whose answers are option letters; every other source is ``default_answer_kind``."""

SCORING_COMMAND = "restrain-score-prompts --input {path} --output <scored.parquet> --model <base model>"


def _fail(key: str, message: str) -> None:
    raise ValueError(f"algorithm.restrain.{key} {message}")


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(key, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        _fail(key, f"must be finite, got {value!r}")
    return float(value)


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        _fail(key, f"must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class RestrainConfig:
    """``algorithm.restrain``: the RESTRAIN estimator and how its inputs are read.

    Attributes:
        weighting: pseudo-label weighting over answer clusters: ``gaussian`` (RESTRAIN),
            ``uniform`` or ``majority`` (TTRL, SRT).
        sigma: width of the shaping g(f) = exp(-(f - center)^2 / (2 sigma^2)); > 0.
        center: the vote share g peaks at; in [0, 1].
        kappa: a prompt whose most common answer has fewer than kappa of the n rollouts is
            penalised; 0 <= kappa <= n (``actor_rollout_ref.rollout.n``); 0 turns penalization off.
        delta: every rollout of a penalised prompt gets advantage -u_x * delta; >= 0.
        use_prompt_weight: scale each prompt's advantages by its offline weight u_x.
        prompt_weight_key: dataset column holding u_x (written by ``restrain-score-prompts``).
        label_mode: ``self`` votes on the current rollouts; ``offline`` rewards agreement with the
            frozen base model's majority answer (SRT-offline).
        offline_label_key: dataset column holding that answer (``label_mode=offline``).
        answer_kinds: data_source -> answer kind (``math`` or ``choice``).
        default_answer_kind: the kind of every data source not in ``answer_kinds``.
    """

    weighting: str = "gaussian"
    sigma: float = defaults.SIGMA
    center: float = defaults.CENTER
    kappa: int = defaults.KAPPA
    delta: float = defaults.DELTA
    use_prompt_weight: bool = True
    prompt_weight_key: str = defaults.PROMPT_WEIGHT_COLUMN
    label_mode: str = "self"
    offline_label_key: str = defaults.REF_MAJORITY_ANSWER_COLUMN
    answer_kinds: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ANSWER_KINDS))
    default_answer_kind: str = "math"

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            _fail("weighting", f"must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.label_mode not in LABEL_MODES:
            _fail("label_mode", f"must be one of {LABEL_MODES}, got {self.label_mode!r}")
        # Frozen: normalise numbers through object.__setattr__ so that YAML ints become floats.
        object.__setattr__(self, "sigma", _as_float("sigma", self.sigma))
        object.__setattr__(self, "center", _as_float("center", self.center))
        object.__setattr__(self, "delta", _as_float("delta", self.delta))
        object.__setattr__(self, "kappa", _as_int("kappa", self.kappa))
        if not self.sigma > 0:
            _fail("sigma", f"must be > 0, got {self.sigma}")
        if not 0.0 <= self.center <= 1.0:
            _fail("center", f"must be in [0, 1], got {self.center}")
        if self.kappa < 0:
            _fail("kappa", f"must be >= 0, got {self.kappa}")
        if self.delta < 0:
            _fail("delta", f"must be >= 0, got {self.delta}")
        if not isinstance(self.use_prompt_weight, bool):
            _fail("use_prompt_weight", f"must be true or false, got {self.use_prompt_weight!r}")
        for key in ("prompt_weight_key", "offline_label_key"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                _fail(key, f"must be a column name, got {getattr(self, key)!r}")
        if not isinstance(self.answer_kinds, Mapping):
            _fail("answer_kinds", f"must map data_source to a kind, got {self.answer_kinds!r}")
        object.__setattr__(self, "answer_kinds", {str(k): v for k, v in self.answer_kinds.items()})
        # Imported here so that the plugin entry point can load this module even if answers cannot.
        from verl_restrain.answers import KINDS

        for source, kind in self.answer_kinds.items():
            if kind not in KINDS:
                _fail(f"answer_kinds.{source}", f"must be one of {KINDS}, got {kind!r}")
        if self.default_answer_kind not in KINDS:
            _fail("default_answer_kind", f"must be one of {KINDS}, got {self.default_answer_kind!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> RestrainConfig:
        """Build from a plain mapping or an OmegaConf node; missing keys take their defaults."""
        if values is None:
            return cls()
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(values, DictConfig):
                values = OmegaConf.to_container(values, resolve=True)
        except ImportError:
            pass
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown key(s) algorithm.restrain.{unknown}; known keys: {sorted(known)}")
        return cls(**dict(values))

    @classmethod
    def from_algorithm(cls, algorithm: Mapping[str, Any] | None) -> RestrainConfig:
        """Read ``algorithm.restrain`` from verl's ``algorithm`` config (defaults if absent)."""
        if algorithm is None:
            return cls()
        return cls.from_mapping(algorithm.get("restrain", None))

    def answer_kind(self, data_source: Any) -> str:
        """The answer kind of rollouts from ``data_source``."""
        return self.answer_kinds.get(str(data_source), self.default_answer_kind)

    def check_rollouts(self, n: int) -> None:
        """Check kappa against the number of rollouts per prompt."""
        if self.kappa > n:
            _fail("kappa", f"must be <= actor_rollout_ref.rollout.n = {n}, got {self.kappa}")


def _train_files(config: Mapping[str, Any]) -> list[str]:
    files = config["data"].get("train_files", None)
    if files is None:
        return []
    if isinstance(files, str):
        return [files]
    return [str(path) for path in files]


def _check_column(path: str, column: str, setting: str, alternative: str, allow_null: bool) -> None:
    """Fail unless the local parquet ``path`` has ``column`` (and, unless ``allow_null``, no nulls).

    Files that are not local parquet files (``hdfs://``, json) are checked when their rows reach
    the advantage step instead.
    """
    local = os.path.expanduser(path)
    if not (local.endswith(".parquet") and os.path.isfile(local)):
        logger.info("not checking %s for column %r before training: not a local parquet file", path, column)
        return
    import pyarrow.parquet as pq

    create = f"create it with the offline scoring job: {SCORING_COMMAND.format(path=path)}, then train on its output"
    if column not in pq.read_schema(local).names:
        raise ValueError(
            f"{setting} reads column {column!r}, but training file {path} has no such column; "
            f"{create}{alternative}."
        )
    if not allow_null:
        missing = pq.read_table(local, columns=[column]).column(column).null_count
        if missing:
            raise ValueError(
                f"{setting} reads column {column!r}, but {missing} row(s) of {path} have no value; "
                f"{create}{alternative}."
            )


def validate_training_config(config: Mapping[str, Any]) -> RestrainConfig:
    """Check a composed verl config for a RESTRAIN run before any worker starts.

    Checks ``algorithm.restrain`` itself, kappa <= ``actor_rollout_ref.rollout.n``, the verl
    settings that would mix gold labels or in-reward KL into a label-free signal, the reward
    manager, and that every local training parquet has the columns the method reads.

    Returns:
        The parsed :class:`RestrainConfig`.

    Raises:
        ValueError: naming the offending key or file, and the fix.
    """
    algorithm = config["algorithm"]
    restrain = RestrainConfig.from_algorithm(algorithm)
    restrain.check_rollouts(int(config["actor_rollout_ref"]["rollout"]["n"]))

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
    trainer_mode = config["trainer"]["v1"]["trainer_mode"]
    if trainer_mode not in TRAINER_LOOPS:
        raise ValueError(
            f"algorithm.adv_estimator=restrain needs the trainer that votes per prompt: set "
            f"trainer.v1.trainer_mode=restrain (or one of {sorted(TRAINER_LOOPS)}), got {trainer_mode!r}."
        )

    for path in _train_files(config):
        if restrain.use_prompt_weight:
            _check_column(
                path,
                restrain.prompt_weight_key,
                "algorithm.restrain.use_prompt_weight=true",
                "; or train without prompt weights (restrain_method=no_prompt_weighting or "
                "algorithm.restrain.use_prompt_weight=false)",
                allow_null=False,
            )
        if restrain.label_mode == "offline":
            # A null label is a prompt on which the base model gave no answer: no rollout matches it.
            _check_column(
                path, restrain.offline_label_key, "algorithm.restrain.label_mode=offline", "", allow_null=True
            )
    return restrain
