"""Every recipe, run with DRY_RUN=1, prints a command whose overrides compose against verl's config.

The printed training command is split back into its Hydra overrides and composed with Hydra's
compose API against the config it names (``restrain_trainer``: verl's ``ppo_trainer`` plus this
package's keys; or verl's own ``ppo_trainer`` for GRPO with gold labels). Then the checks verl's
``main_ppo`` runs before it starts Ray (``validate_config``) run on it, and every config node with a
``_target_`` dataclass is converted to that dataclass, so a misspelled key, a wrong type or an
inconsistent batch size fails here rather than on a GPU cluster.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
HELPERS = {"common.sh", "smoke.sh", "testtime.sh", "sweep.sh"}
# rest_em.sh fine-tunes with verl's SFT trainer, not main_ppo: tests/test_rest_em_recipe.py composes it.
EXPERIMENTS = sorted(p for p in RECIPES.rglob("*.sh") if p.name not in HELPERS and p.stem != "rest_em")
VERL_CONFIG_DIR = Path(__import__("verl").__file__).parent / "trainer" / "config"


def dry_run(script: Path, tmp_path: Path, *args: str, **env: str) -> list[list[str]]:
    """Run ``script`` with DRY_RUN=1; return its printed commands, each split into arguments."""
    environment = {
        **os.environ,
        "DRY_RUN": "1",
        "HOME": str(tmp_path),
        "PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **env,
    }
    for name in ("MODEL_PATH", "EXPERIMENT", "TRAIN_FILE", "VAL_FILES", "DATA_DIR", "SIGMA", "KAPPA", "DELTA"):
        if name not in env:
            environment.pop(name, None)
    proc = subprocess.run(
        ["bash", str(script), *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stderr}"
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def training_command(commands: list[list[str]]) -> list[str]:
    (train,) = [c for c in commands if "verl.trainer.main_ppo" in c]
    return train


def scoring_commands(commands: list[list[str]]) -> list[list[str]]:
    return [c for c in commands if c[0] == "restrain-score-prompts"]


def split_hydra(command: list[str]) -> tuple[Path, str, list[str]]:
    """Config folder, config name and overrides of a ``python -m verl.trainer.main_ppo`` command."""
    args = command[command.index("verl.trainer.main_ppo") + 1 :]
    config_dir, config_name, overrides = VERL_CONFIG_DIR, "ppo_trainer", []
    i = 0
    while i < len(args):
        if args[i] == "--config-path":
            config_dir, i = Path(args[i + 1]), i + 2
        elif args[i] == "--config-name":
            config_name, i = args[i + 1], i + 2
        else:
            overrides.append(args[i])
            i += 1
    return config_dir, config_name, overrides


def compose(config_dir: Path, config_name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides)


def value_matches(value, annotation) -> bool:
    """Whether a config value fits a dataclass field annotation (plain types checked, the rest accepted)."""
    import dataclasses
    import types
    import typing

    from omegaconf import DictConfig, ListConfig

    origin = typing.get_origin(annotation)
    if annotation is typing.Any or isinstance(annotation, (str, typing.TypeVar)):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(value_matches(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple) or annotation in (list, tuple):
        return isinstance(value, (ListConfig, list, tuple))
    if origin is dict or annotation is dict or (isinstance(annotation, type) and dataclasses.is_dataclass(annotation)):
        return isinstance(value, (DictConfig, dict)) or value is None
    return True


def typed_check(config, keys: set[str]) -> None:
    """Each of ``keys`` (dotted paths) that is a field of a ``_target_`` dataclass node must fit its type.

    Only the recipe's own overrides are checked: verl's defaults do not always match its annotations
    (e.g. ``None`` for ``int`` fields).
    """
    import dataclasses
    import typing

    from hydra.utils import get_class
    from omegaconf import DictConfig, OmegaConf

    problems = []

    def walk(node, path):
        if not isinstance(node, DictConfig):
            return
        target = node.get("_target_")
        cls = get_class(target) if isinstance(target, str) and target else None
        hints = {}
        if cls is not None and dataclasses.is_dataclass(cls):
            hints = typing.get_type_hints(cls)
        for key in node:
            if OmegaConf.is_missing(node, key):  # "???" fields nobody needs (e.g. a disabled reward model)
                continue
            value = node[key]
            full = f"{path}.{key}" if path else str(key)
            if full in keys and key in hints and not value_matches(value, hints[key]):
                problems.append(f"{full}={value!r} is not {hints[key]}")
            walk(value, full)

    walk(config, "")
    assert not problems, "wrong types: " + "; ".join(problems)


def check_like_main_ppo(config, overrides: list[str]) -> None:
    """The overrides' types, then what verl's main_ppo checks before it starts Ray."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    OmegaConf.resolve(config)
    typed_check(config, {o.split("=", 1)[0].lstrip("+~") for o in overrides})
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    if config.algorithm.adv_estimator == "restrain":
        from verl_restrain.adapters.checks import validate_training_config

        validate_training_config(config)


