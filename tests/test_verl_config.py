"""RestrainConfig, the Hydra config composed on verl's ppo_trainer, and the startup checks."""

import os
import subprocess
import sys
from dataclasses import asdict, fields

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from verl_batches import SWITCHES, compose_config, updated

from verl_restrain import defaults
from verl_restrain.config import CONFIG_DIR
from verl_restrain.adapters.settings import DEFAULT_ANSWER_KINDS, RestrainConfig, validate_training_config
from verl_restrain.methods import METHODS

PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]


def _parquet(path, **columns):
    table = {"prompt": [PROMPT, PROMPT], "data_source": ["dapo_math_14k"] * 2, **columns}
    pq.write_table(pa.table(table), path)
    return str(path)


@pytest.fixture
def scored_file(tmp_path):
    return _parquet(
        tmp_path / "train.scored.parquet",
        **{defaults.PROMPT_WEIGHT_COLUMN: [1.0, 0.46], defaults.REF_MAJORITY_ANSWER_COLUMN: ["5", None]},
    )


@pytest.fixture
def plain_file(tmp_path):
    return _parquet(tmp_path / "train.parquet")


# ---------------------------------------------------------------------------------------------
# RestrainConfig
# ---------------------------------------------------------------------------------------------
def test_defaults_are_the_project_defaults_and_the_restrain_method():
    config = RestrainConfig()
    method = METHODS["restrain"]
    assert (config.sigma, config.center, config.kappa, config.delta) == (
        defaults.SIGMA, defaults.CENTER, defaults.KAPPA, defaults.DELTA
    )
    assert (config.weighting, config.use_prompt_weight, config.label_mode) == (
        method.weighting, method.use_prompt_weight, method.label_mode
    )
    assert config.prompt_weight_key == defaults.PROMPT_WEIGHT_COLUMN
    assert config.offline_label_key == defaults.REF_MAJORITY_ANSWER_COLUMN
    assert config.answer_kinds == DEFAULT_ANSWER_KINDS


@pytest.mark.parametrize(
    "values, message",
    [
        # the checks
        ({"sigma": 0}, "algorithm.restrain.sigma must be > 0"),
        ({"sigma": -0.1}, "algorithm.restrain.sigma must be > 0"),
        ({"center": 1.5}, "algorithm.restrain.center must be in [0, 1]"),
        ({"center": -0.01}, "algorithm.restrain.center must be in [0, 1]"),
        ({"kappa": -1}, "algorithm.restrain.kappa must be >= 0"),
        ({"delta": -0.5}, "algorithm.restrain.delta must be >= 0"),
        ({"weighting": "softmax"}, "algorithm.restrain.weighting must be one of"),
        # types and the other fields
        ({"kappa": 2.5}, "algorithm.restrain.kappa must be an integer"),
        ({"sigma": "wide"}, "algorithm.restrain.sigma must be a number"),
        ({"sigma": float("nan")}, "algorithm.restrain.sigma must be finite"),
        ({"use_prompt_weight": "yes"}, "algorithm.restrain.use_prompt_weight must be true or false"),
        ({"label_mode": "gold"}, "algorithm.restrain.label_mode must be one of"),
        ({"answer_kinds": {"aime24": "integer"}}, "algorithm.restrain.answer_kinds.aime24 must be one of"),
        ({"default_answer_kind": "text"}, "algorithm.restrain.default_answer_kind must be one of"),
        ({"prompt_weight_key": ""}, "algorithm.restrain.prompt_weight_key must be a column name"),
        ({"sigmaa": 0.4}, "unknown key(s) algorithm.restrain.['sigmaa']"),
    ],
)
def test_bad_values_fail_with_the_key(values, message):
    with pytest.raises(ValueError) as error:
        RestrainConfig.from_mapping(values)
    assert message in str(error.value)


