"""One Math-Verify worker process: started, fed requests and read with a deadline, killed.

The child runs ``sympy_worker.py`` by path (its protocol is described there) as a plain
``subprocess.Popen`` child, not ``multiprocessing``, so that daemonic processes can start one too.
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import time
from pathlib import Path

WORKER_SCRIPT = Path(__file__).with_name("sympy_worker.py")


class WorkerUnavailable(Exception):
    """No worker could be started or reached; no verdict."""


class WorkerGone(Exception):
    """The worker was already dead when a request was sent (not the request's fault)."""


class WorkerDied(Exception):
    """The worker exited while handling a request."""


def worker_env() -> dict[str, str]:
    """This process's environment, with ``sys.path`` as the child's ``PYTHONPATH``."""
    env = dict(os.environ)
    # The child sees the same packages as this process, even when sys.path was extended at run
    # time (Ray runtime environments, notebooks).
    env["PYTHONPATH"] = os.pathsep.join(entry for entry in sys.path if entry)
    return env


class Worker:
    """One child process running ``sympy_worker.py``, talked to over pipes with deadlines."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", str(WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=worker_env(),
            close_fds=True,
            start_new_session=True,
        )
        self.started = time.monotonic()
        self.ready = False
        self._buffer = b""

    def alive(self) -> bool:
        return self.process.poll() is None

    def _read_line(self, deadline: float) -> bytes | None:
        """One reply line, or None when ``deadline`` (monotonic seconds) passes first."""
        fd = self.process.stdout.fileno()
        poller = select.poll()  # not select.select: it fails on descriptors above 1023
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if not poller.poll(max(0, math.ceil(remaining * 1000))):
                if remaining <= 0:
                    return None
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise WorkerDied()
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def wait_ready(self, deadline: float, startup_timeout: float) -> bool:
        """True once the worker has started; False when ``deadline`` passes while it is still
        starting. Raises ``WorkerUnavailable`` when it died or ``startup_timeout`` seconds after
        its start passed."""
        if self.ready:
            return True
        limit = self.started + startup_timeout
        try:
            line = self._read_line(min(deadline, limit))
        except WorkerDied as error:
            raise WorkerUnavailable() from error
        if line is None:
            if time.monotonic() >= limit:
                raise WorkerUnavailable()
            return False
        try:
            self.ready = json.loads(line).get("ready") is True
        except (ValueError, AttributeError):
            self.ready = False
        if not self.ready:
            raise WorkerUnavailable()
        return True

    def send(self, payloads: list[dict]) -> None:
        """Queue requests; the worker answers them in order."""
        data = "".join(json.dumps(payload) + "\n" for payload in payloads)
        try:
            self.process.stdin.write(data.encode("ascii"))
            self.process.stdin.flush()
        except OSError as error:  # BrokenPipeError: it had exited before these requests
            raise WorkerGone() from error

    def receive(self, deadline: float) -> dict | None:
        """The next reply, or None if ``deadline`` passed first (the worker is then unusable)."""
        line = self._read_line(deadline)
        return None if line is None else json.loads(line)

    def kill(self) -> None:
        try:
            self.process.kill()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
