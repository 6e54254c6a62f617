"""End-to-end smoke test: two RESTRAIN training steps through verl on one GPU (recipes/smoke.sh).

``test_two_restrain_steps_on_one_gpu`` needs a CUDA GPU, vLLM and a small model named by
``RESTRAIN_SMOKE_MODEL`` (a local path or a cached hub id, e.g. Qwen/Qwen2.5-0.5B-Instruct); it is
skipped, with the missing piece as the reason, otherwise. On CPU, the smoke command itself is
checked: printed with DRY_RUN=1, composed against the Hydra config and passed through verl's own
driver-side config validation and the RESTRAIN startup checks.
"""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.sh"
MODEL_ENV = "RESTRAIN_SMOKE_MODEL"


def _smoke_environment(tmp_path, **extra):
    """The smoke script's environment: this interpreter, outputs under ``tmp_path``."""
    return dict(os.environ, SMOKE_DIR=str(tmp_path), PYTHON=sys.executable, **extra)


def _training_command(printed: str) -> list[str]:
    for line in printed.splitlines():
        words = shlex.split(line)
        if "verl.trainer.main_ppo" in words:
            return words
    raise AssertionError(f"no main_ppo command in:\n{printed}")


def test_the_smoke_command_passes_verls_config_checks(tmp_path):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from verl_restrain.adapters.checks import validate_training_config

    result = subprocess.run(
        ["bash", str(SMOKE), "trainer.test_freq=1"],
        env=_smoke_environment(tmp_path, DRY_RUN="1", **{MODEL_ENV: "Qwen/Qwen2.5-0.5B-Instruct"}),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    words = _training_command(result.stdout)
    config_dir = words[words.index("--config-path") + 1]
    overrides = words[words.index("--config-name") + 2:]
    assert words[words.index("--config-name") + 1] == "restrain_trainer"
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose("restrain_trainer", overrides=overrides)
    assert config.trainer.total_training_steps == 2 and config.trainer.test_freq == 1
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    restrain = validate_training_config(config)
    assert restrain.use_prompt_weight and restrain.kappa == 2 <= config.actor_rollout_ref.rollout.n


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if importlib.util.find_spec("vllm") is None:
        return 'needs vLLM: pip install -e ".[vllm]"'
    if not os.environ.get(MODEL_ENV):
        return f"set {MODEL_ENV} to a small causal LM (local path or cached hub id) to run it"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_two_restrain_steps_on_one_gpu(tmp_path):
    result = subprocess.run(
        ["bash", str(SMOKE)], env=_smoke_environment(tmp_path), capture_output=True, text=True, timeout=3600
    )
    assert result.returncode == 0, (result.stdout[-5000:], result.stderr[-5000:])
    log = tmp_path / "logs" / "restrain_smoke" / "smoke.jsonl"
    steps = {record["step"]: record["data"] for record in map(json.loads, log.read_text().splitlines())}
    assert {1, 2} <= set(steps)
    for step in (1, 2):
        metrics = steps[step]
        for name in ("majority_ratio", "penalized_fraction", "num_clusters", "no_answer_fraction",
                     "pseudo_label_entropy", "prompt_weight_mean", "gold_accuracy"):
            assert f"restrain/{name}" in metrics, (step, name)
        assert "actor/pg_loss" in metrics and "critic/advantages/mean" in metrics
    # validation at the last step (test_freq = 2) reports accuracy from the reward manager's acc
    assert any(name.startswith("val-core/math500/acc/") for name in steps[2])
