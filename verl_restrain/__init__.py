"""RESTRAIN for verl: self-training RL with self-penalization.

Importing this package imports neither verl nor Ray: the math (`advantage`, `answers`) is usable on
its own. verl picks up the integration through the ``verl.plugins`` entry point
(``verl_restrain.adapters.plugin``).
"""

from pathlib import Path

__version__ = (Path(__file__).parent / "VERSION").read_text().strip()
