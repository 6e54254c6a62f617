"""scripts/bench_scoring.py runs end to end at a tiny size (its timing is not checked: CI machines are noisy)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench_scoring.py"


@pytest.fixture(scope="module")
def bench():
    return runpy.run_path(str(BENCH), run_name="bench_scoring")


def test_bench_runs_both_sides_in_alternating_order(bench, capsys):
    argv = ["--prompts", "3", "--n", "2", "--max-new-tokens", "3", "--batch-size", "2", "--repeats", "2"]
    assert bench["main"]([*argv, "--max-ratio", "1e9"]) == 0  # a bar no timing can miss
    out = capsys.readouterr().out
    assert "warm-up on one batch (untimed)" in out
    assert "repeat 0 (seed 0, bare first)" in out and "repeat 1 (seed 1, job first)" in out
    assert "(6 completions)" in out and "(3 prompts," in out
    assert "median over 2 repeats: ratio job/bare:" in out and "meets the bar of 1000000000.00" in out


def test_bench_exits_1_when_the_bar_is_missed(bench, capsys):
    assert bench["verdict"](1.2, 1.1) == "ratio job/bare: 1.200 (MISSES the bar of 1.10)"
    assert bench["verdict"](1.1, 1.1) == "ratio job/bare: 1.100 (meets the bar of 1.10)"
    argv = ["--prompts", "1", "--n", "1", "--max-new-tokens", "2", "--batch-size", "1", "--repeats", "1"]
    assert bench["main"]([*argv, "--max-ratio", "0"]) == 1  # any positive ratio misses a bar of 0
    assert "MISSES the bar of 0.00" in capsys.readouterr().out
