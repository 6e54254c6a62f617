"""Command line of the offline scoring job: ``restrain-score-prompts`` (and ``scripts/score_prompts.py``).

    restrain-score-prompts --input train.parquet --output train.scored.parquet --model Qwen/Qwen3-4B-Base
    restrain-score-prompts merge --output train.scored.parquet train.scored.shard-*.parquet
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

import pyarrow.parquet as pq

from verl_restrain import defaults
from verl_restrain.jobs.scoring import (
    DEFAULT_BATCH_SIZE,
    ScoringConfig,
    ScoringInputError,
    print_summary,
    score_prompts,
    score_prompts_on_ray,
)
from verl_restrain.jobs.scoring.io import merge_shards
from verl_restrain.jobs.scoring.votes import summarize

__all__ = ["build_merge_parser", "build_parser", "config_from_args", "main"]


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected DATA_SOURCE=KIND, got {text!r}")
    return key, value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restrain-score-prompts",
        description=(
            "Sample the frozen base model n times per prompt, vote with RESTRAIN's answer clustering, and "
            "add the prompt weight u_x = g(c_ref/n) and the vote counts to the dataset. Resumes from the "
            "checkpoints in <output>.parts/ by default (--resume). Join shard outputs with: "
            "restrain-score-prompts merge --output OUT SHARD..."
        ),
    )
    files = parser.add_argument_group("files")
    files.add_argument("--input", required=True, help="verl-format parquet file (never modified)")
    files.add_argument("--output", required=True, help="scored parquet file, written atomically once complete")
    files.add_argument("--samples-output", help="also write every sampled response, its answer and cluster id here")
    files.add_argument("--work-dir", help="checkpoint directory (default: <output>.parts)")
    files.add_argument("--prompt-key", default="prompt", help="column with the chat messages (verl's data.prompt_key)")
    files.add_argument(
        "--apply-chat-template-kwargs",
        type=_json_object,
        default={},
        help='JSON object, verl\'s data.apply_chat_template_kwargs, e.g. \'{"enable_thinking": false}\'',
    )
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--model", required=True, help="base model: a local path or a hub id")
    sampling.add_argument(
        "--engine",
        default="auto",
        help="auto (vLLM if installed and a GPU is visible), vllm or hf. vLLM's default tensor parallel size is the "
        "largest power of two <= the visible GPUs that divides the attention heads (28 heads on 8 GPUs: 4, the "
        "other 4 idle); set it with --engine-kwargs or use every GPU with --ray --num-shards <GPUs>",
    )
    sampling.add_argument("--n", type=int, default=defaults.NUM_ROLLOUTS, help="samples per prompt")
    sampling.add_argument("--temperature", type=float, default=1.0, help="0 for greedy")
    sampling.add_argument("--top-p", type=float, default=1.0)
    sampling.add_argument("--max-new-tokens", type=int, default=4096)
    sampling.add_argument("--seed", type=int, default=42)
    sampling.add_argument(
        "--batch-size",
        type=int,
        help=f"prompts per generate call and per checkpoint (default {DEFAULT_BATCH_SIZE['vllm']} with vllm, "
        f"{DEFAULT_BATCH_SIZE['hf']} with hf); the samples depend on it, so a resume must keep it",
    )
    sampling.add_argument(
        "--engine-kwargs",
        type=_json_object,
        default={},
        help='JSON object for the engine, e.g. \'{"dtype": "bfloat16"}\' or \'{"tensor_parallel_size": 2}\'',
    )
    sampling.add_argument("--trust-remote-code", action="store_true")
    voting = parser.add_argument_group("voting and weights")
    voting.add_argument("--answer-kind", default="auto", help="auto (per row), math or choice")
    voting.add_argument(
        "--answer-kind-map",
        type=_key_value,
        action="append",
        default=[],
        metavar="DATA_SOURCE=KIND",
        help="answer kind of one data_source under --answer-kind auto (repeatable)",
    )
    voting.add_argument("--sigma", type=float, default=defaults.SIGMA, help="width of g (default: the training default)")
    voting.add_argument("--center", type=float, default=defaults.CENTER, help="center of g (default: the training default)")
    runs = parser.add_argument_group("resuming, shards and Ray")
    resume = runs.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        dest="resume",
        action="store_true",
        default=True,
        help="reuse the batches checkpointed in the work directory by an earlier run with the same settings "
        "(the default; a run with other settings is refused once a batch is checkpointed)",
    )
    resume.add_argument("--no-resume", dest="resume", action="store_false", help="discard checkpoints, start over")
    runs.add_argument("--keep-parts", action="store_true", help="keep the checkpoint directory after success")
    runs.add_argument("--num-shards", type=int, default=1)
    runs.add_argument("--shard-index", type=int, default=0)
    runs.add_argument(
        "--ray",
        action="store_true",
        help="run all --num-shards shards as Ray tasks, then merge (one shard: one task writes --output); "
        "--engine auto is resolved on the node each shard runs on",
    )
    runs.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    runs.add_argument(
        "--ray-gpus-per-shard",
        type=float,
        help="GPUs per shard task (default: 1 with --engine vllm or when the cluster has GPUs, else 0); "
        "--num-shards <GPUs> --ray-gpus-per-shard 1 runs one vLLM copy per GPU (data parallel)",
    )
    runs.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return parser


def build_merge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restrain-score-prompts merge",
        description="Join the shard files of a --num-shards run in the original row order.",
    )
    parser.add_argument("--output", required=True, help="merged parquet file")
    parser.add_argument("shards", nargs="+", help="every shard file of the run (scores or samples), in any order")
    return parser


def config_from_args(args: argparse.Namespace) -> ScoringConfig:
    return ScoringConfig(
        input=args.input,
        output=args.output,
        model=args.model,
        engine=args.engine,
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        sigma=args.sigma,
        center=args.center,
        batch_size=args.batch_size,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        resume=args.resume,
        keep_parts=args.keep_parts,
        work_dir=args.work_dir,
        samples_output=args.samples_output,
        prompt_key=args.prompt_key,
        apply_chat_template_kwargs=args.apply_chat_template_kwargs,
        answer_kind=args.answer_kind,
        answer_kind_map=dict(args.answer_kind_map),
        engine_kwargs=args.engine_kwargs,
        trust_remote_code=args.trust_remote_code,
        progress=not args.quiet,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``restrain-score-prompts``; returns the exit status (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["merge"]:
        parser = build_merge_parser()
        args = parser.parse_args(argv[1:])
        try:
            record = merge_shards(args.shards, args.output)
        except ScoringInputError as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
        if record.get("kind") == "prompts":
            print_summary(summarize(pq.read_table(args.output)), args.output)
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        if args.ray:
            score_prompts_on_ray(config, address=args.ray_address, gpus_per_shard=args.ray_gpus_per_shard)
        else:
            score_prompts(config)
    except ScoringInputError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    return 0
