"""Math-Verify in a child process, so that a comparison can be stopped from any thread.

Started by ``verl_restrain._answer_sympy`` as ``python -u <this file>`` (run by path, so the parent
package is not imported). Protocol, one JSON object per line:
- on start, after the imports, the worker writes ``{"ready": true}``;
- request ``{"a": "<canonical answer>", "b": "<canonical answer>"}`` on stdin;
- reply ``{"equal": true|false}`` on stdout.
The worker exits on end of stdin and when its parent dies. Its address space is capped at
``MEMORY_LIMIT_BYTES`` so that a sympy blow-up ends in MemoryError (reported as not equal) rather
than in the machine swapping.
"""

import json
import logging
import os
import sys
import threading
import time
from functools import lru_cache

MEMORY_LIMIT_BYTES = 4 * 1024**3
PARSE_CACHE_SIZE = 16384


def _limit_memory() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = MEMORY_LIMIT_BYTES if hard == resource.RLIM_INFINITY else min(hard, MEMORY_LIMIT_BYTES)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def main() -> None:
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _limit_memory()
    # Math-Verify warns once that its signal-based timeout is off; the parent enforces the timeout.
    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify

    @lru_cache(maxsize=PARSE_CACHE_SIZE)
    def parsed(answer: str):
        return parse(f"${answer}$", parsing_timeout=None)

    def equal(a: str, b: str) -> bool:
        gold, pred = parsed(a), parsed(b)
        if not gold or not pred:
            return False
        return verify(gold, pred, timeout_seconds=None) and verify(pred, gold, timeout_seconds=None)

    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            result = bool(equal(str(request["a"]), str(request["b"])))
        except Exception:  # MemoryError and RecursionError included: a failed comparison is "not equal"
            result = False
        out.write(json.dumps({"equal": result}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
