"""Evaluation: grading through the answers module, the metrics, the CLI, and a tiny-model run on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from verl_restrain import answers

from verl_restrain.jobs import evaluation

from verl_restrain.jobs import generation
from verl_restrain.data.rows import Problem, make_row, write_rows
from verl_restrain.jobs.evaluation import Graded, benchmark_metrics, grade_problem


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny_lm import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if anything tries to load a model or tokenizer."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(generation, "load_sampler", refuse)
    monkeypatch.setattr(generation, "load_tokenizer", refuse)


# ---------------------------------------------------------------- grading one problem


def test_grade_problem_majority_and_no_answer():
    responses = ["so \\boxed{2}", "\\boxed{3}", "thus \\boxed{3}.", "I give up"]
    g = grade_problem(responses, "2", "math")
    assert g.answers[3] is None
    assert g.correct == [True, False, False, False]
    assert g.clusters == [0, 1, 1, -1]
    assert g.majority_correct is False  # majority "3" (2 votes) is wrong


def test_grade_problem_equivalent_answers_vote_together():
    # 1/2 and 0.5 are one answer: 3 votes for it against 2 for 1/3.
    responses = ["\\boxed{1/3}", "\\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{\\frac13}", "\\boxed{1/2}"]
    g = grade_problem(responses, "\\frac{1}{2}", "math")
    assert g.clusters == [0, 1, 1, 0, 1]
    assert g.correct == [False, True, True, False, True]
    assert g.majority_correct is True


def test_grade_problem_tie_goes_to_first_appearing_answer():
    responses = ["\\boxed{3}", "\\boxed{2}", "\\boxed{2}", "\\boxed{3}"]
    assert grade_problem(responses, "2", "math").majority_correct is False  # "3" appeared first
    assert grade_problem(responses[1:] + responses[:1], "2", "math").majority_correct is True


def test_grade_problem_multiple_choice():
    g = grade_problem(["The answer is \\boxed{B}", "\\boxed{C}", "\\boxed{B}"], "B", "choice")
    assert g.correct == [True, False, True] and g.majority_correct is True


def test_grade_problem_without_any_answer():
    g = grade_problem(["no", "idea"], "5", "math")
    assert g.clusters == [-1, -1] and g.majority_correct is False and g.correct == [False, False]


def test_grading_goes_through_the_answers_module(monkeypatch):
    calls = []
    real = answers.is_correct

    def spy(response, ground_truth, kind="math"):
        calls.append((response, ground_truth, kind))
        return real(response, ground_truth, kind)

    monkeypatch.setattr(answers, "is_correct", spy)
    grade_problem(["\\boxed{4}", "\\boxed{5}"], "4", "math")
    assert calls == [("\\boxed{4}", "4", "math"), ("\\boxed{5}", "4", "math")]


# ---------------------------------------------------------------- metrics


def test_benchmark_metrics_by_hand():
    # 2 problems, k = 4.
    #   problem 0: correct T F T T, majority correct, one sample without answer
    #   problem 1: correct F F F F, majority wrong
    graded = [
        Graded(["1", None, "1", "1"], [True, False, True, True], [0, -1, 0, 0], True),
        Graded(["7", "8", "8", "9"], [False, False, False, False], [0, 1, 1, 2], False),
    ]
    m = benchmark_metrics(graded, 4)
    assert m["pass@1"] == pytest.approx(3 / 8)
    # per-sample accuracies: (1+0)/2, 0/2, 1/2, 1/2 = .5, 0, .5, .5 -> mean .375, std (ddof=1) .25
    assert m["pass@1_std"] == pytest.approx(np.std([0.5, 0.0, 0.5, 0.5], ddof=1)) == pytest.approx(0.25)
    assert m["maj@4"] == pytest.approx(0.5)
    assert m["pass@4"] == pytest.approx(0.5)
    assert m["no_answer"] == pytest.approx(1 / 8)


def test_benchmark_metrics_single_sample():
    m = benchmark_metrics([Graded(["1"], [True], [0], True), Graded([None], [False], [-1], False)], 1)
    # with k = 1, pass@k is pass@1
    assert m == {"pass@1": 0.5, "pass@1_std": 0.0, "maj@1": 0.5, "no_answer": 0.5}


# ---------------------------------------------------------------- errors before any model loads


def test_errors_before_model_loads(tmp_path, no_model_loading):
    out = str(tmp_path / "r.json")
    with pytest.raises(SystemExit, match="model folder not found: ./missing_model"):
        evaluation.main(["--model", "./missing_model", "--benchmarks", "aime24", "--output", out])
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(SystemExit, match="no config.json"):
        evaluation.main(["--model", str(model), "--benchmarks", "aime24", "--output", out])
    (model / "model_world_size_8_rank_0.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"verl checkpoint.*python -m verl.model_merger merge --backend fsdp"):
        evaluation.main(["--model", str(model), "--benchmarks", "aime24", "--output", out])
    (model / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(SystemExit, match="is a verl checkpoint"):  # a config, but the weights are verl's shards
        evaluation.main(["--model", str(model), "--benchmarks", "aime24", "--output", out])
    (model / "model_world_size_8_rank_0.pt").unlink()
    with pytest.raises(SystemExit, match="has a config.json but no weight files"):
        evaluation.main(["--model", str(model), "--benchmarks", "aime24", "--output", out])
    (model / "model.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit, match="unknown benchmark 'aime2024'"):
        evaluation.main(["--model", str(model), "--benchmarks", "aime24,aime2024", "--output", out])
    with pytest.raises(SystemExit, match=r"no data for 'gpqa_diamond'.*prepare_data.py --benchmarks gpqa_diamond"):
        evaluation.main(["--model", str(model), "--benchmarks", "gpqa_diamond", "--output", out])
    with pytest.raises(SystemExit, match="--k must be >= 1"):
        evaluation.main(["--model", str(model), "--benchmarks", "aime24", "--k", "0", "--output", out])
    with pytest.raises(SystemExit, match="unknown engine"):
        evaluation.main(["--model", str(model), "--benchmarks", "aime24", "--engine", "tgi", "--output", out])
    with pytest.raises(SystemExit, match="--top-p must be in"):
        evaluation.main(["--model", str(model), "--benchmarks", "aime24", "--top-p", "0", "--output", out])
    with pytest.raises(SystemExit, match="--data-dir .* is not a directory"):
        evaluation.main(["--model", str(model), "--data-dir", str(tmp_path / "x"), "--output", out])
    assert not Path(out).exists()


def test_bad_key_value_is_a_usage_error(tmp_path, capsys, no_model_loading):
    with pytest.raises(SystemExit) as exit_info:
        evaluation.main(["--model", "org/m", "--output", str(tmp_path / "r.json"), "--engine-kwarg", "x"])
    assert exit_info.value.code == 2
    assert "expected KEY=VALUE or a JSON object, got 'x'" in capsys.readouterr().err


def test_markdown_output_name_is_rejected(tmp_path, no_model_loading):
    """The table goes to <output>.md: an --output ending in .md would be overwritten by it."""
    for name in ("r.md", "r.MD"):
        with pytest.raises(SystemExit, match=r"--output .*r\.(md|MD) ends in \.md"):
            evaluation.main(["--model", "Qwen/Qwen3-4B-Base", "--benchmarks", "aime24", "--output", str(tmp_path / name)])
    assert not list(tmp_path.iterdir())


def test_missing_vllm_is_a_clean_error(tmp_path, tiny_model, monkeypatch, no_model_loading):
    monkeypatch.setattr(generation, "_vllm_importable", lambda: False)
    with pytest.raises(SystemExit, match=r'vLLM is not installed.*pip install -e "\.\[vllm\]"'):
        evaluation.main(["--model", str(tiny_model), "--benchmarks", "aime24", "--engine", "vllm",
                         "--output", str(tmp_path / "r.json")])


def make_verl_checkpoint(root: Path, step: int, *, hf_weights: bool = False) -> Path:
    """verl 0.9.1's FSDP checkpoint layout: global_step_N/actor/{shards, fsdp_config.json, huggingface/}."""
    actor = root / f"global_step_{step}" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    (actor / "model_world_size_2_rank_0.pt").write_bytes(b"")
    (actor / "model_world_size_2_rank_1.pt").write_bytes(b"")
    (actor / "fsdp_config.json").write_text("{}", encoding="utf-8")
    (actor / "huggingface" / "config.json").write_text("{}", encoding="utf-8")
    (actor / "huggingface" / "tokenizer.json").write_text("{}", encoding="utf-8")
    if hf_weights:
        (actor / "huggingface" / "model.safetensors").write_bytes(b"")
    return actor


