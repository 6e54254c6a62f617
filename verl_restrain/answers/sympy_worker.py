"""Math-Verify in a child process, so that a comparison can be stopped from any thread.

Started by ``verl_restrain.answers.sympy_pool`` as ``python -u <this file>`` (run by path, so the parent
package is not imported). A pair is equal when Math-Verify's ``verify`` holds in both directions.

Work on one answer and work on a pair are separate requests, so that the parent can tell which
answer is slow:
- ``prepare`` parses an answer with Math-Verify (as LaTeX only) and, for a plain expression, evaluates it at two
  sample points (free symbols get fixed values chosen by name). Both are cached.
- ``equal`` compares two prepared answers. When both are plain expressions whose sampled values
  differ clearly, the answer is "unequal" at once: Math-Verify's symbolic check
  (``simplify(a - b) == 0``) cannot succeed for them, and ``simplify`` is where it spends its time
  on unequal pairs. Otherwise ``verify`` decides.

Protocol, one JSON object per line:
- on start, after the imports and a first comparison (the LaTeX parser's warm-up), the worker writes
  ``{"ready": true}``;
- ``{"op": "prepare", "answer": "<canonical answer>"}`` -> ``{"ok": bool, "sampled": bool}``
  (parsed; evaluated at the sample points, which the parent uses to tell which answer of a pair
  that timed out to blame);
- ``{"op": "equal", "a": "<canonical answer>", "b": "<canonical answer>"}`` -> ``{"equal": bool}``.
Any failure inside a request (MemoryError and RecursionError included) answers ``ok``/``equal``
false. The worker exits on end of stdin and when its parent dies. Its address space is capped at
``MEMORY_LIMIT_BYTES`` so that a sympy blow-up ends in MemoryError rather than in swapping.
"""

import json
import logging
import os
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache

import sympy
from math_verify import LatexExtractionConfig, parse, verify
from sympy.matrices.expressions import MatrixExpr

MEMORY_LIMIT_BYTES = 4 * 1024**3
PREPARED_CACHE_SIZE = 16384
SAMPLE_POINTS = 2
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
    """A fixed, irrational value in [1, 4) for a free symbol (stable across processes)."""
    return 1 + sympy.sqrt(2 + zlib.crc32(f"{name}:{point}".encode()) % 97) % 3


def _plain_expression(expr) -> bool:
    if not isinstance(expr, sympy.Expr) or isinstance(expr, (MatrixExpr, sympy.Symbol)):
        return False
    # Math-Verify compares a symbol with a product of symbols by their names ("ab" vs a*b).
    return not (isinstance(expr, sympy.Mul) and all(isinstance(f, sympy.Symbol) or f == sympy.E for f in expr.args))


def _samples(expr) -> tuple[complex, ...] | None:
    if not _plain_expression(expr):
        return None
    values = []
    for point in range(SAMPLE_POINTS):
        substitution = {symbol: _sample_value(symbol.name, point) for symbol in expr.free_symbols}
        value = complex(sympy.N(expr.subs(substitution), SAMPLE_DIGITS))
        if value != value or abs(value) == float("inf"):
            return None
        values.append(value)
    return tuple(values)


@dataclass(frozen=True)
class Prepared:
    parsed: list
    samples: tuple[complex, ...] | None


# The answer is already extracted LaTeX: read it as LaTeX only. Math-Verify's plain-number fallback
# would otherwise read an unparsable answer by a number inside it ("-[0, 1)" as 1).
LATEX_ONLY = (LatexExtractionConfig(),)


@lru_cache(maxsize=PREPARED_CACHE_SIZE)
def prepared(answer: str) -> Prepared:
    parsed = parse(f"${answer}$", extraction_config=LATEX_ONLY, parsing_timeout=None)
    try:
        samples = _samples(parsed[0]) if parsed else None
    except Exception:  # sampling is only a shortcut; verify decides without it
        samples = None
    return Prepared(parsed, samples)


def clearly_different(gold: Prepared, pred: Prepared) -> bool:
    """Whether two prepared answers differ beyond any Math-Verify rule (module docstring)."""
    if gold.samples is None or pred.samples is None:
        return False
    # verify also compares the extracted strings; equal strings would make it succeed.
    texts = {item for item in gold.parsed if isinstance(item, str)}
    if any(isinstance(item, str) and item in texts for item in pred.parsed):
        return False
    return any(
        abs(x - y) > max(ABSOLUTE_GAP, RELATIVE_GAP * max(abs(x), abs(y)))
        for x, y in zip(gold.samples, pred.samples)
    )


def equal(a: str, b: str) -> bool:
    gold, pred = prepared(a), prepared(b)
    if not gold.parsed or not pred.parsed or clearly_different(gold, pred):
        return False
    return verify(gold.parsed, pred.parsed, timeout_seconds=None) and verify(
        pred.parsed, gold.parsed, timeout_seconds=None
    )


def _answer(request: dict) -> dict:
    if request.get("op") == "prepare":
        try:
            answer = prepared(str(request["answer"]))
            return {"ok": bool(answer.parsed), "sampled": answer.samples is not None}
        except Exception:
            return {"ok": False, "sampled": False}
    try:
        return {"equal": bool(equal(str(request["a"]), str(request["b"])))}
    except Exception:
        return {"equal": False}


def main() -> None:
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _limit_memory()
    # Math-Verify warns once that its signal-based timeout is off; the parent enforces the timeout.
    logging.disable(logging.CRITICAL)
    equal("\\frac{1}{2}", "x^{2}")
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            reply = _answer(json.loads(line))
        except ValueError:
            reply = {"ok": False, "equal": False}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
