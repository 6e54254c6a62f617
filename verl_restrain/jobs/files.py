"""Durable atomic file writes, shared by every job that writes files.

:func:`atomic_write` guarantees that ``path`` holds either its previous content or the complete new
content, whatever moment the process is killed or the machine loses power: the content goes to a
temporary file ``.<name>.<8 hex digits>.tmp`` in the same folder, which is fsynced, renamed onto
``path``, and then the folder is fsynced. New files get the mode an ordinary ``open(path, "w")``
gives, 0o666 less the umask. A kill can leave the temporary file behind;
:func:`remove_stale_temps` deletes those of one target. Every failure to write raises
:class:`WriteError` naming the file (:class:`DiskFullError` when the disk or quota is full), and the
temporary file is removed.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import secrets
from pathlib import Path
from typing import Callable

__all__ = [
    "DiskFullError",
    "WriteError",
    "atomic_write",
    "atomic_write_table",
    "atomic_write_text",
    "check_writable",
    "fsync_dir",
    "is_temp_name",
    "remove_stale_temps",
]

_TEMP = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteError(OSError):
    """A file could not be written; ``filename`` is the file, ``strerror`` the reason."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


class DiskFullError(WriteError):
    """The disk (or the quota) is full."""


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is the name of a temporary file of :func:`atomic_write`."""
    return _TEMP.fullmatch(name) is not None


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or unlink in ``directory`` durable (a no-op where folders cannot be fsynced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_disk_full(error: OSError) -> bool:
    # pyarrow reports the errno in its message rather than in error.errno.
    return error.errno in _DISK_FULL or "No space left on device" in str(error) or "Disk quota exceeded" in str(error)


def _write_error(error: OSError, path: Path) -> WriteError:
    if isinstance(error, WriteError):
        return error
    if _is_disk_full(error):
        return DiskFullError(errno.ENOSPC, "no space left on device", str(path))
    return WriteError(error.errno or errno.EIO, error.strerror or str(error), str(path))


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then move it onto ``path`` durably.

    ``write`` gets the path of an existing empty file and must write the whole content there.
    Raises :class:`WriteError` (or :class:`DiskFullError`) when any step fails; ``path`` is then
    unchanged and the temporary file gone.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # Created here, with 0o666 less the umask, so that the writer keeps an ordinary file mode.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _write_error(error, path) from error
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_table(table, path: str | os.PathLike) -> Path:
    """:func:`atomic_write` of a pyarrow table as parquet.

    Chunks are combined first, so the file's bytes depend on the rows alone, not on how the table
    was assembled (a merged or resumed output is byte-identical to an uninterrupted one).
    """
    import pyarrow.parquet as pq

    table = table.combine_chunks()
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_write` to ``path`` left; return them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp") if is_temp_name(p.name)]
    for temp in stale:
        temp.unlink(missing_ok=True)
    return stale


def check_writable(path: str | os.PathLike) -> None:
    """Check, before any long work, that :func:`atomic_write` can write ``path``.

    Creates the missing parent folders and a probe file where the temporary file will go.
    Raises :class:`WriteError` naming the problem (a folder that cannot be created or written, a
    ``path`` that is a folder, a full disk).
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, "it is a folder; give a file name", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = f"cannot create its folder ({error.strerror or error})"
        raise WriteError(error.errno or errno.EIO, reason, str(path)) from None
    probe = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as error:
        raise _write_error(error, path) from None
    probe.unlink(missing_ok=True)
