"""Scoring shards as Ray tasks, merged into the file an unsharded run writes."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow.parquet as pq

from verl_restrain.jobs.config import JobInputError
from verl_restrain.jobs.files import WriteError, remove_stale_temps
from verl_restrain.jobs.scoring.config import ScoringConfig
from verl_restrain.jobs.scoring.io import merge_shards
from verl_restrain.jobs.scoring.job import (
    check_outputs_writable,
    report,
    file_sha256,
    finished_output,
    job_record,
    read_input,
    score_prompts,
)

logger = logging.getLogger(__name__)

__all__ = ["RayOptions", "default_gpus_per_shard", "score_prompts_on_ray", "shard_output_path"]

RAY = "Ray"


@dataclass(kw_only=True)
class RayOptions:
    """How ``restrain-score-prompts --ray`` runs its shards."""

    ray: bool = field(
        default=False,
        metadata={
            "group": RAY,
            "help": "run all --num-shards shards as Ray tasks, then merge (one shard: one task writes --output); "
            "--engine auto is resolved on the node each shard runs on",
        },
    )
    ray_address: str | None = field(
        default=None, metadata={"group": RAY, "help": "Ray cluster address (default: RAY_ADDRESS, else a local Ray)"}
    )
    ray_gpus_per_shard: float | None = field(
        default=None,
        metadata={
            "group": RAY,
            "help": "GPUs per shard task (default: 1 with --engine vllm or when the cluster has GPUs, else 0); "
            "--num-shards <GPUs> --ray-gpus-per-shard 1 runs one vLLM copy per GPU (data parallel)",
        },
    )


def shard_output_path(path: str, shard_index: int, num_shards: int) -> str:
    """``data/x.parquet`` -> ``data/x.shard-00002-of-00008.parquet``."""
    stem, suffix = os.path.splitext(path)
    return f"{stem}.shard-{shard_index:05d}-of-{num_shards:05d}{suffix or '.parquet'}"


def default_gpus_per_shard(engine: str, cluster_gpus: float) -> float:
    """One GPU per shard for vLLM, and for auto/hf when the Ray cluster has GPUs; else none.

    A shard task that asks for no GPU still sees every GPU of its node (Ray leaves
    ``CUDA_VISIBLE_DEVICES`` alone then), so shards on a GPU cluster each ask for one to avoid sharing.
    """
    if engine == "vllm":
        return 1
    return 1 if cluster_gpus >= 1 else 0


def _merged_output_finished(config: ScoringConfig) -> bool:
    """Whether ``config.output`` (and the samples) is a finished merge for these settings and input.

    ``--engine auto`` is resolved on the shards' nodes, so either engine's record is accepted.
    """
    table = read_input(config)
    sha = file_sha256(config.input)
    for engine in [config.engine] if config.engine != "auto" else ["vllm", "hf"]:
        record = job_record(config, engine, sha, table.num_rows)
        if finished_output(config.output, {**record, "kind": "prompts"}) and (
            not config.samples_output or finished_output(config.samples_output, {**record, "kind": "samples"})
        ):
            return True
    return False


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

    read_input(config)
    if config.num_shards > 1:
        for path in (config.samples_output, config.output):
            if path:
                remove_stale_temps(path)
        if config.resume and _merged_output_finished(config):
            logger.info("%s is already complete for these settings and this input: nothing to do", config.output)
            return report(pq.read_table(config.output), config)
        check_outputs_writable(config, work_dir=False)  # the shards check their own work directories
    if not ray.is_initialized():
        ray.init(address=address)
    if gpus_per_shard is None:
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        gpus_per_shard = default_gpus_per_shard(config.engine, cluster_gpus)
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
        if isinstance(error.cause, (JobInputError, WriteError)):
            raise error.cause from None
        raise
    if config.num_shards > 1:
        merge_shards([shard.output for shard in shards], config.output)
        if config.samples_output:
            merge_shards([shard.samples_output for shard in shards], config.samples_output)
        for shard in shards:
            for path in (shard.output, shard.samples_output):
                if path:
                    Path(path).unlink(missing_ok=True)
    return report(pq.read_table(config.output), config)
