"""Offline prompt scoring: sample the frozen base model, vote, and store the vote counts in the dataset.

For every prompt x of a verl-format parquet file the job draws n completions from the base model
(rendered exactly as verl renders the prompt for training,
:func:`verl_restrain.jobs.generation.render_prompts`), extracts and clusters their final answers as
the trainer does (:mod:`verl_restrain.jobs.scoring.votes`), and adds four columns, every input column
and the row order kept:

==================================  =====================================================================
``restrain_ref_majority_count``     c_ref, the size of the largest answer cluster; 0 when no sample had a
                                    valid answer; int64
``restrain_ref_num_samples``        n; int64
``restrain_ref_majority_answer``    canonical answer of the majority cluster (the answer of its first
                                    sample), null when no valid answer; ties go to the cluster sampled
                                    first, as in :func:`verl_restrain.advantage.count_votes`
``restrain_ref_answer_counts``      list<struct<answer: string, count: int64>>: every distinct answer and
                                    its count, in order of first appearance among the samples
==================================  =====================================================================

Training derives the prompt weight u_x = g(c_ref / n) from these counts with its own sigma and
center. A row's answer kind follows :func:`verl_restrain.answers.kinds.answer_kind` with
``answer_kind_map`` and ``default_answer_kind``. The parquet schema metadata key
``verl_restrain.jobs.scoring`` holds a JSON record of the model, engine, sampling settings, seed,
batch size, answer-kind settings, input checksum and package version; ``samples_output`` gets one
row per sampled response (:data:`SAMPLES_SCHEMA`).

Guarantees. Batch b is sampled with a seed derived from (seed, b) alone and a shard is a contiguous
range of batches, so resumed, sharded and merged runs all write the bytes of the unsharded,
uninterrupted run. Every finished batch is checkpointed in the work directory
(:mod:`verl_restrain.jobs.scoring.io`); outputs only ever appear complete
(:mod:`verl_restrain.jobs.files`); the input is never written. After a kill at any moment, the same
command finishes the job and leaves no other file. With ``resume`` (the default), a complete output
made with the same settings from the same input is left alone, and a rerun with settings that change
the samples is refused once a batch is checkpointed.

Speed: ``scripts/bench_scoring.py`` compares the whole job with a bare ``model.generate`` loop over
the same prompts (HF engine on CPU). vLLM runs with the tensor parallel size of
:func:`verl_restrain.jobs.generation.default_tensor_parallel_size`, which can leave GPUs idle; to use
every GPU, run one shard per GPU: ``--ray --num-shards <GPUs> --ray-gpus-per-shard 1``.
"""

from verl_restrain.jobs.config import DEFAULT_BATCH_SIZE
from verl_restrain.jobs.scoring.config import ScoringConfig, ScoringInputError
from verl_restrain.jobs.scoring.io import merge_shards, read_job_metadata
from verl_restrain.jobs.scoring.job import print_summary, score_prompts
from verl_restrain.jobs.scoring.shards import score_prompts_on_ray, shard_output_path
from verl_restrain.jobs.scoring.votes import SAMPLES_SCHEMA, summarize

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "SAMPLES_SCHEMA",
    "ScoringConfig",
    "ScoringInputError",
    "merge_shards",
    "print_summary",
    "read_job_metadata",
    "score_prompts",
    "score_prompts_on_ray",
    "shard_output_path",
    "summarize",
]
