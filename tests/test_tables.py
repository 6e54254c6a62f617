"""The paper's tables from result JSONs, and training curves from verl's logs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from verl_restrain.jobs import tables

SIX = ("math500", "aime24", "aime25", "amc23", "mmlu_stem", "gpqa_diamond")


def write_result(path: Path, label: str | None, pass1: dict[str, float], k: int = 16) -> Path:
    benchmarks = {
        name: {"pass@1": p, "pass@1_std": 0.01, f"maj@{k}": min(1.0, p + 0.05), f"pass@{k}": min(1.0, p + 0.2),
               "no_answer": 0.02, "k": k, "num_problems": 10}
        for name, p in pass1.items()
    }
    result = {"benchmarks": benchmarks, "model": "/ckpt/qwen3_4b_base_" + str(label)}
    if label is not None:
        result["label"] = label
    path.write_text(json.dumps(result), encoding="utf-8")
    return path


def parse_rows(markdown: str, section: str) -> dict[tuple[str, str], list[str]]:
    """{(name, source): cells} of the table under ``section``."""
    block = markdown.split(section, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in block.splitlines():
        if line.startswith("| ") and not line.startswith("| Method") and not line.startswith("| Ablation"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_paper_numbers_are_printed_exactly_as_published(tmp_path):
    text = tables.build_tables({})
    main = parse_rows(text, "## Main results")
    paper = "paper (Qwen3-4B-Base)"
    # MATH500, AIME24, AIME25, AMC23, MMLU-STEM, GPQA-D, Avg. of 6
    assert main[("GRPO (gold)", paper)] == ["—", "—", "20.8", "—", "73.7", "38.7", "51.4"]
    assert main[("TTRL", paper)] == ["—", "—", "8.3", "—", "59.4", "33.6", "42.2"]
    assert main[("SRT", paper)] == ["—", "—", "12.0", "—", "59.4", "34.5", "43.1"]
    assert main[("RESTRAIN", paper)] == ["—", "—", "17.9", "—", "80.9", "40.2", "51.0"]
    ablation = parse_rows(text, "## Ablations")
    assert ablation[("without pseudo-label weighting", paper)] == ["—", "—", "6.0", "—", "59.3", "33.7", "37.5"]
    assert ablation[("without negative penalization", paper)] == ["—", "—", "9.6", "—", "56.4", "33.0", "42.1"]
    assert ablation[("without prompt weighting", paper)] == ["—", "—", "18.1", "—", "63.8", "37.0", "—"]


def test_our_rows_sit_next_to_the_paper_and_average_needs_all_six(tmp_path):
    full = {name: 0.1 * (i + 1) for i, name in enumerate(SIX)}  # 10, 20, ..., 60 % -> mean 35.0
    files = [
        write_result(tmp_path / "restrain.json", "restrain", full),
        write_result(tmp_path / "ttrl.json", "ttrl", {"aime25": 0.05, "mmlu_stem": 0.5}),
        write_result(tmp_path / "srt.json", "srt_offline", full),
        write_result(tmp_path / "abl.json", "no_prompt_weighting", full),
        write_result(tmp_path / "mine.json", "my_method", {"aime25": 0.123}),
    ]
    assert tables.main([str(f) for f in files] + ["--output", str(tmp_path / "tables.md")]) == 0
    text = (tmp_path / "tables.md").read_text(encoding="utf-8")
    main = parse_rows(text, "## Main results")
    assert main[("RESTRAIN", "ours")] == ["10.0", "20.0", "30.0", "40.0", "50.0", "60.0", "35.0"]
    assert main[("TTRL", "ours")] == ["—", "—", "5.0", "—", "50.0", "—", "—"]
    assert main[("SRT (offline)", "ours")][-1] == "35.0"
    assert main[("my_method", "ours")][2] == "12.3"
    assert ("without prompt weighting", "ours") not in main
    order = [name for name, _ in main]
    assert order.index("SRT") < order.index("SRT (offline)") < order.index("RESTRAIN") < order.index("my_method")
    ablation = parse_rows(text, "## Ablations")
    assert ablation[("without prompt weighting", "ours")][-1] == "35.0"
    assert ablation[("RESTRAIN", "ours")][-1] == "35.0"
    # The paper's RESTRAIN columns come from its main table; its ablation "Avg." is not known.
    assert ablation[("RESTRAIN", "paper (Qwen3-4B-Base)")] == ["—", "—", "17.9", "—", "80.9", "40.2", "—"]
    assert "| restrain | qwen3_4b_base_restrain | AIME25 | 10 | 16 | 30.0 ± 1.0 | 35.0 | 50.0 | 2.0 |" in text


def test_every_method_has_its_row(tmp_path):
    """Each preset and baseline the package ships lands in its table under its own name."""
    full = {name: 0.1 * (i + 1) for i, name in enumerate(SIX)}
    labels = ["rest_em", "rest_em_majority", "online_prompt_weight", "uniform_weighting"]
    files = [write_result(tmp_path / f"{label}.json", label, full) for label in labels]
    testtime = {"testtime_ttrl": 0.2, "ettrl": 0.3, "ettrl_ear_only": 0.25, "testtime_restrain": 0.4}
    for label, p in testtime.items():
        # one result per benchmark, as each test-time run trains on one benchmark
        for i, name in enumerate(("aime24", "amc23", "math500")):
            files.append(write_result(tmp_path / f"{label}_{name}.json", label, {name: p + 0.1 * i}))
    assert tables.main([str(f) for f in files] + ["--output", str(tmp_path / "tables.md")]) == 0
    text = (tmp_path / "tables.md").read_text(encoding="utf-8")
    main = parse_rows(text, "## Main results")
    assert main[("ReST-EM (gold filter)", "ours")][-1] == "35.0"
    assert main[("ReST-EM (majority filter)", "ours")][-1] == "35.0"
    order = [name for name, _ in main]
    assert order.index("SRT") < order.index("ReST-EM (gold filter)") < order.index("RESTRAIN")
    ablation = parse_rows(text, "## Ablations")
    assert ablation[("online prompt weights (App. E)", "ours")][-1] == "35.0"
    assert ablation[("uniform weighting", "ours")][-1] == "35.0"
    testtime_rows = parse_rows(text, "## Test-time setting")
    # AIME24, AMC23, MATH500, Avg. of 3; no paper rows in this table
    assert testtime_rows == {
        ("TTRL", "ours"): ["20.0", "30.0", "40.0", "30.0"],
        ("ETTRL", "ours"): ["30.0", "40.0", "50.0", "40.0"],
        ("ETTRL (reshaping only)", "ours"): ["25.0", "35.0", "45.0", "35.0"],
        ("RESTRAIN", "ours"): ["40.0", "50.0", "60.0", "50.0"],
    }
    assert list(testtime_rows)[1:3] == [("ETTRL", "ours"), ("ETTRL (reshaping only)", "ours")]
    # test-time runs stay out of the main table
    assert not {name for name, _ in main} & {"testtime_ttrl", "ETTRL", "ettrl"}
    assert ("TTRL", "ours") not in main


def test_no_testtime_table_without_testtime_runs():
    assert "Test-time" not in tables.build_tables({})


def test_labels_merge_across_files_and_can_be_overridden(tmp_path):
    a = write_result(tmp_path / "a.json", None, {"aime25": 0.2})
    b = write_result(tmp_path / "b.json", "restrain", {"gpqa_diamond": 0.3})
    runs = tables.load_results([f"restrain={a}", str(b)])
    assert set(runs) == {"restrain"} and set(runs["restrain"]) == {"aime25", "gpqa_diamond"}
    assert set(tables.load_results([str(a)])) == {"a"}
    with pytest.raises(ValueError, match="appears in two result files"):
        tables.load_results([str(b), str(b)])
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    with pytest.raises(SystemExit, match="not an evaluation result"):
        tables.main([str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="does not exist"):
        tables.main([str(tmp_path / "missing.json")])


def test_no_paper_for_other_models(tmp_path):
    f = write_result(tmp_path / "r.json", "restrain", {"aime25": 0.2})
    tables.main([str(f), "--no-paper", "--output", str(tmp_path / "t.md")])
    text = (tmp_path / "t.md").read_text(encoding="utf-8")
    assert "paper (" not in text and "| RESTRAIN | ours |" in text


def file_logger_lines(path: Path, slope: float, steps: int = 6) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for step in range(1, steps + 1):
            data = {"restrain/majority_ratio": 0.5 + slope * step, "actor/lr": 1e-6, "timing/step": 3.0}
            if step % 2 == 0:
                data["val-core/aime25/acc/mean@4"] = slope * step
            f.write(json.dumps({"step": step, "data": data}) + "\n")
    return path


def test_file_logger_curves(tmp_path):
    restrain = file_logger_lines(tmp_path / "restrain.jsonl", 0.05)
    ttrl = file_logger_lines(tmp_path / "ttrl.jsonl", 0.02)
    series = tables.read_training_log(restrain)
    assert series["val-core/aime25/acc/mean@4"] == [(2, 0.1), (4, 0.2), (6, pytest.approx(0.3))]
    png = tmp_path / "curves.png"
    tables.main(["--curve", f"restrain={restrain}", "--curve", f"ttrl={ttrl}", "--curves-png", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = tables.plot_curves({"a": series}, tmp_path / "b.png")
    assert drawn == ["restrain/majority_ratio", "val-core/aime25/acc/mean@4"]
    assert tables.plot_curves({"a": series}, tmp_path / "c.png", [r"^actor/"]) == ["actor/lr"]


def test_tensorboard_curves(tmp_path):
    pytest.importorskip("tensorboard", reason="reading tensorboard logs needs the tensorboard package")
    from torch.utils.tensorboard import SummaryWriter

    # What verl's tensorboard logger does: add_scalar(key, value, step) for every metric.
    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in range(1, 5):
        writer.add_scalar("restrain/penalized_fraction", 1.0 / step, step)
        writer.add_scalar("val-core/math500/acc/mean@4", 0.1 * step, step)
    writer.close()
    series = tables.read_training_log(tmp_path / "tb")
    assert [s for s, _ in series["restrain/penalized_fraction"]] == [1, 2, 3, 4]
    assert series["val-core/math500/acc/mean@4"][-1][1] == pytest.approx(0.4)
    assert tables.plot_curves({"tb": series}, tmp_path / "tb.png") == sorted(series)


def test_curve_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"no_step": 1}\n', encoding="utf-8")
    with pytest.raises(SystemExit, match=r"bad.jsonl:1 is not a verl file-logger line"):
        tables.main(["--curve", f"x={bad}", "--curves-png", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="no logged metric matches"):
        log = file_logger_lines(tmp_path / "ok.jsonl", 0.1)
        tables.main(["--curve", f"x={log}", "--curve-metrics", "^nothing/", "--curves-png", str(tmp_path / "y.png")])
    with pytest.raises(SystemExit, match="expected LABEL=LOG"):
        tables.main(["--curve", str(tmp_path / "ok.jsonl")])
    with pytest.raises(SystemExit, match="give result JSON files"):
        tables.main([])
    assert re.search("neither", str(pytest.raises(FileNotFoundError, tables.read_training_log, tmp_path / "z.txt").value))