@pytest.mark.parametrize("where", ["root", "global_step", "actor", "actor/huggingface"])
def test_verl_checkpoints_get_the_merge_command(tmp_path, where):
    root = tmp_path / "checkpoints"
    make_verl_checkpoint(root, 10)
    actor = make_verl_checkpoint(root, 20)
    (root / "latest_checkpointed_iteration.txt").write_text("20", encoding="utf-8")
    model = {"root": root, "global_step": actor.parent, "actor": actor, "actor/huggingface": actor / "huggingface"}
    expected = f"python -m verl.model_merger merge --backend fsdp --local_dir {actor} --target_dir <hf_dir>"
    with pytest.raises(ValueError, match="is a verl checkpoint") as error:
        generation.check_model(str(model[where]))
    assert expected in str(error.value)


def test_verl_checkpoint_with_saved_hf_weights(tmp_path):
    actor = make_verl_checkpoint(tmp_path, 5, hf_weights=True)
    generation.check_model(str(actor / "huggingface"))  # a complete Hugging Face folder
    with pytest.raises(ValueError, match=f"or pass --model {actor / 'huggingface'}, which holds the full weights"):
        generation.check_model(str(actor.parent))


def test_hub_ids_are_accepted_without_a_local_folder():
    generation.check_model("Qwen/Qwen3-4B-Base")
    with pytest.raises(FileNotFoundError):
        generation.check_model("/no/such/dir")


