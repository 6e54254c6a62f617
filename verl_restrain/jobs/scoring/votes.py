"""Votes over the base model's samples and the parquet columns they become.

Per prompt, each of the n samples gets its canonical final answer and a cluster id from
:mod:`verl_restrain.answers` (the clustering the trainer votes with); the counts then go through
:func:`verl_restrain.advantage.count_votes`, so c_ref and the majority (ties to the cluster sampled
first) are exactly what the trainer would compute on the same samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

from verl_restrain import defaults
from verl_restrain.answers.kinds import answer_kind

__all__ = [
    "ANSWER_COUNTS_TYPE",
    "SAMPLES_SCHEMA",
    "prompt_columns",
    "row_kinds",
    "samples_table",
    "summarize",
    "vote_batch",
]

# restrain_ref_answer_counts: every distinct answer of a prompt with its count, in order of first
# appearance among the samples. The list item is named "element" as parquet names it on reading, so
# that a column built here and one read back from a shard file have the same Arrow schema.
ANSWER_COUNTS_TYPE = pa.list_(pa.field("element", pa.struct([("answer", pa.string()), ("count", pa.int64())])))

SAMPLES_SCHEMA = pa.schema(
    [
        ("prompt_index", pa.int64()),  # row of the prompt in the input file
        ("sample_index", pa.int64()),  # 0..n-1
        ("response", pa.string()),
        ("answer", pa.string()),  # extracted canonical answer, null when none
        ("cluster_id", pa.int64()),  # answer cluster within the prompt, -1 when no answer
        ("is_majority", pa.bool_()),  # in the prompt's majority cluster
    ]
)


def row_kinds(table: pa.Table, answer_kinds: Mapping[str, str] | None = None, default: str = "math") -> list[str]:
    """The answer kind of every row of a verl dataset, by :func:`verl_restrain.answers.kinds.answer_kind`.

    Each row's ``data_source`` and ``extra_info`` (None where the column is absent) go through the
    one rule with the user's ``answer_kinds`` (data_source -> kind) and ``default``.
    """
    rows = table.num_rows
    sources = table.column("data_source").to_pylist() if "data_source" in table.column_names else [None] * rows
    extras = table.column("extra_info").to_pylist() if "extra_info" in table.column_names else [None] * rows
    return [answer_kind(source, extra, answer_kinds, default) for source, extra in zip(sources, extras)]


def vote_batch(
    responses: Sequence[Sequence[str]], kinds: Sequence[str]
) -> tuple[list[list[str | None]], list[list[int]]]:
    """Extract and cluster the answers of each prompt's samples (the trainer's voting).

    Returns, per prompt, the canonical answer of each sample (None when none) and its cluster id
    (numbered by first appearance, -1 when no answer).
    """
    from verl_restrain.answers import cluster_extracted, extract_answer

    answers = [[extract_answer(text, kind) for text in samples] for samples, kind in zip(responses, kinds)]
    clusters = [list(cluster_extracted(extracted, kind)) for extracted, kind in zip(answers, kinds)]
    return answers, clusters


def prompt_columns(
    answers: Sequence[str | None], clusters: Sequence[int], n: int
) -> tuple[dict[str, pa.Array], list[int]]:
    """The four output columns of G prompts from their N = G * n samples, prompt by prompt.

    Args:
        answers: (N,) canonical answer of each sample, None when none; samples of prompt g at
            ``[g * n, (g + 1) * n)`` in sample order.
        clusters: (N,) cluster id of each sample within its prompt, -1 when no answer.
        n: samples per prompt.

    Returns:
        The columns keyed by their names in :mod:`verl_restrain.defaults`, and the (G,) cluster id
        (in ``clusters``' numbering) of each prompt's majority, -1 when none.
    """
    import torch

    from verl_restrain.advantage import count_votes

    if len(clusters) % n or len(answers) != len(clusters):
        raise ValueError(f"{len(clusters)} cluster ids and {len(answers)} answers do not make prompts of n={n}")
    num_prompts = len(clusters) // n
    cluster_id = torch.as_tensor(list(clusters), dtype=torch.int64)  # (N,)
    group = torch.arange(num_prompts).repeat_interleave(n)  # (N,)
    votes = count_votes(cluster_id, group)
    num_clusters = votes.cluster_count.numel()
    # First sample of each dense cluster: its canonical answer names the cluster.
    valid = votes.cluster >= 0  # (N,)
    first = torch.full((num_clusters,), len(clusters), dtype=torch.int64)
    first = first.scatter_reduce(0, votes.cluster[valid], torch.arange(len(clusters))[valid], reduce="amin")  # (C,)
    first_sample = first.tolist()
    cluster_answer = [answers[i] for i in first_sample]
    majority = votes.majority_cluster.tolist()  # (G,) dense cluster id, -1 when none

    counts: list[list[dict]] = [[] for _ in range(num_prompts)]
    cluster_group = votes.cluster_group.tolist()
    cluster_count = votes.cluster_count.tolist()
    for c in sorted(range(num_clusters), key=first_sample.__getitem__):
        counts[cluster_group[c]].append({"answer": cluster_answer[c], "count": cluster_count[c]})
    columns = {
        defaults.REF_MAJORITY_COUNT_COLUMN: pa.array(votes.majority_count.numpy(), pa.int64()),
        defaults.REF_NUM_SAMPLES_COLUMN: pa.array([n] * num_prompts, pa.int64()),
        defaults.REF_MAJORITY_ANSWER_COLUMN: pa.array([cluster_answer[c] if c >= 0 else None for c in majority], pa.string()),
        defaults.REF_ANSWER_COUNTS_COLUMN: pa.array(counts, ANSWER_COUNTS_TYPE),
    }
    majority_id = [clusters[first_sample[c]] if c >= 0 else -1 for c in majority]
    return columns, majority_id


def samples_table(checkpoint: pa.Table, majority_id: Sequence[int]) -> pa.Table:
    """One row per sample (:data:`SAMPLES_SCHEMA`) of a batch checkpoint.

    ``majority_id`` holds the majority cluster id of each of the checkpoint's prompts, in order.
    """
    rows = checkpoint.column("row").to_pylist()
    lengths = [len(samples) for samples in checkpoint.column("clusters").to_pylist()]
    clusters = checkpoint.column("clusters").combine_chunks().flatten().to_pylist()
    majority = [m for m, length in zip(majority_id, lengths) for _ in range(length)]
    return pa.table(
        {
            "prompt_index": [row for row, length in zip(rows, lengths) for _ in range(length)],
            "sample_index": [i for length in lengths for i in range(length)],
            "response": checkpoint.column("responses").combine_chunks().flatten(),
            "answer": checkpoint.column("answers").combine_chunks().flatten(),
            "cluster_id": clusters,
            "is_majority": [c >= 0 and c == m for c, m in zip(clusters, majority)],
        },
        schema=SAMPLES_SCHEMA,
    )


def summarize(table: pa.Table) -> dict:
    """Prompts scored and the distribution of c_ref/n: its mean, the share >= 0.5, the share with no valid answer."""
    count = table.column(defaults.REF_MAJORITY_COUNT_COLUMN).to_numpy()
    n = table.column(defaults.REF_NUM_SAMPLES_COLUMN).to_numpy()
    prompts = table.num_rows
    nan = float("nan")
    return {
        "prompts": prompts,
        "mean_majority_share": float((count / n).mean()) if prompts else nan,
        "share_majority_at_least_half": float((2 * count >= n).mean()) if prompts else nan,
        "share_no_valid_answer": float((count == 0).mean()) if prompts else nan,
    }
