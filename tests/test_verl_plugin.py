"""The verl.plugins entry point: registration in fresh processes, idempotence, loud failures, lightness."""

import importlib
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPORT_REGISTRIES = """
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.v1 import get_trainer_cls
import verl_restrain.adapters.plugin as plugin
print("estimator", get_adv_estimator_fn("restrain").__qualname__)
print("reward_manager", get_reward_manager_cls("restrain").__qualname__)
print("trainer", get_trainer_cls("restrain").__qualname__, get_trainer_cls("restrain").loop_mode)
print("trainer_async", get_trainer_cls("restrain_colocate_async").__qualname__)
from verl.trainer.ppo.core_algos import get_policy_loss_fn
print("policy_loss", get_policy_loss_fn("restrain_per_label").__qualname__)
print("failures", plugin.FAILURES)
"""

LAZY = """
import json, sys
import verl
after_verl = sorted(m for m in sys.modules if m.startswith(("verl_restrain", "verl.trainer", "verl.experimental")))
from verl.trainer.ppo import core_algos
after_core_algos = sorted(m for m in sys.modules if m.startswith("verl_restrain.adapters"))
print(json.dumps({"after_verl": after_verl, "after_core_algos": after_core_algos,
                  "estimator": "restrain" in core_algos.ADV_ESTIMATOR_REGISTRY}))
"""


FAILING_PIECES = """
import sys
# Block two modules the adapters import: the estimator and the trainer need advantage, the reward
# manager and the trainer need answers.
sys.modules["verl_restrain.advantage"] = None
sys.modules["verl_restrain.answers"] = None
import verl
import verl_restrain.adapters.plugin as plugin
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.trainer.ppo.v1 import get_trainer_cls
print("failed", sorted(plugin.FAILURES))
for name, use in [
    ("estimator", lambda: get_adv_estimator_fn("restrain")(token_level_rewards=None, response_mask=None)),
    ("reward_manager", lambda: get_reward_manager_cls("restrain")(config=None, tokenizer=None, compute_score=None)),
    ("trainer", lambda: get_trainer_cls("restrain")(config=None)),
]:
    try:
        use()
    except RuntimeError as error:
        print(name, error)
"""

SCRIPTS = {
    "verl": "import verl\n" + REPORT_REGISTRIES,
    "verl_restrain.adapters.trainer": "import verl_restrain.adapters.trainer\n" + REPORT_REGISTRIES,
    "failing": FAILING_PIECES,
    "lazy": LAZY,
}


@pytest.fixture(scope="module")
def fresh_processes():
    """Each script's CompletedProcess, the fresh interpreters run side by side (each imports verl)."""
    running = {
        name: subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, code in SCRIPTS.items()
    }
    results = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=600)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


def _lines(stdout: str) -> dict:
    return dict(line.split(" ", 1) for line in stdout.strip().splitlines() if " " in line)


@pytest.mark.parametrize("first_import", ["verl", "verl_restrain.adapters.trainer"])
def test_plain_import_verl_registers_everything_in_a_fresh_process(first_import, fresh_processes):
    # verl loads the entry point itself; importing an adapter before verl must work as well.
    result = fresh_processes[first_import]
    assert result.returncode == 0, result.stderr[-3000:]
    report = _lines(result.stdout)
    assert report["estimator"] == "compute_restrain_outcome_advantage"
    assert report["reward_manager"] == "RestrainRewardManager"
    assert report["trainer"] == "RestrainTrainer sync"
    assert report["trainer_async"] == "RestrainColocateAsyncTrainer"
    assert report["policy_loss"] == "compute_policy_loss_per_label"
    assert report["failures"] == "{}"
    assert "could not register" not in result.stderr


def test_a_failing_piece_is_loud_and_its_lookup_names_the_cause(fresh_processes):
    result = fresh_processes["failing"]
    assert result.returncode == 0, result.stderr[-3000:]
    report = _lines(result.stdout)
    assert report["failed"] == "['advantage estimator', 'reward manager', 'trainers']"
    assert "import of verl_restrain.advantage halted" in report["estimator"]
    assert "import of verl_restrain.answers halted" in report["reward_manager"]
    assert "failed to load in this process" in report["trainer"]
    # Logged at ERROR on stderr with the cause, despite verl's debug-level plugin loader.
    assert "ERROR" in result.stderr
    assert "verl-restrain could not register its reward manager" in result.stderr
    assert "import of verl_restrain.answers halted" in result.stderr


