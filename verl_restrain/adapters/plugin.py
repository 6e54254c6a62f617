"""verl plugin entry point: RESTRAIN's pieces reach verl's registries when verl first needs them.

verl imports this module on ``import verl`` in every process (the ``verl.plugins`` entry point
``restrain``, policy ``VERL_USE_EXTERNAL_PLUGINS``): the driver, the task runner and every Ray
worker, the reward and rollout workers included. Most of those processes never build a trainer, so
importing this module imports nothing of verl. Each piece is loaded right after the verl module that
holds its registry finishes importing (an import hook on that module), and registers itself where it
is defined (:mod:`verl_restrain.adapters.registration`):

=====================  ==============================================  ===================================
piece                  loaded after                                    adapter
=====================  ==============================================  ===================================
advantage estimator    ``verl.trainer.ppo.core_algos``                 :mod:`~verl_restrain.adapters.estimator`
policy loss            ``verl.trainer.ppo.core_algos``                 :mod:`~verl_restrain.adapters.actor_loss`
reward manager         ``verl.experimental.reward_loop.reward_manager``  :mod:`~verl_restrain.adapters.reward_manager`
trainers               ``verl.trainer.ppo.v1``                         :mod:`~verl_restrain.adapters.trainer`
agent loop             ``verl.experimental.agent_loop.agent_loop``     :mod:`~verl_restrain.adapters.tree_rollout`
=====================  ==============================================  ===================================

verl swallows plugin import errors at debug level, so a piece that fails to load is loud: it is
logged at ERROR with its traceback, recorded in :data:`FAILURES`, and a placeholder is registered
under its name that raises the cause when verl uses it (instead of verl's bare "unknown estimator").
Registering twice is harmless (:func:`register_all`, module reloads).
"""

from __future__ import annotations

import importlib
import importlib.abc
import logging
import sys
from collections.abc import Callable
from typing import Any

from verl_restrain.adapters.registration import DECLARED, PLACEHOLDER, register_idempotent
from verl_restrain.adapters.settings import (
    AGENT_LOOP_NAME,
    ESTIMATOR_NAME,
    POLICY_LOSS_NAME,
    REWARD_MANAGER_NAME,
    TRAINER_LOOPS,
)
from verl_restrain.config import register_resolvers

logger = logging.getLogger(__name__)

__all__ = ["FAILURES", "PIECES", "register_all"]

PIECES: dict[str, tuple[str, str]] = {
    "advantage estimator": ("verl.trainer.ppo.core_algos", "verl_restrain.adapters.estimator"),
    "policy loss": ("verl.trainer.ppo.core_algos", "verl_restrain.adapters.actor_loss"),
    "reward manager": ("verl.experimental.reward_loop.reward_manager", "verl_restrain.adapters.reward_manager"),
    "trainers": ("verl.trainer.ppo.v1", "verl_restrain.adapters.trainer"),
    "agent loop": ("verl.experimental.agent_loop.agent_loop", "verl_restrain.adapters.tree_rollout"),
}
"""Piece -> (the verl module whose import loads it, the adapter module that registers it)."""

FAILURES: dict[str, str] = {}
"""Piece -> cause, for each piece that failed to load in this process."""

_register = register_idempotent


def _unavailable(kind: str, name: str, cause: str) -> str:
    return (
        f"verl-restrain's {kind} {name!r} failed to load in this process ({cause}); see the ERROR logged "
        f"by verl_restrain.adapters.plugin at import time"
    )


def _raiser(kind: str, name: str, cause: str) -> Callable[..., Any]:
    def unavailable(*args: Any, **kwargs: Any):
        raise RuntimeError(_unavailable(kind, name, cause))

    setattr(unavailable, PLACEHOLDER, True)
    return unavailable


