"""The real-output benchmark (``scripts/bench_real_responses.py``) meets its bars.

On the shared real model outputs (skipped, with the reason, when the folder is absent): the answer
code runs on all 12,914 responses, so the bars that need no Math-Verify (MATH single boxes, ``,\\!``
golds, GSM extraction and labels) are checked on everything; naive Math-Verify, the slow side, runs
on the first ``MATH_VERIFY_QUESTIONS`` questions of each dataset, where the ToRA bar is checked.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_real_responses.py"
MATH_VERIFY_QUESTIONS = 300


def test_real_output_bars_are_met(real_responses):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(real_responses), "--math-verify-limit", str(MATH_VERIFY_QUESTIONS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    assert "== tora: 2638 responses ==" in out
    assert "== math: 5000 responses ==" in out
    assert "== gsm: 5276 responses ==" in out
    assert out.count("clusters vs naive Math-Verify:") == 2
    assert "== disagreements, by class ==" in out
    bars = out.split("== bars ==")[1]
    for bar in ("ToRA: is_correct agrees", "single-box solutions", "gold answers accept", "an extracted answer",
                "agrees with the upstream labels"):
        line = next(line for line in bars.splitlines() if bar in line)
        assert line.endswith(": met"), line


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _tiny_dataset(root: Path, gsm_solution: str) -> Path:
    (root / "SOURCES.md").parent.mkdir(parents=True, exist_ok=True)
    (root / "SOURCES.md").write_text("test data\n")
    for name in ("tora/tora-70b-v1.0_gsm8k.jsonl", "tora/tora-code-34b-v1.0_gsm8k.jsonl"):
        _write_jsonl(root / name, [{"idx": 0, "gt": "18", "code": ["So $\\boxed{18}$."], "pred": ["18"]}])
    _write_jsonl(root / "math_test/test.jsonl", [{"idx": 0, "solution": "It is $\\boxed{10,\\!080}$."}])
    solvers = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
    row = {"ground_truth": "9 * 2 = 18\nA: 18"}
    row.update({solver: {"solution": gsm_solution, "is_correct": True} for solver in solvers})
    _write_jsonl(root / "grade_school_math/example_model_solutions.jsonl", [row])
    return root


def _run(data: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(data), "--math-verify-limit", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_benchmark_exits_nonzero_when_a_bar_is_missed(tmp_path):
    met = _run(_tiny_dataset(tmp_path / "good", "9 * 2 = 18\nA: 18"))
    assert met.returncode == 0, met.stdout + met.stderr[-3000:]
    assert "ToRA: is_correct agrees with naive Math-Verify: not measured" in met.stdout
    missed = _run(_tiny_dataset(tmp_path / "bad", "She makes eighteen dollars."))
    assert missed.returncode == 1, missed.stdout + missed.stderr[-3000:]
    assert "GSM: solutions with an extracted answer: 0/4 (0.00%) (bar 99%): MISSED" in missed.stdout
    assert "[gsm vs labels] ours False, label True: no answer extracted: 4" in missed.stdout


def test_benchmark_names_a_missing_data_folder(tmp_path):
    result = _run(tmp_path / "absent")
    assert result.returncode == 2
    assert "no real_responses folder" in result.stderr and "--data" in result.stderr
