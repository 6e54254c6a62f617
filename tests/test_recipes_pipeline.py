"""The README's path from an empty directory to the tables, at toy scale on CPU.

prepare_data (local fixture files) -> offline scoring with a tiny random model -> the RESTRAIN
recipe in dry-run mode (it finds the scored file, skips scoring, and its command composes and
passes verl's and this package's startup checks on the real file) -> evaluation with the tiny
model -> make_tables on the result JSONs. Only the GPU training step itself is not run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from test_recipes import compose_recipe, dry_run, scoring_commands, training_command

from verl_restrain import defaults

from verl_restrain.jobs import evaluation
from verl_restrain.jobs.scoring.cli import main as score_main

ROOT = Path(__file__).resolve().parents[1]
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)


def run_script(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True, timeout=300,
        check=False, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def write_fixtures(local: Path) -> None:
    local.mkdir()
    dapo = [
        {"prompt": [{"role": "user", "content": DAPO_PREFIX + f"What is {i} + {i}?"}],
         "reward_model": {"ground_truth": str(2 * i)}}
        for i in (1, 2, 3, 1)  # the last one repeats the first: dropped by the dedup
    ]
    pd.DataFrame(dapo).to_parquet(local / "dapo_math_14k.parquet")
    gpqa = [
        {"Question": f"Which value is {i}?", "Correct Answer": str(i), "Incorrect Answer 1": "x",
         "Incorrect Answer 2": "y", "Incorrect Answer 3": "z", "Record ID": f"r{i}"}
        for i in range(3)
    ]
    pd.DataFrame(gpqa).to_csv(local / "gpqa_diamond.csv", index=False)


def test_readme_pipeline_at_toy_scale(tmp_path):
    from tiny_lm import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "models" / "tiny-base", seed=0)
    local, data = tmp_path / "local", tmp_path / "data"
    write_fixtures(local)

    # 1. data
    out = run_script("prepare_data.py", "--benchmarks", "dapo_math_14k,aime24,gpqa_diamond",
                     "--local-dir", str(local), "--output-dir", str(data))
    assert "dapo_math_14k" in out
    assert pq.read_metadata(data / "dapo_math_14k.parquet").num_rows == 3

    # 2. offline scoring into the file the recipe looks for
    scored = data / "dapo_math_14k.scored.tiny-base.parquet"
    assert score_main(["--input", str(data / "dapo_math_14k.parquet"), "--output", str(scored),
                       "--model", str(model), "--engine", "hf", "--n", "4", "--max-new-tokens", "8", "--quiet"]) == 0
    # the vote counts training derives u_x from, with the run's own sigma; no baked-in u_x column
    names = pq.read_schema(scored).names
    assert {defaults.REF_MAJORITY_COUNT_COLUMN, defaults.REF_NUM_SAMPLES_COLUMN} <= set(names)
    assert defaults.PROMPT_WEIGHT_COLUMN not in names

    # 3. the recipe (dry run): scoring is skipped, the scored file is trained on, and the command
    #    passes verl's validate_config and validate_training_config (which reads the real file).
    env = {"DATA_DIR": str(data), "MODEL_PATH": str(model)}
    commands = dry_run(ROOT / "recipes" / "qwen3_4b_base" / "restrain.sh", tmp_path, **env)
    assert scoring_commands(commands) == []
    config = compose_recipe(training_command(commands))
    assert list(config.data.train_files) == [str(scored)]

    # 4. evaluation of two "runs" (the tiny model under two labels and seeds)
    results = tmp_path / "results"
    for label, seed in (("restrain", "0"), ("ttrl", "1")):
        evaluation.main(["--model", str(model), "--benchmarks", "aime24,gpqa_diamond", "--data-dir", str(data),
                         "--k", "2", "--max-problems", "2", "--max-new-tokens", "8", "--engine", "hf",
                         "--seed", seed, "--label", label, "--output", str(results / f"{label}.json"),
                         "--no-progress"])
    saved = json.loads((results / "restrain.json").read_text(encoding="utf-8"))
    assert set(saved["benchmarks"]) == {"aime24", "gpqa_diamond"}
    assert saved["benchmarks"]["gpqa_diamond"]["kind"] == "choice"

    # 5. tables
    text = run_script("make_tables.py", str(results / "restrain.json"), str(results / "ttrl.json"),
                      "--output", str(tmp_path / "tables.md"))
    assert "| RESTRAIN | ours |" in text and "| TTRL | ours |" in text
    assert (tmp_path / "tables.md").read_text(encoding="utf-8") in text + "\n"
