"""Math-Verify in a child process, so that a comparison can be stopped from any thread.

Started by ``verl_restrain._answer_sympy`` as ``python -u <this file>`` (run by path, so the parent
package is not imported). A pair is equal when Math-Verify's ``verify`` holds in both directions.
Before ``verify``, two plain expressions whose values differ clearly at a sample point are reported
unequal at once: Math-Verify's symbolic check (``simplify(a - b) == 0``) cannot succeed for them, and
``simplify`` is where it spends its time on unequal pairs.

Protocol, one JSON object per line:
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
import zlib
from functools import lru_cache

import sympy
from math_verify import parse, verify
from sympy.matrices.expressions import MatrixExpr

MEMORY_LIMIT_BYTES = 4 * 1024**3
PARSE_CACHE_SIZE = 16384
SAMPLE_DIGITS = 30
# Values farther apart than this cannot be equal under any of Math-Verify's numeric rules (the
# loosest one rounds decimals to 6 places).
ABSOLUTE_GAP = 1e-5
RELATIVE_GAP = 1e-10


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


def _sample_value(name: str, point: int):
    """A fixed, irrational-looking value in [1, 4) for a free symbol (stable across processes)."""
    return 1 + sympy.sqrt(2 + zlib.crc32(f"{name}:{point}".encode()) % 97) % 3


def _plain_expression(expr) -> bool:
    if not isinstance(expr, sympy.Expr) or isinstance(expr, (MatrixExpr, sympy.Symbol)):
        return False
    # Math-Verify compares a symbol with a product of symbols by their names ("ab" vs a*b).
    return not (isinstance(expr, sympy.Mul) and all(isinstance(f, sympy.Symbol) or f == sympy.E for f in expr.args))


def clearly_different(gold: list, pred: list) -> bool:
    """Whether the parsed answers differ beyond any Math-Verify rule (see the module docstring)."""
    texts = {item for item in gold if isinstance(item, str)}
    if any(isinstance(item, str) and item in texts for item in pred):
        return False
    a, b = gold[0], pred[0]
    if not (_plain_expression(a) and _plain_expression(b)):
        return False
    symbols = sorted(a.free_symbols | b.free_symbols, key=lambda symbol: symbol.name)
    for point in range(2):
        values = {symbol: _sample_value(symbol.name, point) for symbol in symbols}
        x = complex(sympy.N(a.subs(values), SAMPLE_DIGITS))
        y = complex(sympy.N(b.subs(values), SAMPLE_DIGITS))
        if not all(map(lambda v: v == v and abs(v) != float("inf"), (x, y))):
            return False
        if abs(x - y) > max(ABSOLUTE_GAP, RELATIVE_GAP * max(abs(x), abs(y))):
            return True
    return False


def main() -> None:
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _limit_memory()
    # Math-Verify warns once that its signal-based timeout is off; the parent enforces the timeout.
    logging.disable(logging.CRITICAL)

    @lru_cache(maxsize=PARSE_CACHE_SIZE)
    def parsed(answer: str):
        return parse(f"${answer}$", parsing_timeout=None)

    def equal(a: str, b: str) -> bool:
        gold, pred = parsed(a), parsed(b)
        if not gold or not pred:
            return False
        try:
            if clearly_different(gold, pred):
                return False
        except Exception:  # sampling is only a shortcut; verify decides when it cannot
            pass
        return verify(gold, pred, timeout_seconds=None) and verify(pred, gold, timeout_seconds=None)

    equal("\\frac{1}{2}", "x^{2}")  # first use of the LaTeX parser and sympy is slow: do it now
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
