"""Every job's command line: ``python -m`` runs it, and the generated options keep their old spellings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from verl_restrain.jobs.arguments import build_parser, config_from_args, parse_mapping

ROOT = Path(__file__).resolve().parents[1]

CLI_MODULES = [
    ("verl_restrain.jobs.scoring", "restrain-score-prompts"),
    ("verl_restrain.jobs.scoring.cli", "restrain-score-prompts"),
    ("verl_restrain.jobs.evaluation", "Pass@1"),
    ("verl_restrain.jobs.tables", "ablation tables"),
    ("verl_restrain.data.prepare", "verl-format parquet"),
    ("verl_restrain.sandbox", "--sweep"),
    ("verl_restrain.sandbox.cli", "--sweep"),
]


def python_m(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("module, text", CLI_MODULES)
def test_python_m_runs_the_command_line(module, text):
    """--help prints the parser's help (so main ran) and an unknown option is a usage error (exit 2)."""
    shown = python_m(module, "--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage:") and text in shown.stdout
    refused = python_m(module, "--no-such-option")
    assert refused.returncode == 2
    assert refused.stderr.startswith("usage:") and "error:" in refused.stderr and "Traceback" not in refused.stderr


@dataclass(kw_only=True)
class Toy:
    path: str = field(metadata={"help": "a required path", "group": "files"})
    count: int = field(default=3, metadata={"help": "how many"})
    ratio: float | None = field(default=None, metadata={"help": "optional"})
    names: list[str] = field(default_factory=lambda: ["a", "b"], metadata={"help": "comma-separated"})
    extra: dict = field(default_factory=dict, metadata={"help": "mapping", "flags": ("--extra-kwarg",)})
    strict: bool = field(default=False, metadata={"help": "a switch"})
    resume: bool = field(default=True, metadata={"help": "on by default", "negative_flags": ("--fresh",)})


def parse(*argv: str) -> Toy:
    parser = build_parser(Toy, prog="toy")
    return config_from_args(Toy, parser.parse_args(list(argv)))


def test_generated_options_take_defaults_from_the_dataclass():
    assert parse("--path", "p") == Toy(path="p")
    toy = parse(
        "--path", "p", "--count", "5", "--ratio", "0.5", "--names", "x, y,x", "--extra", '{"a": 1}',
        "--extra-kwarg", "b=false", "--extra", "c=text", "--strict", "--no-resume",
    )  # fmt: skip
    assert toy == Toy(path="p", count=5, ratio=0.5, names=["x", "y"], extra={"a": 1, "b": False, "c": "text"},
                      strict=True, resume=False)  # fmt: skip
    assert parse("--path", "p", "--fresh").resume is False
    assert parse("--path", "p", "--resume").resume is True


