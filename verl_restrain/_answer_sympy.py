"""Math-Verify comparisons under a hard wall-clock bound that holds in any thread.

Math-Verify bounds its own work with ``signal.alarm``, which only works in the main thread, while
verl calls reward code from worker threads and Ray actors; and nothing can interrupt a Python thread
stuck in sympy. So the sympy work runs in small persistent child processes
(``_answer_worker.py``, Math-Verify's ``parse`` + ``verify`` in both directions, parse results cached
there), driven over pipes with ``poll`` deadlines. A comparison that misses its deadline kills its
worker, a fresh one starts in the background, and the verdict is "not equal".

Before anything reaches a worker, ``looks_explosive`` turns away answers that would make sympy build
astronomically large numbers (power towers, huge exponents, factorials of big numbers or of
expressions with powers, overlong or deeply nested strings); those count as different from every
other string.

Workers are plain ``subprocess.Popen`` children (not ``multiprocessing``), so they can be started
from daemonic processes too; each one holds a Python interpreter with sympy loaded (about 150 MB).
Pools are per process: a forked child never reuses its parent's workers.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

logger = logging.getLogger(__name__)

PAIR_TIMEOUT_S = 1.0
"""Wall-clock limit for each step of a Math-Verify comparison: preparing (parsing, sampling) each
answer, then verifying both ways."""
SLOW_ANSWERS_KEPT = 4096
STARTUP_TIMEOUT_S = 60.0
"""Limit for a worker's start (importing sympy and Math-Verify), not counted in ``PAIR_TIMEOUT_S``."""
MAX_STARTUP_FAILURES = 3
"""After this many workers in a row fail to start, sympy comparisons are switched off (logged)."""
MAX_SYMPY_CHARS = 300
MAX_SYMPY_DEPTH = 20
WORKERS_ENV = "VERL_RESTRAIN_MATH_WORKERS"
"""Environment variable overriding the number of worker processes per Python process."""
DEFAULT_WORKERS = max(1, min(4, os.cpu_count() or 1))

_WORKER_SCRIPT = Path(__file__).with_name("_answer_worker.py")

_POWER_TOWER = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\([^()]*\^")
_HUGE_EXPONENT = re.compile(r"\^\s*[{(]?\s*[+-]?\s*\d{6,}")
_LONG_NUMBER = re.compile(r"\d{6,}")
_FACTORIAL_CHAIN = re.compile(r"!\s*!\s*!")
_BINOMIAL = re.compile(r"\\[dt]?binom")


def _operand_before(text: str, end: int) -> str:
    """The number or bracketed group that ends right before ``text[end]`` (for factorials)."""
    i = end - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    if i < 0:
        return ""
    if text[i].isdigit():
        start = i
        while start > 0 and text[start - 1].isdigit():
            start -= 1
        return text[start : i + 1]
    closers = {")": "(", "}": "{", "]": "["}
    if text[i] not in closers:
        return text[i]
    depth = 0
    for j in range(i, -1, -1):
        if text[j] in closers:
            depth += 1
        elif text[j] in "({[":
            depth -= 1
            if depth == 0:
                return text[j : i + 1]
    return text[: i + 1]


def looks_explosive(answer: str) -> bool:
    """Whether handing ``answer`` to sympy risks an unbounded computation.

    True for: more than ``MAX_SYMPY_CHARS`` characters; bracket nesting deeper than
    ``MAX_SYMPY_DEPTH``; a power whose exponent contains a power (``9^{9^{9}}``); an exponent of six
    or more digits; a factorial of a six-digit number or of a group holding a power, a factorial or a
    six-digit number; three factorials in a row; a binomial with such arguments.
    """
    if len(answer) > MAX_SYMPY_CHARS:
        return True
    depth = deepest = 0
    for char in answer:
        if char in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")}]":
            depth -= 1
    if deepest > MAX_SYMPY_DEPTH:
        return True
    if _POWER_TOWER.search(answer) or _HUGE_EXPONENT.search(answer) or _FACTORIAL_CHAIN.search(answer):
        return True
    for match in re.finditer("!", answer):
        operand = _operand_before(answer, match.start())
        if "^" in operand or "!" in operand or _LONG_NUMBER.search(operand):
            return True
    if _BINOMIAL.search(answer) and ("^" in answer or _LONG_NUMBER.search(answer)):
        return True
    return False


class _WorkerUnavailable(Exception):
    """No worker could be started or reached; no verdict."""


class _WorkerGone(Exception):
    """The worker was already dead when a request was sent (not the request's fault)."""


class _WorkerDied(Exception):
    """The worker exited while handling a request."""


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child sees the same packages as this process, even when sys.path was extended at run
    # time (Ray runtime environments, notebooks).
    env["PYTHONPATH"] = os.pathsep.join(entry for entry in sys.path if entry)
    return env


class _Worker:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", str(_WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_worker_env(),
            close_fds=True,
            start_new_session=True,
        )
        self.started = time.monotonic()
        self.ready = False
        self._buffer = b""

    def _read_line(self, deadline: float) -> bytes | None:
        """One reply line, or None when ``deadline`` (monotonic seconds) passes first."""
        fd = self.process.stdout.fileno()
        poller = select.poll()  # not select.select: it fails on descriptors above 1023
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not poller.poll(max(1, int(remaining * 1000))):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _WorkerDied()
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def wait_ready(self) -> None:
        if self.ready:
            return
        try:
            line = self._read_line(self.started + STARTUP_TIMEOUT_S)
        except _WorkerDied:
            line = None
        if line is None or not json.loads(line).get("ready"):
            raise _WorkerUnavailable()
        self.ready = True

    def send(self, payloads: list[dict]) -> None:
        """Queue requests; the worker answers them in order."""
        data = "".join(json.dumps(payload) + "\n" for payload in payloads)
        try:
            self.process.stdin.write(data.encode("ascii"))
            self.process.stdin.flush()
        except OSError as error:  # BrokenPipeError: it had exited before these requests
            raise _WorkerGone() from error

    def receive(self, timeout: float) -> dict | None:
        """The next reply, or None if ``timeout`` seconds passed (the worker is then unusable)."""
        line = self._read_line(time.monotonic() + timeout)
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