def _register_placeholders(piece: str, cause: str) -> None:
    """Register, under each name of ``piece``, a stand-in that raises ``cause`` when verl uses it."""
    if piece == "advantage estimator":
        from verl.trainer.ppo import core_algos

        estimator = _raiser("advantage estimator", ESTIMATOR_NAME, cause)
        _register(core_algos.ADV_ESTIMATOR_REGISTRY, ESTIMATOR_NAME, estimator, core_algos.register_adv_est)
    elif piece == "policy loss":
        from verl.trainer.ppo import core_algos

        loss = _raiser("policy loss", POLICY_LOSS_NAME, cause)
        _register(core_algos.POLICY_LOSS_REGISTRY, POLICY_LOSS_NAME, loss, core_algos.register_policy_loss)
    elif piece == "reward manager":
        from verl.experimental.reward_loop.reward_manager import registry
        from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

        fail = _raiser("reward manager", REWARD_MANAGER_NAME, cause)
        manager = type("UnavailableRewardManager", (RewardManagerBase,), {"__init__": fail, "run_single": fail})
        setattr(manager, PLACEHOLDER, True)
        _register(registry.REWARD_MANAGER, REWARD_MANAGER_NAME, manager, registry.register)
    elif piece == "trainers":
        from verl.trainer.ppo.v1 import trainer_base
        from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

        for name in TRAINER_LOOPS:
            trainer = type(
                f"Unavailable_{name}", (PPOTrainerSync,), {"__init__": _raiser("trainer", name, cause), PLACEHOLDER: True}
            )
            _register(trainer_base.TRAINER_REGISTRY, name, trainer, trainer_base.register_trainer)
    elif piece == "agent loop":
        from verl.experimental.agent_loop import agent_loop

        # verl's agent-loop registry holds import targets: instantiating this one raises the cause.
        target = {"_target_": f"{PIECES[piece][1]}.EntropyForkTreeAgentLoop"}
        agent_loop._agent_loop_registry.setdefault(AGENT_LOOP_NAME, target)


def _load(piece: str) -> None:
    """Import ``piece``'s adapter (which registers itself) and re-apply its registrations; never raises."""
    try:
        importlib.import_module(PIECES[piece][1])
        for registration in DECLARED.get(piece, []):
            registration.apply()
        FAILURES.pop(piece, None)
    except Exception as error:
        cause = f"{type(error).__name__}: {error}"
        FAILURES[piece] = cause
        logger.error("verl-restrain could not register its %s: %s", piece, cause, exc_info=True)
        try:
            _register_placeholders(piece, cause)
        except Exception:
            logger.error("verl-restrain could not register a placeholder for its %s", piece, exc_info=True)


def register_all() -> dict[str, str]:
    """Load every piece now (importing the verl modules that hold the registries); returns :data:`FAILURES`."""
    for piece in PIECES:
        _load(piece)
    return FAILURES


class _NotifyingLoader(importlib.abc.Loader):
    """Runs ``callback`` once the wrapped loader has executed its module, then steps aside."""

    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self._loader
        self._callback()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class AfterImport(importlib.abc.MetaPathFinder):
    """A meta-path finder that calls back once a watched module has been imported."""

    def __init__(self) -> None:
        self.pending: dict[str, list[str]] = {}

    def watch(self, module: str, piece: str) -> None:
        self.pending.setdefault(module, []).append(piece)

    def find_spec(self, fullname: str, path: Any, target: Any = None):
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        pieces = self.pending.pop(fullname)
        if spec.loader is not None:
            spec.loader = _NotifyingLoader(spec.loader, lambda: [_load(piece) for piece in pieces])
        return spec


def _imported(module: str) -> bool:
    loaded = sys.modules.get(module)
    return loaded is not None and not getattr(getattr(loaded, "__spec__", None), "_initializing", False)


def _install() -> None:
    """Load the pieces whose verl module is already imported; watch for the others."""
    ours = (__name__, AfterImport.__qualname__)
    sys.meta_path[:] = [f for f in sys.meta_path if (type(f).__module__, type(f).__qualname__) != ours]
    finder = AfterImport()
    for piece, (trigger, _) in PIECES.items():
        if _imported(trigger):
            _load(piece)
        else:
            finder.watch(trigger, piece)
    if finder.pending:
        sys.meta_path.insert(0, finder)


register_resolvers()
_install()
