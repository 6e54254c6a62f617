"""ReST-EM's Improve-step data: filter a scoring run's samples into verl's SFT parquet.

``restrain-score-prompts --samples-output`` is the Grow step: n responses per prompt with their
extracted answers and answer clusters (:data:`verl_restrain.jobs.scoring.SAMPLES_SCHEMA`). This job
keeps, per prompt, the responses that pass the filter, in sampling order, at most ``max_per_prompt``
of them, and writes one SFT example per kept response:

* ``keep="gold"`` (ReST-EM, Singh et al. 2023): the response's answer equals the prompt's
  ``reward_model.ground_truth``. This is :func:`verl_restrain.answers.is_correct` (``canonicalize``
  the gold, ``same_answer`` with the response's answer) on the answer the scoring run already
  extracted with the same answer kind, the row's kind by
  :func:`verl_restrain.answers.kinds.answer_kind` with the run's answer-kind settings;
* ``keep="majority"`` (label-free): the response is in its prompt's majority cluster (the scoring
  run's ``is_majority``: the vote's own clustering, so 0.5 and 1/2 are one answer, ties to the
  cluster sampled first), and the majority holds at least ``min_majority_share`` of the prompt's n
  samples.

With ``distinct``, a response whose text repeats an earlier kept one of the same prompt is skipped
before the cap. The output has verl 0.9.1's ``MultiTurnSFTDataset`` format (the default of
``verl.trainer.sft_trainer``): a ``messages`` column holding the prompt's chat messages exactly as
the RL dataset has them (role and content) followed by ``{"role": "assistant", "content":
response}``, plus ``prompt_index``, ``sample_index`` and ``answer`` for provenance. Rows are ordered
by prompt, then sample. The schema metadata key :data:`METADATA_KEY` holds the settings, the scoring
run's record and the summary (:func:`summarize`). Inputs are checked to come from one scoring run
before any work; the output is written atomically.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from verl_restrain import __version__, defaults
from verl_restrain.jobs.arguments import build_parser as parser_for
from verl_restrain.jobs.arguments import config_from_args
from verl_restrain.answers.kinds import ground_truth
from verl_restrain.jobs.config import JobInputError, progress_field, read_parquet
from verl_restrain.jobs.files import WriteError, atomic_write_table, check_writable, remove_stale_temps
from verl_restrain.jobs.generation import as_chat

__all__ = [
    "KEEP_MODES",
    "METADATA_KEY",
    "MESSAGES_TYPE",
    "FilterConfig",
    "filter_samples",
    "main",
    "select",
    "summarize",
]

PROG = "restrain-filter-samples"
METADATA_KEY = b"verl_restrain.jobs.filter_samples"
KEEP_MODES = ("gold", "majority")
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

# ReST-EM's cut-off of solutions kept per problem on MATH (Singh et al. 2023); it keeps easy
# problems, which yield many correct samples, from dominating the fine-tuning set.
MAX_PER_PROMPT = 10
# RESTRAIN's kappa / n: below it the "majority" is a few coinciding answers, which RL penalizes and
# SFT on them would imitate.
MIN_MAJORITY_SHARE = defaults.KAPPA / defaults.NUM_ROLLOUTS

FILES = "files"
FILTER = "filter"


@dataclass(kw_only=True)
class FilterConfig:
    """Settings of one filtering run; ``restrain-filter-samples`` is generated from them."""

    samples: str = field(metadata={"help": "the --samples-output file of restrain-score-prompts", "group": FILES})
    prompts: str = field(
        metadata={
            "help": "the same scoring run's --output (or its --input): prompts, gold labels, data_source",
            "group": FILES,
        }
    )
    output: str = field(
        metadata={"help": "SFT parquet for verl.trainer.sft_trainer (its data.train_files)", "group": FILES}
    )
    messages_key: str = field(
        default="messages", metadata={"help": "name of the messages column (verl's data.messages_key)", "group": FILES}
    )
    keep: str = field(
        default="gold",
        metadata={
            "group": FILTER,
            "metavar": "{gold,majority}",
            "help": "gold: responses whose answer equals reward_model.ground_truth (ReST-EM); majority: responses "
            "in the prompt's majority answer cluster (label-free)",
        },
    )
    max_per_prompt: int = field(
        default=MAX_PER_PROMPT,
        metadata={
            "group": FILTER,
            "help": "responses kept per prompt at most, the first in sampling order (ReST-EM's cut-off)",
        },
    )
    distinct: bool = field(
        default=False, metadata={"help": "skip a response whose text repeats an earlier kept one", "group": FILTER}
    )
    min_majority_share: float = field(
        default=MIN_MAJORITY_SHARE,
        metadata={
            "group": FILTER,
            "help": "with --keep majority: keep nothing from a prompt whose majority holds less than this share of "
            "its samples (RESTRAIN's kappa/n; 0 keeps every majority)",
        },
    )
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        if self.keep not in KEEP_MODES:
            raise JobInputError(f"--keep must be gold or majority, got {self.keep!r}")
        if self.max_per_prompt < 1:
            raise JobInputError(f"--max-per-prompt must be >= 1, got {self.max_per_prompt}")
        if not 0.0 <= self.min_majority_share <= 1.0:
            raise JobInputError(f"--min-majority-share must be in [0, 1], got {self.min_majority_share}")
        if Path(self.output).resolve() in {Path(self.samples).resolve(), Path(self.prompts).resolve()}:
            raise JobInputError(
                f"--output {self.output} must differ from --samples and --prompts; inputs are never overwritten"
            )


def _scoring_record(path: str) -> dict | None:
    """The scoring job's record of ``path``, None when the scoring job did not write it."""
    from verl_restrain.jobs.scoring.io import read_job_metadata

    try:
        return read_job_metadata(path)
    except JobInputError:
        return None


