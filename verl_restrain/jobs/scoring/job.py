"""One scoring run (one shard): read, sample in checkpointed batches, vote, write the outputs."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from verl_restrain import __version__
from verl_restrain.jobs.config import JobInputError, batch_seed, read_parquet
from verl_restrain.jobs.files import WriteError, atomic_write_table, check_writable, remove_stale_temps
from verl_restrain.jobs.generation import as_chat, check_engine, load_sampler, load_tokenizer, render_prompts
from verl_restrain.jobs.scoring.config import ScoringConfig
from verl_restrain.jobs.scoring.io import (
    CHECKPOINT_SCHEMA,
    SETTINGS_FILE,
    ShardPlan,
    WorkDir,
    plan_shard,
    read_job_metadata,
    with_job_metadata,
)
from verl_restrain.jobs.scoring.votes import SAMPLES_SCHEMA, prompt_columns, row_kinds, samples_table, summarize, vote_batch

logger = logging.getLogger(__name__)

__all__ = [
    "check_outputs_writable",
    "file_sha256",
    "finished_output",
    "job_record",
    "print_summary",
    "read_input",
    "report",
    "score_prompts",
]


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def job_record(config: ScoringConfig, engine: str, input_sha256: str, num_rows: int) -> dict:
    """Everything that determines the samples and votes (and so the checkpoints)."""
    return {
        "model": config.model,
        "engine": engine,
        "engine_kwargs": config.engine_kwargs,
        "n": config.n,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "batch_size": config.batch_size_for(engine),
        "prompt_key": config.prompt_key,
        "apply_chat_template_kwargs": config.apply_chat_template_kwargs,
        "answer_kind_map": config.answer_kind_map,
        "default_answer_kind": config.default_answer_kind,
        "input_sha256": input_sha256,
        "num_rows": num_rows,
        "version": __version__,
    }


def finished_output(path: str | None, record: dict) -> bool:
    """Whether ``path`` is a complete output whose job record is ``record``."""
    if path is None or not Path(path).is_file():
        return False
    try:
        return read_job_metadata(path) == json.loads(json.dumps(record, sort_keys=True))  # as recorded
    except (OSError, ValueError, pa.ArrowException):  # not (or not our) parquet: it will be replaced
        return False


def read_input(config: ScoringConfig) -> pa.Table:
    """The input table, checked to be readable, non-empty and to have the prompt column."""
    table = read_parquet(config.input, "input")
    if config.prompt_key not in table.column_names:
        raise JobInputError(
            f"{config.input} has no {config.prompt_key!r} column (columns: {', '.join(table.column_names)}); "
            "set --prompt-key to the column holding the chat messages"
        )
    if table.num_rows == 0:
        raise JobInputError(f"{config.input} has no rows: nothing to score")
    return table


def _sample_batches(
    config: ScoringConfig, plan: ShardPlan, todo: list[int], table: pa.Table, kinds: list[str], engine: str, work: WorkDir
) -> None:
    """Sample, vote and checkpoint the batches in ``todo`` (``kinds`` is indexed by input row)."""
    from tqdm.auto import tqdm

    rows = [row for b in todo for row in plan.batch_rows(b)]
    chats = []
    for row, prompt in zip(rows, table.column(config.prompt_key).take(rows).to_pylist()):
        try:
            chats.append(as_chat(prompt))
        except ValueError as error:
            raise JobInputError(f"row {row} of {config.input}, column {config.prompt_key!r}: {error}") from None
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    # Rendering every pending prompt before the model loads surfaces template problems in seconds.
    rendered = dict(zip(rows, render_prompts(chats, tokenizer, config.apply_chat_template_kwargs)))
    sampler = load_sampler(
        config.model, engine, tokenizer=tokenizer, trust_remote_code=config.trust_remote_code, **config.engine_kwargs
    )
    total = plan.row_stop - plan.row_start
    bar = tqdm(
        total=total,
        initial=total - len(rows),
        unit="prompt",
        desc=f"scoring {Path(config.input).name}",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    # Voting runs in a background thread while the next batch samples. It is cheap (regexes, with
    # sympy work in the answers module's own child processes) but its first call waits for those
    # children to start.
    voter = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="restrain-vote")

    def checkpoint(batch_index: int, responses: list[list[str]], votes: concurrent.futures.Future) -> None:
        answers, clusters = votes.result()
        batch_rows = list(plan.batch_rows(batch_index))
        columns = {"row": batch_rows, "responses": responses, "answers": answers, "clusters": clusters}
        work.write_batch(batch_index, pa.table(columns, schema=CHECKPOINT_SCHEMA))
        bar.update(len(batch_rows))

    pending = None
    try:
        for batch_index in todo:
            batch_rows = plan.batch_rows(batch_index)
            responses = sampler.generate(
                [rendered[row] for row in batch_rows],
                n=config.n,
                temperature=config.temperature,
                top_p=config.top_p,
                max_new_tokens=config.max_new_tokens,
                seed=batch_seed(config.seed, batch_index),
            )
            votes = voter.submit(vote_batch, responses, [kinds[row] for row in batch_rows])
            # The previous batch was voted on while this one sampled; checkpoint it now.
            if pending is not None:
                checkpoint(*pending)
            pending = (batch_index, responses, votes)
        if pending is not None:
            checkpoint(*pending)
    finally:
        voter.shutdown(wait=True, cancel_futures=True)
        bar.close()


def _with_columns(table: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    for name, values in columns.items():
        if name in table.column_names:
            logger.warning("replacing the input's existing %s column", name)
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table


def print_summary(summary: dict, output: str) -> None:
    """Print :func:`verl_restrain.jobs.scoring.votes.summarize`'s numbers to stderr."""
    print(
        f"scored {summary['prompts']} prompts -> {output}\n"
        f"  mean c_ref/n:                {summary['mean_majority_share']:.4f}\n"
        f"  share with c_ref/n >= 0.5:   {summary['share_majority_at_least_half']:.4f}\n"
        f"  share with no valid answer:  {summary['share_no_valid_answer']:.4f}",
        file=sys.stderr,
    )