def test_numbers_are_normalised_and_missing_keys_default():
    config = RestrainConfig.from_mapping(OmegaConf.create({"sigma": 1, "kappa": 2.0}))
    assert config.sigma == 1.0 and isinstance(config.sigma, float)
    assert config.kappa == 2 and isinstance(config.kappa, int)
    assert config.delta == defaults.DELTA
    assert RestrainConfig.from_algorithm(OmegaConf.create({"adv_estimator": "restrain"})) == RestrainConfig()
    assert RestrainConfig.from_algorithm(None) == RestrainConfig()


def test_answer_kind_per_data_source():
    config = RestrainConfig(answer_kinds={"gpqa_diamond": "choice", "my_quiz": "choice"})
    assert config.answer_kind("gpqa_diamond") == "choice"
    assert config.answer_kind("my_quiz") == "choice"
    assert config.answer_kind("aime24") == "math"
    assert RestrainConfig(default_answer_kind="choice").answer_kind("unlisted") == "choice"


# ---------------------------------------------------------------------------------------------
# Hydra: restrain_trainer.yaml on verl's ppo_trainer
# ---------------------------------------------------------------------------------------------
def test_yaml_defaults_equal_the_dataclass_defaults():
    assert RestrainConfig.from_algorithm(compose_config().algorithm) == RestrainConfig()


def test_restrain_trainer_adds_only_algorithm_restrain_to_verls_config():
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        overrides = [*SWITCHES, "actor_rollout_ref.rollout.n=8"]
        verl_config = OmegaConf.to_container(compose("ppo_trainer", overrides=overrides))
    ours = OmegaConf.to_container(compose_config())
    assert set(ours["algorithm"].pop("restrain")) == {field.name for field in fields(RestrainConfig)}
    assert ours == verl_config


def test_verls_own_config_takes_restrain_settings_as_new_keys(scored_file):
    # Without restrain_trainer.yaml (no presets), '+algorithm.restrain.<field>' adds settings; the
    # other fields keep RestrainConfig's defaults.
    overrides = [*SWITCHES, "actor_rollout_ref.rollout.n=8", f"data.train_files={scored_file}",
                 "+algorithm.restrain.weighting=majority", "+algorithm.restrain.kappa=0"]
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        config = compose("ppo_trainer", overrides=overrides)
    assert validate_training_config(config) == RestrainConfig(weighting="majority", kappa=0)


def test_verls_own_config_takes_a_preset_through_the_search_path(scored_file):
    # The README's stock-config route to a preset: '+restrain_method=<name>' with this package's
    # config module on Hydra's search path.
    overrides = [*SWITCHES, "actor_rollout_ref.rollout.n=8", f"data.train_files={scored_file}",
                 "+restrain_method=ttrl", "hydra.searchpath=[pkg://verl_restrain.config]"]
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        config = compose("ppo_trainer", overrides=overrides)
    ttrl = METHODS["ttrl"]
    assert validate_training_config(config) == RestrainConfig(
        weighting=ttrl.weighting, kappa=0, use_prompt_weight=False, label_mode=ttrl.label_mode
    )


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_preset_composes_mirrors_methods_and_validates(name, scored_file):
    config = compose_config(f"restrain_method={name}", f"data.train_files={scored_file}")
    restrain = validate_training_config(config)
    method = METHODS[name]
    assert restrain.weighting == method.weighting
    assert restrain.use_prompt_weight == method.use_prompt_weight
    assert restrain.label_mode == method.label_mode
    assert restrain.kappa == method.kappa(defaults.KAPPA)
    assert (restrain.sigma, restrain.center, restrain.delta) == (defaults.SIGMA, defaults.CENTER, defaults.DELTA)


def test_preset_files_are_exactly_the_methods():
    files = sorted(name[: -len(".yaml")] for name in os.listdir(os.path.join(CONFIG_DIR, "restrain_method")))
    assert files == sorted(METHODS)


def test_command_line_overrides_win_over_the_preset():
    config = compose_config("restrain_method=no_negative_penalization", "algorithm.restrain.kappa=3",
                            "algorithm.restrain.sigma=0.25", "+algorithm.restrain.answer_kinds.my_quiz=choice")
    restrain = RestrainConfig.from_algorithm(config.algorithm)
    assert (restrain.kappa, restrain.sigma, restrain.weighting) == (3, 0.25, "gaussian")
    assert restrain.answer_kind("my_quiz") == "choice"