def read_inputs(config: FilterConfig) -> tuple[pa.Table, pa.Table, dict]:
    """The samples, the prompts and the scoring run's record, checked to belong together."""
    from verl_restrain.jobs.scoring.job import file_sha256
    from verl_restrain.jobs.scoring.votes import SAMPLES_SCHEMA

    samples = read_parquet(config.samples, "--samples")
    record = _scoring_record(config.samples)
    if record is None or record.get("kind") != "samples":
        raise JobInputError(
            f"{config.samples} is not a samples file of restrain-score-prompts; pass its --samples-output file"
        )
    if "shard" in record:
        raise JobInputError(
            f"{config.samples} is shard {record['shard']['shard_index']} of a sharded run; join the shards first: "
            "restrain-score-prompts merge --output SAMPLES SHARD..."
        )
    for name in SAMPLES_SCHEMA.names:
        if name not in samples.column_names or samples.schema.field(name).type != SAMPLES_SCHEMA.field(name).type:
            raise JobInputError(f"{config.samples} has no {name!r} column of type {SAMPLES_SCHEMA.field(name).type}")
    prompts = read_parquet(config.prompts, "--prompts")
    prompts_record = _scoring_record(config.prompts)
    if prompts_record is not None:
        if {**prompts_record, "kind": "samples"} != record:
            raise JobInputError(
                f"{config.prompts} and {config.samples} come from different scoring runs; pass the --output and "
                "--samples-output of one run"
            )
    elif file_sha256(config.prompts) != record["input_sha256"]:
        raise JobInputError(
            f"{config.prompts} is neither the scoring run's --output nor its --input (its checksum differs from the "
            f"input recorded in {config.samples})"
        )
    if prompts.num_rows != record["num_rows"]:
        raise JobInputError(f"{config.prompts} has {prompts.num_rows} rows, the scoring run had {record['num_rows']}")
    if record["prompt_key"] not in prompts.column_names:
        raise JobInputError(f"{config.prompts} has no {record['prompt_key']!r} column (the scoring run's --prompt-key)")
    return samples, prompts, record