# ---------------------------------------------------------------- end to end with a scripted sampler


class ScriptedSampler:
    """Answers each prompt with a fixed list of responses (keyed by a phrase of the question)."""

    tokenizer = None

    def __init__(self, script: dict[str, list[str]]):
        self.script = script
        self.calls = []

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed):
        self.calls.append((len(prompts), n, seed))
        out = []
        for prompt in prompts:
            (responses,) = [r for key, r in self.script.items() if key in prompt]
            assert len(responses) == n
            out.append(list(responses))
        return out


def test_scripted_run_gives_exact_metrics(tmp_path, tiny_model, monkeypatch):
    data = tmp_path / "data"
    math_rows = [
        make_row(Problem("What is 1+1?", "2", "a"), data_source="toy_math", ability="math", split="test", index=0),
        make_row(Problem("What is 2+3?", "5", "b"), data_source="toy_math", ability="math", split="test", index=1),
    ]
    write_rows(math_rows, data / "toy_math.parquet")
    choice = Problem("Which is prime?", "C", "c", options=("4", "6", "7", "8"))
    write_rows([make_row(choice, data_source="toy_choice", ability="stem", split="test", index=0)],
               data / "toy_choice.parquet")
    sampler = ScriptedSampler(
        {
            "1+1": ["\\boxed{2}", "\\boxed{2}", "\\boxed{3}", "none"],  # 2/4 correct, maj correct
            "2+3": ["\\boxed{6}", "\\boxed{5}", "\\boxed{6}", "\\boxed{6}"],  # 1/4, maj wrong
            "prime": ["\\boxed{C}", "\\boxed{C}", "\\boxed{C}", "\\boxed{A}"],  # 3/4, maj correct
        }
    )
    monkeypatch.setattr(generation, "load_sampler", lambda *a, **k: sampler)
    out = tmp_path / "res" / "run.json"
    evaluation.main(
        ["--model", str(tiny_model), "--benchmarks", "toy_math,toy_choice", "--data-dir", str(data), "--k", "4",
         "--engine", "hf", "--output", str(out), "--label", "restrain", "--batch-size", "1", "--no-progress",
         "--samples-output", str(tmp_path / "samples.jsonl")]
    )
    result = json.loads(out.read_text(encoding="utf-8"))
    toy = result["benchmarks"]["toy_math"]
    assert toy["pass@1"] == pytest.approx(3 / 8)
    # per-sample accuracy over the two problems: sample 0 (T, F), 1 (T, T), 2 (F, F), 3 (F, F)
    assert toy["pass@1_std"] == pytest.approx(np.std([0.5, 1.0, 0, 0], ddof=1))
    assert (toy["maj@4"], toy["pass@4"], toy["no_answer"]) == (0.5, 1.0, 1 / 8)
    assert toy["num_problems"] == 2 and toy["kind"] == "math"
    mc = result["benchmarks"]["toy_choice"]
    assert (mc["pass@1"], mc["maj@4"], mc["pass@4"], mc["kind"]) == (0.75, 1.0, 1.0, "choice")
    # batch size 1: one call per problem, each with its own seed
    assert [c[:2] for c in sampler.calls] == [(1, 4)] * 3 and len({c[2] for c in sampler.calls}) == 3
    assert result["format"] == evaluation.RESULT_FORMAT and result["label"] == "restrain"
    report = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "| toy_math | 2 | 37.5 ± 47.9 | 50.0 | 100.0 | 12.5 |" in report
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["correct"] for s in samples][0] == [True, True, False, False]


def write_choice_set(data: Path, data_source: str) -> None:
    """One multiple-choice problem (gold C) under a data_source the package does not know."""
    choice = Problem("Which is prime?", "C", "c", options=("4", "6", "7", "8"))
    write_rows([make_row(choice, data_source=data_source, ability="stem", split="test", index=0)],
               data / f"{data_source}.parquet")


