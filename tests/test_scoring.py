"""The offline scoring job end to end on a tiny random Qwen2 model with the HF engine (CPU).

One uninterrupted run is the reference; crashes followed by a resume, sharded runs followed by a
merge, and repeated runs must all reproduce its output files byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_restrain import __version__, defaults

from verl_restrain.jobs.scoring import ScoringConfig, ScoringInputError, score_prompts
from verl_restrain.jobs.scoring import job as scoring
from verl_restrain.jobs.scoring import shards
from verl_restrain.jobs.scoring.cli import main
from verl_restrain.jobs.scoring.io import WorkDir, merge_shards, read_job_metadata
from verl_restrain.jobs.scoring.votes import ANSWER_COUNTS_TYPE

REPO = Path(__file__).resolve().parent.parent
NUM_ROWS = 10
NEW_COLUMNS = [
    defaults.REF_MAJORITY_COUNT_COLUMN,
    defaults.REF_NUM_SAMPLES_COLUMN,
    defaults.REF_MAJORITY_ANSWER_COLUMN,
    defaults.REF_ANSWER_COUNTS_COLUMN,
]


def make_input(path: Path, num_rows: int = NUM_ROWS) -> Path:
    sources = ["dapo_math_14k", "gpqa_diamond", "math500", "aime24"]
    table = pa.table(
        {
            "data_source": [sources[i % len(sources)] for i in range(num_rows)],
            "prompt": [
                [{"role": "user", "content": f"What is {i} + 3? The answer is \\boxed{{}}." + " Think." * (i % 4)}]
                for i in range(num_rows)
            ],
            "ability": ["math"] * num_rows,
            "reward_model": [{"style": "rule", "ground_truth": str(i + 3)} for i in range(num_rows)],
            "extra_info": [{"index": i, "split": "train"} for i in range(num_rows)],
            "difficulty": pa.array([i / 7 for i in range(num_rows)], pa.float64()),
        }
    )
    table = table.replace_schema_metadata({b"dataset": b"tiny"})
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def input_path(tmp_path_factory):
    return make_input(tmp_path_factory.mktemp("data") / "train.parquet")


def make_config(model_dir: str, input_path: Path, out_dir: Path, **overrides) -> ScoringConfig:
    settings = dict(
        input=str(input_path),
        output=str(out_dir / "scored.parquet"),
        samples_output=str(out_dir / "samples.parquet"),
        model=model_dir,
        engine="hf",
        n=3,
        max_new_tokens=8,
        batch_size=3,
        seed=5,
        progress=False,
    )
    settings.update(overrides)
    return ScoringConfig(**settings)


@pytest.fixture(scope="module")
def reference(model_dir, input_path, tmp_path_factory):
    """An uninterrupted run: (config, summary, output bytes, samples bytes)."""
    config = make_config(model_dir, input_path, tmp_path_factory.mktemp("reference"))
    summary = score_prompts(config)
    return config, summary, Path(config.output).read_bytes(), Path(config.samples_output).read_bytes()


def test_output_keeps_every_input_column_and_row(reference, input_path):
    config, summary, _, _ = reference
    original = pq.read_table(input_path)
    scored = pq.read_table(config.output)
    assert scored.column_names == original.column_names + NEW_COLUMNS
    assert scored.select(original.column_names).equals(original)
    assert scored.schema.metadata[b"dataset"] == b"tiny"
    assert defaults.PROMPT_WEIGHT_COLUMN not in scored.column_names, "training derives u_x from the counts"
    assert scored.schema.field(defaults.REF_ANSWER_COUNTS_COLUMN).type == ANSWER_COUNTS_TYPE
    assert summary["prompts"] == NUM_ROWS
    assert not Path(config.parts_dir).exists(), "the checkpoints are removed after success"


def test_metadata_records_the_run(reference):
    config, _, _, _ = reference
    record = read_job_metadata(config.output)
    expected = {
        "kind": "prompts", "model": config.model, "engine": "hf", "n": 3, "temperature": 1.0, "top_p": 1.0,
        "max_new_tokens": 8, "seed": 5, "batch_size": 3, "version": __version__, "num_rows": NUM_ROWS,
        "answer_kind_map": {}, "default_answer_kind": "math",
    }  # fmt: skip
    assert {key: record[key] for key in expected} == expected
    assert "sigma" not in record and "center" not in record, "u_x's g is the training run's, not the scoring job's"
    assert len(record["input_sha256"]) == 64
    assert read_job_metadata(config.samples_output)["kind"] == "samples"


def test_columns_agree_with_the_samples(reference):
    """c_ref, the majority and the counts are what the sampled answers say; the summary is their c_ref/n."""
    config, summary, _, _ = reference
    scored = pq.read_table(config.output).to_pylist()
    samples = pq.read_table(config.samples_output).to_pylist()
    assert [(s["prompt_index"], s["sample_index"]) for s in samples] == [(i, j) for i in range(NUM_ROWS) for j in range(3)]
    for i, row in enumerate(scored):
        mine = [s for s in samples if s["prompt_index"] == i]
        counts = {}
        for s in mine:
            assert (s["answer"] is None) == (s["cluster_id"] == -1)
            if s["answer"] is not None:
                counts.setdefault(s["cluster_id"], []).append(s["answer"])
        c_ref = max((len(v) for v in counts.values()), default=0)
        assert row[defaults.REF_MAJORITY_COUNT_COLUMN] == c_ref
        assert row[defaults.REF_NUM_SAMPLES_COLUMN] == 3
        assert [c["count"] for c in row[defaults.REF_ANSWER_COUNTS_COLUMN]] == [len(counts[c]) for c in sorted(counts)]
        majority = [s for s in mine if s["is_majority"]]
        assert len(majority) == c_ref
        assert row[defaults.REF_MAJORITY_ANSWER_COLUMN] == (majority[0]["answer"] if majority else None)
    shares = [row[defaults.REF_MAJORITY_COUNT_COLUMN] / 3 for row in scored]
    assert summary["mean_majority_share"] == pytest.approx(sum(shares) / NUM_ROWS)
    assert summary["share_majority_at_least_half"] == pytest.approx(sum(s >= 0.5 for s in shares) / NUM_ROWS)
    assert summary["share_no_valid_answer"] == pytest.approx(sum(s == 0 for s in shares) / NUM_ROWS)


def test_rows_get_their_answer_kind(reference):
    """gpqa_diamond rows vote on option letters: any answer they have is a letter."""
    config, _, _, _ = reference
    scored = pq.read_table(config.output).to_pylist()
    for row in scored:
        if row["data_source"] == "gpqa_diamond":
            assert all(c["answer"] in "ABCDEFGHIJ" for c in row[defaults.REF_ANSWER_COUNTS_COLUMN])


def test_same_seed_same_bytes_other_seed_other_samples(reference, tmp_path):
    config, _, output, samples = reference
    again = replace(config, output=str(tmp_path / "a.parquet"), samples_output=str(tmp_path / "a_samples.parquet"))
    score_prompts(again)
    assert Path(again.output).read_bytes() == output
    assert Path(again.samples_output).read_bytes() == samples
    other = replace(again, seed=6, output=str(tmp_path / "b.parquet"), samples_output=str(tmp_path / "b_s.parquet"))
    score_prompts(other)
    responses = lambda path: pq.read_table(path).column("response").to_pylist()  # noqa: E731
    assert responses(other.samples_output) != responses(again.samples_output)


def test_crash_then_resume_gives_identical_output(reference, tmp_path, monkeypatch):
    config, _, output, samples = reference
    crashing = replace(config, output=str(tmp_path / "out.parquet"), samples_output=str(tmp_path / "s.parquet"))
    write_batch = WorkDir.write_batch
    written = []

    def crash_after_two(self, batch_index, table):
        if len(written) == 2:
            raise RuntimeError("injected crash")
        write_batch(self, batch_index, table)
        written.append(batch_index)

    monkeypatch.setattr(WorkDir, "write_batch", crash_after_two)
    with pytest.raises(RuntimeError, match="injected crash"):
        score_prompts(crashing)
    assert not Path(crashing.output).exists() and not Path(crashing.samples_output).exists()
    assert sorted(p.name for p in crashing.parts_dir.glob("batch-*.parquet")) == [
        "batch-0000000.parquet", "batch-0000001.parquet"
    ]  # fmt: skip
    monkeypatch.setattr(WorkDir, "write_batch", write_batch)
    resumed = []
    batch_seed = scoring.batch_seed
    monkeypatch.setattr(scoring, "batch_seed", lambda seed, b: resumed.append(b) or batch_seed(seed, b))
    score_prompts(crashing)
    assert resumed == [2, 3], "only the batches without a checkpoint are sampled again"
    assert Path(crashing.output).read_bytes() == output
    assert Path(crashing.samples_output).read_bytes() == samples


def test_kill_9_then_rerun_gives_identical_output(model_dir, input_path, tmp_path):
    """A real SIGKILL of the CLI process mid-run; the same command then finishes the job."""
    reference = make_config(model_dir, input_path, tmp_path / "reference", batch_size=1, max_new_tokens=24)
    score_prompts(reference)
    out, samples_out = tmp_path / "scored.parquet", tmp_path / "samples.parquet"
    argv = [
        "--input", reference.input, "--output", str(out), "--samples-output", str(samples_out),
        "--model", model_dir, "--engine", "hf", "--n", "3", "--max-new-tokens", "24", "--batch-size", "1",
        "--seed", "5", "--quiet",
    ]  # fmt: skip
    parts = Path(f"{out}.parts")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "score_prompts.py"), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while not list(parts.glob("batch-*.parquet")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    assert not out.exists() and not samples_out.exists()
    assert 1 <= len(list(parts.glob("batch-*.parquet"))) < NUM_ROWS
    assert main(argv) == 0
    assert out.read_bytes() == Path(reference.output).read_bytes()
    assert samples_out.read_bytes() == Path(reference.samples_output).read_bytes()
    assert not parts.exists()


def test_resume_refuses_other_settings(reference, tmp_path):
    config, _, output, _ = reference
    first = replace(config, output=str(tmp_path / "out.parquet"), samples_output=None, keep_parts=True)
    score_prompts(first)
    changed = replace(first, temperature=0.7)
    with pytest.raises(ScoringInputError, match=r"other settings \(temperature: checkpoint 1.0, now 0.7\).*--no-resume"):
        score_prompts(changed)
    score_prompts(replace(changed, resume=False))
    assert read_job_metadata(changed.output)["temperature"] == 0.7


def test_shards_then_merge_equal_the_unsharded_run(reference, tmp_path):
    """10 rows in batches of 3 are 4 batches; 3 shards take 2, 1 and 1 of them."""
    config, _, output, samples = reference
    shard_outputs, shard_samples = [], []
    for k in range(3):
        shard = replace(
            config,
            num_shards=3,
            shard_index=k,
            output=str(tmp_path / f"scored.{k}.parquet"),
            samples_output=str(tmp_path / f"samples.{k}.parquet"),
        )
        score_prompts(shard)
        shard_outputs.append(shard.output)
        shard_samples.append(shard.samples_output)
    assert [pq.read_metadata(p).num_rows for p in shard_outputs] == [6, 3, 1]
    assert main(["merge", "--output", str(tmp_path / "merged.parquet"), *reversed(shard_outputs)]) == 0
    merge_shards(shard_samples, tmp_path / "merged_samples.parquet")
    assert (tmp_path / "merged.parquet").read_bytes() == output
    assert (tmp_path / "merged_samples.parquet").read_bytes() == samples


def test_merge_rejects_incomplete_or_mixed_shards(reference, tmp_path):
    config, _, _, _ = reference
    shards = []
    for k in range(2):
        shard = replace(config, num_shards=2, shard_index=k, output=str(tmp_path / f"{k}.parquet"), samples_output=None)
        score_prompts(shard)
        shards.append(shard.output)
    merged = tmp_path / "merged.parquet"
    with pytest.raises(ScoringInputError, match="each of the 2 shards exactly once"):
        merge_shards(shards[:1], merged)
    with pytest.raises(ScoringInputError, match="each of the 2 shards exactly once"):
        merge_shards([shards[0], shards[0]], merged)
    with pytest.raises(ScoringInputError, match="not a shard"):
        merge_shards([shards[0], config.output], merged)
    other = replace(config, num_shards=2, shard_index=1, seed=9, output=str(tmp_path / "x.parquet"), samples_output=None)
    score_prompts(other)
    with pytest.raises(ScoringInputError, match="different settings"):
        merge_shards([shards[0], other.output], merged)
    with pytest.raises(ScoringInputError, match="not found"):
        merge_shards([shards[0], str(tmp_path / "missing.parquet")], merged)
    assert not merged.exists()


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the tokenizer or the model is loaded."""
    monkeypatch.setattr(scoring, "load_tokenizer", lambda *a, **k: pytest.fail("the tokenizer was loaded"))
    monkeypatch.setattr(scoring, "load_sampler", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(input="missing.parquet"), "input file not found: missing.parquet"),
        (dict(prompt_key="question"), "has no 'question' column"),
        (dict(n=0), "--n must be >= 1, got 0"),
        (dict(engine="sglang"), "unknown engine 'sglang'"),
        (dict(output="INPUT"), "--output must differ from --input"),
        (dict(samples_output="INPUT"), "--samples-output must differ from --input"),
        (dict(batch_size=0), "--batch-size must be >= 1"),
        (dict(num_shards=2, shard_index=2), r"--shard-index must be in \[0, 2\)"),
        (dict(top_p=0.0), r"--top-p must be in \(0, 1\]"),
        (dict(default_answer_kind="code"), "--default-answer-kind must be math or choice, got 'code'"),
        (dict(answer_kind_map={"aime24": "free"}), "--answer-kind-map aime24=free: the kind must be math or choice"),
        (dict(model="./no/such/model"), "--model: model folder not found: ./no/such/model"),
        (dict(model="no_such_model", input="missing.parquet"), "--model: model folder not found: no_such_model"),
    ],
)
def test_clear_errors_before_any_model_loads(change, message, model_dir, input_path, tmp_path, no_model):
    change = {k: str(input_path) if v == "INPUT" else v for k, v in change.items()}
    with pytest.raises(ScoringInputError, match=message):
        score_prompts(make_config(model_dir, input_path, tmp_path, **change))