def gold_labels(prompts: pa.Table, path: str) -> list[str | None]:
    """Each row's ``reward_model.ground_truth`` as a stripped string (None when absent or empty),
    read as the trainer's reward manager reads it."""
    if "reward_model" not in prompts.column_names:
        raise JobInputError(
            f"{path} has no reward_model column: --keep gold needs reward_model.ground_truth "
            "(use --keep majority without gold labels)"
        )
    return [ground_truth(reward_model) for reward_model in prompts.column("reward_model").to_pylist()]


def _gold_passes(answers: list, prompt: np.ndarray, labels: list, kinds: list, progress: bool) -> np.ndarray:
    """(N,) whether each sample's answer equals its prompt's gold label, one comparison per distinct
    (prompt, answer) pair."""
    from tqdm.auto import tqdm

    from verl_restrain.answers import canonicalize, same_answer

    canonical = [None if g is None else canonicalize(g, k) for g, k in zip(labels, kinds)]
    verdicts: dict[tuple[int, str], bool] = {}
    passes = np.zeros(len(answers), dtype=bool)
    bar = tqdm(range(len(answers)), desc="checking answers", unit="sample", disable=not progress, dynamic_ncols=True)
    for i in bar:
        p, answer = int(prompt[i]), answers[i]
        if answer is None or canonical[p] is None:
            continue
        key = (p, answer)
        if key not in verdicts:
            verdicts[key] = same_answer(canonical[p], answer, kinds[p])
        passes[i] = verdicts[key]
    return passes


def select(
    prompt: np.ndarray, passes: np.ndarray, max_per_prompt: int, responses: Sequence[str] | None = None
) -> np.ndarray:
    """Indices of the kept samples: per prompt, the first ``max_per_prompt`` passing ones.

    Args:
        prompt: (N,) prompt index of each sample, samples already in (prompt, sampling) order.
        passes: (N,) whether each sample passes the filter.
        max_per_prompt: the cap.
        responses: (N,) response texts; when given, a passing sample whose text equals an earlier
            passing sample's of the same prompt is skipped before the cap.

    Returns:
        (K,) increasing sample indices.
    """
    candidates = np.flatnonzero(passes)  # (M,)
    if responses is not None:
        seen: set[tuple[int, str]] = set()
        first = []
        for i in candidates:
            key = (int(prompt[i]), responses[i])
            first.append(key not in seen)
            seen.add(key)
        candidates = candidates[np.asarray(first, dtype=bool)]
    group = prompt[candidates]  # (M,) non-decreasing
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]  # first position of each prompt's run
    rank = np.arange(len(candidates)) - np.repeat(starts, np.diff(np.r_[starts, len(candidates)]))
    return candidates[rank < max_per_prompt]


def _messages(chat: list[dict], row: int, path: str, key: str) -> list[dict]:
    extra = sorted(k for m in chat for k, v in m.items() if k not in ("role", "content") and v is not None)
    if extra:
        raise JobInputError(
            f"row {row} of {path}, column {key!r}: message keys {', '.join(extra)} are not carried into the SFT "
            "messages (only role and content are)"
        )
    if not all(isinstance(m["role"], str) and isinstance(m["content"], str) for m in chat):
        raise JobInputError(f"row {row} of {path}, column {key!r}: a message's role or content is not text")
    return [{"role": m["role"], "content": m["content"]} for m in chat]


def summarize(num_prompts: int, prompt: np.ndarray, passes: np.ndarray, kept: np.ndarray) -> dict:
    """Prompts and responses before and after the filter and the cap."""
    return {
        "prompts": num_prompts,
        "samples": int(len(prompt)),
        "samples_passing": int(passes.sum()),
        "prompts_with_kept": int(len(np.unique(prompt[kept]))),
        "responses_kept": int(len(kept)),
    }


