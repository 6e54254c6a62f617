"""Rollout batches as verl's agent loop and the ``restrain`` reward manager produce them (test helper).

A batch is a list of prompt groups with real response texts. :func:`score_batch` tokenizes each
response with the tiny test tokenizer and runs the reward manager that verl's own
``load_reward_manager`` resolves from the registry, on one rollout at a time as verl's reward
workers do; :func:`rollout_rows` then lays the rollouts out as the fields verl's agent loop puts in
TransferQueue (``_agent_loop_postprocess``: the dataset row's fields, ``extra_fields`` with the
``reward_extra_info``, ``rm_scores`` on the last token), in a shuffled order.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from verl_restrain import defaults
from verl_restrain.config import CONFIG_DIR

REF_SAMPLES = 16
"""n_ref, the base-model samples behind every group's c_ref."""

SWITCHES = [
    "algorithm.adv_estimator=restrain",
    "reward.reward_manager.name=restrain",
    "trainer.v1.trainer_mode=restrain",
]


@functools.lru_cache(maxsize=None)
def _compose(overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("restrain_trainer", overrides=list(overrides))


def compose_config(*overrides: str) -> DictConfig:
    """verl's ppo_trainer + restrain_trainer.yaml with the RESTRAIN switches and ``overrides``."""
    return copy.deepcopy(_compose((*SWITCHES, "actor_rollout_ref.rollout.n=8", *overrides)))


def updated(config: DictConfig, values: dict) -> DictConfig:
    """A copy of ``config`` with dotted keys set (faster than composing again; keys must exist)."""
    config = copy.deepcopy(config)
    for key, value in values.items():
        OmegaConf.update(config, key, value, merge=False)
    return config


@dataclass
class Group:
    uid: str
    data_source: str
    ground_truth: str | None
    responses: list[str]
    ref_majority_count: int = 16  # c_ref of the base model's n_ref = REF_SAMPLES samples
    offline_label: str | None = None
    kind: str | None = None  # the row's extra_info.kind, as this package's data preparation writes it
    extra_columns: dict = field(default_factory=dict)


def boxed(answer: str) -> str:
    return f"Let's compute step by step. The answer is \\boxed{{{answer}}}"


def default_groups() -> list[Group]:
    """Four prompts of 8 rollouts: a clear majority, equivalent forms, a tie, and no agreement."""
    return [
        Group(
            "uid-clear",
            "dapo_math_14k",
            "12",
            [boxed("12")] * 5 + [boxed("7"), boxed("7"), "I am not sure."],
            ref_majority_count=15,
            offline_label="12",
        ),
        Group(
            "uid-forms",
            "math500",
            "\\frac{1}{2}",
            [boxed("\\frac{1}{2}"), boxed("0.5"), boxed("1/2")] + [boxed("3")] * 4 + [boxed("4")],
            ref_majority_count=8,
            offline_label="3",
        ),
        Group(
            "uid-tie",
            "gpqa_diamond",
            "B",
            ["The answer is (B)"] * 3 + ["The answer is (C)"] * 3 + ["The answer is (A)", "Hmm."],
            ref_majority_count=12,
            offline_label=None,
        ),
        Group(
            "uid-spread",
            "aime24",
            "5",
            [boxed(str(k)) for k in range(1, 8)] + ["no idea"],
            ref_majority_count=3,
            offline_label="5",
        ),
    ]


def _dataproto(tokenizer, group: Group, response: str):
    """One rollout as verl's agent loop hands it to a reward worker (``AgentLoopWorker._compute_score``)."""
    from verl import DataProto
    from tensordict import TensorDict

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Solve the problem."}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    response_ids = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
    prompts = torch.tensor([prompt_ids])
    responses = torch.tensor([response_ids])
    input_ids = torch.cat([prompts, responses], dim=1)
    extra_info = {"index": 0} if group.kind is None else {"index": 0, "kind": group.kind}
    row = {"data_source": group.data_source, "uid": group.uid, "extra_info": extra_info}
    if group.ground_truth is not None:
        row["reward_model"] = {"style": "rule", "ground_truth": group.ground_truth}
    batch = TensorDict(
        {
            "prompts": prompts,
            "responses": responses,
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "position_ids": torch.arange(input_ids.shape[1]).unsqueeze(0),
        },
        batch_size=1,
    )
    non_tensor = {key: np.array([value], dtype=object) for key, value in row.items()}
    return DataProto(batch=batch, non_tensor_batch=non_tensor), len(response_ids)


def score_batch(manager, tokenizer, groups: list[Group]) -> list[dict]:
    """Run the reward manager on every rollout; one record per rollout, groups in order."""
    records = []
    for group in groups:
        for session, response in enumerate(group.responses):
            data, length = _dataproto(tokenizer, group, response)
            # verl awaits run_single on the event loop the manager captured at construction.
            result = manager.loop.run_until_complete(manager.run_single(data))
            records.append({"group": group, "session": session, "length": length, "result": result})
    return records


def rollout_rows(records: list[dict], seed: int = 0) -> tuple[list[str], list[dict]]:
    """TransferQueue keys and fields of every rollout, in a shuffled order."""
    order = np.random.default_rng(seed).permutation(len(records))
    keys, rows = [], []
    for index in order:
        record = records[index]
        group, length = record["group"], record["length"]
        rm_scores = torch.zeros(length)
        rm_scores[-1] = record["result"]["reward_score"]
        row = {
            "uid": group.uid,
            "data_source": group.data_source,
            "response_mask": torch.ones(length, dtype=torch.int64),
            "rm_scores": rm_scores,
            "extra_fields": {"reward_extra_info": record["result"]["reward_extra_info"]},
            defaults.REF_MAJORITY_COUNT_COLUMN: group.ref_majority_count,
            defaults.REF_NUM_SAMPLES_COLUMN: REF_SAMPLES,
            defaults.REF_MAJORITY_ANSWER_COLUMN: group.offline_label,
            **group.extra_columns,
        }
        if group.ground_truth is not None:
            row["reward_model"] = {"style": "rule", "ground_truth": group.ground_truth}
        keys.append(f"{group.uid}_{record['session']}_0")
        rows.append(row)
    return keys, rows


def rows_to_dataproto(rows: list[dict]):
    """The rows as the DataProto the trainer's advantage step builds from TransferQueue."""
    from verl import DataProto
    from tensordict import TensorDict

    width = max(row["response_mask"].numel() for row in rows)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    for i, row in enumerate(rows):
        mask[i, : row["response_mask"].numel()] = row["response_mask"]
    non_tensor = {}
    for key in rows[0]:
        if isinstance(rows[0][key], torch.Tensor):
            continue
        values = np.empty(len(rows), dtype=object)
        for i, row in enumerate(rows):
            values[i] = row.get(key)
        non_tensor[key] = values
    return DataProto(batch=TensorDict({"response_mask": mask}, batch_size=len(rows)), non_tensor_batch=non_tensor)