def test_verl_checkpoint_as_model_names_the_merger(input_path, tmp_path, no_model):
    actor = tmp_path / "ckpt" / "global_step_3" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    (actor / "model_world_size_1_rank_0.pt").write_bytes(b"")
    (actor / "huggingface" / "config.json").write_text("{}", encoding="utf-8")
    merge = f"python -m verl.model_merger merge --backend fsdp --local_dir {actor} --target_dir <hf_dir>"
    for model in (actor.parent, actor, actor / "huggingface"):
        with pytest.raises(ScoringInputError, match="is a verl checkpoint") as error:
            make_config(str(model), input_path, tmp_path)
        assert merge in str(error.value)


def test_missing_vllm_is_a_clean_error_before_anything_is_written(
    model_dir, input_path, tmp_path, no_model, monkeypatch
):
    from verl_restrain.jobs import generation

    monkeypatch.setattr(generation, "_vllm_importable", lambda: False)
    config = make_config(model_dir, input_path, tmp_path, engine="vllm")
    with pytest.raises(ScoringInputError, match=r'vLLM is not installed.*pip install -e "\.\[vllm\]"'):
        score_prompts(config)
    assert not config.parts_dir.exists()


def test_failed_model_load_does_not_block_a_corrected_rerun(reference, tmp_path, monkeypatch):
    """A run that dies before its first checkpoint leaves settings.json but no batch; other settings take over."""
    config, _, output, samples = reference
    first = replace(config, output=str(tmp_path / "out.parquet"), samples_output=str(tmp_path / "s.parquet"))
    broken = replace(first, temperature=0.7, engine_kwargs={"dtype": "float16"})

    def fail_to_load(*args, **kwargs):
        raise RuntimeError("CUDA out of memory while loading")

    monkeypatch.setattr(scoring, "load_sampler", fail_to_load)
    with pytest.raises(RuntimeError, match="out of memory"):
        score_prompts(broken)
    assert (broken.parts_dir / "settings.json").is_file() and not list(broken.parts_dir.glob("batch-*"))
    monkeypatch.undo()
    score_prompts(first)
    assert Path(first.output).read_bytes() == output
    assert Path(first.samples_output).read_bytes() == samples


