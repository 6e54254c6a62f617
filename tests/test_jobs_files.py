"""The jobs' one durable atomic write: whole or nothing, fsynced, ordinary file modes, clean failures."""

from __future__ import annotations

import errno
import os
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_restrain.jobs import files
from verl_restrain.jobs.files import (
    DiskFullError,
    WriteError,
    atomic_write,
    atomic_write_table,
    atomic_write_text,
    check_writable,
    remove_stale_temps,
)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "out.parquet"
    first = pa.table({"x": [1, 2, 3]})
    atomic_write_table(first, path)
    assert pq.read_table(path).equals(first)

    def fail_midway(table, where, **kwargs):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError("disk trouble")

    monkeypatch.setattr(pq, "write_table", fail_midway)
    with pytest.raises(WriteError, match=f"cannot write {path}: disk trouble"):
        atomic_write_table(pa.table({"x": [9]}), path)
    assert pq.read_table(path).equals(first), "a failed write leaves the previous file untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"], "no temporary file is left behind"


def test_layout_does_not_depend_on_chunking(tmp_path):
    whole = pa.table({"x": list(range(10)), "y": [str(i) for i in range(10)]})
    chunked = pa.concat_tables([whole.slice(0, 4), whole.slice(4, 5), whole.slice(9)])
    atomic_write_table(whole, tmp_path / "a.parquet")
    atomic_write_table(chunked, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_the_file_and_its_folder_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or replace(a, b))
    atomic_write_text("hello", tmp_path / "a.txt")
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(".tmp") and events[1][1] == str(tmp_path / "a.txt") and events[2][1] == str(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_users_umask_not_0600(tmp_path, umask):
    """An ordinary open(path, "w") gives 0o666 less the umask; so does every job output."""
    previous = os.umask(umask)
    try:
        atomic_write_text("x", tmp_path / "a.txt")
        atomic_write_table(pa.table({"x": [1]}), tmp_path / "b.parquet")
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for name in ("a.txt", "b.parquet", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_full_disk_is_a_disk_full_error_naming_the_file(tmp_path):
    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=f"cannot write {tmp_path / 'a.txt'}: no space left on device"):
        atomic_write(tmp_path / "a.txt", full)

    def full_arrow(tmp):  # pyarrow puts the errno in the message only
        raise OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")

    with pytest.raises(DiskFullError):
        atomic_write(tmp_path / "a.txt", full_arrow)
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_temps_removes_only_this_targets_temporaries(tmp_path):
    (tmp_path / ".out.parquet.0123abcd.tmp").write_bytes(b"half")
    (tmp_path / ".out.parquet.ffffffff.tmp").write_bytes(b"half")
    (tmp_path / ".other.parquet.0123abcd.tmp").write_bytes(b"other target")
    (tmp_path / ".out.parquet.notes.tmp").write_bytes(b"not ours: no 8 hex digits")
    (tmp_path / "out.parquet").write_bytes(b"done")
    removed = remove_stale_temps(tmp_path / "out.parquet")
    assert sorted(p.name for p in removed) == [".out.parquet.0123abcd.tmp", ".out.parquet.ffffffff.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.parquet.0123abcd.tmp", ".out.parquet.notes.tmp", "out.parquet"
    ]  # fmt: skip
    assert remove_stale_temps(tmp_path / "missing" / "x.parquet") == []


def test_check_writable(tmp_path, monkeypatch):
    check_writable(tmp_path / "new" / "deeper" / "out.parquet")
    assert (tmp_path / "new" / "deeper").is_dir() and not list((tmp_path / "new" / "deeper").iterdir())
    with pytest.raises(WriteError, match="it is a folder"):
        check_writable(tmp_path / "new")
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match="cannot create its folder"):
        check_writable(tmp_path / "file" / "out.parquet")

    real_open = os.open

    def read_only(path, flags, mode=0o777):
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(files.os, "open", read_only)
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'ro' / 'out.parquet'}: Permission denied"):
        check_writable(tmp_path / "ro" / "out.parquet")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the monkeypatched case covers it")
def test_check_writable_on_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="Permission denied"):
            check_writable(folder / "out.parquet")
    finally:
        folder.chmod(0o755)
