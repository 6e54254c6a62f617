"""Shared test helpers.

``tiny_lm`` (tiny random-weight models and a trained-in-code tokenizer) and ``verl_batches`` (verl
configs and batches built the way verl builds them) are plain modules next to this file; pytest puts
``tests/`` on ``sys.path``. The fixtures below are the ones several test files use.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_RESPONSES_ENV = "RESTRAIN_REAL_RESPONSES"


def real_responses_dir() -> Path:
    """``../shared/data/real_responses`` beside the checkout (or ``$RESTRAIN_REAL_RESPONSES``)."""
    override = os.environ.get(REAL_RESPONSES_ENV)
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data" / "real_responses"


@pytest.fixture(scope="session")
def real_responses() -> Path:
    """The folder of real model outputs; the test skips, with the reason, when it is absent."""
    path = real_responses_dir()
    if not (path / "SOURCES.md").is_file():
        pytest.skip(f"real model outputs not found at {path} (set {REAL_RESPONSES_ENV} to their folder)")
    return path


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random-weight Qwen2 checkpoint with its tokenizer, saved once per test module."""
    from tiny_lm import make_tiny_model_dir

    return str(make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "qwen2", seed=0))


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny models' chat tokenizer."""
    from tiny_lm import make_tokenizer

    return make_tokenizer()


@pytest.fixture(scope="module")
def transfer_queue():
    """TransferQueue with one storage unit (verl's default of 8 actors deadlocks a 2-CPU Ray), on a
    local Ray instance started here unless one is running."""
    ray = pytest.importorskip("ray")
    import transfer_queue as tq
    from omegaconf import OmegaConf

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield tq
    tq.close()
    if started_ray:
        ray.shutdown()


@pytest.fixture(scope="module")
def verl_cpu_session(tmp_path_factory):
    """verl's v1 loop on CPU (``tests/verl_cpu``): one Ray instance, started as verl's ``run_ppo`` starts
    it, with a tiny model and the scripted datasets (``tests/e2e_script.py``), shared by a module's runs."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("the end-to-end runs start Ray themselves, as verl's run_ppo does; Ray is already running")
    from e2e_script import Session
    from tiny_lm import make_tiny_model_dir
    from verl_cpu.harness import close_transfer_queue, compose, start_ray

    workdir = tmp_path_factory.mktemp("verl_cpu")
    session = Session(workdir, str(make_tiny_model_dir(workdir / "model", seed=0)))
    start_ray(compose(session.overrides("ray", method="restrain", loop="restrain", dp=1, steps=1)))
    yield session
    close_transfer_queue()
    ray.shutdown()
