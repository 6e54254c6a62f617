"""verl adapters: the only code of this package that imports verl.

``plugin`` is verl's entry point (``verl.plugins``); ``estimator``, ``reward_manager`` and ``trainer``
each register themselves in verl's registries; ``settings`` holds the ``algorithm.restrain``
dataclass and the startup checks. Importing this package imports nothing from verl.
"""
