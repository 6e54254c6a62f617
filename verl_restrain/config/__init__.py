"""RESTRAIN's Hydra configs: ``restrain_trainer.yaml`` and the method presets ``restrain_method/*.yaml``.

A package so that Hydra finds it as ``pkg://verl_restrain.config`` and ``--config-path`` can point at
:data:`CONFIG_DIR`. The dataclass these files mirror is
:class:`verl_restrain.adapters.settings.RestrainConfig`.

``restrain_trainer.yaml`` has one key verl does not: ``restrain_startup_checks``, an interpolation of
the resolver registered here. verl's task runner resolves the whole config before it builds any
worker, so a misconfigured RESTRAIN run stops there with a message that names the key and the fix
(:func:`verl_restrain.adapters.checks.validate_training_config`).
"""

import os

__all__ = ["CONFIG_DIR", "STARTUP_CHECKS_RESOLVER", "register_resolvers"]

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
"""Directory of ``restrain_trainer.yaml``, for ``--config-path``."""

STARTUP_CHECKS_RESOLVER = "restrain_startup_checks"


def _startup_checks(*, _root_) -> str:
    from verl_restrain.adapters.checks import startup_checks

    return startup_checks(_root_)


def register_resolvers() -> None:
    """Register the ``restrain_startup_checks`` resolver with OmegaConf (once per process)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(STARTUP_CHECKS_RESOLVER):
        OmegaConf.register_new_resolver(STARTUP_CHECKS_RESOLVER, _startup_checks)


register_resolvers()