class _SlowAnswers:
    """Answers whose parsing or evaluation alone exceeded the time limit, most recent kept.

    Comparing such an answer would time out again, so it is unequal to everything without a try.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, answer: str) -> None:
        with self._lock:
            self._items[answer] = None
            self._items.move_to_end(answer)
            if len(self._items) > self._size:
                self._items.popitem(last=False)

    def __contains__(self, answer: str) -> bool:
        with self._lock:
            return answer in self._items


class _Pool:
    """Up to ``size`` workers shared by all threads of one process."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pid = os.getpid()
        self._idle: list[_Worker] = []
        self._live = 0
        self._startup_failures = 0
        self._disabled = False
        self._condition = threading.Condition()
        self.slow_answers = _SlowAnswers(SLOW_ANSWERS_KEPT)

    def _spawn(self) -> _Worker | None:
        try:
            return _Worker()
        except OSError:
            logger.warning("cannot start a Math-Verify worker process", exc_info=True)
            return None

    def _acquire(self) -> _Worker:
        with self._condition:
            while not self._idle and self._live >= self.size and not self._disabled:
                self._condition.wait()
            if self._disabled:
                raise _WorkerUnavailable()
            if self._idle:
                return self._idle.pop()
            self._live += 1
        worker = self._spawn()
        if worker is None:
            self._retire(None, startup_failed=True)
            raise _WorkerUnavailable()
        return worker

    def _retire(self, worker: _Worker | None, startup_failed: bool = False) -> None:
        """Kill a worker that timed out, died or failed to start, and start its replacement now,
        so that it boots while other work goes on."""
        if worker is not None:
            worker.kill()
        with self._condition:
            if startup_failed:
                self._startup_failures += 1
                if self._startup_failures >= MAX_STARTUP_FAILURES and not self._disabled:
                    self._disabled = True
                    logger.warning(
                        "Math-Verify workers fail to start; answers that need sympy now compare unequal"
                    )
            replacement = None if self._disabled or startup_failed else self._spawn()
            if replacement is None:
                self._live -= 1
            else:
                self._idle.append(replacement)
            self._condition.notify()

    def _release(self, worker: _Worker) -> None:
        with self._condition:
            self._startup_failures = 0
            self._idle.append(worker)
            self._condition.notify()

    def warm_up(self) -> None:
        """Start one worker and wait until it is ready."""
        worker = self._acquire()
        try:
            worker.wait_ready()
        except _WorkerUnavailable:
            self._retire(worker, startup_failed=True)
            return
        self._release(worker)

    def _checked_out(self) -> _Worker | None:
        try:
            worker = self._acquire()
        except _WorkerUnavailable:
            return None
        try:
            worker.wait_ready()
        except _WorkerUnavailable:
            self._retire(worker, startup_failed=True)
            return None
        return worker

    def compare(self, a: str, b: str, timeout: float) -> bool | None:
        """Math-Verify's verdict; False when a step times out or the worker crashes; None if no
        worker can be had. Each answer is prepared (parsed, sampled) in its own step with its own
        ``timeout``, so a slow answer is recognised and remembered in ``slow_answers``."""
        for _ in range(2):  # a second try only if the first worker was found already dead
            worker = self._checked_out()
            if worker is None:
                return None
            steps = [({"op": "prepare", "answer": a}, a), ({"op": "prepare", "answer": b}, b)]
            steps.append(({"op": "equal", "a": a, "b": b}, None))
            try:
                # Sent together (one round trip), answered in order: each reply has its own deadline.
                worker.send([payload for payload, _ in steps])
                for _, answer in steps:
                    reply = worker.receive(timeout)
                    if reply is None:
                        if answer is not None:
                            self.slow_answers.add(answer)
                        self._retire(worker)
                        return False
            except _WorkerGone:
                self._retire(worker)
                continue
            except (_WorkerDied, ValueError):
                self._retire(worker)
                return False
            self._release(worker)
            return bool(reply.get("equal"))
        return None

    def close(self) -> None:
        with self._condition:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        for worker in idle:
            worker.kill()


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool_size() -> int:
    try:
        return max(1, int(os.environ.get(WORKERS_ENV, DEFAULT_WORKERS)))
    except ValueError:
        return DEFAULT_WORKERS


def pool() -> _Pool:
    """This process's worker pool (a forked child gets its own)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _Pool(_pool_size())
        return _POOL


def math_verify_equal(a: str, b: str, timeout: float | None = None) -> bool | None:
    """Math-Verify equality of two canonical answers, in both directions, within ``timeout``
    seconds (default ``PAIR_TIMEOUT_S``). None when no worker is available (no verdict)."""
    if looks_explosive(a) or looks_explosive(b):
        return False
    workers = pool()
    if a in workers.slow_answers or b in workers.slow_answers:
        return False
    return workers.compare(a, b, PAIR_TIMEOUT_S if timeout is None else timeout)


def warm_up() -> None:
    """Start a worker now rather than at the first comparison that needs sympy."""
    pool().warm_up()


def _close_pool() -> None:
    if _POOL is not None and _POOL.pid == os.getpid():
        _POOL.close()


atexit.register(_close_pool)