def filter_samples(config: FilterConfig) -> dict:
    """Filter, cap and write the SFT parquet; return the summary (printed unless quiet)."""
    from verl_restrain.jobs.scoring.votes import row_kinds

    samples, prompts, record = read_inputs(config)
    remove_stale_temps(config.output)
    try:
        check_writable(config.output)
    except WriteError as error:
        raise JobInputError(f"--output: {error}") from None
    samples = samples.sort_by([("prompt_index", "ascending"), ("sample_index", "ascending")])
    prompt = samples.column("prompt_index").to_numpy()  # (N,)
    if len(prompt) and (prompt.min() < 0 or prompt.max() >= prompts.num_rows):
        raise JobInputError(f"{config.samples} has prompt_index values outside the {prompts.num_rows} prompt rows")
    if config.keep == "gold":
        labels = gold_labels(prompts, config.prompts)
        if not any(labels):
            raise JobInputError(f"no row of {config.prompts} has a gold label; use --keep majority")
        kinds = row_kinds(prompts, record["answer_kind_map"], record["default_answer_kind"])
        passes = _gold_passes(samples.column("answer").to_pylist(), prompt, labels, kinds, config.progress)
    else:
        majority = samples.column("is_majority").to_numpy(zero_copy_only=False).astype(bool)  # (N,)
        size = np.bincount(prompt, minlength=prompts.num_rows)  # (P,) samples per prompt
        majority_count = np.bincount(prompt, weights=majority.astype(float), minlength=prompts.num_rows)  # (P,)
        share = np.divide(majority_count, size, out=np.zeros(len(size)), where=size > 0)  # (P,)
        passes = majority & (share[prompt] >= config.min_majority_share)
    responses = samples.column("response").to_pylist()
    kept = select(prompt, passes, config.max_per_prompt, responses if config.distinct else None)

    chats = prompts.column(record["prompt_key"]).to_pylist()
    messages = {}
    for p in np.unique(prompt[kept]).tolist():
        try:
            messages[p] = _messages(as_chat(chats[p]), p, config.prompts, record["prompt_key"])
        except ValueError as error:
            raise JobInputError(f"row {p} of {config.prompts}, column {record['prompt_key']!r}: {error}") from None
    kept_rows = samples.take(pa.array(kept, pa.int64()))
    prompt_kept = prompt[kept].tolist()
    conversations = [
        messages[p] + [{"role": "assistant", "content": response}]
        for p, response in zip(prompt_kept, kept_rows.column("response").to_pylist())
    ]
    table = pa.table(
        {
            config.messages_key: pa.array(conversations, MESSAGES_TYPE),
            "prompt_index": kept_rows.column("prompt_index"),
            "sample_index": kept_rows.column("sample_index"),
            "answer": kept_rows.column("answer"),
        }
    )
    summary = summarize(prompts.num_rows, prompt, passes, kept)
    settings = {k: v for k, v in asdict(config).items() if k not in ("output", "progress")}
    metadata = {"settings": settings, "scoring": record, "summary": summary, "version": __version__}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    atomic_write_table(table, config.output)
    if config.progress:
        print_summary(summary, config.output)
    return summary


def print_summary(summary: dict, output: str) -> None:
    """Print :func:`summarize`'s numbers to stderr."""
    print(
        f"kept {summary['responses_kept']} responses of {summary['samples']} "
        f"({summary['samples_passing']} passed the filter) -> {output}\n"
        f"  prompts with a kept response: {summary['prompts_with_kept']} of {summary['prompts']}",
        file=sys.stderr,
    )


def build_parser():
    return parser_for(
        FilterConfig,
        groups=(FILES, FILTER),
        prog=PROG,
        description="ReST-EM's Improve step: keep a scoring run's correct (or majority) responses, at most "
        "--max-per-prompt per prompt, and write them as verl's SFT parquet (a messages column).",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``restrain-filter-samples``; returns the exit status (2 for bad input, 1 when the
    output cannot be written)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        filter_samples(config_from_args(FilterConfig, args))
    except JobInputError as error:
        parser.exit(2, f"{PROG}: error: {error}\n")
    except WriteError as error:
        parser.exit(1, f"{PROG}: error: {error}; make room (or fix the folder) and rerun the same command\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
