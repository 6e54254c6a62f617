"""Math-Verify comparisons under a hard wall-clock bound that holds in any thread.

Math-Verify bounds its own work with ``signal.alarm``, which only works in the main thread, while
verl calls reward code from worker threads and Ray actors; and nothing can interrupt a Python thread
stuck in sympy. So the sympy work runs in small persistent child processes
(``sympy_worker.py``, Math-Verify's ``parse`` + ``verify`` in both directions, parse results cached
there), driven over pipes with ``poll`` deadlines. A comparison that misses its deadline kills its
worker, a fresh one starts in the background, there is no verdict (the caller counts the pair
unequal), and the answer to blame is remembered for a while so that it costs no second timeout.

Before anything reaches a worker, ``explosive.looks_explosive`` turns away answers that would make
sympy build astronomically large numbers; those count as different from every other string. Each
worker (``sympy_process.Worker``) holds a Python interpreter with sympy loaded (about 150 MB). Pools
are per process: a forked child never reuses its parent's workers.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections import OrderedDict

from verl_restrain.answers.explosive import looks_explosive
from verl_restrain.answers.sympy_process import Worker, WorkerDied, WorkerGone, WorkerUnavailable

logger = logging.getLogger(__name__)

PAIR_TIMEOUT_S = 1.0
"""Wall-clock limit for one whole Math-Verify comparison (preparing, that is parsing and sampling,
both answers, then verifying both ways), counted once a started worker is at hand."""
SLOW_ANSWERS_KEPT = 4096
SLOW_ANSWER_TTL_S = 600.0
"""How long an answer blamed for a timeout gets no sympy comparison. Then it gets a new try, so that
a timeout caused by a busy CPU does not cost a normal answer its verdicts for good."""
FAST_ANSWERS_KEPT = 4096
STARTUP_TIMEOUT_S = 60.0
"""Limit for a worker's start (importing sympy and Math-Verify). Only the first start in a process is
waited for past a caller's deadline (see ``math_verify_equal``)."""
MAX_STARTUP_FAILURES = 3
"""After this many workers in a row fail to start, sympy comparisons are switched off (logged)."""
WORKERS_ENV = "VERL_RESTRAIN_MATH_WORKERS"
"""Environment variable overriding the number of worker processes per Python process."""
DEFAULT_WORKERS = max(2, min(4, os.cpu_count() or 1))
"""At least two, so that a started worker is at hand while a killed one's replacement starts."""

class _RecentAnswers:
    """Thread-safe set of answer strings: beyond ``size`` entries the least recently added is
    dropped, and each entry is forgotten ``ttl`` seconds after it was added (never if None)."""

    def __init__(self, size: int, ttl: float | None = None) -> None:
        self._size = size
        self._ttl = ttl
        self._items: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, answer: str) -> None:
        with self._lock:
            self._items[answer] = time.monotonic()
            self._items.move_to_end(answer)
            if len(self._items) > self._size:
                self._items.popitem(last=False)

    def __contains__(self, answer: str) -> bool:
        with self._lock:
            added = self._items.get(answer)
            if added is None:
                return False
            if self._ttl is not None and time.monotonic() - added > self._ttl:
                del self._items[answer]
                return False
            return True