@pytest.fixture
def isolated_registries(monkeypatch):
    """Copies of verl's three registries, so that a test's registrations do not leak."""
    from verl.experimental.reward_loop.reward_manager import registry
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.v1 import trainer_base

    monkeypatch.setattr(core_algos, "ADV_ESTIMATOR_REGISTRY", dict(core_algos.ADV_ESTIMATOR_REGISTRY))
    monkeypatch.setattr(registry, "REWARD_MANAGER", dict(registry.REWARD_MANAGER))
    monkeypatch.setattr(trainer_base, "TRAINER_REGISTRY", dict(trainer_base.TRAINER_REGISTRY))
    return core_algos.ADV_ESTIMATOR_REGISTRY, registry.REWARD_MANAGER, trainer_base.TRAINER_REGISTRY


def test_registering_twice_and_reloading_is_harmless(isolated_registries, monkeypatch):
    import verl_restrain.adapters.estimator as estimator_module
    import verl_restrain.adapters.plugin as plugin

    estimators, managers, trainers = isolated_registries
    before = (estimators["restrain"], managers["restrain"], trainers["restrain"])
    assert plugin.register_all() == {}
    importlib.reload(plugin)
    assert plugin.FAILURES == {}
    assert (estimators["restrain"], managers["restrain"], trainers["restrain"]) == before

    # A reloaded adapter module replaces its own stale definition instead of conflicting. (The
    # setattr only makes monkeypatch put the original function back after the test.)
    original = estimator_module.compute_restrain_outcome_advantage
    monkeypatch.setattr(estimator_module, "compute_restrain_outcome_advantage", original)
    reloaded = importlib.reload(estimator_module).compute_restrain_outcome_advantage
    assert reloaded is not original
    assert plugin.register_all() == {}
    assert estimators["restrain"] is reloaded


def test_a_foreign_registration_under_our_name_is_a_conflict(isolated_registries, monkeypatch):
    from verl.trainer.ppo import core_algos

    import verl_restrain.adapters.plugin as plugin

    estimators, _, _ = isolated_registries
    monkeypatch.setattr(plugin, "FAILURES", {})

    def someone_elses_estimator(**kwargs):
        raise AssertionError("never called")

    estimators["restrain"] = someone_elses_estimator
    with pytest.raises(RuntimeError, match="already registered to .*someone_elses_estimator"):
        plugin._register(estimators, "restrain", lambda **kwargs: None, core_algos.register_adv_est)
    failures = plugin.register_all()
    assert list(failures) == ["advantage estimator"]
    assert "already registered" in failures["advantage estimator"]
    assert estimators["restrain"] is someone_elses_estimator


def test_import_verl_loads_no_adapter_until_verl_needs_one(fresh_processes):
    """Every verl process imports the plugin; only the registry module verl imports loads its adapter."""
    result = fresh_processes["lazy"]
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # The entry point, its registration helper and the names it registers; no adapter, no answer
    # engine, no math, and not one verl module more than `import verl` loads by itself.
    assert set(report["after_verl"]) == {
        "verl_restrain", "verl_restrain.adapters", "verl_restrain.adapters.plugin", "verl_restrain.adapters.registration",
        "verl_restrain.adapters.settings", "verl_restrain.config", "verl_restrain.defaults", "verl_restrain.methods",
    }
    # core_algos brings the estimator and the policy loss (both register there), not the trainers.
    assert report["estimator"]
    assert "verl_restrain.adapters.estimator" in report["after_core_algos"]
    assert "verl_restrain.adapters.actor_loss" in report["after_core_algos"]
    assert "verl_restrain.adapters.trainer" not in report["after_core_algos"]


BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench_plugin.py"


def test_plugin_benchmark_runs_and_reports_its_bars(capsys):
    # Timing is not checked here (CI machines are noisy); the script's own run checks the bars.
    bench = runpy.run_path(str(BENCH), run_name="bench_plugin")
    assert bench["main"](["--repeats", "1", "--max-ratio", "1e9", "--max-memory-mib", "1e9"]) == 0
    out = capsys.readouterr().out
    assert "time ratio plugin/none:" in out and "extra peak memory:" in out
    assert "'verl_restrain.adapters.plugin'" in out
    assert bench["verdict"](1.2, 1.15, "") == "1.200 (MISSES the bar of 1.15)"
