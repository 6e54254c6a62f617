"""Tables, JSON and plots of sandbox runs.

A run's results are ``{method: [history per seed]}`` with each history ``{metric: [value per
step]}`` (see :func:`verl_restrain.sandbox.loop.run`); a sweep's are a list of grid points, each
with its hyperparameters and RESTRAIN's and TTRL's final held-out pass@1 per seed (see
:mod:`verl_restrain.sandbox.sweep`). Aggregates over seeds are mean and sample std.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402

from verl_restrain.methods import METHODS  # noqa: E402
from verl_restrain.sandbox.loop import GOLD_GRPO, METRICS, SandboxConfig  # noqa: E402

__all__ = ["describe", "summarize", "markdown_table", "plot_curves", "write_json", "sweep_table", "plot_sweep"]

Results = dict[str, list[dict[str, list[float]]]]

_PANELS = ("pass1_heldout", "pass1_train", "majority_accuracy", "penalized_share", "entropy")
_TITLES = {
    "pass1_heldout": "pass@1, held-out prompts",
    "pass1_train": "pass@1, training prompts",
    "majority_accuracy": "majority-vote accuracy (n rollouts)",
    "penalized_share": "share of prompts penalised (M < kappa)",
    "entropy": "policy entropy (nats)",
}


def describe(name: str) -> str:
    """One line for a method, from its preset.

    ``gold_grpo`` is a labelled baseline, not a ceiling: in the default run several label-free
    methods (RESTRAIN, TTRL) end with a higher held-out pass@1, so it is not called an upper
    reference.
    """
    if name == GOLD_GRPO:
        return "GRPO on the gold reward (uses labels)"
    return METHODS[name].description


def _curves(results: Results, name: str, metric: str) -> np.ndarray:
    """(S, T) array: one row per seed."""
    return np.asarray([history[metric] for history in results[name]], dtype=np.float64)


def _mean_std(values: np.ndarray) -> tuple[float, float | None]:
    """Mean and sample std; the std is None for a single seed."""
    std = float(values.std(ddof=1)) if values.size > 1 else None
    return float(values.mean()), std


def summarize(results: Results) -> list[dict]:
    """Per method: start, mean, peak and final held-out pass@1, the penalised share averaged over
    steps, and the final value of every metric.

    Each value is ``[mean, std]`` over seeds (std None for one seed). ``mean`` is each seed's
    average over all steps (the area under the curve: it tells how fast a method learns once final
    values saturate), ``peak`` each seed's maximum over steps (a peak above the final value is a
    collapse). The penalised share needs its average too: penalization fires on the scattered
    prompts of the early steps and stops once the policy is consistent, so its final value is
    usually 0 even where it shaped the run.
    """
    rows = []
    for name in results:
        row: dict = {"method": name, "description": describe(name)}
        heldout = _curves(results, name, "pass1_heldout")  # (S, T)
        row["pass1_heldout_start"] = list(_mean_std(heldout[:, 0]))
        row["pass1_heldout_mean"] = list(_mean_std(heldout.mean(axis=1)))
        row["pass1_heldout_peak"] = list(_mean_std(heldout.max(axis=1)))
        row["penalized_share_mean"] = list(_mean_std(_curves(results, name, "penalized_share").mean(axis=1)))
        for metric in METRICS:
            row[f"{metric}_final"] = list(_mean_std(_curves(results, name, metric)[:, -1]))
        rows.append(row)
    return rows


def _cell(value: list, digits: int = 3) -> str:
    mean, std = value
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(summary: list[dict], config: SandboxConfig) -> str:
    """The summary as a markdown table, with the settings it came from above it."""
    prompts = config.prompts
    low, high = prompts.accuracy_range
    lines = [
        f"Sandbox: {prompts.num_prompts} training + {config.num_heldout} held-out prompts, "
        f"{prompts.num_candidates} candidates, {prompts.num_shortcuts} shortcut routes ({prompts.errors} errors), "
        f"initial pi(gold) ~ U({low}, {high}); n = {config.n}, {config.steps} steps, "
        f"{config.optimizer} lr = {config.lr}; "
        f"sigma = {config.sigma}, center = {config.center}, kappa = {config.kappa}, delta = {config.delta}; "
        f"seeds {', '.join(map(str, config.seeds))}. Mean ± std over seeds. "
        f"'start' is the initial policy (step 0), 'mean over steps' each seed's average over steps "
        f"0..{config.steps}, 'peak' its maximum, 'final' the value after the last step. "
        f"'penalised' is the share of training prompts whose majority count M of the step's n rollouts "
        f"is below kappa (0 for methods that do not penalise); it changes with the policy's consistency "
        f"(for most methods it falls to 0 well before the last step), so it is given averaged over "
        f"steps as well as at the final step.",
        "",
        "| method | held-out pass@1: start | held-out: mean over steps | held-out: peak | held-out: final "
        "| train pass@1: final | majority acc.: final | penalised: mean over steps | penalised: final "
        "| entropy: final |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(
            f"| {row['method']} | {row['pass1_heldout_start'][0]:.3f} | {_cell(row['pass1_heldout_mean'])} "
            f"| {_cell(row['pass1_heldout_peak'])} | {_cell(row['pass1_heldout_final'])} "
            f"| {_cell(row['pass1_train_final'])} | {_cell(row['majority_accuracy_final'])} "
            f"| {_cell(row['penalized_share_mean'])} | {_cell(row['penalized_share_final'])} "
            f"| {_cell(row['entropy_final'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(results: Results, config: SandboxConfig, path: Path) -> None:
    """One panel per metric, one line per method (mean over seeds, band = min..max over seeds)."""
    figure, axes = plt.subplots(2, 3, figsize=(16, 8.5), constrained_layout=True)
    colors = plt.get_cmap("tab10")
    steps = np.arange(config.steps + 1)
    for axis, metric in zip(axes.flat, _PANELS):
        for index, name in enumerate(results):
            curves = _curves(results, name, metric)  # (S, T)
            style = "--" if name == GOLD_GRPO else "-"
            width = 2.4 if name in ("restrain", "ttrl", GOLD_GRPO) else 1.3
            axis.plot(steps, curves.mean(axis=0), style, color=colors(index), linewidth=width, label=name)
            if curves.shape[0] > 1:
                axis.fill_between(steps, curves.min(axis=0), curves.max(axis=0), color=colors(index), alpha=0.12)
        axis.set_title(_TITLES[metric])
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    legend_axis = axes.flat[-1]
    legend_axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    legend_axis.legend(handles, [f"{label}: {describe(label)}" for label in labels], loc="center", fontsize=9)
    low, high = config.prompts.accuracy_range
    figure.suptitle(
        f"RESTRAIN sandbox (simulation): initial pi(gold) ~ U({low}, {high}), "
        f"{config.prompts.errors} errors, n = {config.n}, "
        f"sigma = {config.sigma}, kappa = {config.kappa}, delta = {config.delta}, seeds {list(config.seeds)}"
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


def sweep_table(points: list[dict], params: tuple[str, ...]) -> str:
    """Markdown table of a sweep: one row per grid point, RESTRAIN against TTRL."""
    header = " | ".join(params)
    lines = [
        f"| {header} | RESTRAIN final held-out pass@1 | TTRL final held-out pass@1 | RESTRAIN - TTRL |",
        "|" + "---|" * (len(params) + 3),
    ]
    for point in points:
        values = " | ".join(str(point[param]) for param in params)
        restrain = np.asarray(point["restrain"])
        ttrl = np.asarray(point["ttrl"])
        lines.append(
            f"| {values} | {_cell(list(_mean_std(restrain)))} | {_cell(list(_mean_std(ttrl)))} "
            f"| {_cell(list(_mean_std(restrain - ttrl)))} |"
        )
    return "\n".join(lines) + "\n"


def _sweep_title(ttrl: float, config: SandboxConfig) -> str:
    return (
        "RESTRAIN sensitivity (simulation): each cell is RESTRAIN's final held-out pass@1 and, in brackets, "
        "its difference to TTRL's\n"
        f"TTRL's final held-out pass@1 = {ttrl:.3f} (it uses none of sigma, kappa, delta); means over seeds "
        f"{list(config.seeds)}, other hyperparameters at their defaults"
    )


def plot_sweep(points: list[dict], grid: dict[str, list], config: SandboxConfig, path: Path) -> None:
    """Heatmaps of RESTRAIN's final held-out pass@1 minus TTRL's (mean over seeds).

    Two swept parameters give one heatmap; a third gives one panel per value of it; a single one
    gives a one-row heatmap. Each cell is annotated with RESTRAIN's own pass@1 and the difference.
    """
    params = list(grid)
    rows_param = params[0]
    cols_param = params[1] if len(params) > 1 else None
    panel_param = params[2] if len(params) > 2 else None
    panels = grid[panel_param] if panel_param else [None]
    row_values = grid[rows_param]
    col_values = grid[cols_param] if cols_param else [None]

    def lookup(row, col, panel) -> dict:
        for point in points:
            if (
                point[rows_param] == row
                and (cols_param is None or point[cols_param] == col)
                and (panel_param is None or point[panel_param] == panel)
            ):
                return point
        raise KeyError((row, col, panel))

    differences = np.zeros((len(panels), len(row_values), len(col_values)))
    restrain = np.zeros_like(differences)
    for p, panel in enumerate(panels):
        for r, row in enumerate(row_values):
            for c, col in enumerate(col_values):
                point = lookup(row, col, panel)
                restrain[p, r, c] = np.mean(point["restrain"])
                differences[p, r, c] = np.mean(np.asarray(point["restrain"]) - np.asarray(point["ttrl"]))
    limit = max(float(np.abs(differences).max()), 1e-3)
    ttrl = np.mean(points[0]["ttrl"])

    figure, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(7.0, 1.6 + 1.5 * len(col_values) * len(panels)), 1.9 + 0.9 * len(row_values)),
        squeeze=False, constrained_layout=True,
    )
    for p, panel in enumerate(panels):
        axis = axes[0, p]
        image = axis.imshow(differences[p], cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for r in range(len(row_values)):
            for c in range(len(col_values)):
                label = f"{restrain[p, r, c]:.3f}\n({differences[p, r, c]:+.3f})"
                # Dark cells need light text.
                color = "white" if abs(differences[p, r, c]) > 0.6 * limit else "black"
                axis.text(c, r, label, ha="center", va="center", fontsize=8, color=color)
        axis.set_yticks(range(len(row_values)), [str(value) for value in row_values])
        axis.set_ylabel(rows_param)
        axis.set_xticks(range(len(col_values)), [str(value) for value in col_values] if cols_param else [""])
        axis.set_xlabel(cols_param or "")
        if panel_param:
            axis.set_title(f"{panel_param} = {panel}")
    figure.colorbar(image, ax=axes[0, :].tolist(), label="RESTRAIN - TTRL, final held-out pass@1")
    figure.suptitle(_sweep_title(ttrl, config), fontsize=10)
    figure.savefig(path, dpi=110)
    plt.close(figure)