def test_an_unlisted_choice_set_is_graded_as_choice_and_an_explicit_map_wins(tmp_path, tiny_model, monkeypatch):
    """extra_info.kind = choice decides for an unknown data_source; --answer-kind-map overrides it."""
    data = tmp_path / "data"
    write_choice_set(data, "my_mc")
    # "Final: C" names option C; read as math it holds no final answer at all.
    sampler = ScriptedSampler({"prime": ["Final: C", "Final: C"]})
    monkeypatch.setattr(generation, "load_sampler", lambda *a, **k: sampler)
    args = ["--model", str(tiny_model), "--benchmarks", "my_mc", "--data-dir", str(data), "--k", "2",
            "--engine", "hf", "--no-progress"]
    evaluation.main([*args, "--output", str(tmp_path / "a.json")])
    evaluation.main([*args, "--output", str(tmp_path / "b.json"), "--answer-kind-map", "my_mc=math"])
    by_row = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))["benchmarks"]["my_mc"]
    mapped = json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))
    assert (by_row["kind"], by_row["pass@1"]) == ("choice", 1.0)
    assert (mapped["benchmarks"]["my_mc"]["kind"], mapped["benchmarks"]["my_mc"]["pass@1"]) == ("math", 0.0)
    assert mapped["settings"]["answer_kind_map"] == {"my_mc": "math"}


def test_row_kind_is_the_one_rule_with_the_benchmark_as_default():
    config = evaluation.EvalConfig(model="org/m", output="r.json", answer_kind_map={"aime24": "choice"})
    assert evaluation.row_kind({"data_source": "gpqa_diamond"}, "gpqa_diamond", config) == "choice"
    assert evaluation.row_kind({"data_source": "aime24", "extra_info": {"kind": "math"}}, "aime24", config) == "choice"
    assert evaluation.row_kind({"data_source": "x", "extra_info": {"kind": "choice"}}, "x", config) == "choice"
    assert evaluation.row_kind({"data_source": "x"}, "x", config) == "math"
    other = evaluation.EvalConfig(model="org/m", output="r.json", default_answer_kind="choice")
    assert evaluation.row_kind({"data_source": "x"}, "x", other) == "choice"
    assert evaluation.row_kind({"data_source": "math500"}, "math500", other) == "math", "a known benchmark keeps its kind"


def test_unwritable_output_is_an_error_before_any_model_loads(tmp_path, no_model_loading):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"evaluate: --output: cannot write .*file/r.json: cannot create its folder"):
        evaluation.main(["--model", "org/m", "--benchmarks", "aime24", "--output", str(tmp_path / "file" / "r.json")])
    with pytest.raises(SystemExit, match="evaluate: --samples-output: cannot write .*: it is a folder"):
        evaluation.main(["--model", "org/m", "--benchmarks", "aime24", "--output", str(tmp_path / "r.json"),
                         "--samples-output", str(tmp_path)])


def test_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, tiny_model, monkeypatch):
    import errno

    from verl_restrain.jobs import files

    data = tmp_path / "data"
    write_choice_set(data, "my_mc")
    monkeypatch.setattr(generation, "load_sampler", lambda *a, **k: ScriptedSampler({"prime": ["\\boxed{C}"]}))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    out = tmp_path / "res" / "run.json"
    with pytest.raises(SystemExit) as exit_info:
        evaluation.main(["--model", str(tiny_model), "--benchmarks", "my_mc", "--data-dir", str(data), "--k", "1",
                         "--engine", "hf", "--no-progress", "--output", str(out)])
    message = str(exit_info.value)
    assert message == f"evaluate: cannot write {out.with_suffix('.md')}: no space left on device; make room (or fix " \
        "the folder) and rerun the same command"
    assert list(out.parent.iterdir()) == []


# ---------------------------------------------------------------- tiny random model on CPU


def test_tiny_model_run_is_deterministic_and_consistent(tmp_path, tiny_model):
    args = ["--model", str(tiny_model), "--benchmarks", "amc23", "--k", "4", "--max-problems", "2",
            "--max-new-tokens", "10", "--engine", "hf", "--temperature", "1.0", "--top-p", "1.0", "--seed", "3",
            "--no-progress"]
    assert evaluation.main(args + ["--output", str(tmp_path / "a.json"), "--samples-output", str(tmp_path / "s.jsonl")]) == 0
    assert evaluation.main(args + ["--output", str(tmp_path / "b.json")]) == 0
    first, second = (json.loads((tmp_path / f"{n}.json").read_text(encoding="utf-8")) for n in "ab")
    assert first["benchmarks"] == second["benchmarks"]
    assert first["engine"] == "hf" and first["settings"]["k"] == 4
    samples = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(len(s["responses"]) == 4 for s in samples)
    m = first["benchmarks"]["amc23"]
    assert m["num_problems"] == 2 and m["source"] == "bundled:amc23.jsonl"
    regraded = [grade_problem(s["responses"], s["gold"], "math") for s in samples]
    assert benchmark_metrics(regraded, 4) == {k: m[k] for k in ("pass@1", "pass@1_std", "maj@4", "pass@4", "no_answer")}
    assert m["no_answer"] == pytest.approx(np.mean([a is None for s in samples for a in s["answers"]]))
