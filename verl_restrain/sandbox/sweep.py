"""Sensitivity of RESTRAIN to sigma, kappa and delta in the sandbox.

The paper does not publish its values of these hyperparameters, so the sweep shows where the
simulated dynamics are stable. Each grid point trains RESTRAIN for every seed of the config with
the listed parameters changed and the others at the config's values; TTRL does not depend on any
of them (majority weighting, no penalization, no prompt weight) and is trained once per seed as the
reference. A change of sigma also changes the prompt weight u_x = g(M_ref / n), as re-scoring the
data with ``--sigma`` would.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from tqdm.auto import tqdm

from verl_restrain.sandbox.loop import SandboxConfig, make_setup, run_method

__all__ = ["SWEEP_GRID", "parse_sweep", "run_sweep"]

# The project's default sits inside each range, with values on both sides of it.
SWEEP_GRID: dict[str, list] = {
    "sigma": [0.2, 0.4, 0.8, 1.6],
    "kappa": [2, 4, 6, 8],
    "delta": [0.25, 0.5, 1.0],
}


def parse_sweep(text: str) -> tuple[str, ...]:
    """``"sigma,kappa"`` -> ("sigma", "kappa"), checked against :data:`SWEEP_GRID`."""
    params = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [param for param in params if param not in SWEEP_GRID]
    if not params or unknown or len(set(params)) != len(params):
        raise ValueError(f"expected distinct comma-separated names from {', '.join(SWEEP_GRID)}, got {text!r}")
    return params


def run_sweep(config: SandboxConfig, params: tuple[str, ...], progress: bool = True) -> list[dict]:
    """Train RESTRAIN at every point of the grid over ``params``.

    Returns:
        One dict per grid point: the swept values, ``restrain`` (final held-out pass@1 per seed)
        and ``ttrl`` (the same for TTRL, identical at every point).
    """
    grid = [dict(zip(params, values)) for values in itertools.product(*(SWEEP_GRID[p] for p in params))]
    bar = tqdm(total=len(config.seeds) * (len(grid) + 1), desc="sweep", disable=not progress)
    ttrl: list[float] = []
    restrain: list[list[float]] = [[] for _ in grid]
    for seed in config.seeds:
        setup = make_setup(config, seed)
        bar.set_postfix_str(f"seed={seed} ttrl")
        ttrl.append(run_method("ttrl", setup, config)["pass1_heldout"][-1])
        bar.update()
        for index, values in enumerate(grid):
            point_config = replace(config, **values)
            point_setup = make_setup(point_config, seed) if "sigma" in values else setup
            bar.set_postfix_str(f"seed={seed} " + " ".join(f"{k}={v}" for k, v in values.items()))
            restrain[index].append(run_method("restrain", point_setup, point_config)["pass1_heldout"][-1])
            bar.update()
    bar.close()
    return [{**values, "restrain": restrain[index], "ttrl": list(ttrl)} for index, values in enumerate(grid)]
