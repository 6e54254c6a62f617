"""Test helper: runs ``restrain-score-prompts`` in forked children and kills them with SIGKILL.

The driver imports what a scoring run needs once (torch, transformers, verl's chat template), then
forks one child per request, so each killed run costs a fork rather than a fresh interpreter. The
driver itself never runs torch, tokenizers or the answer workers, so every child starts clean.

One JSON request per line on stdin, one JSON reply per line on stdout:

* ``{"argv": [...], "point": NAME, "nth": k}``: the child SIGKILLs itself the k-th time NAME happens;
* ``{"argv": [...], "delay": s}``: the driver SIGKILLs the child ``s`` seconds after the fork;
* ``{"argv": [...]}``: the child runs to the end.

Reply: ``{"hung": bool, "killed": bool, "exitcode": int | None, "seconds": float}`` (``hung``: still
running after ``HANG_S``, then killed). The moments (NAME):

=====================  ============================================================================
``settings_tmp``       settings.json's temporary file written, not yet renamed
``checkpoint_tmp``     a batch checkpoint's temporary file written, not yet renamed
``checkpoint_renamed`` a batch checkpoint renamed into place
``samples_tmp``        the samples output's temporary file written, not yet renamed
``output_tmp``         the scored output's temporary file written, not yet renamed
``output_renamed``     the scored output renamed into place (the work directory not yet removed)
``cleanup_half``       the k-th file of the work directory deleted
=====================  ============================================================================
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

HANG_S = 600  # a child still running after this long is killed and reported as hung


def _value(argv: list[str], option: str) -> str | None:
    return argv[argv.index(option) + 1] if option in argv else None


def _install_kill_point(argv: list[str], point: str, nth: int) -> None:
    output = Path(_value(argv, "--output")).resolve()
    samples = _value(argv, "--samples-output")
    samples = Path(samples).resolve() if samples else None
    parts = Path(_value(argv, "--work-dir") or f"{output}.parts").resolve()
    count = 0

    def hit() -> None:
        nonlocal count
        count += 1
        if count == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    def target_of(dst) -> str | None:
        dst = Path(dst).resolve()
        if dst == output:
            return "output"
        if dst == samples:
            return "samples"
        if dst.parent == parts and dst.name == "settings.json":
            return "settings"
        if dst.parent == parts and dst.name.startswith("batch-"):
            return "checkpoint"
        return None

    replace = os.replace

    def replace_and_maybe_die(src, dst, **kwargs):
        target = target_of(dst)
        if f"{target}_tmp" == point:
            hit()
        replace(src, dst, **kwargs)
        if f"{target}_renamed" == point:
            hit()

    os.replace = replace_and_maybe_die
    if point == "cleanup_half":
        unlink = Path.unlink

        def unlink_and_maybe_die(self, missing_ok=False):
            unlink(self, missing_ok=missing_ok)
            if Path(self).resolve().parent == parts:
                hit()

        Path.unlink = unlink_and_maybe_die


def _child(request: dict) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    if "point" in request:
        _install_kill_point(request["argv"], request["point"], request.get("nth", 1))
    from verl_restrain.jobs.scoring.cli import main

    try:
        status = main(request["argv"])
    except SystemExit as error:
        status = error.code if isinstance(error.code, int) else 1
    except BaseException:
        status = 3
    os._exit(status or 0)


def _serve(request: dict) -> dict:
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(request)
    delay = request.get("delay")
    hung = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        elapsed = time.monotonic() - start
        hung = elapsed >= HANG_S
        if hung or (delay is not None and elapsed >= delay):
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.005)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and not hung
    return {
        "hung": hung,
        "killed": killed,
        "exitcode": None if killed else os.waitstatus_to_exitcode(status),
        "seconds": time.monotonic() - start,
    }


def main() -> None:
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from verl.utils.tokenizer import chat_template  # noqa: F401

    import verl_restrain.jobs.scoring.cli  # noqa: F401
    from verl_restrain import advantage, answers  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_serve(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