def compose_recipe(command: list[str]):
    config_dir, config_name, overrides = split_hydra(command)
    config = compose(config_dir, config_name, overrides)
    check_like_main_ppo(config, overrides)
    return config


# ---------------------------------------------------------------- every experiment script


@pytest.mark.parametrize("script", EXPERIMENTS, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_composes(script, tmp_path):
    commands = dry_run(script, tmp_path)
    train = training_command(commands)
    config = compose_recipe(train)
    # ETTRL's trees have 5 leaves: 3 trees keep the others' budget of 16 rollouts
    assert config.actor_rollout_ref.rollout.n == (15 if script.stem == "ettrl" else 16)
    benchmark = "_aime24" if script.parent.name.startswith("testtime_") else ""  # test-time default benchmark
    assert config.trainer.experiment_name == f"{script.parent.name}{benchmark}_{script.stem}"
    method = script.stem
    if method == "grpo_gold":
        assert config.algorithm.adv_estimator == "grpo"
        assert Path(config.reward.custom_reward_function.path).name == "reward_score.py"
        assert scoring_commands(commands) == []
        return
    from verl_restrain.methods import METHODS

    preset = METHODS[method]
    assert config.algorithm.adv_estimator == "restrain"
    assert config.reward.reward_manager.name == "restrain"
    restrain = config.algorithm.restrain
    assert restrain.weighting == preset.weighting
    assert bool(restrain.use_prompt_weight) == preset.use_prompt_weight
    assert restrain.label_mode == preset.label_mode
    assert restrain.prompt_weight_source == preset.prompt_weight_source
    assert restrain.advantage_reshaping == preset.advantage_reshaping
    if preset.agent_loop is not None:
        assert config.actor_rollout_ref.rollout.agent.default_agent_loop == preset.agent_loop
    train_files = list(config.data.train_files)
    scoring = scoring_commands(commands)
    offline_weight = preset.use_prompt_weight and preset.prompt_weight_source == "offline"
    if offline_weight or preset.label_mode == "offline":
        (score,) = scoring
        assert score[score.index("--output") + 1] == train_files[0]
        assert score[score.index("--model") + 1] == config.actor_rollout_ref.model.path
        assert score[score.index("--n") + 1] == "16"
    else:
        assert scoring == []


def test_all_methods_have_a_qwen3_recipe():
    names = {p.stem for p in (RECIPES / "qwen3_4b_base").glob("*.sh")}
    assert names == {
        "restrain", "ttrl", "srt_offline", "grpo_gold",
        "no_pseudo_label_weighting", "uniform_weighting", "no_negative_penalization", "no_prompt_weighting",
        "online_prompt_weight", "rest_em",
    }
    assert {p.stem for p in (RECIPES / "octothinker_8b_base").glob("*.sh")} == {"restrain", "ttrl", "grpo_gold"}
    assert {p.stem for p in (RECIPES / "testtime_llama31_8b_instruct").glob("*.sh")} == {
        "restrain", "ttrl", "ettrl", "ettrl_ear_only", "testtime"
    }


def test_ttrl_vote_train_split_from_the_environment(tmp_path):
    script = RECIPES / "qwen3_4b_base" / "ttrl.sh"
    config = compose_recipe(training_command(dry_run(script, tmp_path, ROLLOUT_N="64", TRAIN_ROLLOUTS="32")))
    assert (config.actor_rollout_ref.rollout.n, config.algorithm.restrain.train_rollouts) == (64, 32)
    assert compose_recipe(training_command(dry_run(script, tmp_path))).algorithm.restrain.train_rollouts is None


# ---------------------------------------------------------------- behaviour of the shared functions


def test_scoring_is_skipped_when_its_output_exists(tmp_path):
    data = tmp_path / "data"
    env = {"DATA_DIR": str(data), "MODEL_PATH": "Qwen/Qwen3-4B-Base"}
    script = RECIPES / "qwen3_4b_base" / "restrain.sh"
    scored = data / "dapo_math_14k.scored.Qwen3-4B-Base.parquet"
    first = dry_run(script, tmp_path, **env)
    assert scoring_commands(first)[0][scoring_commands(first)[0].index("--output") + 1] == str(scored)
    data.mkdir()
    scored.write_bytes(b"")
    second = dry_run(script, tmp_path, **env)
    assert scoring_commands(second) == []
    assert f"data.train_files=['{scored}']" in training_command(second)


def test_extra_arguments_are_forwarded_and_env_overrides_defaults(tmp_path):
    script = RECIPES / "octothinker_8b_base" / "ttrl.sh"
    train = training_command(dry_run(script, tmp_path, "trainer.total_epochs=1", N_GPUS_PER_NODE="4", ROLLOUT_TP="4"))
    assert train[-1] == "trainer.total_epochs=1"
    config = compose_recipe(train)
    assert config.trainer.total_epochs == 1 and config.trainer.n_gpus_per_node == 4
    assert config.actor_rollout_ref.rollout.tensor_model_parallel_size == 4
    assert config.actor_rollout_ref.model.path == "OctoThinker/OctoThinker-8B-Hybrid-Base"


def test_misspelled_key_and_wrong_type_fail(tmp_path):
    from hydra.errors import ConfigCompositionException

    script = RECIPES / "qwen3_4b_base" / "ttrl.sh"
    with pytest.raises(ConfigCompositionException):
        compose_recipe(training_command(dry_run(script, tmp_path, "actor_rollout_ref.actor.optim.lrr=1e-6")))
    with pytest.raises(AssertionError, match=r"actor_rollout_ref.rollout.temperature='hot' is not"):
        compose_recipe(training_command(dry_run(script, tmp_path, "actor_rollout_ref.rollout.temperature=hot")))
    with pytest.raises(ValueError, match="algorithm.restrain.sigma must be a number"):
        compose_recipe(training_command(dry_run(script, tmp_path, "algorithm.restrain.sigma=wide")))


@pytest.mark.parametrize("benchmark", ["aime24", "amc23", "math500"])
def test_testtime_recipes_train_on_the_benchmark_itself(benchmark, tmp_path):
    data = tmp_path / "data"
    for method in ("restrain", "ttrl"):
        commands = dry_run(RECIPES / "testtime_llama31_8b_instruct" / f"{method}.sh", tmp_path,
                           BENCHMARK=benchmark, DATA_DIR=str(data))
        config = compose_recipe(training_command(commands))
        assert list(config.data.val_files) == [str(data / f"{benchmark}.parquet")]
        assert config.actor_rollout_ref.model.path == "meta-llama/Llama-3.1-8B-Instruct"
        assert config.trainer.experiment_name == f"testtime_llama31_8b_instruct_{benchmark}_{method}"
        if method == "restrain":
            (score,) = scoring_commands(commands)
            assert score[score.index("--input") + 1] == str(data / f"{benchmark}.parquet")
            assert list(config.data.train_files) == [str(data / f"{benchmark}.scored.Llama-3.1-8B-Instruct.parquet")]
        else:
            assert list(config.data.train_files) == [str(data / f"{benchmark}.parquet")]


def test_testtime_rejects_unknown_benchmark(tmp_path):
    proc = subprocess.run(
        ["bash", str(RECIPES / "testtime_llama31_8b_instruct" / "ttrl.sh")],
        env={**os.environ, "DRY_RUN": "1", "BENCHMARK": "gsm8k", "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0 and "BENCHMARK must be aime24, amc23 or math500" in proc.stderr


def test_sweep_varies_one_parameter_at_a_time(tmp_path):
    commands = dry_run(RECIPES / "sweep.sh", tmp_path, "trainer.total_epochs=1")
    trains = [c for c in commands if "verl.trainer.main_ppo" in c]
    settings = []
    for train in trains:
        config = compose_recipe(train)
        r = config.algorithm.restrain
        settings.append((r.sigma, r.kappa, r.delta))
        assert config.trainer.experiment_name == f"qwen3_4b_base_restrain_sigma{train_value(train, 'sigma')}" \
            f"_kappa{train_value(train, 'kappa')}_delta{train_value(train, 'delta')}"
        assert train[-1] == "trainer.total_epochs=1"
    # 3 sigmas + 3 kappas + 3 deltas around (0.4, 4, 0.5), the default counted once.
    assert sorted(settings) == sorted(
        {(0.2, 4, 0.5), (0.4, 4, 0.5), (0.8, 4, 0.5), (0.4, 2, 0.5), (0.4, 6, 0.5), (0.4, 4, 0.25), (0.4, 4, 1.0)}
    )
    # One scored file for all runs (sampled once; a dry run prints the step again for every run), and
    # every run trains on it: u_x = g(c_ref / n) is computed in training with the run's own sigma.
    assert len({tuple(c) for c in scoring_commands(commands)}) == 1
    scored = scoring_commands(commands)[0][scoring_commands(commands)[0].index("--output") + 1]
    assert not [c for c in commands if "prompt_weights" in " ".join(c)]
    for train in trains:
        assert f"data.train_files=['{scored}']" in train
        assert compose_recipe(train).algorithm.restrain.prompt_weight_source == "offline"


def train_value(train: list[str], field: str) -> str:
    (item,) = [a for a in train if a.startswith(f"algorithm.restrain.{field}=")]
    return item.split("=", 1)[1]


def test_full_grid(tmp_path):
    commands = dry_run(RECIPES / "sweep.sh", tmp_path, GRID="full", SIGMAS="0.3 0.5", KAPPAS="3", DELTAS="0.5 1.0")
    assert len([c for c in commands if "verl.trainer.main_ppo" in c]) == 4
