"""The scoring job under faults: kill -9 at every moment that matters, full disks, unwritable folders, reruns.

Every killed run is followed by the same command; the rerun must exit 0, write the bytes of an
uninterrupted run and leave nothing else next to the outputs. The killed runs are forked from one
driver process (``crash_driver.py``) that has imported torch, transformers and verl once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_restrain.jobs import files
from verl_restrain.jobs.scoring import job as scoring
from verl_restrain.jobs.scoring.cli import main
from verl_restrain.jobs.scoring.io import read_job_metadata

TESTS = Path(__file__).resolve().parent
NUM_ROWS = 6  # three batches of two


@pytest.fixture(scope="module")
def input_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.parquet"
    table = pa.table(
        {
            "data_source": ["dapo_math_14k", "gpqa_diamond"] * (NUM_ROWS // 2),
            "prompt": [[{"role": "user", "content": f"What is {i} + 3? Put it in \\boxed{{}}."}] for i in range(NUM_ROWS)],
            "extra_info": [{"index": i} for i in range(NUM_ROWS)],
        }
    )
    pq.write_table(table, path)
    return path


def command(input_path: Path, model: str, out: Path) -> list[str]:
    return [
        "--input", str(input_path), "--output", str(out / "scored.parquet"),
        "--samples-output", str(out / "samples.parquet"), "--model", model, "--engine", "hf", "--n", "2",
        "--max-new-tokens", "6", "--batch-size", "2", "--seed", "5", "--quiet",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(input_path, tiny_model_dir, tmp_path_factory):
    """The outputs of an uninterrupted run: {name: bytes}."""
    out = tmp_path_factory.mktemp("reference")
    assert main(command(input_path, tiny_model_dir, out)) == 0
    return {name: (out / name).read_bytes() for name in ("scored.parquet", "samples.parquet")}


def assert_finished_like_the_reference(out: Path, reference: dict) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(reference), "stray files next to the outputs"
    for name, data in reference.items():
        assert (out / name).read_bytes() == data, f"{name} differs from the uninterrupted run's"


class Driver:
    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, str(TESTS / "crash_driver.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])},
        )
        assert json.loads(self.process.stdout.readline()) == {"ready": True}

    def run(self, argv: list[str], **request) -> dict:
        self.process.stdin.write(json.dumps({"argv": argv, **request}) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def driver():
    driver = Driver()
    yield driver
    driver.close()


@pytest.mark.parametrize(
    "point, nth",
    [
        ("settings_tmp", 1),
        ("checkpoint_tmp", 1),
        ("checkpoint_renamed", 1),
        ("checkpoint_tmp", 3),
        ("checkpoint_renamed", 3),
        ("samples_tmp", 1),
        ("output_tmp", 1),
        ("output_renamed", 1),
        ("cleanup_half", 2),
        ("cleanup_half", 4),  # settings.json deleted too, the folder not yet
    ],
)
def test_kill_9_at_an_exact_moment_then_the_same_command_finishes(
    point, nth, driver, reference, input_path, tiny_model_dir, tmp_path
):
    argv = command(input_path, tiny_model_dir, tmp_path)
    reply = driver.run(argv, point=point, nth=nth)
    assert reply["killed"], f"the run ended or hung ({reply}) without reaching {point} #{nth}"
    assert main(argv) == 0
    assert_finished_like_the_reference(tmp_path, reference)


def test_kill_9_at_random_moments_then_the_same_command_finishes(driver, reference, input_path, tiny_model_dir, tmp_path):
    timing = driver.run(command(input_path, tiny_model_dir, tmp_path / "timing"))
    assert timing["exitcode"] == 0
    rng = random.Random(0)
    for trial in range(4):
        out = tmp_path / f"trial{trial}"
        argv = command(input_path, tiny_model_dir, out)
        assert not driver.run(argv, delay=rng.uniform(0.05, 1.0) * timing["seconds"])["hung"]
        assert main(argv) == 0
        assert_finished_like_the_reference(out, reference)


def test_rerun_after_a_removal_that_deleted_the_settings_first(reference, input_path, tiny_model_dir, tmp_path):
    """An interrupted removal in any order (the output in place, batches left, settings.json gone) blocks nothing."""
    argv = command(input_path, tiny_model_dir, tmp_path)
    assert main([*argv, "--keep-parts"]) == 0
    parts = tmp_path / "scored.parquet.parts"
    (parts / "settings.json").unlink()
    (parts / "batch-0000000.parquet").unlink()
    assert main(argv) == 0
    assert_finished_like_the_reference(tmp_path, reference)


def test_rerun_removes_temporary_files_a_kill_left(reference, input_path, tiny_model_dir, tmp_path):
    argv = command(input_path, tiny_model_dir, tmp_path)
    assert main(argv) == 0
    (tmp_path / ".scored.parquet.0123abcd.tmp").write_bytes(b"half")
    (tmp_path / ".samples.parquet.89abcdef.tmp").write_bytes(b"half")
    assert main(argv) == 0
    assert_finished_like_the_reference(tmp_path, reference)


def test_a_finished_job_is_reported_and_left_alone(reference, input_path, tiny_model_dir, tmp_path, monkeypatch, caplog):
    argv = command(input_path, tiny_model_dir, tmp_path)
    assert main(argv) == 0
    before = {name: (tmp_path / name).stat().st_mtime_ns for name in reference}
    monkeypatch.setattr(scoring, "load_sampler", lambda *a, **k: pytest.fail("a finished job was sampled again"))
    monkeypatch.setattr(scoring, "load_tokenizer", lambda *a, **k: pytest.fail("a finished job was sampled again"))
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    assert "scored.parquet is already complete for these settings and this input" in caplog.text
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in reference} == before
    assert_finished_like_the_reference(tmp_path, reference)
    # Other settings, or another input, are not "finished".
    output = str(tmp_path / "scored.parquet")
    record = read_job_metadata(output)
    assert scoring.finished_output(output, record)
    assert not scoring.finished_output(output, {**record, "seed": 6})
    assert not scoring.finished_output(output, {**record, "input_sha256": "0" * 64})
    monkeypatch.undo()
    sampled = []
    load_sampler = scoring.load_sampler
    monkeypatch.setattr(scoring, "load_sampler", lambda *a, **k: sampled.append(1) or load_sampler(*a, **k))
    assert main([*argv, "--no-resume"]) == 0
    assert sampled == [1], "--no-resume scores again"
    assert_finished_like_the_reference(tmp_path, reference)


def test_a_finished_output_without_the_requested_samples_is_not_finished(input_path, tiny_model_dir, tmp_path, monkeypatch):
    argv = command(input_path, tiny_model_dir, tmp_path)
    assert main(argv) == 0
    (tmp_path / "samples.parquet").unlink()
    sampled = []
    load_sampler = scoring.load_sampler
    monkeypatch.setattr(scoring, "load_sampler", lambda *a, **k: sampled.append(1) or load_sampler(*a, **k))
    assert main(argv) == 0
    assert sampled == [1] and (tmp_path / "samples.parquet").is_file()


@pytest.fixture
def read_only(monkeypatch):
    """Make the given folder refuse new files, as a read-only folder does (root ignores chmod)."""
    real_open, real_mkdir = os.open, os.mkdir

    def install(folder: Path) -> None:
        def refuse(path, flags, mode=0o777, **kwargs):
            if Path(path).parent == folder and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_open(path, flags, mode, **kwargs)

        def refuse_mkdir(path, mode=0o777, **kwargs):
            if Path(path).parent == folder:
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_mkdir(path, mode, **kwargs)

        monkeypatch.setattr(files.os, "open", refuse)
        monkeypatch.setattr(files.os, "mkdir", refuse_mkdir)

    return install


def test_read_only_output_folder_fails_before_sampling(input_path, tiny_model_dir, tmp_path, read_only, monkeypatch, capsys):
    monkeypatch.setattr(scoring, "load_tokenizer", lambda *a, **k: pytest.fail("the tokenizer was loaded"))
    monkeypatch.setattr(scoring, "load_sampler", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "ro"
    out.mkdir()
    read_only(out)
    argv = [*command(input_path, tiny_model_dir, out), "--work-dir", str(tmp_path / "work")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"restrain-score-prompts: error: --output: cannot write {out / 'scored.parquet'}: Permission denied" in err
    assert "Traceback" not in err
    assert not (tmp_path / "work").exists() and list(out.iterdir()) == []
    # The same for a work directory that cannot be written (the outputs can).
    with pytest.raises(SystemExit) as exit_info:
        main([*command(input_path, tiny_model_dir, tmp_path), "--work-dir", str(out / "work")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: --work-dir: cannot write {out / 'work' / 'settings.json'}: cannot create its folder (Permission" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the test above simulates one")
def test_read_only_output_folder_fails_before_sampling_for_real(input_path, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        argv = [*command(input_path, "org/not-loaded", out), "--work-dir", str(tmp_path / "work")]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
    finally:
        out.chmod(0o755)
    assert exit_info.value.code == 2
    assert "--output: cannot write" in capsys.readouterr().err


def test_full_disk_is_one_line_saying_how_to_resume(reference, input_path, tiny_model_dir, tmp_path, monkeypatch, capsys):
    fsync = os.fsync

    def full_when_writing_the_output(fd):
        if ".scored.parquet." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full_when_writing_the_output)
    argv = command(input_path, tiny_model_dir, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("restrain-score-prompts:")]
    parts = tmp_path / "scored.parquet.parts"
    assert line == (
        f"restrain-score-prompts: error: cannot write {tmp_path / 'scored.parquet'}: no space left on device; make "
        f"room (or fix the folder) and rerun the same command: it resumes from the batches checkpointed in {parts}"
    )
    assert len(list(parts.glob("batch-*.parquet"))) == 3 and not (tmp_path / "scored.parquet").exists()
    monkeypatch.undo()
    assert main(argv) == 0
    assert_finished_like_the_reference(tmp_path, reference)


def test_outputs_get_the_users_umask(reference, input_path, tiny_model_dir, tmp_path):
    previous = os.umask(0o002)
    try:
        assert main(command(input_path, tiny_model_dir, tmp_path)) == 0
    finally:
        os.umask(previous)
    for name in reference:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o664, name