def test_empty_dataset_is_an_error(model_dir, input_path, tmp_path, no_model):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(input_path).slice(0, 0), empty)
    with pytest.raises(ScoringInputError, match="has no rows"):
        score_prompts(make_config(model_dir, empty, tmp_path))


def test_malformed_chat_fails_before_the_model_loads(model_dir, input_path, tmp_path, no_model):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["a bare string, not a chat"]}), bad)
    with pytest.raises(ScoringInputError, match="row 0 of .*bad.parquet, column 'prompt': not a chat"):
        score_prompts(make_config(model_dir, bad, tmp_path))


def test_cli_reports_errors_with_exit_status_2(input_path, tmp_path, capsys):
    argv = ["--input", str(input_path), "--output", str(input_path), "--model", "unused"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "--output must differ from --input" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", "--output", str(tmp_path / "m.parquet"), str(tmp_path / "none.parquet")])
    assert exit_info.value.code == 2
    assert "shard file not found" in capsys.readouterr().err


def test_cli_runs_and_prints_the_summary(model_dir, input_path, tmp_path, capsys):
    output = tmp_path / "cli.parquet"
    argv = [
        "--input", str(input_path), "--output", str(output), "--model", model_dir, "--engine", "hf", "--n", "2",
        "--max-new-tokens", "4", "--batch-size", "5", "--seed", "1", "--answer-kind-map", "aime24=choice",
        "--apply-chat-template-kwargs", json.dumps({"enable_thinking": False}), "--keep-parts",
    ]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"scored {NUM_ROWS} prompts" in err and "mean c_ref/n" in err and "no valid answer" in err
    assert "u_x" not in err
    record = read_job_metadata(output)
    assert record["answer_kind_map"] == {"aime24": "choice"}
    assert record["apply_chat_template_kwargs"] == {"enable_thinking": False}
    assert Path(f"{output}.parts", "settings.json").is_file()


def test_cli_resume_flag_is_the_default(model_dir, input_path, tmp_path, capsys):
    from verl_restrain.jobs.scoring.cli import build_parser

    base = ["--input", str(input_path), "--output", str(tmp_path / "o.parquet"), "--model", model_dir]
    assert build_parser().parse_args(base).resume is True
    assert build_parser().parse_args([*base, "--resume"]).resume is True
    assert build_parser().parse_args([*base, "--no-resume"]).resume is False
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*base, "--resume", "--no-resume"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_rejects_a_bad_model_before_reading_the_input(tmp_path, capsys):
    argv = ["--input", str(tmp_path / "missing.parquet"), "--output", str(tmp_path / "o.parquet"), "--model", "./nope"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "--model: model folder not found: ./nope" in capsys.readouterr().err


def test_progress_bar_counts_prompts(model_dir, input_path, tmp_path, capsys):
    score_prompts(make_config(model_dir, input_path, tmp_path, n=1, max_new_tokens=2, progress=True, batch_size=5))
    err = capsys.readouterr().err
    assert f"{NUM_ROWS}/{NUM_ROWS}" in err
    assert "prompt/s" in err or "s/prompt" in err  # tqdm shows the slower unit as s/prompt


def test_input_is_never_modified(reference, input_path):
    config, _, _, _ = reference
    assert read_job_metadata(config.output)["input_sha256"] == scoring.file_sha256(str(input_path))
    assert pq.read_schema(input_path).metadata == {b"dataset": b"tiny"}


class InlineRay:
    """Stands in for Ray's task API: tasks run in this process; records the GPUs each task asks for."""

    def __init__(self, cluster_gpus: float):
        self.cluster_gpus = cluster_gpus
        self.num_gpus = []

    def cluster_resources(self):
        return {"CPU": 2.0, "GPU": self.cluster_gpus} if self.cluster_gpus else {"CPU": 2.0}

    def remote(self, num_gpus):
        self.num_gpus.append(num_gpus)
        return lambda function: SimpleNamespace(remote=lambda *args: (function, args))

    def get(self, calls):
        from ray.exceptions import RayTaskError

        results = []
        for function, args in calls:
            try:
                results.append(function(*args))
            except Exception as error:  # Ray wraps a task's exception like this
                raise RayTaskError(function.__name__, "traceback", error) from None
        return results


@pytest.fixture
def inline_ray(monkeypatch):
    import ray

    def install(cluster_gpus: float = 0) -> InlineRay:
        fake = InlineRay(cluster_gpus)
        for name in ("cluster_resources", "remote", "get"):
            monkeypatch.setattr(ray, name, getattr(fake, name))
        monkeypatch.setattr(ray, "is_initialized", lambda: True)
        return fake

    return install


def test_ray_with_one_shard_writes_the_output_itself(reference, tmp_path, inline_ray):
    """--ray with the default --num-shards 1: one task writes --output as a plain run does, nothing left over."""
    config, _, output, samples = reference
    fake = inline_ray()
    single = replace(config, output=str(tmp_path / "o.parquet"), samples_output=str(tmp_path / "s.parquet"))
    summary = shards.score_prompts_on_ray(single)
    assert summary["prompts"] == NUM_ROWS and fake.num_gpus == [0]
    assert Path(single.output).read_bytes() == output
    assert Path(single.samples_output).read_bytes() == samples
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.parquet", "s.parquet"]


def test_ray_shards_merge_and_leave_no_shard_files(reference, tmp_path, inline_ray):
    config, _, output, _ = reference
    inline_ray()
    fanned = replace(config, num_shards=3, output=str(tmp_path / "o.parquet"), samples_output=None)
    shards.score_prompts_on_ray(fanned)
    assert Path(fanned.output).read_bytes() == output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.parquet"]


@pytest.mark.parametrize(
    "engine, cluster_gpus, expected",
    [("auto", 0, 0), ("auto", 8, 1), ("hf", 0, 0), ("hf", 8, 1), ("vllm", 8, 1), ("vllm", 0, 1)],
)
def test_ray_gpus_per_shard_follow_the_cluster_not_the_driver(engine, cluster_gpus, expected, monkeypatch):
    """A CPU-only head node does not decide: the cluster's GPUs do; each shard resolves auto itself."""
    from verl_restrain.jobs import generation

    monkeypatch.setattr(generation, "_visible_gpu_count", lambda: 0)  # the driver sees no GPU
    assert shards.default_gpus_per_shard(engine, cluster_gpus) == expected


def test_ray_explicit_gpus_and_shard_errors(reference, tmp_path, inline_ray, monkeypatch):
    """--ray-gpus-per-shard is honoured; a shard's input error reaches the caller as a ScoringInputError."""
    from verl_restrain.jobs import generation

    config, _, _, _ = reference
    fake = inline_ray(cluster_gpus=8)
    monkeypatch.setattr(generation, "_vllm_importable", lambda: False)
    broken = replace(config, engine="vllm", output=str(tmp_path / "o.parquet"), samples_output=None)
    with pytest.raises(ScoringInputError, match="vLLM is not installed"):
        shards.score_prompts_on_ray(broken, gpus_per_shard=2)
    assert fake.num_gpus == [2]


@pytest.mark.skipif(
    os.environ.get("RESTRAIN_SLOW_TESTS") != "1",
    reason="starts a local Ray instance and a worker that imports torch (~1 min on 2 cores); RESTRAIN_SLOW_TESTS=1 runs it",
)
@pytest.mark.parametrize("num_shards", [1, 2])
def test_ray_fan_out_equals_the_unsharded_run(reference, tmp_path, num_shards):
    import ray

    config, _, output, samples = reference
    fanned = replace(config, num_shards=num_shards, output=str(tmp_path / "o.parquet"), samples_output=str(tmp_path / "s.parquet"))
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        shards.score_prompts_on_ray(fanned)
    finally:
        ray.shutdown()
    assert Path(fanned.output).read_bytes() == output
    assert Path(fanned.samples_output).read_bytes() == samples
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.parquet", "s.parquet"]


class ScriptedSampler:
    """Every prompt gets the same n responses."""

    def __init__(self, responses: list[str]):
        self.responses = responses

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed):
        assert n == len(self.responses)
        return [list(self.responses) for _ in prompts]


def test_an_unlisted_choice_set_is_scored_as_choice_and_an_explicit_map_wins(tmp_path, monkeypatch):
    """extra_info.kind = choice decides for an unknown data_source; --answer-kind-map overrides it."""
    path = tmp_path / "mine.parquet"
    chat = [{"role": "user", "content": "Which is prime? A) 4 B) 6 C) 7 D) 8"}]
    pq.write_table(pa.table({"data_source": ["my_mc"], "prompt": [chat], "extra_info": [{"kind": "choice"}]}), path)
    monkeypatch.setattr(scoring, "load_tokenizer", lambda *a, **k: None)
    monkeypatch.setattr(scoring, "render_prompts", lambda chats, tokenizer, kwargs: [c[0]["content"] for c in chats])
    # "Final: C" names option C; read as math it holds no final answer at all.
    monkeypatch.setattr(scoring, "load_sampler", lambda *a, **k: ScriptedSampler(["Final: C", "Final: C"]))
    settings = dict(input=str(path), model="org/model", engine="hf", n=2, progress=False)
    score_prompts(ScoringConfig(output=str(tmp_path / "a.parquet"), **settings))
    score_prompts(ScoringConfig(output=str(tmp_path / "b.parquet"), answer_kind_map={"my_mc": "math"}, **settings))
    (by_row,) = pq.read_table(tmp_path / "a.parquet").to_pylist()
    (mapped,) = pq.read_table(tmp_path / "b.parquet").to_pylist()
    assert by_row[defaults.REF_MAJORITY_COUNT_COLUMN] == 2 and by_row[defaults.REF_MAJORITY_ANSWER_COLUMN] == "C"
    assert mapped[defaults.REF_MAJORITY_COUNT_COLUMN] == 0 and mapped[defaults.REF_MAJORITY_ANSWER_COLUMN] is None
    assert read_job_metadata(tmp_path / "b.parquet")["answer_kind_map"] == {"my_mc": "math"}
