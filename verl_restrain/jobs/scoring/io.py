"""Files of the offline scoring job: shard plans, batch checkpoints, job metadata, merging.

Work is split into global batches of ``batch_size`` consecutive input rows; batch b holds rows
``[b * batch_size, (b + 1) * batch_size)``. A shard is a contiguous range of batches, so shard
outputs joined in order equal the unsharded output.

The work directory (:class:`WorkDir`) holds ``settings.json``, the settings that determine the
samples, written before any batch, and one ``batch-<b>.parquet`` per finished batch. Every file is
written with :func:`verl_restrain.jobs.files.atomic_write`, so a file with its final name is always
complete, whatever moment a kill hits. Removal deletes ``settings.json`` last, so a directory with
batches but no settings is the remains of an interrupted removal, and is removed on the next open.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from verl_restrain.jobs.config import JobInputError
from verl_restrain.jobs.files import atomic_write_table, atomic_write_text, fsync_dir, is_temp_name

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_SCHEMA",
    "METADATA_KEY",
    "ShardPlan",
    "WorkDir",
    "merge_shards",
    "plan_shard",
    "read_job_metadata",
    "with_job_metadata",
]

# Parquet schema-metadata key of the JSON record this job writes into its outputs.
METADATA_KEY = b"verl_restrain.jobs.scoring"

# One row per prompt of a finished batch: its n responses, their extracted canonical answers
# (null when none) and their cluster ids (-1 when no answer), all in sample order.
CHECKPOINT_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("responses", pa.list_(pa.string())),
        ("answers", pa.list_(pa.string())),
        ("clusters", pa.list_(pa.int64())),
    ]
)

SETTINGS_FILE = "settings.json"
_BATCH_FILE = re.compile(r"batch-\d{7}\.parquet")


@dataclass(frozen=True)
class ShardPlan:
    """The rows and global batches one shard scores."""

    num_rows: int  # rows in the whole input
    batch_size: int
    num_shards: int
    shard_index: int
    batch_start: int  # first global batch of the shard
    batch_stop: int  # one past its last batch

    @property
    def row_start(self) -> int:
        return min(self.batch_start * self.batch_size, self.num_rows)

    @property
    def row_stop(self) -> int:
        return min(self.batch_stop * self.batch_size, self.num_rows)

    @property
    def batches(self) -> range:
        return range(self.batch_start, self.batch_stop)

    def batch_rows(self, batch_index: int) -> range:
        """Global row indices of one batch."""
        start = batch_index * self.batch_size
        return range(start, min(start + self.batch_size, self.num_rows))


def plan_shard(num_rows: int, batch_size: int, num_shards: int = 1, shard_index: int = 0) -> ShardPlan:
    """Split ``ceil(num_rows / batch_size)`` batches into ``num_shards`` contiguous, near-equal ranges.

    Shards differ in size by at most one batch; when there are more shards than batches, the last
    shards are empty.
    """
    if batch_size < 1:
        raise JobInputError(f"batch size must be >= 1, got {batch_size}")
    if num_shards < 1:
        raise JobInputError(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise JobInputError(f"--shard-index must be in [0, {num_shards}), got {shard_index}")
    num_batches = -(-num_rows // batch_size)
    base, extra = divmod(num_batches, num_shards)
    start = shard_index * base + min(shard_index, extra)
    stop = start + base + (1 if shard_index < extra else 0)
    return ShardPlan(num_rows, batch_size, num_shards, shard_index, start, stop)


class WorkDir:
    """The checkpoint directory of one scoring run (one shard)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def batch_path(self, batch_index: int) -> Path:
        return self.path / f"batch-{batch_index:07d}.parquet"

    def open(self, settings: dict, *, resume: bool) -> None:
        """Create the directory, or check that an existing one was made with the same settings.

        Other settings are refused once a batch is checkpointed; before that they replace the recorded
        ones. With ``resume=False`` an existing work directory of this job is emptied first, as are
        the remains of an interrupted removal. A directory holding anything else is never touched.
        """
        settings_path = self.path / SETTINGS_FILE
        settings = json.loads(json.dumps(settings))  # compare as recorded: tuples become lists
        if self.path.exists() and not self.path.is_dir():
            raise JobInputError(f"work directory {self.path} is a file")
        if self.path.is_dir():
            foreign = sorted(p.name for p in self.path.iterdir() if not _is_ours(p.name))
            if foreign:
                raise JobInputError(
                    f"{self.path} exists and is not a scoring work directory (it holds {', '.join(foreign[:3])}); "
                    "not touching it: choose another --work-dir"
                )
            if not resume or not settings_path.exists():
                self.remove()
            for stale in self.path.glob(".*.tmp"):  # half-written by a killed run
                stale.unlink(missing_ok=True)
        if settings_path.exists():
            recorded = json.loads(settings_path.read_text(encoding="utf-8"))
            if recorded != settings and not self.has_batches():
                # Nothing was sampled with the old settings (say the model failed to load): a
                # corrected rerun simply takes the directory over.
                atomic_write_text(json.dumps(settings, indent=1, sort_keys=True), settings_path)
                return
            if recorded != settings:
                changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
                details = "; ".join(f"{k}: checkpoint {recorded.get(k)!r}, now {settings.get(k)!r}" for k in changed)
                raise JobInputError(
                    f"cannot resume from {self.path}: its checkpoints were made with other settings ({details}). "
                    "Rerun with the original settings, pass --no-resume to discard the checkpoints, "
                    "or choose another --output."
                )
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(settings, indent=1, sort_keys=True), settings_path)

    def has_batches(self) -> bool:
        """Whether any batch of any shard is checkpointed here."""
        return next(self.path.glob("batch-*.parquet"), None) is not None

    def finished_batches(self, plan: ShardPlan) -> set[int]:
        """Batches of ``plan`` whose checkpoint file exists (each one complete by construction)."""
        return {b for b in plan.batches if self.batch_path(b).exists()}

    def write_batch(self, batch_index: int, table: pa.Table) -> None:
        atomic_write_table(table.cast(CHECKPOINT_SCHEMA), self.batch_path(batch_index))

    def read_batches(self, plan: ShardPlan, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The checkpoints of ``plan`` in batch order, checked to hold exactly the batch's rows."""
        for b in plan.batches:
            table = pq.read_table(self.batch_path(b), columns=None if columns is None else ["row", *columns])
            if table.column("row").to_pylist() != list(plan.batch_rows(b)):
                raise ValueError(f"checkpoint {self.batch_path(b)} does not hold the rows of batch {b}")
            yield table

    def remove(self) -> None:
        """Delete this job's files, ``settings.json`` last, then the directory if nothing else is in it."""
        if not self.path.is_dir():
            return
        entries = list(self.path.iterdir())
        if not all(_is_ours(p.name) for p in entries):
            logger.warning("left %s in place: it holds files this job did not write", self.path)
            return
        for path in sorted(p for p in entries if p.name != SETTINGS_FILE):
            path.unlink(missing_ok=True)
        (self.path / SETTINGS_FILE).unlink(missing_ok=True)
        self.path.rmdir()
        fsync_dir(self.path.parent)


def _is_ours(name: str) -> bool:
    """A file the work directory may hold: the settings, a batch checkpoint, a temporary file."""
    return name == SETTINGS_FILE or _BATCH_FILE.fullmatch(name) is not None or is_temp_name(name)


def with_job_metadata(table: pa.Table, record: dict) -> pa.Table:
    """``table`` with ``record`` stored as JSON under :data:`METADATA_KEY`, other metadata kept."""
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(record, sort_keys=True).encode()
    return table.replace_schema_metadata(metadata)


def read_job_metadata(path: str | os.PathLike) -> dict:
    """The job record of a file written by the scoring job."""
    metadata = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in metadata:
        raise JobInputError(f"{path} was not written by restrain-score-prompts (no {METADATA_KEY.decode()} metadata)")
    return json.loads(metadata[METADATA_KEY])


def merge_shards(shard_paths: list[str | os.PathLike], output: str | os.PathLike) -> dict:
    """Join the shard files of one run in row order into ``output``; return the merged job record.

    Every shard of the run must be given exactly once (prompt-score shards or sample shards, not
    mixed). The result is the file an unsharded run with the same settings writes.
    """
    if not shard_paths:
        raise JobInputError("merge needs at least one shard file")
    if any(Path(path).resolve() == Path(output).resolve() for path in shard_paths):
        raise JobInputError(f"the merged output {output} must not be one of the shard files")
    records = []
    for path in shard_paths:
        if not Path(path).is_file():
            raise JobInputError(f"shard file not found: {path}")
        records.append(read_job_metadata(path))
    shard_infos = [record.pop("shard", None) for record in records]
    if any(info is None for info in shard_infos):
        raise JobInputError("merge takes the shard files of a --num-shards run; one of the files is not a shard")
    if any(record != records[0] for record in records[1:]):
        raise JobInputError("the shard files come from runs with different settings, inputs or file kinds")
    num_shards = shard_infos[0]["num_shards"]
    indices = sorted(info["shard_index"] for info in shard_infos)
    if indices != list(range(num_shards)) or any(info["num_shards"] != num_shards for info in shard_infos):
        raise JobInputError(f"need each of the {num_shards} shards exactly once, got shard indices {indices}")
    order = sorted(range(len(shard_paths)), key=lambda i: shard_infos[i]["shard_index"])
    row = 0
    for i in order:
        if shard_infos[i]["row_start"] != row:
            raise JobInputError(f"shard {shard_infos[i]['shard_index']} starts at row {shard_infos[i]['row_start']}, expected {row}")
        row = shard_infos[i]["row_stop"]
    if row != shard_infos[0]["num_rows"]:
        raise JobInputError(f"the shards cover {row} of {shard_infos[0]['num_rows']} rows")
    tables = [pq.read_table(shard_paths[i]) for i in order]
    merged = pa.concat_tables(tables)
    atomic_write_table(with_job_metadata(merged, records[0]), output)
    return records[0]
