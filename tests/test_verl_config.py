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
from verl_restrain.adapters.checks import validate_training_config
from verl_restrain.adapters.settings import RestrainConfig
from verl_restrain.methods import METHODS

PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]


def _parquet(path, rows=2, **columns):
    table = {"prompt": [PROMPT] * rows, "data_source": ["dapo_math_14k"] * rows, **columns}
    pq.write_table(pa.table(table), path)
    return str(path)


@pytest.fixture
def scored_file(tmp_path):
    return _parquet(
        tmp_path / "train.scored.parquet",
        **{
            defaults.REF_MAJORITY_COUNT_COLUMN: [16, 8],
            defaults.REF_NUM_SAMPLES_COLUMN: [16, 16],
            defaults.REF_MAJORITY_ANSWER_COLUMN: ["5", None],
        },
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
    assert config.prompt_weight_source == "offline"
    assert (config.ref_majority_count_key, config.ref_num_samples_key) == (
        defaults.REF_MAJORITY_COUNT_COLUMN, defaults.REF_NUM_SAMPLES_COLUMN
    )
    assert config.prompt_weight_columns == (defaults.REF_MAJORITY_COUNT_COLUMN, defaults.REF_NUM_SAMPLES_COLUMN)
    assert config.prompt_weight_key == defaults.PROMPT_WEIGHT_COLUMN
    assert config.offline_label_key == defaults.REF_MAJORITY_ANSWER_COLUMN
    assert config.answer_kinds == {}
    assert config.clip_mode == "per_label"


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
        ({"ref_majority_count_key": None}, "algorithm.restrain.ref_majority_count_key must be a column name"),
        ({"prompt_weight_source": "baked"}, "algorithm.restrain.prompt_weight_source must be one of"),
        ({"clip_mode": "per_token"}, "algorithm.restrain.clip_mode must be one of"),
        ({"train_rollouts": 0}, "algorithm.restrain.train_rollouts must be >= 1"),
        ({"advantage_reshaping": "softmax"}, "algorithm.restrain.advantage_reshaping must be one of"),
        ({"reshaping_clip_bound": 0}, "algorithm.restrain.reshaping_clip_bound must be > 0"),
        ({"train_rollouts": 2.5}, "algorithm.restrain.train_rollouts must be an integer"),
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
    # the shared rule: the row's own extra_info.kind, then the built-in choice benchmarks
    assert RestrainConfig().answer_kind("unlisted", {"kind": "choice"}) == "choice"
    assert RestrainConfig().answer_kind("mmlu_stem") == "choice"
    assert config.answer_kind("my_quiz", {"kind": "math"}) == "choice"


@pytest.mark.parametrize(
    "values, columns",
    [
        ({}, (defaults.REF_MAJORITY_COUNT_COLUMN, defaults.REF_NUM_SAMPLES_COLUMN)),
        ({"prompt_weight_source": "column"}, (defaults.PROMPT_WEIGHT_COLUMN,)),
        ({"prompt_weight_source": "online"}, ()),
        ({"use_prompt_weight": False}, ()),
    ],
)
def test_prompt_weight_columns_follow_the_source(values, columns):
    assert RestrainConfig(**values).prompt_weight_columns == columns


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
    # ... and the key whose resolution runs the startup checks in verl's task runner
    assert ours.pop("restrain_startup_checks") == "${restrain_startup_checks:}"
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
    assert restrain.prompt_weight_source == method.prompt_weight_source
    assert restrain.advantage_reshaping == method.advantage_reshaping
    default_loop = compose_config().actor_rollout_ref.rollout.agent.default_agent_loop
    assert config.actor_rollout_ref.rollout.agent.default_agent_loop == (method.agent_loop or default_loop)
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
        ({"trainer.use_v1": False}, "set trainer.use_v1=true"),
        ({"critic.enable": True}, "Set critic.enable=false"),
        ({"algorithm.restrain.train_rollouts": 9}, "train_rollouts must be <= actor_rollout_ref.rollout.n = 8"),
        ({"algorithm.restrain.advantage_reshaping": "entropy", "algorithm.rollout_correction.bypass_mode": True},
         "set algorithm.rollout_correction.bypass_mode=false"),
        ({"actor_rollout_ref.actor.policy_loss.loss_mode": "gspo"}, "algorithm.restrain.clip_mode=combined"),
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
    assert f"'{defaults.REF_MAJORITY_COUNT_COLUMN}'" in message and f"'{defaults.REF_NUM_SAMPLES_COLUMN}'" in message
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
    path = _parquet(tmp_path / "holes.parquet", **{defaults.REF_MAJORITY_COUNT_COLUMN: [5, None],
                                                   defaults.REF_NUM_SAMPLES_COLUMN: [16, 16]})
    with pytest.raises(ValueError, match="1 row"):
        validate_training_config(updated(compose_config(), {"data.train_files": path}))


@pytest.mark.parametrize(
    "counts, samples, rows",
    [
        ([16, None, 4], [16, 16, 16], "row 1: None/16"),
        ([16, -1, 4], [16, 16, 16], "row 1: -1/16"),
        ([16, 8, 17], [16, 16, 16], "row 2: 17/16"),
        ([16.0, 8.5, 4.0], [16.0, 16.0, 16.0], "row 1: 8.5/16.0"),
        ([16.0, float("nan"), 4.0], [16.0, 16.0, 16.0], "row 1: nan/16.0"),
        (["16", "8", "x"], [16, 16, 16], "3 row(s) (row 0: '16'/16"),
        ([0, 0, 0], [16, 0, 16], "row 1: 0/0"),
    ],
)
def test_every_count_is_checked_at_startup(tmp_path, counts, samples, rows):
    path = _parquet(tmp_path / "bad.parquet", **{defaults.REF_MAJORITY_COUNT_COLUMN: counts,
                                                 defaults.REF_NUM_SAMPLES_COLUMN: samples}, rows=3)
    with pytest.raises(ValueError) as error:
        validate_training_config(updated(compose_config(), {"data.train_files": path}))
    message = str(error.value)
    assert rows in message and path in message
    assert defaults.REF_MAJORITY_COUNT_COLUMN in message and "restrain-score-prompts --input" in message


@pytest.mark.parametrize("weights", [[1.0, float("nan")], [1.0, -0.1], [1.0, None], ["1.0", "heavy"]])
def test_a_user_weight_column_is_checked_at_startup(tmp_path, weights):
    path = _parquet(tmp_path / "weights.parquet", my_weight=weights)
    config = updated(compose_config(), {"data.train_files": path, "algorithm.restrain.prompt_weight_source": "column",
                                        "algorithm.restrain.prompt_weight_key": "my_weight"})
    with pytest.raises(ValueError, match="column 'my_weight' must hold a finite number >= 0 in every row"):
        validate_training_config(config)


def test_resolving_the_config_runs_the_startup_checks(scored_file):
    """verl's task runner resolves the config before it builds any worker (TaskRunnerV1.run, main_ppo_v0)."""
    good = updated(compose_config(), {"data.train_files": scored_file})
    assert OmegaConf.to_container(good, resolve=True)["restrain_startup_checks"] == "passed"
    grpo = updated(good, {"algorithm.adv_estimator": "grpo", "reward.reward_manager.name": "naive"})
    assert OmegaConf.to_container(grpo, resolve=True)["restrain_startup_checks"] == "not a RESTRAIN run"
    for values, message in [
        ({"trainer.use_v1": False}, "set trainer.use_v1=true"),
        ({"trainer.v1.trainer_mode": "sync"}, "set trainer.v1.trainer_mode=restrain"),
        ({"critic.enable": True}, "Set critic.enable=false"),
    ]:
        with pytest.raises(Exception, match=message):
            OmegaConf.to_container(updated(good, values), resolve=True)


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


STOCK_COMMAND = [
    sys.executable, "-m", "verl.trainer.main_ppo",
    "--config-path=pkg://verl_restrain.config", "--config-name=restrain_trainer",
    "algorithm.adv_estimator=restrain", "reward.reward_manager.name=restrain", "trainer.v1.trainer_mode=restrain",
    "actor_rollout_ref.rollout.n=8", "actor_rollout_ref.model.path=/nonexistent/model",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1",
    "+ray_kwargs.ray_init.num_cpus=1", "+ray_kwargs.ray_init.include_dashboard=false",
]


def test_the_stock_command_stops_before_any_worker_naming_the_key(scored_file, tiny_model_dir):
    """verl's own main_ppo, misconfigured: the run ends in verl's task runner when it resolves the config,
    before any worker (the actor's model path does not even exist), with the key and the fix. One case
    per task runner: the legacy one (use_v1=false) and the v1 one; the resolution itself is checked for
    every case by test_resolving_the_config_runs_the_startup_checks."""
    cases = {
        "trainer.use_v1=false": "set trainer.use_v1=true",
        # verl's driver reads the critic's model config when the critic is on: give it a real one
        f"critic.enable=true critic.model.path={tiny_model_dir} critic.ppo_micro_batch_size_per_gpu=1": (
            "Set critic.enable=false"
        ),
    }
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    running = {
        override: subprocess.Popen(
            [*STOCK_COMMAND, f"data.train_files={scored_file}", *override.split()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        for override in cases
    }
    for override, process in running.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode != 0, output[-3000:]
        assert cases[override] in output, output[-3000:]
        assert "restrain_startup_checks" in output
        # stopped in the task runner: no worker group, no rollout server, no model load
        assert "ray init kwargs" in output and "TaskRunner" in output
        assert "actor and ref model engine initialized" not in output and "worker group" not in output
