"""recipes/qwen3_4b_base/rest_em.sh: ReST-EM's rounds as commands that verl and this package accept.

Run with DRY_RUN=1, the recipe prints per round: the scoring run (Grow), the filter (Improve), the
``torchrun -m verl.trainer.sft_trainer`` command, the link to its final Hugging Face model and the
evaluation. Each SFT command's overrides are composed with Hydra against verl's own
``sft_trainer_engine`` config and its dataclass nodes are built, so a misspelled key or a wrong type
fails here; the job commands are parsed by the jobs' own parsers. At toy scale, round 1's scoring and
filter commands run for real with a tiny random model, and verl's ``create_sft_dataset`` and
collator read the filtered file with the composed ``data`` config.

verl's SFT trainer itself cannot run on this CPU machine: verl 0.9.1 registers no CPU platform and
falls back to ``nvidia`` (``verl/plugin/platform/platform_manager.py``, ``_detect_platform_name``), so
``initialize_global_process_group`` (``verl/utils/distributed.py``, line 63) asks for the backend
``cpu:gloo,cuda:nccl`` and a CPU build of torch fails with "Distributed package doesn't have NCCL
built in" (then line 74 would call ``torch.cuda.set_device``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_recipes import typed_check

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "qwen3_4b_base" / "rest_em.sh"
VERL_CONFIG_DIR = Path(__import__("verl").__file__).parent / "trainer" / "config"
# Variables of common.sh and the recipe a developer's shell may hold; the tests set their own.
RECIPE_VARIABLES = (
    "MODEL_PATH", "EXPERIMENT", "TRAIN_FILE", "VAL_FILES", "DATA_DIR", "ROUNDS", "KEEP", "MAX_PER_PROMPT",
    "SCORE_N", "SCORE_ENGINE", "SCORE_MAX_NEW_TOKENS", "EVALUATE", "LABEL", "REST_EM_DIR", "CKPT_DIR",
    "RESULTS_DIR", "N_GPUS_PER_NODE", "TORCHRUN_ARGS",
)
MODULES = {
    "restrain-score-prompts": "verl_restrain.jobs.scoring",
    "restrain-filter-samples": "verl_restrain.jobs.filter_samples",
}


def dry_run(tmp_path: Path, *args: str, check: bool = True, **env: str):
    environment = {k: v for k, v in os.environ.items() if k not in RECIPE_VARIABLES}
    environment.update(
        DRY_RUN="1", HOME=str(tmp_path), PYTHON=sys.executable,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **env,
    )
    proc = subprocess.run(["bash", str(SCRIPT), *args], env=environment, capture_output=True, text=True,
                          timeout=120, check=False)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def rounds(commands: list[list[str]]) -> list[dict[str, list[str]]]:
    """The commands grouped by round, keyed by what they do."""
    kinds = {"restrain-score-prompts": "score", "restrain-filter-samples": "filter", "torchrun": "sft",
             "bash": "link", "restrain-evaluate": "evaluate"}
    grouped: list[dict[str, list[str]]] = []
    for command in commands:
        kind = kinds[command[0]]
        if kind == "score":
            grouped.append({})
        grouped[-1][kind] = command
    return grouped


def compose_sft(command: list[str]):
    """verl's sft_trainer_engine config with the command's overrides, as ``hydra.main`` composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    overrides = command[command.index("verl.trainer.sft_trainer") + 1 :]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(VERL_CONFIG_DIR), version_base=None):
        config = compose(config_name="sft_trainer_engine", overrides=overrides)
    OmegaConf.resolve(config)
    typed_check(config, {o.split("=", 1)[0].lstrip("+~") for o in overrides})
    # What SFTTrainer._build_config builds (the model node loads its tokenizer, so it is type-checked only).
    for node in ("engine", "optim", "checkpoint", "profiler"):
        omega_conf_to_dataclass(config[node])
    return config


