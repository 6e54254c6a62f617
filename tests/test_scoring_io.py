"""Files of the scoring job: shard plans, batch seeds, job metadata, the checkpoint directory."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from verl_restrain.jobs.config import batch_seed
from verl_restrain.jobs.files import atomic_write_table
from verl_restrain.jobs.scoring import ScoringInputError, shard_output_path
from verl_restrain.jobs.scoring.io import (
    CHECKPOINT_SCHEMA,
    WorkDir,
    plan_shard,
    read_job_metadata,
    with_job_metadata,
)


@given(rows=st.integers(0, 500), batch_size=st.integers(1, 40), shards=st.integers(1, 12))
def test_shards_tile_the_batches_in_order(rows, batch_size, shards):
    plans = [plan_shard(rows, batch_size, shards, k) for k in range(shards)]
    num_batches = -(-rows // batch_size)
    assert [b for plan in plans for b in plan.batches] == list(range(num_batches))
    assert [r for plan in plans for b in plan.batches for r in plan.batch_rows(b)] == list(range(rows))
    assert plans[0].row_start == 0 and plans[-1].row_stop == rows
    assert all(a.row_stop == b.row_start for a, b in zip(plans, plans[1:]))
    sizes = [len(plan.batches) for plan in plans]
    assert max(sizes) - min(sizes) <= 1
    assert all(plan.row_stop - plan.row_start == sum(len(plan.batch_rows(b)) for b in plan.batches) for plan in plans)


def test_plan_example():
    # 10 rows, batches of 3: [0,3) [3,6) [6,9) [9,10); 3 shards get 2, 1 and 1 batches.
    plans = [plan_shard(10, 3, 3, k) for k in range(3)]
    assert [(p.row_start, p.row_stop) for p in plans] == [(0, 6), (6, 9), (9, 10)]
    assert list(plans[2].batch_rows(3)) == [9]


@pytest.mark.parametrize(
    "args, message",
    [((10, 0, 1, 0), "batch size must be >= 1"), ((10, 2, 0, 0), "--num-shards"), ((10, 2, 2, -1), "--shard-index")],
)
def test_plan_rejects_bad_settings(args, message):
    with pytest.raises(ScoringInputError, match=message):
        plan_shard(*args)


def test_batch_seed_depends_on_seed_and_batch_only():
    assert batch_seed(42, 7) == batch_seed(42, 7)
    assert len({batch_seed(42, b) for b in range(1000)}) == 1000
    assert batch_seed(42, 7) != batch_seed(43, 7)


def test_job_metadata_round_trip_keeps_other_metadata(tmp_path):
    table = pa.table({"x": [1]}).replace_schema_metadata({b"pandas": b"{}"})
    atomic_write_table(with_job_metadata(table, {"n": 16, "model": "m"}), tmp_path / "t.parquet")
    assert read_job_metadata(tmp_path / "t.parquet") == {"n": 16, "model": "m"}
    assert pq.read_schema(tmp_path / "t.parquet").metadata[b"pandas"] == b"{}"
    atomic_write_table(table, tmp_path / "plain.parquet")
    with pytest.raises(ScoringInputError, match="not written by restrain-score-prompts"):
        read_job_metadata(tmp_path / "plain.parquet")


def checkpoint(rows):
    return pa.table(
        {
            "row": rows,
            "responses": [["r"] * 2 for _ in rows],
            "answers": [["1", None] for _ in rows],
            "clusters": [[0, -1] for _ in rows],
        },
        schema=CHECKPOINT_SCHEMA,
    )


def test_work_dir_resume_and_refusal(tmp_path):
    work = WorkDir(tmp_path / "out.parquet.parts")
    plan = plan_shard(5, 2)
    settings = {"model": "m", "n": 2, "kwargs": {"a": (1, 2)}}
    work.open(settings, resume=True)
    work.write_batch(0, checkpoint([0, 1]))
    (work.path / ".batch-0000001.parquet.0123abcd.tmp").write_bytes(b"half")  # left by a killed run
    assert work.finished_batches(plan) == {0}

    WorkDir(work.path).open(settings, resume=True)
    assert work.finished_batches(plan) == {0}
    assert not list(work.path.glob(".*.tmp"))
    with pytest.raises(ScoringInputError, match=r"other settings \(n: checkpoint 2, now 4\)"):
        WorkDir(work.path).open({**settings, "n": 4}, resume=True)
    WorkDir(work.path).open({**settings, "n": 4}, resume=False)
    assert work.finished_batches(plan) == set()
    assert json.loads((work.path / "settings.json").read_text())["n"] == 4


def test_work_dir_takes_other_settings_while_no_batch_is_done(tmp_path):
    """A run that failed before its first checkpoint (say, its model did not load) blocks nothing."""
    work = WorkDir(tmp_path / "out.parquet.parts")
    work.open({"engine": "vllm", "n": 2}, resume=True)
    assert not work.has_batches()
    WorkDir(work.path).open({"engine": "hf", "n": 2}, resume=True)
    assert json.loads((work.path / "settings.json").read_text())["engine"] == "hf"
    work.write_batch(0, checkpoint([0, 1]))
    assert work.has_batches()
    with pytest.raises(ScoringInputError, match=r"other settings \(engine: checkpoint 'hf', now 'vllm'\)"):
        WorkDir(work.path).open({"engine": "vllm", "n": 2}, resume=True)


def test_work_dir_never_deletes_a_foreign_directory(tmp_path):
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("...")
    with pytest.raises(ScoringInputError, match="not a scoring work directory"):
        WorkDir(foreign).open({"n": 1}, resume=False)
    assert (foreign / "thesis.tex").exists()


def test_read_batches_checks_the_rows(tmp_path):
    work = WorkDir(tmp_path / "parts")
    work.open({"n": 2}, resume=True)
    plan = plan_shard(4, 2)
    work.write_batch(0, checkpoint([0, 1]))
    work.write_batch(1, checkpoint([2, 4]))
    with pytest.raises(ValueError, match="does not hold the rows of batch 1"):
        list(work.read_batches(plan))


def test_shard_output_path():
    assert shard_output_path("data/x.parquet", 2, 8) == "data/x.shard-00002-of-00008.parquet"
    assert shard_output_path("x", 0, 1) == "x.shard-00000-of-00001.parquet"


def test_work_dir_left_by_an_interrupted_removal_is_cleared_not_refused(tmp_path):
    """A kill while the directory is removed leaves batches without settings.json: the next run clears them."""
    work = WorkDir(tmp_path / "out.parquet.parts")
    work.open({"n": 2}, resume=True)
    work.write_batch(0, checkpoint([0, 1]))
    work.write_batch(1, checkpoint([2, 3]))
    (work.path / "settings.json").unlink()  # what a removal in any order can leave
    (work.path / ".batch-0000002.parquet.0123abcd.tmp").write_bytes(b"half")
    WorkDir(work.path).open({"n": 3}, resume=True)
    assert sorted(p.name for p in work.path.iterdir()) == ["settings.json"]
    assert json.loads((work.path / "settings.json").read_text())["n"] == 3


def test_work_dir_removal_deletes_the_settings_last(tmp_path, monkeypatch):
    work = WorkDir(tmp_path / "parts")
    work.open({"n": 2}, resume=True)
    for b in range(3):
        work.write_batch(b, checkpoint([2 * b, 2 * b + 1]))
    (work.path / ".batch-0000003.parquet.0123abcd.tmp").write_bytes(b"half")
    removed = []
    unlink = Path.unlink
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: removed.append(self.name) or unlink(self, missing_ok))
    work.remove()
    assert removed[-1] == "settings.json" and len(removed) == 5
    assert not work.path.exists()


def test_work_dir_removal_leaves_a_directory_with_foreign_files_whole(tmp_path):
    work = WorkDir(tmp_path / "parts")
    work.open({"n": 2}, resume=True)
    work.write_batch(0, checkpoint([0, 1]))
    (work.path / "notes.txt").write_text("mine")
    work.remove()
    assert sorted(p.name for p in work.path.iterdir()) == ["batch-0000000.parquet", "notes.txt", "settings.json"]
    with pytest.raises(ScoringInputError, match=r"not a scoring work directory \(it holds notes.txt\)"):
        WorkDir(work.path).open({"n": 2}, resume=True)