class _Pool:
    """``size`` workers shared by all threads of one process.

    All are started at the first use and each is replaced as soon as it is killed, so a started one
    is usually at hand while a replacement starts. ``slow_answers`` holds the answers blamed for a
    comparison that ran out of time (``_blame``): another comparison with one would time out again,
    so it gets none for ``SLOW_ANSWER_TTL_S`` seconds. ``fast_answers`` holds answers that finished
    a comparison in time, which clears them of blame for a later timeout while verifying.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.pid = os.getpid()
        self._idle: list[Worker] = []
        self._live = 0
        self._startup_failures = 0
        self._disabled = False
        self._ever_ready = False
        self._condition = threading.Condition()
        self.slow_answers = _RecentAnswers(SLOW_ANSWERS_KEPT, SLOW_ANSWER_TTL_S)
        self.fast_answers = _RecentAnswers(FAST_ANSWERS_KEPT)

    def _startup_failed(self) -> None:
        """Count a worker that did not start (call with the lock held)."""
        self._startup_failures += 1
        if self._startup_failures >= MAX_STARTUP_FAILURES and not self._disabled:
            self._disabled = True
            logger.warning("Math-Verify workers fail to start; answers that need sympy now compare unequal")

    def _fill(self) -> None:
        """Start workers up to ``size`` (call with the lock held)."""
        while self._live < self.size and not self._disabled:
            try:
                worker = Worker()
            except OSError:
                logger.warning("cannot start a Math-Verify worker process", exc_info=True)
                self._startup_failed()
                return
            self._live += 1
            self._idle.append(worker)

    def _acquire(self, deadline: float) -> Worker | None:
        """An idle worker: a started one first, else the one starting longest; None when workers
        are off or none is free before ``deadline``."""
        with self._condition:
            while True:
                if self._disabled:
                    return None
                self._fill()
                if self._idle:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._live == 0:
                    return None
                self._condition.wait(remaining)
            alive = [worker for worker in self._idle if worker.alive()]
            ready = [worker for worker in alive if worker.ready]
            worker = ready[-1] if ready else min(alive or self._idle, key=lambda w: w.started)
            self._idle.remove(worker)
            return worker

    def _retire(self, worker: Worker, startup_failed: bool = False) -> None:
        """Kill a worker that timed out, died or failed to start, and start its replacement now
        (unless workers fail to start), so that it boots while other work goes on."""
        worker.kill()
        with self._condition:
            self._live -= 1
            if startup_failed:
                self._startup_failed()
            else:
                self._fill()
            self._condition.notify()

    def _release(self, worker: Worker) -> None:
        with self._condition:
            if worker.ready:
                self._startup_failures = 0
            self._idle.append(worker)
            self._condition.notify()

    def _checked_out(self, deadline: float) -> tuple[Worker, bool] | None:
        """A started worker, and whether the wait was for this process's first worker start; None
        at ``deadline``. The first start is waited for up to ``STARTUP_TIMEOUT_S`` instead."""
        worker = self._acquire(deadline)
        if worker is None:
            return None
        first = not self._ever_ready
        try:
            ready = worker.wait_ready(math.inf if first else deadline, STARTUP_TIMEOUT_S)
        except WorkerUnavailable:
            self._retire(worker, startup_failed=True)
            return None
        if not ready:
            self._release(worker)  # still starting: a later comparison takes it
            return None
        self._ever_ready = True
        return worker, first

    def warm_up(self) -> None:
        """Start every worker and wait until each has started (or failed to)."""
        with self._condition:
            self._fill()
            starting = [worker for worker in self._idle if not worker.ready]
            for worker in starting:
                self._idle.remove(worker)
        for worker in starting:
            try:
                worker.wait_ready(math.inf, STARTUP_TIMEOUT_S)
            except WorkerUnavailable:
                self._retire(worker, startup_failed=True)
                continue
            self._ever_ready = True
            self._release(worker)

    def _blame(self, a: str, b: str, replies: list[dict]) -> None:
        """Remember which answer made a comparison of ``a`` and ``b`` run out of time, ``replies``
        being the steps it had finished.

        A timeout while preparing an answer is that answer's. A timeout while verifying is that of
        the answers not cleared by a comparison they finished in time; when neither is cleared and
        exactly one could not be sampled numerically (the usual mark of an answer that makes sympy
        explode), that one's; when both are cleared, both (the CPU was busy; ``SLOW_ANSWER_TTL_S``
        ends it).
        """
        if len(replies) < 2:
            self.slow_answers.add((a, b)[len(replies)])
            return
        suspects = [answer for answer in (a, b) if answer not in self.fast_answers]
        if len(suspects) == 2:
            unsampled = [answer for answer, reply in zip((a, b), replies) if not reply.get("sampled")]
            if len(unsampled) == 1:
                suspects = unsampled
        for answer in suspects or (a, b):
            self.slow_answers.add(answer)

    def compare(self, a: str, b: str, limit: float, deadline: float) -> bool | None:
        """Math-Verify's verdict on ``a`` and ``b``, or None for no verdict.

        The whole comparison (preparing ``a``, preparing ``b``, verifying; one round trip) gets
        ``limit`` seconds from the moment a started worker is at hand, cut short at ``deadline``;
        waiting for a worker ends at ``deadline`` too, except before this process's first worker
        has started: that wait may pass ``deadline``, and the comparison then gets its whole
        ``limit``. Running out of ``limit`` kills the worker, blames an answer (``_blame``) and
        gives None; running out of ``deadline`` kills the worker and gives None, blaming no one. A
        worker that crashes gives False.
        """
        for _ in range(self.size + 1):  # another try only if the worker was found already dead
            checked = self._checked_out(deadline)
            if checked is None:
                return None
            worker, first_start = checked
            own_stop = time.monotonic() + limit
            # A comparison that waited for the process's first worker still gets its own limit.
            stop = own_stop if first_start else min(own_stop, deadline)
            requests = [
                {"op": "prepare", "answer": a},
                {"op": "prepare", "answer": b},
                {"op": "equal", "a": a, "b": b},
            ]
            replies: list[dict] = []
            try:
                worker.send(requests)  # one round trip, answered in order
                for _ in requests:
                    reply = worker.receive(stop)
                    if reply is None:
                        self._retire(worker)
                        if stop == own_stop:
                            self._blame(a, b, replies)
                        return None
                    replies.append(reply)
            except WorkerGone:
                self._retire(worker)
                continue
            except (WorkerDied, ValueError):
                self._retire(worker)
                return False
            self._release(worker)
            self.fast_answers.add(a)
            self.fast_answers.add(b)
            return bool(replies[-1].get("equal"))
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


def math_verify_equal(a: str, b: str, timeout: float | None = None, deadline: float | None = None) -> bool | None:
    """Math-Verify equality of two canonical answers, in both directions; None for no verdict.

    The comparison gets ``timeout`` seconds (default ``PAIR_TIMEOUT_S``) once a started worker is at
    hand. Waiting for a worker (all busy in other threads, or starting) and the comparison both end
    at ``deadline`` (monotonic seconds; default ``timeout`` from now), except that the first
    comparison of a process waits up to ``STARTUP_TIMEOUT_S`` for the first worker to start and
    then gets its whole ``timeout`` (``warm_up`` does that wait ahead of time). So a call returns by
    ``deadline`` (that first one by the worker's start plus ``timeout``), plus the few milliseconds
    it takes to kill a worker that ran out of time.

    False for an explosive answer (``looks_explosive``) and when the worker crashes. None when
    ``deadline`` has passed, no worker can be had, the comparison ran out of time, or an answer was
    blamed for a timeout in the last ``SLOW_ANSWER_TTL_S`` seconds (then no sympy work at all).
    """
    if looks_explosive(a) or looks_explosive(b):
        return False
    workers = pool()
    if a in workers.slow_answers or b in workers.slow_answers:
        return None
    limit = PAIR_TIMEOUT_S if timeout is None else timeout
    if deadline is None:
        deadline = time.monotonic() + limit
    if time.monotonic() >= deadline:
        return None
    return workers.compare(a, b, limit, deadline)


def warm_up() -> None:
    """Start the workers now and wait until they have started, rather than at the first comparison
    that needs sympy."""
    pool().warm_up()


def _close_pool() -> None:
    if _POOL is not None and _POOL.pid == os.getpid():
        _POOL.close()


atexit.register(_close_pool)
