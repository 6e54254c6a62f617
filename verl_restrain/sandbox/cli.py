"""``restrain-sandbox``: self-train a simulated policy with every method on a CPU, in about a minute.

Writes ``sandbox_table.md``, ``sandbox.json`` and ``sandbox.png`` to ``--out`` and prints the
table; with ``--sweep`` trains RESTRAIN over a grid of sigma, kappa and delta against TTRL and
writes ``sandbox_sweep.{md,json,png}`` instead. This is a simulation that
illustrates the mechanisms of RESTRAIN and the baselines; it does not reproduce LLM numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from verl_restrain import defaults
from verl_restrain.sandbox import report
from verl_restrain.sandbox.loop import DEFAULT_LR, METRICS, SANDBOX_METHODS, SandboxConfig, run
from verl_restrain.sandbox.policy import ERROR_STRUCTURES, PromptSetConfig
from verl_restrain.sandbox.sweep import SWEEP_GRID, parse_sweep, run_sweep

__all__ = ["main", "build_config"]

SIMULATION_NOTE = (
    "Simulation: a linear softmax policy over synthetic prompts, trained with the package's own "
    "advantage estimator. It illustrates mechanisms; it does not reproduce LLM numbers."
)
# The defaults --quick puts in place; an option given on the command line still wins.
_QUICK = {"steps": 40, "seeds": (0,), "prompts": 96, "heldout": 96}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
    return low, high


def _sweep_params(text: str) -> tuple[str, ...]:
    # argparse reports a ValueError from a type function as "invalid ... value" and drops its
    # message; an ArgumentTypeError's message is shown as it is.
    try:
        return parse_sweep(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parser() -> argparse.ArgumentParser:
    config, prompts = SandboxConfig(), PromptSetConfig()
    parser = argparse.ArgumentParser(
        prog="restrain-sandbox",
        description=__doc__.split("\n\n")[0] + " " + SIMULATION_NOTE,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("restrain_sandbox_out"), help="output directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few-second run: changes the defaults of --steps, --seeds, --prompts and --heldout to "
        f"{_QUICK['steps']}, {','.join(map(str, _QUICK['seeds']))}, {_QUICK['prompts']} and {_QUICK['heldout']}; "
        "those options, when given, still win",
    )
    parser.add_argument(
        "--sweep",
        type=_sweep_params,
        help=f"comma list from {','.join(SWEEP_GRID)}: train RESTRAIN at every point of the grid over them "
        f"({SWEEP_GRID}) and compare its final held-out pass@1 with TTRL's, which depends on none of "
        "them; the other methods are not trained, so --methods cannot be given",
    )
    parser.add_argument(
        "--methods",
        type=_names,
        # Left unset when not given, so that --sweep can tell a chosen list from the default.
        default=argparse.SUPPRESS,
        help=f"comma list from {', '.join(SANDBOX_METHODS)} (default: all of them)",
    )
    parser.add_argument("--seeds", type=_ints, default=config.seeds, help="comma list")
    parser.add_argument("--steps", type=int, default=config.steps)
    parser.add_argument("--n", type=int, default=config.n, help="rollouts per prompt")
    parser.add_argument("--optimizer", choices=tuple(DEFAULT_LR), default=config.optimizer)
    parser.add_argument("--lr", type=float, help=f"learning rate (default per optimizer: {DEFAULT_LR})")
    parser.add_argument("--sigma", type=float, default=defaults.SIGMA)
    parser.add_argument("--center", type=float, default=defaults.CENTER)
    parser.add_argument("--kappa", type=int, default=defaults.KAPPA)
    parser.add_argument("--delta", type=float, default=defaults.DELTA)
    parser.add_argument("--prompts", type=int, default=prompts.num_prompts, help="training prompts")
    parser.add_argument("--heldout", type=int, default=config.num_heldout, help="held-out prompts")
    parser.add_argument("--candidates", type=int, default=prompts.num_candidates, help="candidate answers per prompt")
    parser.add_argument("--shortcuts", type=int, default=prompts.num_shortcuts, help="shared wrong routes")
    parser.add_argument(
        "--accuracy-range", type=_range, default=prompts.accuracy_range, help="LOW,HIGH of the initial pi(gold | p)"
    )
    parser.add_argument(
        "--errors",
        choices=ERROR_STRUCTURES,
        default=prompts.errors,
        help="random: wrong answers' shortcuts drawn at random; systematic: every prompt's most likely "
        "wrong answer comes from the same shortcut",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; with ``--quick``, parse again over the quick defaults so explicit options win."""
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**_QUICK)
        args = parser.parse_args(argv)
    return args


