"""restrain-filter-samples: ReST-EM's filter on a scoring run's samples, into verl's SFT parquet.

The scoring runs here are built with the scoring job's own code (``vote_batch``, ``prompt_columns``,
``samples_table``, ``job_record``) from scripted responses, so that the votes and clusters are the
real ones; one test runs the real scoring job with a tiny random model and then this job by
``python -m``. The written file is read back with verl's own ``MultiTurnSFTDataset``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_restrain.answers import is_correct
from verl_restrain.jobs.config import JobInputError
from verl_restrain.jobs.filter_samples import METADATA_KEY, FilterConfig, filter_samples, main, select
from verl_restrain.jobs.scoring.config import ScoringConfig
from verl_restrain.jobs.scoring.io import with_job_metadata
from verl_restrain.jobs.scoring.job import file_sha256, job_record
from verl_restrain.jobs.scoring.votes import prompt_columns, row_kinds, samples_table, vote_batch

REPO_ROOT = Path(__file__).resolve().parents[1]


def chat(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def row(question: str, gold: str | None, data_source: str = "math") -> dict:
    return {
        "data_source": data_source,
        "prompt": chat(question),
        "reward_model": {"style": "rule", "ground_truth": gold},
        "extra_info": {"index": 0},
    }


def scoring_run(tmp_path: Path, model: str, rows: list[dict], responses: list[list[str]], shuffle: bool = False):
    """The --output, --samples-output and --input files a scoring run of ``responses`` writes."""
    n = len(responses[0])
    source = tmp_path / "train.parquet"
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, source)
    config = ScoringConfig(model=model, input=str(source), output=str(tmp_path / "scored.parquet"), n=n, engine="hf")
    record = job_record(config, "hf", file_sha256(source), table.num_rows)
    answers, clusters = vote_batch(responses, row_kinds(table))
    columns, majority_id = prompt_columns(sum(answers, []), sum(clusters, []), n)
    checkpoint = pa.table(
        {"row": list(range(len(rows))), "responses": responses, "answers": answers, "clusters": clusters}
    )
    samples = samples_table(checkpoint, majority_id)
    if shuffle:  # the job must not depend on the file's row order
        samples = samples.take(random.Random(0).sample(range(samples.num_rows), samples.num_rows))
    for name, values in columns.items():
        table = table.append_column(name, values)
    pq.write_table(with_job_metadata(table, {**record, "kind": "prompts"}), tmp_path / "scored.parquet")
    pq.write_table(with_job_metadata(samples, {**record, "kind": "samples"}), tmp_path / "samples.parquet")
    return tmp_path / "scored.parquet", tmp_path / "samples.parquet", source


def run(tmp_path: Path, scored: Path, samples: Path, **settings) -> tuple[dict, pa.Table]:
    output = tmp_path / "sft.parquet"
    summary = filter_samples(
        FilterConfig(samples=str(samples), prompts=str(scored), output=str(output), progress=False, **settings)
    )
    return summary, pq.read_table(output)


def kept(table: pa.Table) -> list[tuple[int, int]]:
    return list(zip(table.column("prompt_index").to_pylist(), table.column("sample_index").to_pylist()))


# ---------------------------------------------------------------- gold (ReST-EM) and majority


def test_gold_keeps_the_correct_responses_of_each_answer_kind(tmp_path, tiny_model_dir):
    rows = [row("Half of one?", "1/2"), row("Which is right?", "B", data_source="gpqa_diamond"), row("3+3?", "6")]
    responses = [
        ["\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{3}", "I do not know."],
        ["The answer is (B)", "The answer is (C)", "\\boxed{B}", "Answer: D"],
        ["\\boxed{5}", "\\boxed{7}", "no idea", "\\boxed{6.5}"],
    ]
    scored, samples, _ = scoring_run(tmp_path, tiny_model_dir, rows, responses)
    summary, table = run(tmp_path, scored, samples, keep="gold")
    assert kept(table) == [(0, 0), (0, 1), (1, 0), (1, 2)]
    # The same verdicts as is_correct on the raw responses, with each row's answer kind.
    kinds = ["math", "choice", "math"]
    expected = [(p, s) for p, texts in enumerate(responses) for s, text in enumerate(texts)
                if is_correct(text, rows[p]["reward_model"]["ground_truth"], kinds[p])]
    assert kept(table) == expected
    assert summary == {"prompts": 3, "samples": 12, "samples_passing": 4, "prompts_with_kept": 2, "responses_kept": 4}


def test_majority_is_the_votes_cluster_not_string_equality(tmp_path, tiny_model_dir):
    # 0.5, 1/2 and \frac12 are one cluster of 3; "3" appears twice as a string, more than any other string.
    responses = [["\\boxed{3}", "\\boxed{0.5}", "\\boxed{1/2}", "\\boxed{3}", "\\boxed{\\frac12}"]]
    scored, samples, _ = scoring_run(tmp_path, tiny_model_dir, [row("Half?", None)], responses)
    summary, table = run(tmp_path, scored, samples, keep="majority")
    assert kept(table) == [(0, 1), (0, 2), (0, 4)]
    assert len(set(table.column("answer").to_pylist())) == 3  # three spellings, one cluster
    assert summary["responses_kept"] == 3


def test_majority_below_the_minimum_share_keeps_nothing(tmp_path, tiny_model_dir):
    # Five different answers: the majority (the first, by the vote's tie rule) holds 1/5 < 0.25.
    responses = [[f"\\boxed{{{i}}}" for i in range(5)], ["\\boxed{2}", "\\boxed{2}", "\\boxed{1}", "x", "y"]]
    scored, samples, _ = scoring_run(tmp_path, tiny_model_dir, [row("a", None), row("b", None)], responses)
    summary, table = run(tmp_path, scored, samples, keep="majority")
    assert kept(table) == [(1, 0), (1, 1)]  # 2/5 = 0.4 >= 0.25
    assert summary["prompts_with_kept"] == 1
    _, table = run(tmp_path, scored, samples, keep="majority", min_majority_share=0.0)
    assert kept(table) == [(0, 0), (1, 0), (1, 1)]


# ---------------------------------------------------------------- the cap and distinct responses


def test_cap_keeps_the_first_in_sampling_order(tmp_path, tiny_model_dir):
    responses = [[f"Step {i}. \\boxed{{4}}" for i in range(6)] + ["\\boxed{5}", "\\boxed{4}"]]
    scored, samples, _ = scoring_run(tmp_path, tiny_model_dir, [row("2+2?", "4")], responses, shuffle=True)
    summary, table = run(tmp_path, scored, samples, keep="gold", max_per_prompt=2)
    assert kept(table) == [(0, 0), (0, 1)]
    assert summary["samples_passing"] == 7 and summary["responses_kept"] == 2
    _, table = run(tmp_path, scored, samples, keep="gold")  # the default cap, 10, keeps all 7
    assert kept(table) == [(0, s) for s in (0, 1, 2, 3, 4, 5, 7)]


def test_distinct_skips_repeated_texts_before_the_cap(tmp_path, tiny_model_dir):
    responses = [["\\boxed{4}", "\\boxed{4}", "So \\boxed{4}", "\\boxed{4}", "Thus \\boxed{4}"]]
    scored, samples, _ = scoring_run(tmp_path, tiny_model_dir, [row("2+2?", "4")], responses)
    _, table = run(tmp_path, scored, samples, keep="gold", max_per_prompt=3, distinct=True)
    assert kept(table) == [(0, 0), (0, 2), (0, 4)]


def test_select_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        prompt = np.sort(rng.integers(0, 6, size=rng.integers(0, 40)))
        passes = rng.random(len(prompt)) < 0.6
        texts = [str(t) for t in rng.integers(0, 3, size=len(prompt))]
        cap = int(rng.integers(1, 5))
        for distinct in (False, True):
            expected, count, seen = [], {}, set()
            for i, (p, ok) in enumerate(zip(prompt.tolist(), passes)):
                if not ok or (distinct and (p, texts[i]) in seen):
                    continue
                seen.add((p, texts[i]))
                if count.get(p, 0) < cap:
                    expected.append(i)
                count[p] = count.get(p, 0) + 1
            assert select(prompt, passes, cap, texts if distinct else None).tolist() == expected


def test_nothing_kept_writes_an_empty_file_with_the_schema(tmp_path, tiny_model_dir):
    scored, samples, _ = scoring_run(tmp_path, tiny_model_dir, [row("2+2?", "4")], [["\\boxed{5}", "none"]])
    summary, table = run(tmp_path, scored, samples, keep="gold")
    assert table.num_rows == 0 and table.column_names == ["messages", "prompt_index", "sample_index", "answer"]
    assert summary["prompts_with_kept"] == 0 and summary["responses_kept"] == 0


# ---------------------------------------------------------------- the SFT file verl reads


def test_verl_sft_dataset_reads_the_output_as_prompt_plus_response(tmp_path, tiny_model_dir):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    from verl_restrain.jobs.generation import render_prompts

    rows = [row("What is 2+2?", "4"), row("What is 3+3?", "6")]
    responses = [["It is \\boxed{4}.", "\\boxed{5}"], ["\\boxed{6}", "Six: \\boxed{6}"]]
    scored, samples, _ = scoring_run(tmp_path, tiny_model_dir, rows, responses)
    _, table = run(tmp_path, scored, samples, keep="gold")
    assert table.schema.field("messages").type == pa.list_(
        pa.struct([("role", pa.string()), ("content", pa.string())])
    )
    metadata = json.loads(table.schema.metadata[METADATA_KEY])
    assert metadata["summary"]["responses_kept"] == 3 and metadata["settings"]["keep"] == "gold"
    assert metadata["scoring"]["kind"] == "samples" and metadata["settings"]["max_per_prompt"] == 10

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = OmegaConf.create({"pad_mode": "no_padding", "max_length": 256, "truncation": "error",
                               "messages_key": "messages"})
    dataset = MultiTurnSFTDataset(str(tmp_path / "sft.parquet"), tokenizer, config)
    assert len(dataset) == 3
    for i, (p, s) in enumerate(kept(table)):
        item = dataset[i]
        ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
        # The prompt exactly as the rollout saw it (verl's rendering with the generation prompt) ...
        prompt_ids = tokenizer(render_prompts([rows[p]["prompt"]], tokenizer)[0], add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids and not any(mask[: len(prompt_ids)])
        # ... then the sampled response and the end of the turn, the only tokens trained on.
        assert all(mask[len(prompt_ids):])
        assert tokenizer.decode(ids[len(prompt_ids):]) == responses[p][s] + "<|im_end|>\n"


# ---------------------------------------------------------------- bad inputs


def error_of(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_model_dir, capsys):
    scored, samples, source = scoring_run(tmp_path, tiny_model_dir, [row("2+2?", "4")], [["\\boxed{4}"]])
    out = str(tmp_path / "sft.parquet")

    def check(argv, *fragments):
        code, err = error_of(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("restrain-filter-samples: error:"), err
        for fragment in fragments:
            assert fragment in err, err

    base = ["--samples", str(samples), "--prompts", str(scored), "--output", out]
    check(["--samples", str(tmp_path / "missing.parquet"), "--prompts", str(scored), "--output", out],
          "--samples file not found")
    check(["--samples", str(source), "--prompts", str(scored), "--output", out], "not a samples file", "--samples-output")
    check([*base, "--keep", "best"], "--keep must be gold or majority")
    check([*base, "--max-per-prompt", "0"], "--max-per-prompt must be >= 1")
    check([*base, "--min-majority-share", "1.5"], "--min-majority-share must be in [0, 1]")
    check(["--samples", str(samples), "--prompts", str(scored), "--output", str(samples)], "must differ")

    # Prompts from another run, or another file altogether.
    other = tmp_path / "other"
    other.mkdir()
    other_scored, _, other_source = scoring_run(other, tiny_model_dir, [row("2+3?", "5")], [["\\boxed{5}"]])
    check(["--samples", str(samples), "--prompts", str(other_scored), "--output", out], "different scoring runs")
    check(["--samples", str(samples), "--prompts", str(other_source), "--output", out], "neither the scoring run's")
    # The run's own --input is accepted in place of its --output.
    assert main(["--samples", str(samples), "--prompts", str(source), "--output", out, "--quiet"]) == 0

    # A shard, and gold labels that are missing.
    shard = tmp_path / "shard.parquet"
    record = json.loads(pq.read_schema(samples).metadata[b"verl_restrain.jobs.scoring"])
    record["shard"] = {"shard_index": 1, "num_shards": 2}
    pq.write_table(with_job_metadata(pq.read_table(samples), record), shard)
    check(["--samples", str(shard), "--prompts", str(scored), "--output", out], "restrain-score-prompts merge")
    nolabel = tmp_path / "nolabel"
    nolabel.mkdir()
    s2, m2, _ = scoring_run(nolabel, tiny_model_dir, [row("2+2?", None)], [["\\boxed{4}"]])
    check(["--samples", str(m2), "--prompts", str(s2), "--output", out], "no row of", "--keep majority")


def test_config_rejects_an_unknown_keep_before_reading_files():
    with pytest.raises(JobInputError, match="--keep must be gold or majority"):
        FilterConfig(samples="a.parquet", prompts="b.parquet", output="c.parquet", keep="best")


# ---------------------------------------------------------------- the real scoring job, then python -m


def test_python_m_after_a_real_scoring_run(tmp_path, tiny_model_dir):
    from verl_restrain.jobs.scoring.cli import main as score_main

    source = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([row(f"What is {i} + {i}?", str(2 * i)) for i in range(3)]), source)
    scored, samples = tmp_path / "scored.parquet", tmp_path / "samples.parquet"
    assert score_main(["--input", str(source), "--output", str(scored), "--samples-output", str(samples),
                       "--model", tiny_model_dir, "--engine", "hf", "--n", "4", "--max-new-tokens", "6",
                       "--quiet"]) == 0
    output = tmp_path / "sft.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "verl_restrain.jobs.filter_samples", "--samples", str(samples), "--prompts",
         str(scored), "--output", str(output), "--keep", "majority", "--min-majority-share", "0"],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "prompts with a kept response" in proc.stderr
    table = pq.read_table(output)
    sampled = pq.read_table(samples)
    majority = sampled.filter(sampled.column("is_majority"))
    assert sorted(kept(table)) == sorted(
        zip(majority.column("prompt_index").to_pylist(), majority.column("sample_index").to_pylist())
    )
    responses = {(p, s): r for p, s, r in zip(*(sampled.column(c).to_pylist() for c in
                                                  ("prompt_index", "sample_index", "response")))}
    prompts = pq.read_table(scored).column("prompt").to_pylist()
    for (p, s), messages in zip(kept(table), table.column("messages").to_pylist()):
        assert messages == prompts[p] + [{"role": "assistant", "content": responses[(p, s)]}]


def test_prompt_messages_with_other_keys_are_refused(tmp_path, tiny_model_dir, capsys):
    rows = [row("2+2?", "4"), {**row("3+3?", "6"), "prompt": [{"role": "user", "content": "3+3?", "name": "x"}]}]
    scored, samples, _ = scoring_run(tmp_path, tiny_model_dir, rows, [["\\boxed{4}"], ["\\boxed{6}"]])
    code, err = error_of(["--samples", str(samples), "--prompts", str(scored), "--output", str(tmp_path / "o.parquet")],
                         capsys)
    assert code == 2 and "row 1 of" in err and "message keys name are not carried" in err
