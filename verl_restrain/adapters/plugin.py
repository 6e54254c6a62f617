"""verl plugin entry point: registers RESTRAIN in verl's own registries.

verl imports this module on ``import verl`` in every process (the ``verl.plugins`` entry point
``restrain``, policy ``VERL_USE_EXTERNAL_PLUGINS``), the Ray workers included. Importing it
registers, through verl's registration functions:

* the advantage estimator ``restrain`` (``core_algos.register_adv_est``),
  :func:`verl_restrain.adapters.estimator.compute_restrain_outcome_advantage`;
* the reward manager ``restrain`` (``reward_loop.reward_manager.register``),
  :class:`verl_restrain.adapters.reward_manager.RestrainRewardManager`;
* the v1 trainers ``restrain`` and ``restrain_colocate_async`` (``v1.register_trainer``),
  :mod:`verl_restrain.adapters.trainer`.

verl swallows plugin import errors at debug level, so each piece is registered on its own and a
failure is loud: it is logged at ERROR with its traceback, recorded in :data:`FAILURES`, and a
placeholder is registered under the same name that raises the cause when verl uses it (instead of
verl's bare "unknown estimator/trainer/reward manager").

Registering twice is harmless: the same object again is a no-op, and a reloaded module's definition
(same module and qualified name) replaces the stale one. Any other object already registered under
one of these names is reported as a conflict.

Import order: ``verl_restrain.adapters.trainer`` and ``verl_restrain.adapters.reward_manager`` import verl, so when
one of them is imported before verl, verl's plugin loader runs this module while that adapter is
half-executed. Its piece is then deferred, and the adapter registers it in its last line
(:func:`complete_registration`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

try:
    from verl_restrain.adapters.settings import ESTIMATOR_NAME, REWARD_MANAGER_NAME, TRAINER_LOOPS
except Exception:
    # verl would swallow this at debug level; nothing can be registered without the names.
    logger.error("verl-restrain could not load verl_restrain.config; nothing is registered", exc_info=True)
    raise

__all__ = ["FAILURES", "complete_registration", "register_all"]

FAILURES: dict[str, str] = {}
"""Piece ("advantage estimator", "reward manager", "trainers") -> cause, for each that failed to load."""

_PLACEHOLDER = "_restrain_unavailable"

_DEFERRED: set[str] = set()


def _replaceable(existing: Any, new: Any) -> bool:
    """Whether ``existing`` is this package's own earlier registration of ``new``."""
    if getattr(existing, _PLACEHOLDER, False):
        return True
    return (getattr(existing, "__module__", None), getattr(existing, "__qualname__", None)) == (
        getattr(new, "__module__", None),
        getattr(new, "__qualname__", None),
    )


def _register(registry: dict, name: str, obj: Any, register: Callable[[str], Callable[[Any], Any]]) -> None:
    """``register(name)(obj)`` into verl's ``registry``, idempotently (rules in the module docstring)."""
    existing = registry.get(name)
    if existing is obj:
        return
    if existing is not None:
        if not _replaceable(existing, obj):
            raise RuntimeError(f"the name {name!r} is already registered to {existing!r} by another package")
        del registry[name]
    register(name)(obj)


def _unavailable(kind: str, name: str, cause: str) -> str:
    return (
        f"verl-restrain's {kind} {name!r} failed to load in this process ({cause}); see the ERROR logged "
        f"by verl_restrain.adapters.plugin at import time"
    )


def _register_estimator(cause: str | None = None) -> None:
    from verl.trainer.ppo import core_algos

    if cause is None:
        from verl_restrain.adapters.estimator import compute_restrain_outcome_advantage as estimator
    else:

        def estimator(*args: Any, **kwargs: Any):
            raise RuntimeError(_unavailable("advantage estimator", ESTIMATOR_NAME, cause))

        setattr(estimator, _PLACEHOLDER, True)
    _register(core_algos.ADV_ESTIMATOR_REGISTRY, ESTIMATOR_NAME, estimator, core_algos.register_adv_est)


def _register_reward_manager(cause: str | None = None) -> None:
    from verl.experimental.reward_loop.reward_manager import registry

    if cause is None:
        from verl_restrain.adapters.reward_manager import RestrainRewardManager as manager
    else:
        from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

        class manager(RewardManagerBase):  # noqa: N801
            def __init__(self, *args: Any, **kwargs: Any):
                raise RuntimeError(_unavailable("reward manager", REWARD_MANAGER_NAME, cause))

            async def run_single(self, data):
                raise RuntimeError(_unavailable("reward manager", REWARD_MANAGER_NAME, cause))

        setattr(manager, _PLACEHOLDER, True)
    _register(registry.REWARD_MANAGER, REWARD_MANAGER_NAME, manager, registry.register)


def _register_trainers(cause: str | None = None) -> None:
    from verl.trainer.ppo.v1 import trainer_base

    if cause is None:
        from verl_restrain.adapters.trainer import RestrainColocateAsyncTrainer, RestrainTrainer

        trainers = {"restrain": RestrainTrainer, "restrain_colocate_async": RestrainColocateAsyncTrainer}
    else:
        from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

        def placeholder(name: str) -> type:
            def __init__(self, config):
                raise RuntimeError(_unavailable("trainer", name, cause))

            return type(f"Unavailable_{name}", (PPOTrainerSync,), {"__init__": __init__, _PLACEHOLDER: True})

        trainers = {name: placeholder(name) for name in TRAINER_LOOPS}
    for name, trainer in trainers.items():
        _register(trainer_base.TRAINER_REGISTRY, name, trainer, trainer_base.register_trainer)


_PIECES = {
    "advantage estimator": _register_estimator,
    "reward manager": _register_reward_manager,
    "trainers": _register_trainers,
}
_ADAPTERS = {
    "advantage estimator": ("verl_restrain.adapters.estimator", ("compute_restrain_outcome_advantage",)),
    "reward manager": ("verl_restrain.adapters.reward_manager", ("RestrainRewardManager",)),
    "trainers": ("verl_restrain.adapters.trainer", ("RestrainTrainer", "RestrainColocateAsyncTrainer")),
}


def _half_imported(piece: str) -> bool:
    """Whether the piece's adapter module is being imported right now (its import imported verl)."""
    module_name, names = _ADAPTERS[piece]
    module = sys.modules.get(module_name)
    return module is not None and not all(hasattr(module, name) for name in names)


def _register_piece(piece: str) -> None:
    register = _PIECES[piece]
    try:
        register()
        FAILURES.pop(piece, None)
    except Exception as error:
        cause = f"{type(error).__name__}: {error}"
        FAILURES[piece] = cause
        logger.error("verl-restrain could not register its %s: %s", piece, cause, exc_info=True)
        try:
            register(cause)
        except Exception:
            logger.error("verl-restrain could not register a placeholder for its %s", piece, exc_info=True)


def register_all() -> dict[str, str]:
    """Register every piece (deferring any whose adapter is mid-import); returns :data:`FAILURES`."""
    for piece in _PIECES:
        if _half_imported(piece):
            _DEFERRED.add(piece)
        else:
            _register_piece(piece)
    return FAILURES


def complete_registration(piece: str) -> None:
    """Register ``piece`` if :func:`register_all` deferred it; called at the end of its adapter module."""
    if piece in _DEFERRED:
        _DEFERRED.discard(piece)
        _register_piece(piece)


register_all()
