"""RESTRAIN's Hydra configs: ``restrain_trainer.yaml`` and the method presets ``restrain_method/*.yaml``.

A package so that Hydra finds it as ``pkg://verl_restrain.config`` and ``--config-path`` can point at
:data:`CONFIG_DIR`. The dataclass these files mirror is
:class:`verl_restrain.adapters.settings.RestrainConfig`.
"""

import os

__all__ = ["CONFIG_DIR"]

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
"""Directory of ``restrain_trainer.yaml``, for ``--config-path``."""
