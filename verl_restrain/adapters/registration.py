"""Registering an adapter in one of verl's registries where the adapter is defined.

verl's own idiom is a decorator on the definition (``@register_adv_est("grpo")``). :func:`registered`
is that decorator made idempotent, because a process may define an adapter twice (a module reload) and
verl's decorators refuse a second object under a taken name:

* the same object again is a no-op;
* a redefinition by the same module and qualified name replaces the stale one;
* any other object already under the name is a conflict (:class:`RuntimeError`).

Every registration is also recorded in :data:`DECLARED`, so that the plugin entry point can check
and re-apply them (:func:`verl_restrain.adapters.plugin.register_all`). Imports nothing from verl.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DECLARED", "PLACEHOLDER", "Registration", "register_idempotent", "registered"]

PLACEHOLDER = "_restrain_unavailable"
"""Attribute set on the stand-ins the plugin registers for an adapter that failed to load."""


def _replaceable(existing: Any, new: Any) -> bool:
    """Whether ``existing`` is this package's own earlier registration of ``new``."""
    if getattr(existing, PLACEHOLDER, False):
        return True
    return (getattr(existing, "__module__", None), getattr(existing, "__qualname__", None)) == (
        getattr(new, "__module__", None),
        getattr(new, "__qualname__", None),
    )


def register_idempotent(registry: dict, name: str, obj: Any, register: Callable[[str], Callable[[Any], Any]]) -> None:
    """``register(name)(obj)`` into verl's ``registry`` by the rules in the module docstring."""
    existing = registry.get(name)
    if existing is obj:
        return
    if existing is not None:
        if not _replaceable(existing, obj):
            raise RuntimeError(f"the name {name!r} is already registered to {existing!r} by another package")
        del registry[name]
    register(name)(obj)


@dataclass(frozen=True)
class Registration:
    """``obj`` under ``name`` in the registry ``module.registry``, added by ``module.register(name)``."""

    piece: str
    module: str
    registry: str
    register: str
    name: str
    obj: Any

    def apply(self) -> None:
        verl_module = importlib.import_module(self.module)
        register_idempotent(getattr(verl_module, self.registry), self.name, self.obj, getattr(verl_module, self.register))


DECLARED: dict[str, list[Registration]] = {}
"""Piece -> the registrations its adapter module declared, latest definition of each name."""


def registered(piece: str, module: str, registry: str, register: str, name: str) -> Callable[[Any], Any]:
    """Decorator: register the decorated object now and record it under ``piece`` in :data:`DECLARED`.

    Args:
        piece: the plugin's name for the adapter ("advantage estimator", "trainers", ...).
        module, registry, register: the verl module, its registry dict and its decorator factory.
        name: the name to register under.
    """

    def decorator(obj: Any) -> Any:
        registration = Registration(piece, module, registry, register, name, obj)
        declared = [r for r in DECLARED.get(piece, []) if (r.module, r.name) != (module, name)]
        DECLARED[piece] = [*declared, registration]
        registration.apply()
        return obj

    return decorator