def test_three_rounds_each_fine_tuning_the_base_model(tmp_path):
    from verl_restrain.jobs import evaluation, filter_samples
    from verl_restrain.jobs.scoring.cli import build_parser as scoring_parser

    grouped = rounds(dry_run(tmp_path, "trainer.save_freq=100"))
    assert len(grouped) == 3  # ReST-EM's iterations on MATH
    ckpt = tmp_path / "checkpoints" / "restrain" / "qwen3_4b_base_rest_em"
    sampler = "Qwen/Qwen3-4B-Base"
    for r, step in enumerate(grouped, start=1):
        assert set(step) == {"score", "filter", "sft", "link", "evaluate"}
        score = scoring_parser().parse_args(step["score"][1:])
        assert (score.model, score.n, score.temperature) == (sampler, 32, 1.0)
        assert score.samples_output and score.output != score.input
        keep = filter_samples.build_parser().parse_args(step["filter"][1:])
        assert (keep.samples, keep.prompts) == (score.samples_output, score.output)
        assert (keep.keep, keep.max_per_prompt) == ("gold", 10)

        config = compose_sft(step["sft"])
        assert config.model.path == "Qwen/Qwen3-4B-Base"  # every round starts from the base model
        assert list(config.data.train_files) == [keep.output]
        assert config.data.messages_key == "messages" and config.data.ignore_input_ids_mismatch is True
        assert list(config.checkpoint.save_contents) == ["model", "optimizer", "extra", "hf_model"]
        assert config.trainer.default_local_dir == str(ckpt / f"round_{r}")
        assert config.trainer.experiment_name == f"qwen3_4b_base_rest_em_round{r}"
        assert (config.optim.lr, config.optim.lr_scheduler_type, config.trainer.total_epochs) == (1e-5, "cosine", 2)
        assert config.data.max_length == 1024 + 8192 and config.trainer.save_freq == 100  # "$@" reaches verl
        assert step["sft"][:4] == ["torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=8"]

        assert step["link"][-1] == config.trainer.default_local_dir
        evaluate = evaluation.build_parser().parse_args(step["evaluate"][1:])
        assert evaluate.model == str(ckpt / f"round_{r}" / "huggingface")
        assert evaluate.label == ("rest_em" if r == 3 else f"rest_em_round{r}")
        sampler = evaluate.model  # the next round samples from this round's model


def test_settings_from_the_environment(tmp_path):
    grouped = rounds(dry_run(tmp_path, "optim.lr=2e-5", ROUNDS="1", KEEP="majority", MAX_PER_PROMPT="4",
                             N_GPUS_PER_NODE="2", EVALUATE="0"))
    (step,) = grouped
    assert set(step) == {"score", "filter", "sft", "link"}
    assert option(step["filter"], "--keep") == "majority" and option(step["filter"], "--max-per-prompt") == "4"
    assert "--nproc_per_node=2" in step["sft"]
    config = compose_sft(step["sft"])
    assert config.optim.lr == 2e-5 and config.trainer.n_gpus_per_node == 2
    assert config.trainer.experiment_name == "qwen3_4b_base_rest_em_majority_round1"


def test_bad_settings_fail(tmp_path):
    from hydra.errors import ConfigCompositionException

    proc = dry_run(tmp_path, check=False, KEEP="best")
    assert proc.returncode != 0 and "KEEP must be gold or majority" in proc.stderr
    (step, *_) = rounds(dry_run(tmp_path, "optim.lrr=1e-5"))
    with pytest.raises(ConfigCompositionException):
        compose_sft(step["sft"])
    (step, *_) = rounds(dry_run(tmp_path, "optim.lr=fast"))
    with pytest.raises(AssertionError, match="optim.lr='fast' is not"):
        compose_sft(step["sft"])


def test_round_one_at_toy_scale_feeds_verls_sft_dataset(tmp_path):
    from tiny_lm import make_tiny_model_dir
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer
    from verl.trainer.sft_trainer import create_sft_dataset
    from verl.utils.dataset.dataset_utils import SFTTensorCollator

    model = str(make_tiny_model_dir(tmp_path / "models" / "tiny-base", seed=0))
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"data_source": "math", "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
             "reward_model": {"style": "rule", "ground_truth": str(2 * i)}, "extra_info": {"index": i}}
            for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), data / "dapo_math_14k.parquet")
    env = {"MODEL_PATH": model, "DATA_DIR": str(data), "ROUNDS": "1", "KEEP": "majority", "MAX_PER_PROMPT": "2",
           "SCORE_N": "4", "SCORE_ENGINE": "hf", "SCORE_MAX_NEW_TOKENS": "6", "EVALUATE": "0"}
    (step,) = rounds(dry_run(tmp_path, **env))
    for kind in ("score", "filter"):
        command = [sys.executable, "-m", MODULES[step[kind][0]], *step[kind][1:], "--quiet"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr

    config = compose_sft(step["sft"])
    assert config.model.path == model
    sft = pq.read_table(config.data.train_files[0])
    assert sft.num_rows > 0
    tokenizer = AutoTokenizer.from_pretrained(model)
    dataset = create_sft_dataset(config.data.train_files, config.data, tokenizer, None)
    assert len(dataset) == sft.num_rows
    batch = next(iter(DataLoader(dataset, batch_size=2, collate_fn=SFTTensorCollator(config.data.pad_mode))))
    assert batch["input_ids"].is_nested and batch["loss_mask"].is_nested  # no_padding: nested tensors
    for item, messages in zip(dataset, sft.column("messages").to_pylist()):
        trained = [t for t, m in zip(item["input_ids"].tolist(), item["loss_mask"].tolist()) if m]
        assert tokenizer.decode(trained) == messages[-1]["content"] + "<|im_end|>\n"