def test_generated_help_and_errors(capsys):
    parser = build_parser(Toy, prog="toy")
    text = parser.format_help()
    assert "files:" in text and "a required path" in text and "how many (default: 3)" in text
    assert "comma-separated (default: a,b)" in text and "--extra EXTRA, --extra-kwarg EXTRA" in text
    for argv, message in (
        ([], "the following arguments are required: --path"),
        (["--path", "p", "--count", "x"], "invalid int value: 'x'"),
        (["--path", "p", "--extra", "novalue"], "expected KEY=VALUE or a JSON object, got 'novalue'"),
        (["--path", "p", "--extra", "[1]"], "expected KEY=VALUE or a JSON object"),
        (["--path", "p", "--extra", "{bad json"], "not a valid JSON object"),
        (["--path", "p", "--resume", "--no-resume"], "not allowed with argument"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_parse_mapping():
    assert parse_mapping("enable_thinking=false") == {"enable_thinking": False}
    assert parse_mapping("tensor_parallel_size=2") == {"tensor_parallel_size": 2}
    assert parse_mapping("dtype=bfloat16") == {"dtype": "bfloat16"}
    assert parse_mapping("aime24=choice") == {"aime24": "choice"}
    assert parse_mapping('{"dtype": "float32", "n": 1}') == {"dtype": "float32", "n": 1}
    assert parse_mapping("key=a=b") == {"key": "a=b"}


def test_scoring_keeps_its_flag_spellings():
    from verl_restrain.jobs.scoring import ScoringConfig
    from verl_restrain.jobs.scoring.cli import build_parser as scoring_parser

    argv = [
        "--input", "in.parquet", "--output", "out.parquet", "--model", "org/model", "--engine", "hf", "--n", "4",
        "--temperature", "0.7", "--top-p", "0.9", "--max-new-tokens", "12", "--seed", "1", "--batch-size", "2",
        "--engine-kwargs", '{"dtype": "float32"}', "--apply-chat-template-kwargs", '{"enable_thinking": false}',
        "--answer-kind-map", "aime24=choice", "--answer-kind-map", "mine=math", "--default-answer-kind", "choice",
        "--samples-output", "s.parquet", "--work-dir", "w", "--prompt-key", "chat", "--no-resume", "--keep-parts",
        "--num-shards", "2", "--shard-index", "1", "--trust-remote-code", "--quiet",
    ]  # fmt: skip
    config = config_from_args(ScoringConfig, scoring_parser().parse_args(argv))
    assert config == ScoringConfig(
        input="in.parquet", output="out.parquet", model="org/model", engine="hf", n=4, temperature=0.7, top_p=0.9,
        max_new_tokens=12, seed=1, batch_size=2, engine_kwargs={"dtype": "float32"},
        apply_chat_template_kwargs={"enable_thinking": False}, answer_kind_map={"aime24": "choice", "mine": "math"},
        default_answer_kind="choice", samples_output="s.parquet", work_dir="w", prompt_key="chat", resume=False,
        keep_parts=True, num_shards=2, shard_index=1, trust_remote_code=True, progress=False,
    )  # fmt: skip
    defaults = config_from_args(ScoringConfig, scoring_parser().parse_args(argv[:6]))
    assert defaults == ScoringConfig(input="in.parquet", output="out.parquet", model="org/model")
    assert (defaults.n, defaults.temperature, defaults.max_new_tokens, defaults.seed) == (16, 1.0, 4096, 42)


def test_scoring_explains_the_removed_answer_kind_flag(capsys):
    from verl_restrain.jobs.scoring.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--input", "i", "--output", "o", "--model", "org/m", "--answer-kind", "choice"])
    assert exit_info.value.code == 2
    assert "--answer-kind was removed: --default-answer-kind KIND" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--input", "i", "--output", "o", "--model", "org/m", "--sigma", "0.4"])
    assert "unrecognized arguments: --sigma 0.4" in capsys.readouterr().err


def test_evaluation_keeps_its_flag_spellings():
    from verl_restrain.jobs.evaluation import EvalConfig, build_parser as evaluation_parser

    argv = [
        "--model", "org/model", "--benchmarks", "aime24,math500,aime24", "--data-dir", ".", "--output", "r.json",
        "--label", "restrain", "--k", "4", "--engine", "hf", "--temperature", "0.5", "--top-p", "0.9",
        "--max-new-tokens", "7", "--seed", "3", "--batch-size", "2", "--max-problems", "5",
        "--samples-output", "s.jsonl", "--chat-template-kwarg", "enable_thinking=false",
        "--engine-kwarg", "tensor_parallel_size=2", "--engine-kwarg", "dtype=float32", "--trust-remote-code",
        "--no-progress",
    ]  # fmt: skip
    config = config_from_args(EvalConfig, evaluation_parser().parse_args(argv))
    assert config == EvalConfig(
        model="org/model", benchmarks=["aime24", "math500"], data_dir=".", output="r.json", label="restrain", k=4,
        engine="hf", temperature=0.5, top_p=0.9, max_new_tokens=7, seed=3, batch_size=2, max_problems=5,
        samples_output="s.jsonl", apply_chat_template_kwargs={"enable_thinking": False},
        engine_kwargs={"tensor_parallel_size": 2, "dtype": "float32"}, trust_remote_code=True, progress=False,
    )  # fmt: skip
    defaults = config_from_args(EvalConfig, evaluation_parser().parse_args(["--model", "m/x", "--output", "r.json"]))
    assert defaults.benchmarks == ["math500", "aime24", "aime25", "amc23", "gpqa_diamond", "mmlu_stem"]
    assert (defaults.k, defaults.temperature, defaults.top_p, defaults.max_new_tokens, defaults.seed) == (
        16, 0.6, 0.95, 8192, 0
    )  # fmt: skip


def test_tables_json_error_names_the_file(tmp_path):
    from verl_restrain.jobs import tables

    bad = tmp_path / "restrain.json"
    bad.write_text('{"benchmarks": ', encoding="utf-8")
    with pytest.raises(SystemExit, match=f"make_tables: {bad} is not valid JSON"):
        tables.main([str(bad)])
    with pytest.raises(SystemExit, match="make_tables: cannot write .*: it is a folder|make_tables: .*Is a directory"):
        good = tmp_path / "good.json"
        good.write_text(json.dumps({"benchmarks": {"aime24": {"pass@1": 0.5}}, "label": "x"}), encoding="utf-8")
        tables.main([str(good), "--output", str(tmp_path)])
