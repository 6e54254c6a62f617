"""Checks that a ``--model`` is a loadable Hugging Face model before anything loads."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["HUB_ID", "check_model"]

# A Hugging Face hub id: ``org/name``.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Files that hold a Hugging Face model's weights (safetensors, torch, sharded indices, TF, Flax, GGUF).
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.index.json", "*.h5", "*.msgpack", "*.gguf")

def _has_weights(folder: Path) -> bool:
    return any(next(folder.glob(pattern), None) is not None for pattern in _WEIGHT_PATTERNS)


def _is_verl_actor(folder: Path) -> bool:
    """An FSDP checkpoint's ``actor`` folder: sharded weights and verl's ``fsdp_config.json``."""
    shards = next(folder.glob("model_world_size_*_rank_*.pt"), None)
    return shards is not None or (folder / "fsdp_config.json").is_file()


def _latest_step(root: Path) -> Path | None:
    """The ``global_step_N`` folder verl's ``latest_checkpointed_iteration.txt`` names, else the highest N."""
    latest = root / "latest_checkpointed_iteration.txt"
    if latest.is_file():
        step = root / f"global_step_{latest.read_text(encoding='utf-8').strip()}"
        if step.is_dir():
            return step
    steps = [p for p in root.glob("global_step_*") if p.is_dir() and p.name[len("global_step_") :].isdigit()]
    return max(steps, key=lambda p: int(p.name[len("global_step_") :]), default=None)


def _verl_actor_of(path: Path) -> Path | None:
    """The actor folder of the verl checkpoint ``path`` points into, or None when it is not one.

    ``path`` may be the checkpoint root (``trainer.default_local_dir``, latest step taken), a
    ``global_step_N`` folder, its ``actor`` folder or ``actor/huggingface``.
    """
    if _is_verl_actor(path):
        return path
    if _is_verl_actor(path / "actor"):
        return path / "actor"
    if path.name == "huggingface" and _is_verl_actor(path.parent):
        return path.parent
    step = _latest_step(path)
    if step is not None and _is_verl_actor(step / "actor"):
        return step / "actor"
    return None


def check_model(model: str) -> None:
    """Fail early, with the fix, when ``model`` is neither a loadable Hugging Face folder nor a hub id.

    A local folder needs a ``config.json`` and weight files. verl 0.9.1's FSDP checkpoint manager
    saves ``<trainer.default_local_dir>/global_step_N/actor/`` with the sharded weights
    ``model_world_size_W_rank_R.pt``, ``fsdp_config.json`` and ``huggingface/``, which holds the
    config and tokenizer but the weights only when ``checkpoint.save_contents`` includes ``hf_model``.
    Pointed anywhere into such a checkpoint (the root, ``global_step_N``, ``actor`` or a weightless
    ``actor/huggingface``), the error gives the merger command that writes a Hugging Face folder. A
    path that does not exist is accepted when it looks like a hub id (``org/name``).

    Raises:
        FileNotFoundError: a local path that does not exist and is not a hub id.
        ValueError: an existing path that is not a loadable model folder.
    """
    path = Path(model).expanduser()
    if not path.exists():
        if model.startswith((".", "/", "~")) or not HUB_ID.match(model):
            raise FileNotFoundError(
                f"model folder not found: {model} (expected a Hugging Face model folder or a hub id such as "
                "Qwen/Qwen3-4B-Base)"
            )
        return
    if not path.is_dir():
        raise ValueError(f"--model {model} is a file; expected a model folder or a hub id")
    if (path / "config.json").is_file() and _has_weights(path):
        return
    actor = _verl_actor_of(path)
    if actor is not None:
        saved_hf = actor / "huggingface"
        hint = ""
        if saved_hf != path and (saved_hf / "config.json").is_file() and _has_weights(saved_hf):
            hint = f", or pass --model {saved_hf}, which holds the full weights"
        raise ValueError(
            f"{model} is a verl checkpoint, not a Hugging Face model folder; convert it first with "
            f"`python -m verl.model_merger merge --backend fsdp --local_dir {actor} --target_dir <hf_dir>`{hint}"
        )
    if not (path / "config.json").is_file():
        raise ValueError(f"{model} is not a Hugging Face model folder (no config.json)")
    raise ValueError(f"{model} has a config.json but no weight files ({', '.join(_WEIGHT_PATTERNS)})")