# ---------------------------------------------------------------------------------------------
# Startup checks on the whole verl config
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, message",
    [
        ({"algorithm.restrain.sigma": 0}, "algorithm.restrain.sigma must be > 0"),
        ({"algorithm.restrain.center": 2}, "algorithm.restrain.center must be in [0, 1]"),
        ({"algorithm.restrain.kappa": 9}, "algorithm.restrain.kappa must be <= actor_rollout_ref.rollout.n = 8"),
        ({"algorithm.restrain.delta": -1}, "algorithm.restrain.delta must be >= 0"),
        ({"algorithm.restrain.weighting": "softmax"}, "algorithm.restrain.weighting must be one of"),
        ({"algorithm.use_kl_in_reward": True}, "Set algorithm.use_kl_in_reward=false"),
        ({"algorithm.filter_groups.enable": True}, "label-free guarantee"),
        ({"reward.reward_manager.name": "naive"}, "set reward.reward_manager.name=restrain"),
        ({"reward.reward_model.enable": True}, "set reward.reward_model.enable=false"),
        ({"trainer.v1.trainer_mode": "sync"}, "set trainer.v1.trainer_mode=restrain"),
    ],
)
def test_bad_training_configs_fail_with_the_promised_message(values, message, scored_file):
    config = updated(compose_config(), {"data.train_files": scored_file, **values})
    with pytest.raises(ValueError) as error:
        validate_training_config(config)
    assert message in str(error.value)


def test_missing_prompt_weight_column_names_the_column_and_the_command(plain_file):
    config = updated(compose_config(), {"data.train_files": plain_file})
    with pytest.raises(ValueError) as error:
        validate_training_config(config)
    message = str(error.value)
    assert f"'{defaults.PROMPT_WEIGHT_COLUMN}'" in message
    assert f"restrain-score-prompts --input {plain_file} --output" in message
    assert "restrain_method=no_prompt_weighting" in message
    # Methods that do not read u_x train on the plain file.
    validate_training_config(updated(config, {"algorithm.restrain.use_prompt_weight": False}))


def test_offline_label_column_is_required_for_srt_offline(plain_file):
    config = updated(compose_config("restrain_method=srt_offline"), {"data.train_files": [plain_file]})
    with pytest.raises(ValueError) as error:
        validate_training_config(config)
    assert f"'{defaults.REF_MAJORITY_ANSWER_COLUMN}'" in str(error.value)
    assert "restrain-score-prompts --input" in str(error.value)


def test_missing_prompt_weights_in_rows_fail(tmp_path):
    path = _parquet(tmp_path / "holes.parquet", **{defaults.PROMPT_WEIGHT_COLUMN: [0.5, None]})
    with pytest.raises(ValueError, match="1 row"):
        validate_training_config(updated(compose_config(), {"data.train_files": path}))


def test_the_stock_verl_command_reaches_the_restrain_config():
    # Hydra's --cfg prints the composed job config and exits before verl's main runs.
    command = [
        sys.executable, "-m", "verl.trainer.main_ppo",
        "--config-path=pkg://verl_restrain.config", "--config-name=restrain_trainer",
        "algorithm.adv_estimator=restrain", "reward.reward_manager.name=restrain", "trainer.v1.trainer_mode=restrain",
        "restrain_method=ttrl", "algorithm.restrain.sigma=0.3", "--cfg", "job", "-p", "algorithm",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    algorithm = OmegaConf.create(result.stdout.split("# @package algorithm\n", 1)[-1])
    assert algorithm.adv_estimator == "restrain"
    restrain = RestrainConfig.from_algorithm(algorithm)
    assert asdict(restrain) == asdict(RestrainConfig(weighting="majority", kappa=0, use_prompt_weight=False,
                                                     sigma=0.3))
