"""``algorithm.restrain``: the dataclass of RESTRAIN's settings and the names it registers in verl.

The Hydra configs in :mod:`verl_restrain.config` mirror :class:`RestrainConfig`:
``restrain_trainer.yaml`` (verl's ``ppo_trainer`` plus ``algorithm.restrain``) and the method presets
``restrain_method/*.yaml`` (one per entry of :data:`verl_restrain.methods.METHODS`). The checks of a
whole verl config are in :mod:`verl_restrain.adapters.checks`. Imports neither verl nor Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from verl_restrain import defaults
from verl_restrain.methods import ADVANTAGE_RESHAPINGS, CLIP_MODES, LABEL_MODES, PROMPT_WEIGHT_SOURCES, WEIGHTINGS

__all__ = [
    "AGENT_LOOP_NAME",
    "ESTIMATOR_NAME",
    "POLICY_LOSS_NAME",
    "REWARD_MANAGER_NAME",
    "SCORING_COMMAND",
    "TRAINER_LOOPS",
    "RestrainConfig",
]

ESTIMATOR_NAME = "restrain"
"""``algorithm.adv_estimator`` of every label-free method."""
POLICY_LOSS_NAME = "restrain_per_label"
"""verl policy loss of the per-label clipped objective; the trainer installs it, it is never set by hand."""
REWARD_MANAGER_NAME = "restrain"
"""``reward.reward_manager.name`` that writes each rollout's answer for the vote."""
TRAINER_LOOPS = {"restrain": "sync", "restrain_colocate_async": "colocate_async"}
"""``trainer.v1.trainer_mode`` names registered by this package -> verl's loop each one runs."""
AGENT_LOOP_NAME = "entropy_fork_tree"
"""``actor_rollout_ref.rollout.agent.default_agent_loop`` of ETTRL's entropy-fork tree rollouts."""

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


