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
