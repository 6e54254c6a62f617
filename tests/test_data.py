"""Data preparation: builders, sources, the row format, and the bundled files.

Every fixture is written by the test itself; nothing is downloaded (the hub is never reached).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from verl_restrain.data import prepare as prep
from verl_restrain.data.records import shuffled_options
from verl_restrain.data.rows import CHOICE_INSTRUCTION, MATH_INSTRUCTION, ROW_SCHEMA, read_provenance
from verl_restrain.data.sources import HubSource, bundled_names, read_bundled

DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


def dapo_raw_record(problem: str, answer: str, index: int) -> dict:
    """A row as in BytedTsinghua-SIA/DAPO-Math-17k (verl format with DAPO's instruction)."""
    return {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": DAPO_PREFIX + problem + DAPO_SUFFIX}],
        "ability": "MATH",
        "reward_model": {"style": "rule-lighteval/MATH_v2", "ground_truth": answer},
        "extra_info": {"index": f"uuid-{index}"},
    }


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def gpqa_records(count: int) -> list[dict]:
    return [
        {
            "Record ID": f"rec{i}",
            "Question": f"Question {i}: which particle is charged?",
            "Correct Answer": f"right {i}",
            "Incorrect Answer 1": f"wrong1 {i}",
            "Incorrect Answer 2": f"wrong2 {i}",
            "Incorrect Answer 3": f"wrong3 {i}",
            "Subdomain": "Physics",
        }
        for i in range(count)
    ]


def content(row: dict) -> str:
    return row["prompt"][0]["content"]


# ---------------------------------------------------------------- bundled files


@pytest.mark.parametrize(("name", "count"), [("aime24", 30), ("aime25", 30), ("amc23", 40), ("math500", 500)])
def test_bundled_benchmarks_build_offline(name, count):
    rows, provenance = prep.build_rows(name)
    assert len(rows) == count
    assert provenance["source"] == f"bundled:{name}.jsonl"
    assert {r["data_source"] for r in rows} == {name}
    assert [r["extra_info"]["index"] for r in rows] == list(range(count))
    assert all(content(r).endswith(MATH_INSTRUCTION) for r in rows)
    assert all(r["reward_model"]["ground_truth"].strip() for r in rows)


def test_bundled_competition_answers_are_plain_integers():
    for name in ("aime24", "aime25", "amc23"):
        records, _ = read_bundled(name)
        for record in records:
            assert re.fullmatch(r"-?(0|[1-9]\d*)", record["answer"]), (name, record["answer"])
    aime = {r["answer"] for r in read_bundled("aime24")[0]}
    assert all(0 <= int(a) <= 999 for a in aime)


def test_bundled_known_items():
    # AIME 2024 I problem 1 (answer 204) and AIME 2025 I problem 1 (answer 70).
    aime24 = read_bundled("aime24")[0]
    assert "Aya goes for a $9$-kilometer-long walk" in aime24[0]["problem"] and aime24[0]["answer"] == "204"
    aime25 = read_bundled("aime25")[0]
    assert "$17_b$ is a divisor of $97_b" in aime25[0]["problem"] and aime25[0]["answer"] == "70"
    math500 = read_bundled("math500")[0]
    assert math500[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert Counter(r["subject"] for r in math500)["Precalculus"] > 0


def test_every_bundled_file_has_its_source_recorded():
    sources = (Path(prep.__file__).parent / "bundled" / "SOURCES.md").read_text(encoding="utf-8")
    assert bundled_names() == ["aime24", "aime25", "amc23", "math500"]
    for name in bundled_names():
        assert f"`{name}.jsonl`" in sources
    assert "ea12141f2b18fbcd130c6460e8a141c1913354de" in sources
    assert "MIT" in sources


# ---------------------------------------------------------------- DAPO-Math-14k


def test_dapo_dedup_strips_instruction_and_drops_cjk(tmp_path):
    problems = [
        ("What is $1+1$?", "2"),
        ("Compute $3 \\cdot 4$.", "12"),
        ("What is $1+1$?", "2"),  # exact duplicate (DAPO-Math-17k repeats every prompt)
        ("What  is $1+1$?\n", "2"),  # same text up to whitespace
        ("求 $x$ 的值, if $x+1=3$.", "2"),  # Chinese: dropped as in open-r1's "en" config
        ("Find $x$ if $2x = 10$.", "5"),
    ]
    write_jsonl(tmp_path / "dapo_math_14k.jsonl", [dapo_raw_record(p, a, i) for i, (p, a) in enumerate(problems)])
    rows, provenance = prep.build_rows("dapo_math_14k", local_dir=tmp_path)
    assert provenance["records_read"] == 6 and provenance["rows"] == 3
    assert [content(r) for r in rows] == [
        f"What is $1+1$?\n\n{MATH_INSTRUCTION}",
        f"Compute $3 \\cdot 4$.\n\n{MATH_INSTRUCTION}",
        f"Find $x$ if $2x = 10$.\n\n{MATH_INSTRUCTION}",
    ]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["2", "12", "5"]
    assert all("Answer:" not in content(r) for r in rows)
    assert {r["extra_info"]["split"] for r in rows} == {"train"}
    assert rows[1]["extra_info"]["source_id"] == "uuid-1"


def test_dapo_open_r1_layout_reads_the_same(tmp_path):
    # open-r1/DAPO-Math-17k-Processed: "prompt" is the instruction-wrapped text, "solution" the gold.
    record = {"prompt": DAPO_PREFIX + "What is $2+2$?" + DAPO_SUFFIX, "solution": "4"}
    pd.DataFrame([record, record]).to_parquet(tmp_path / "dapo_math_14k.parquet")
    rows, _ = prep.build_rows("dapo_math_14k", local_dir=tmp_path)
    assert len(rows) == 1
    assert content(rows[0]) == f"What is $2+2$?\n\n{MATH_INSTRUCTION}"
    assert rows[0]["reward_model"]["ground_truth"] == "4"


# ---------------------------------------------------------------- multiple choice


def test_gpqa_options_shuffled_with_fixed_seed_and_gold_follows(tmp_path):
    pd.DataFrame(gpqa_records(40)).to_csv(tmp_path / "gpqa_diamond.csv", index=False)
    rows, provenance = prep.build_rows("gpqa_diamond", local_dir=tmp_path)
    again, _ = prep.build_rows("gpqa_diamond", local_dir=tmp_path)
    assert rows == again
    assert provenance["choice_shuffle_seed"] == prep.CHOICE_SHUFFLE_SEED
    golds = Counter()
    for i, row in enumerate(rows):
        info = row["extra_info"]
        assert info["kind"] == "choice" and info["shuffle_seed"] == prep.CHOICE_SHUFFLE_SEED
        assert sorted(info["options"]) == sorted([f"right {i}", f"wrong1 {i}", f"wrong2 {i}", f"wrong3 {i}"])
        gold = row["reward_model"]["ground_truth"]
        assert info["options"]["ABCD".index(gold)] == f"right {i}"
        assert f"{gold}) right {i}" in content(row)
        assert content(row).endswith(CHOICE_INSTRUCTION.format(letters="A, B, C or D"))
        assert row["ability"] == "stem" and info["source_id"] == f"rec{i}" and info["subject"] == "Physics"
        golds[gold] += 1
    # The source lists the correct answer first; after shuffling every letter is used.
    assert set(golds) == set("ABCD")


def test_choice_order_depends_on_the_seed():
    options = ["a", "b", "c", "d"]
    orders = {tuple(shuffled_options(options, seed, 3)[0]) for seed in range(20)}
    assert len(orders) > 1
    assert shuffled_options(options, 7, 3) == shuffled_options(options, 7, 3)


def test_mmlu_stem_keeps_stem_subjects_and_maps_answer_index(tmp_path):
    records = [
        {"question": "2+2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
        {"question": "Capital of France?", "subject": "high_school_geography", "choices": list("wxyz"), "answer": 0},
        {"question": "F = ?", "subject": "high_school_physics", "choices": ["ma", "mv", "m/a", "a"], "answer": 0},
    ]
    pd.DataFrame(records).to_parquet(tmp_path / "mmlu_stem.parquet")
    rows, _ = prep.build_rows("mmlu_stem", local_dir=tmp_path)
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["B", "A"]
    assert [r["extra_info"]["subject"] for r in rows] == ["elementary_mathematics", "high_school_physics"]
    assert "A) 3\nB) 4\nC) 5\nD) 6" in content(rows[0])
    assert rows[0]["extra_info"]["shuffle_seed"] == -1


def test_mmlu_stem_subject_list():
    assert len(prep.MMLU_STEM_SUBJECTS) == 18 == len(set(prep.MMLU_STEM_SUBJECTS))
    assert [s.name for s in prep.BENCHMARKS["mmlu_stem"].hub] == list(prep.MMLU_STEM_SUBJECTS)


def test_qwen_math_style_files_load(tmp_path):
    # math-evaluation-harness layout: "type" is the subject, answer is an index.
    write_jsonl(
        tmp_path / "mmlu_stem" / "test.jsonl",
        [{"question": "q", "type": "machine_learning", "choices": ["a", "b", "c", "d"], "answer": 3}],
    )
    rows, provenance = prep.build_rows("mmlu_stem", local_dir=tmp_path)
    assert rows[0]["reward_model"]["ground_truth"] == "D"
    assert provenance["source"].endswith("test.jsonl")


# ---------------------------------------------------------------- sources and errors


def test_local_files_take_precedence_over_bundled(tmp_path):
    write_jsonl(tmp_path / "aime24.jsonl", [{"id": 1, "problem": "Find 1+1.", "answer": "002"}])
    rows, provenance = prep.build_rows("aime24", local_dir=tmp_path)
    assert len(rows) == 1 and rows[0]["reward_model"]["ground_truth"] == "2"
    assert provenance["source"] == str(tmp_path / "aime24.jsonl")
    rows, _ = prep.build_rows("aime24", local_dir=tmp_path, source="bundled")
    assert len(rows) == 30


def test_json_list_and_string_answers_keep_spelling(tmp_path):
    (tmp_path / "math500.json").write_text(json.dumps([{"problem": "p", "answer": "0.50"}]), encoding="utf-8")
    rows, _ = prep.build_rows("math500", local_dir=tmp_path)
    assert rows[0]["reward_model"]["ground_truth"] == "0.50"


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'aime23'"):
        prep.resolve_names("aime24,aime23")
    with pytest.raises(FileNotFoundError, match="no local data for 'amc23'"):
        prep.build_rows("amc23", local_dir=tmp_path, source="local")
    write_jsonl(tmp_path / "math500.jsonl", [{"problem": "p", "solution": "long worked solution"}])
    with pytest.raises(ValueError, match=r"math500: record 0 cannot be read: .*'answer'"):
        prep.build_rows("math500", local_dir=tmp_path)
    (tmp_path / "amc23.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="amc23: no items left"):
        prep.build_rows("amc23", local_dir=tmp_path)
    with pytest.raises(SystemExit, match="not a directory"):
        prep.main(["--benchmarks", "aime24", "--output-dir", str(tmp_path), "--local-dir", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="NAME=REPO"):
        prep.main(["--benchmarks", "aime24", "--output-dir", str(tmp_path), "--hub", "aime24"])


def test_output_dir_that_is_a_file_is_a_clean_error(tmp_path):
    (tmp_path / "data").write_text("not a folder", encoding="utf-8")
    with pytest.raises(SystemExit, match=f"prepare_data: --output-dir {tmp_path / 'data'} is a file; give a folder"):
        prep.main(["--benchmarks", "aime24", "--output-dir", str(tmp_path / "data")])
    with pytest.raises(SystemExit, match="prepare_data: --output-dir: cannot write .*: cannot create its folder"):
        prep.main(["--benchmarks", "aime24", "--output-dir", str(tmp_path / "data" / "below")])
    assert (tmp_path / "data").read_text(encoding="utf-8") == "not a folder"


def test_json_parse_errors_name_the_file(tmp_path):
    local = tmp_path / "local"
    write_jsonl(local / "aime24.jsonl", [{"problem": "p", "answer": "1"}])
    with (local / "aime24.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"problem": "q", "answer": \n')
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit, match=f"prepare_data: {local / 'aime24.jsonl'}:2: not valid JSON"):
        prep.main(["--benchmarks", "aime24", "--output-dir", out, "--local-dir", str(local)])
    (local / "aime24.jsonl").unlink()
    (local / "amc23.json").write_text("[{]", encoding="utf-8")
    with pytest.raises(SystemExit, match=f"prepare_data: {local / 'amc23.json'}: not valid JSON"):
        prep.main(["--benchmarks", "amc23", "--output-dir", out, "--local-dir", str(local)])
    (local / "amc23.json").unlink()
    (local / "math500.parquet").write_bytes(b"not parquet")
    with pytest.raises(SystemExit, match=f"prepare_data: {local / 'math500.parquet'}: cannot be read"):
        prep.main(["--benchmarks", "math500", "--output-dir", out, "--local-dir", str(local)])


def test_written_files_are_atomic_and_ordinary(tmp_path):
    """Atomic, durable writes (verl_restrain.jobs.files): no temporary file stays, the mode follows the umask."""
    import os
    import stat

    (tmp_path / ".aime24.parquet.0123abcd.tmp").write_bytes(b"left by a killed run")
    previous = os.umask(0o022)
    try:
        assert prep.main(["--benchmarks", "aime24", "--output-dir", str(tmp_path), "--source", "bundled"]) == 0
    finally:
        os.umask(previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aime24.parquet"]
    assert stat.S_IMODE((tmp_path / "aime24.parquet").stat().st_mode) == 0o644


def test_hub_spec_parsing():
    assert HubSource.parse("cais/mmlu:astronomy:test") == HubSource("cais/mmlu", "astronomy", "test")
    assert HubSource.parse("HuggingFaceH4/MATH-500::test") == HubSource("HuggingFaceH4/MATH-500", None, "test")
    assert HubSource.parse("org/set") == HubSource("org/set", None, "train")
    with pytest.raises(ValueError):
        HubSource.parse(":x")


def test_hub_path_uses_datasets_load_dataset(monkeypatch):
    """The hub path hands the configured split to ``datasets.load_dataset`` and parses what it returns."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return [{"question": f"{name} q", "choices": ["a", "b", "c", "d"], "answer": 2, "subject": name}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows, provenance = prep.build_rows("mmlu_stem", source="hub")
    assert calls == [("cais/mmlu", s, "test") for s in prep.MMLU_STEM_SUBJECTS]
    assert len(rows) == 18 and {r["reward_model"]["ground_truth"] for r in rows} == {"C"}
    assert provenance["source"].startswith("hf://cais/mmlu (abstract_algebra) [test]")


# ---------------------------------------------------------------- written files


def test_written_files_share_one_schema_and_load_in_verl(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    pd.DataFrame(gpqa_records(4)).to_csv(local / "gpqa_diamond.csv", index=False)
    assert prep.main(
        ["--benchmarks", "aime24,gpqa_diamond,math500", "--output-dir", str(tmp_path / "out"), "--local-dir", str(local)]
    ) == 0
    written = {name: tmp_path / "out" / f"{name}.parquet" for name in ("aime24", "gpqa_diamond", "math500")}
    for path in written.values():
        assert pq.read_schema(path).remove_metadata() == ROW_SCHEMA
    assert read_provenance(written["gpqa_diamond"])["rows"] == 4

    # verl concatenates the validation files with `datasets`; mismatched schemas would fail here.
    from omegaconf import OmegaConf
    from tiny_lm import make_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = OmegaConf.create(
        {"prompt_key": "prompt", "max_prompt_length": 4096, "filter_overlong_prompts": False,
         "cache_dir": str(tmp_path / "cache"), "return_raw_chat": True}
    )
    dataset = RLHFDataset([str(p) for p in written.values()], make_tokenizer(), config)
    assert len(dataset) == 30 + 4 + 500
    item = dataset[31]
    assert item["data_source"] == "gpqa_diamond"
    assert item["reward_model"]["ground_truth"] in "ABCD"
    assert item["extra_info"]["kind"] == "choice"