def _one_of(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(key, f"must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class RestrainConfig:
    """``algorithm.restrain``: the RESTRAIN estimator, its loss and how its inputs are read.

    Attributes:
        weighting: pseudo-label weighting over answer clusters: ``gaussian`` (RESTRAIN),
            ``uniform`` or ``majority`` (TTRL, SRT).
        sigma: width of the shaping g(f) = exp(-(f - center)^2 / (2 sigma^2)); > 0.
        center: the vote share g peaks at; in [0, 1].
        kappa: a prompt whose most common answer has fewer than kappa of the n rollouts
            (``actor_rollout_ref.rollout.n``) is penalised; 0 <= kappa <= n; 0 turns it off. A group
            that reaches the step with fewer rollouts (some failed) keeps the share kappa / n.
        delta: every rollout of a penalised prompt gets advantage -u_x * delta; >= 0.
        use_prompt_weight: scale each prompt's advantages by its prompt weight u_x.
        prompt_weight_source: where u_x comes from. ``offline``: u_x = g(c_ref / n_ref) with this
            run's sigma and center, from the base model's counts the scoring job stored;
            ``online``: g(M / n) of the current step's own vote (the paper's Appendix E variant);
            ``column``: a number the user put in ``prompt_weight_key``, used as it is.
        prompt_weight_key: dataset column of u_x for ``prompt_weight_source=column``.
        ref_majority_count_key, ref_num_samples_key: dataset columns of c_ref and n_ref
            (written by ``restrain-score-prompts``) for ``prompt_weight_source=offline``.
        label_mode: ``self`` votes on the current rollouts; ``offline`` rewards agreement with the
            frozen base model's majority answer (SRT-offline).
        offline_label_key: dataset column holding that answer (``label_mode=offline``).
        answer_kinds: explicit data_source -> answer kind (``math`` or ``choice``); the rule that
            decides a row's kind is :func:`verl_restrain.answers.kinds.answer_kind`.
        default_answer_kind: the kind of a row no other part of that rule decides.
        clip_mode: ``per_label``: the paper's objective, the PPO clip inside each candidate label's
            loss (:func:`verl_restrain.loss.restrain_policy_loss`); ``combined``: verl's PPO loss on
            the combined advantage u_x sum_j w_j A_ij.
        advantage_reshaping: ETTRL's entropy-based advantage reshaping: ``entropy`` scales each
            rollout's advantage by Y_i = clamp(2 - H_i / H_mean, 0, 2) of its mean token entropy
            H_i against its prompt group's mean; ``clip`` clips it to [-reshaping_clip_bound,
            reshaping_clip_bound] (:func:`verl_restrain.entropy.reshape_advantage`); None for none.
        reshaping_clip_bound: beta of ``advantage_reshaping=clip``; > 0.
        train_rollouts: TTRL's vote/train split: the vote, the weights and the penalization use all
            n = ``actor_rollout_ref.rollout.n`` rollouts of a prompt, and only its first
            ``train_rollouts`` (in sampling order) enter the actor's update; None (all) or
            1 <= train_rollouts <= n.
    """

    weighting: str = "gaussian"
    sigma: float = defaults.SIGMA
    center: float = defaults.CENTER
    kappa: int = defaults.KAPPA
    delta: float = defaults.DELTA
    use_prompt_weight: bool = True
    prompt_weight_source: str = "offline"
    prompt_weight_key: str = defaults.PROMPT_WEIGHT_COLUMN
    ref_majority_count_key: str = defaults.REF_MAJORITY_COUNT_COLUMN
    ref_num_samples_key: str = defaults.REF_NUM_SAMPLES_COLUMN
    label_mode: str = "self"
    offline_label_key: str = defaults.REF_MAJORITY_ANSWER_COLUMN
    answer_kinds: Mapping[str, str] = field(default_factory=dict)
    default_answer_kind: str = "math"
    clip_mode: str = "per_label"
    advantage_reshaping: str | None = None
    reshaping_clip_bound: float = 2.0
    train_rollouts: int | None = None

    def __post_init__(self) -> None:
        _one_of("weighting", self.weighting, WEIGHTINGS)
        _one_of("label_mode", self.label_mode, LABEL_MODES)
        _one_of("prompt_weight_source", self.prompt_weight_source, PROMPT_WEIGHT_SOURCES)
        _one_of("clip_mode", self.clip_mode, CLIP_MODES)
        if self.advantage_reshaping is not None:
            _one_of("advantage_reshaping", self.advantage_reshaping, ADVANTAGE_RESHAPINGS)
        # Frozen: normalise numbers through object.__setattr__ so that YAML ints become floats.
        object.__setattr__(self, "sigma", _as_float("sigma", self.sigma))
        object.__setattr__(self, "center", _as_float("center", self.center))
        object.__setattr__(self, "delta", _as_float("delta", self.delta))
        object.__setattr__(self, "reshaping_clip_bound", _as_float("reshaping_clip_bound", self.reshaping_clip_bound))
        object.__setattr__(self, "kappa", _as_int("kappa", self.kappa))
        if not self.sigma > 0:
            _fail("sigma", f"must be > 0, got {self.sigma}")
        if not 0.0 <= self.center <= 1.0:
            _fail("center", f"must be in [0, 1], got {self.center}")
        if self.kappa < 0:
            _fail("kappa", f"must be >= 0, got {self.kappa}")
        if self.delta < 0:
            _fail("delta", f"must be >= 0, got {self.delta}")
        if not self.reshaping_clip_bound > 0:
            _fail("reshaping_clip_bound", f"must be > 0, got {self.reshaping_clip_bound}")
        if self.train_rollouts is not None:
            object.__setattr__(self, "train_rollouts", _as_int("train_rollouts", self.train_rollouts))
            if self.train_rollouts < 1:
                _fail("train_rollouts", f"must be >= 1 (or null for all), got {self.train_rollouts}")
        if not isinstance(self.use_prompt_weight, bool):
            _fail("use_prompt_weight", f"must be true or false, got {self.use_prompt_weight!r}")
        for key in ("prompt_weight_key", "ref_majority_count_key", "ref_num_samples_key", "offline_label_key"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                _fail(key, f"must be a column name, got {getattr(self, key)!r}")
        if not isinstance(self.answer_kinds, Mapping):
            _fail("answer_kinds", f"must map data_source to a kind, got {self.answer_kinds!r}")
        object.__setattr__(self, "answer_kinds", {str(k): v for k, v in self.answer_kinds.items()})
        # Imported here: the plugin entry point reads this module's names in every verl process,
        # and the answer engine is loaded only where answers are read.
        from verl_restrain.answers.kinds import KINDS

        for source, kind in self.answer_kinds.items():
            _one_of(f"answer_kinds.{source}", kind, KINDS)
        _one_of("default_answer_kind", self.default_answer_kind, KINDS)

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

    @property
    def prompt_weight_columns(self) -> tuple[str, ...]:
        """The dataset columns the prompt weight is read from (none when it is off or online)."""
        if not self.use_prompt_weight or self.prompt_weight_source == "online":
            return ()
        if self.prompt_weight_source == "column":
            return (self.prompt_weight_key,)
        return (self.ref_majority_count_key, self.ref_num_samples_key)

    @property
    def online_prompt_weight(self) -> bool:
        return self.use_prompt_weight and self.prompt_weight_source == "online"

    def answer_kind(self, data_source: Any, extra_info: Any = None) -> str:
        """The answer kind of a row (:func:`verl_restrain.answers.kinds.answer_kind` with these settings)."""
        from verl_restrain.answers.kinds import answer_kind

        return answer_kind(data_source, extra_info, self.answer_kinds, self.default_answer_kind)

    def check_rollouts(self, n: int) -> None:
        """Check kappa and train_rollouts against the number of rollouts per prompt."""
        if self.kappa > n:
            _fail("kappa", f"must be <= actor_rollout_ref.rollout.n = {n}, got {self.kappa}")
        if self.train_rollouts is not None and self.train_rollouts > n:
            _fail(
                "train_rollouts",
                f"must be <= actor_rollout_ref.rollout.n = {n} (the rollouts voted on), got {self.train_rollouts}",
            )