def build_config(args: argparse.Namespace) -> SandboxConfig:
    """The run's config from parsed arguments (``--quick`` is already applied to their defaults)."""
    prompts = PromptSetConfig(
        num_prompts=args.prompts,
        num_candidates=args.candidates,
        num_shortcuts=args.shortcuts,
        accuracy_range=args.accuracy_range,
        errors=args.errors,
    )
    return SandboxConfig(
        steps=args.steps,
        n=args.n,
        optimizer=args.optimizer,
        lr=args.lr,
        sigma=args.sigma,
        center=args.center,
        kappa=args.kappa,
        delta=args.delta,
        prompts=prompts,
        num_heldout=args.heldout,
        seeds=args.seeds,
        methods=getattr(args, "methods", SANDBOX_METHODS),
    )


def _run_methods(config: SandboxConfig, out: Path, progress: bool) -> str:
    start = time.perf_counter()
    results = run(config, progress=progress)
    runtime = time.perf_counter() - start
    summary = report.summarize(results)
    table = report.markdown_table(summary, config)
    (out / "sandbox_table.md").write_text(table, encoding="utf-8")
    report.plot_curves(results, config, out / "sandbox.png")
    report.write_json(
        out / "sandbox.json",
        {
            "note": SIMULATION_NOTE,
            "config": config.to_dict(),
            "metrics": METRICS,
            "training_seconds": round(runtime, 2),
            "summary": summary,
            "curves": results,
        },
    )
    return table + f"\nTraining took {runtime:.1f} s. Wrote sandbox_table.md, sandbox.json, sandbox.png to {out}\n"


def _run_sweep(config: SandboxConfig, params: tuple[str, ...], out: Path, progress: bool) -> str:
    start = time.perf_counter()
    points = run_sweep(config, params, progress=progress)
    runtime = time.perf_counter() - start
    table = report.sweep_table(points, params)
    grid = {param: SWEEP_GRID[param] for param in params}
    (out / "sandbox_sweep.md").write_text(table, encoding="utf-8")
    report.plot_sweep(points, grid, config, out / "sandbox_sweep.png")
    report.write_json(
        out / "sandbox_sweep.json",
        {
            "note": SIMULATION_NOTE,
            "config": config.to_dict(),
            "grid": grid,
            "metric": "final held-out pass@1 per seed",
            "training_seconds": round(runtime, 2),
            "points": points,
        },
    )
    written = "sandbox_sweep.md, sandbox_sweep.json, sandbox_sweep.png"
    return table + f"\nSweep took {runtime:.1f} s. Wrote {written} to {out}\n"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = _parse_args(parser, argv)
    if args.sweep and "methods" in vars(args):
        parser.error("--sweep trains RESTRAIN at every grid point against TTRL; it takes no --methods")
    try:
        config = build_config(args)
    except ValueError as error:
        parser.error(str(error))
    if args.sweep:
        config = replace(config, methods=("restrain", "ttrl"))
    args.out.mkdir(parents=True, exist_ok=True)
    print(SIMULATION_NOTE)
    progress = not args.no_progress
    if args.sweep:
        print(_run_sweep(config, args.sweep, args.out, progress))
    else:
        print(_run_methods(config, args.out, progress))
    return 0


if __name__ == "__main__":
    sys.exit(main())