def check_outputs_writable(config: ScoringConfig, *, work_dir: bool = True) -> None:
    """Raise :class:`JobInputError` unless the outputs (and the work directory) can be written."""
    paths = [("--output", config.output), ("--samples-output", config.samples_output)]
    if work_dir:
        paths.append(("--work-dir", config.parts_dir / SETTINGS_FILE))
    for name, path in paths:
        if path:
            try:
                check_writable(path)
            except WriteError as error:
                raise JobInputError(f"{name}: {error}") from None


def score_prompts(config: ScoringConfig) -> dict:
    """Score one shard (the whole input by default), write its output(s) and return the summary.

    Every check on the input, the settings and the output locations runs before the tokenizer or
    the model loads. With ``config.resume`` (the default), an output already written by a run with
    the same settings and input is left alone, and batches checkpointed in ``config.parts_dir`` are
    reused; checkpoints made with other settings make it stop with an error.
    """
    table = read_input(config)
    try:
        engine = check_engine(config.engine)
    except ValueError as error:
        raise JobInputError(str(error)) from None
    plan = plan_shard(table.num_rows, config.batch_size_for(engine), config.num_shards, config.shard_index)
    record = job_record(config, engine, file_sha256(config.input), table.num_rows)
    output_record = {**record, "kind": "prompts"}
    samples_record = {**record, "kind": "samples"}
    if config.num_shards > 1:
        shard = {
            "num_shards": config.num_shards,
            "shard_index": config.shard_index,
            "row_start": plan.row_start,
            "row_stop": plan.row_stop,
            "num_rows": table.num_rows,
        }
        output_record["shard"] = samples_record["shard"] = shard
    for path in (config.samples_output, config.output):
        if path:
            remove_stale_temps(path)
    work = WorkDir(config.parts_dir)
    if (
        config.resume
        and finished_output(config.output, output_record)
        and (not config.samples_output or finished_output(config.samples_output, samples_record))
    ):
        logger.info(
            "%s is already complete for these settings and this input: nothing to do (--no-resume redoes it)",
            config.output,
        )
        if not config.keep_parts:
            work.remove()
        return report(pq.read_table(config.output), config)
    check_outputs_writable(config)

    work.open({**record, "num_shards": config.num_shards, "shard_index": config.shard_index}, resume=config.resume)
    finished = work.finished_batches(plan)
    todo = [b for b in plan.batches if b not in finished]
    if finished:
        logger.info("resuming: %d of %d batches already done in %s", len(finished), len(plan.batches), work.path)
    if todo:
        kinds = row_kinds(table, config.answer_kind_map, config.default_answer_kind)
        _sample_batches(config, plan, todo, table, kinds, engine, work)

    checkpoints = list(work.read_batches(plan, ["answers", "clusters"]))
    answers = [a for batch in checkpoints for a in batch.column("answers").combine_chunks().flatten().to_pylist()]
    clusters = [c for batch in checkpoints for c in batch.column("clusters").combine_chunks().flatten().to_pylist()]
    columns, majority_id = prompt_columns(answers, clusters, config.n)
    # Samples first: once the scored output exists, everything the run writes exists.
    if config.samples_output:
        samples = []
        for batch in work.read_batches(plan, ["responses", "answers", "clusters"]):
            start = batch.column("row")[0].as_py() - plan.row_start
            samples.append(samples_table(batch, majority_id[start : start + batch.num_rows]))
        samples_all = pa.concat_tables(samples) if samples else SAMPLES_SCHEMA.empty_table()
        atomic_write_table(with_job_metadata(samples_all, samples_record), config.samples_output)
    scored = _with_columns(table.slice(plan.row_start, plan.row_stop - plan.row_start), columns)
    atomic_write_table(with_job_metadata(scored, output_record), config.output)
    if not config.keep_parts:
        work.remove()
    return report(scored, config)


def report(scored: pa.Table, config: ScoringConfig) -> dict:
    """The summary of a scored table, printed unless the run is quiet."""
    summary = summarize(scored)
    if config.progress:
        print_summary(summary, config.output)
    return summary
