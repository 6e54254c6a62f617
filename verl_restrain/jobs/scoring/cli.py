"""Command line of the offline scoring job: ``restrain-score-prompts`` (``python -m verl_restrain.jobs.scoring``).

    restrain-score-prompts --input train.parquet --output train.scored.parquet --model Qwen/Qwen3-4B-Base
    restrain-score-prompts merge --output train.scored.parquet train.scored.shard-*.parquet

The options are generated from :class:`~verl_restrain.jobs.scoring.ScoringConfig` and
:class:`~verl_restrain.jobs.scoring.shards.RayOptions`. Exit status: 0 on success (also when the output
was already complete), 2 for bad input or settings, 1 when a file cannot be written (a full disk).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

import pyarrow.parquet as pq

from verl_restrain.jobs.arguments import build_parser as parser_for
from verl_restrain.jobs.arguments import config_from_args
from verl_restrain.jobs.config import JobInputError
from verl_restrain.jobs.files import WriteError
from verl_restrain.jobs.scoring.config import ScoringConfig
from verl_restrain.jobs.scoring.io import merge_shards
from verl_restrain.jobs.scoring.job import print_summary, score_prompts
from verl_restrain.jobs.scoring.shards import RayOptions, score_prompts_on_ray
from verl_restrain.jobs.scoring.votes import summarize

__all__ = ["build_merge_parser", "build_parser", "main"]

PROG = "restrain-score-prompts"


class _Removed(argparse.Action):
    """An option that no longer exists, hidden from --help: a clean error naming its replacement."""

    def __init__(self, option_strings, dest, hint, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was removed: {self.hint}")


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for(
        ScoringConfig,
        RayOptions,
        groups=("files", "sampling", "answers", "resuming and shards"),
        prog=PROG,
        description=(
            "Sample the frozen base model n times per prompt, vote with RESTRAIN's answer clustering, and add the "
            "vote counts (c_ref, n, the majority answer, every answer's count) to the dataset; training derives "
            "u_x = g(c_ref/n) from them. Resumes from the checkpoints in <output>.parts/ by default. Join shard "
            "outputs with: restrain-score-prompts merge --output OUT SHARD..."
        ),
    )
    parser.add_argument(
        "--answer-kind",
        action=_Removed,
        hint="--default-answer-kind KIND sets the kind of rows nothing else decides, "
        "--answer-kind-map DATA_SOURCE=KIND the kind of one data_source",
    )
    return parser


def build_merge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} merge",
        description="Join the shard files of a --num-shards run in the original row order.",
    )
    parser.add_argument("--output", required=True, help="merged parquet file")
    parser.add_argument("shards", nargs="+", help="every shard file of the run (scores or samples), in any order")
    return parser


def _write_failed(parser: argparse.ArgumentParser, error: WriteError, parts: str | None) -> None:
    resume = f": it resumes from the batches checkpointed in {parts}" if parts else ""
    parser.exit(1, f"{parser.prog}: error: {error}; make room (or fix the folder) and rerun the same command{resume}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``restrain-score-prompts``; returns the exit status (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["merge"]:
        parser = build_merge_parser()
        args = parser.parse_args(argv[1:])
        try:
            record = merge_shards(args.shards, args.output)
        except JobInputError as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
        except WriteError as error:
            _write_failed(parser, error, None)
        if record.get("kind") == "prompts":
            print_summary(summarize(pq.read_table(args.output)), args.output)
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    config = None
    try:
        config = config_from_args(ScoringConfig, args)
        ray = config_from_args(RayOptions, args)
        if ray.ray:
            score_prompts_on_ray(config, address=ray.ray_address, gpus_per_shard=ray.ray_gpus_per_shard)
        else:
            score_prompts(config)
    except JobInputError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except WriteError as error:
        _write_failed(parser, error, str(config.parts_dir) if config else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
