"""The scripted prompts of the end-to-end runs, their configuration, and readers of what a run left.

Every training prompt has a pool of N scripted (response, intended answer) pairs; the rollout server
returns the pool, one response per sampled session, so each group's votes are known in advance. The
intended answer is the label the tests' references use (None: no final answer); equivalent written
forms (``0.5``, ``\\frac{1}{2}``) carry one label. The datasets carry the offline scoring columns
(``restrain_ref_*``) as ``restrain-score-prompts`` writes them.

Batches: 3 prompts x 8 rollouts per step; the actor's mini-batch is 2 prompts (16 rows), so verl pads
each step's 24 rows to 32.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from verl_cpu.harness import RunResult, compose, main_checks, run_task

from verl_restrain import defaults

N = 8  # rollouts per training prompt
VAL_N = 4
BATCH = 3
MINI_BATCH = 2
PAD_ROWS = 8  # 24 rows padded to a multiple of 2 x 8
SIGMA, CENTER, KAPPA, DELTA, EPS = defaults.SIGMA, defaults.CENTER, defaults.KAPPA, defaults.DELTA, defaults.EPSILON
NO_ANSWER = "I am not sure how to finish this one."


def boxed(answer: str) -> str:
    return f"Let me compute this step by step. The final answer is \\boxed{{{answer}}}."


@dataclass(frozen=True)
class Prompt:
    """A dataset row, its offline scoring columns and its scripted rollouts (response, intended answer)."""

    question: str
    data_source: str
    gold: str
    samples: tuple[tuple[str, str | None], ...]
    ref_majority_count: int = 16
    ref_num_samples: int = 16
    ref_majority_answer: str | None = None

    @property
    def responses(self) -> list[str]:
        return [text for text, _ in self.samples]

    def label(self, text: str) -> str | None:
        """The intended answer of one of this prompt's scripted responses."""
        labels = {label for written, label in self.samples if written == text}
        assert len(labels) == 1, f"{text!r} is not a scripted response of {self.question!r}"
        return labels.pop()


def answers(*counts: tuple[str | None, int], forms: dict[str, list[str]] | None = None) -> tuple:
    """Samples from (answer, count) pairs; ``forms`` gives written forms of an answer to cycle through."""
    samples = []
    for answer, count in counts:
        written = (forms or {}).get(answer, [answer])
        for i in range(count):
            samples.append((NO_ANSWER, None) if answer is None else (boxed(written[i % len(written)]), answer))
    return tuple(samples)


def choices(*letters: str, sentence: str = "Checking each option, the answer is ({}).") -> tuple:
    return tuple((sentence.format(letter), letter) for letter in letters)


HALF = {"1/2": ["\\frac{1}{2}", "0.5", "1/2", "\\dfrac{1}{2}"]}
SIX = {"6": ["6", "6.0", "\\frac{12}{2}"]}
EVEN, ODD = "Only one is even: the answer is ({}).", "So the answer is ({})."
TRAIN = [
    Prompt("[t0] What is 2 + 2?", "math500", "4", answers(("4", 5), ("5", 2), (None, 1)), 16, 16, "4"),
    Prompt("[t1] Halve one.", "math500", "1/2", answers(("1/2", 4), ("2", 3), (None, 1), forms=HALF), 12, 16, "0.5"),
    # M(x) = 3 < kappa: penalised. The base model's answer (8) is not this sample's majority.
    Prompt("[t2] What is 3 + 4?", "aime24", "7", answers(("7", 3), ("8", 2), ("9", 1), (None, 2)), 8, 16, "8"),
    Prompt("[t3] What is 2 * 3?", "aime24", "6", answers(("6", 8)), 16, 16, "6"),
    Prompt("[t4] What is 5 + 5?", "math500", "10", answers((None, 8)), 4, 16, None),
    Prompt("[t5] Which is prime, (A) 4 (B) 5 (C) 6?", "gpqa_diamond", "B", choices(*"BBBBBCCA"), 12, 16, "B"),
    Prompt("[t6] What is 6 + 6?", "math500", "12", answers(("12", 6), ("13", 2)), 16, 16, "12"),
    Prompt("[t7] What is 1 + 2?", "aime24", "3", answers(("3", 4), ("1", 2), ("2", 2)), 10, 16, "3"),  # M = kappa
    Prompt("[t8] What is 3 * 3?", "math500", "9", answers(("9", 5), (None, 3)), 14, 16, "9"),
]
OFFLINE_LABELS = {
    p.question: label for p, label in zip(TRAIN, ["4", "1/2", "8", "6", None, "B", "12", "3", "9"], strict=True)
}
"""restrain_ref_majority_answer of each training prompt, as an intended-answer label (0.5 is 1/2)."""
VALIDATION = [
    Prompt("[v0] Write one half.", "math500", "1/2", answers(("1/2", VAL_N), forms=HALF)),
    Prompt("[v1] What is 2 + 3?", "math500", "5", answers(("6", 3), (None, 1), forms=SIX)),
    Prompt("[v2] Which is even, (A) 3 (B) 5 (C) 4?", "gpqa_diamond", "C", choices(*"CCCC", sentence=EVEN)),
    Prompt("[v3] Which is odd, (A) 3 (B) 4 (C) 6?", "gpqa_diamond", "A", choices(*"BBBB", sentence=ODD)),
]
BY_QUESTION = {prompt.question: prompt for prompt in TRAIN + VALIDATION}


# ----------------------------------------------------------------------------------------------------
# Reference arithmetic shared by the tests, from the scripted answers only.


def g(share: float) -> float:
    """g(f) = exp(-(f - k)^2 / (2 sigma^2))."""
    return math.exp(-((share - CENTER) ** 2) / (2 * SIGMA**2))


def u_x(prompt: Prompt) -> float:
    """The prompt weight g(c_ref / n) from the stored counts."""
    return g(prompt.ref_majority_count / prompt.ref_num_samples)


def grpo(rewards: list[float]) -> list[float]:
    """verl's GRPO normalisation of one group: (r - mean) / (unbiased std + eps)."""
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
    return [(r - mean) / (std + EPS) for r in rewards]


# ----------------------------------------------------------------------------------------------------
# Datasets and runs.


def write_dataset(path: Path, prompts: list[Prompt], split: str) -> str:
    """A parquet as the scoring job leaves it: verl's columns plus the restrain_* columns."""
    rows = {
        "data_source": [p.data_source for p in prompts],
        "prompt": [[{"role": "user", "content": p.question}] for p in prompts],
        "ability": ["math"] * len(prompts),
        "reward_model": [{"style": "rule", "ground_truth": p.gold} for p in prompts],
        "extra_info": [{"index": i, "split": split} for i in range(len(prompts))],
        defaults.REF_MAJORITY_COUNT_COLUMN: [p.ref_majority_count for p in prompts],
        defaults.REF_NUM_SAMPLES_COLUMN: [p.ref_num_samples for p in prompts],
        defaults.REF_MAJORITY_ANSWER_COLUMN: pa.array([p.ref_majority_answer for p in prompts], pa.string()),
    }
    pq.write_table(pa.table(rows), path)
    return str(path)


@dataclass
class Session:
    """A tiny model and the two datasets in ``workdir``; :meth:`run` trains on them."""

    workdir: Path
    model_dir: str

    def __post_init__(self):
        self.train_file = write_dataset(self.workdir / "train.parquet", TRAIN, "train")
        self.val_file = write_dataset(self.workdir / "val.parquet", VALIDATION, "test")

    def overrides(self, name: str, *, method: str, loop: str, dp: int, steps: int, extra=()) -> list[str]:
        return [
            "algorithm.adv_estimator=restrain",
            "reward.reward_manager.name=restrain",
            f"trainer.v1.trainer_mode={loop}",
            f"restrain_method={method}",
            f"data.train_files={self.train_file}",
            f"data.val_files={self.val_file}",
            f"data.train_batch_size={BATCH}",
            "data.shuffle=false",
            "data.max_prompt_length=128",
            "data.max_response_length=48",
            "data.dataloader_num_workers=0",
            f"actor_rollout_ref.model.path={self.model_dir}",
            "actor_rollout_ref.actor.optim.lr=1e-3",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={MINI_BATCH}",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
            "actor_rollout_ref.rollout.name=scripted",
            f"actor_rollout_ref.rollout.n={N}",
            f"actor_rollout_ref.rollout.tensor_model_parallel_size={dp}",  # one scripted replica for all ranks
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
            "actor_rollout_ref.rollout.agent.num_workers=1",
            f"actor_rollout_ref.rollout.val_kwargs.n={VAL_N}",
            "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
            "reward.num_workers=1",
            "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
            f"trainer.n_gpus_per_node={dp}",
            "trainer.nnodes=1",
            "trainer.logger=[file]",
            "trainer.project_name=restrain_e2e",
            f"trainer.experiment_name={name}",
            f"trainer.total_training_steps={steps}",
            f"trainer.default_local_dir={self.workdir / name / 'checkpoints'}",
            f"trainer.validation_data_dir={self.workdir / name / 'validation'}",
            "trainer.save_freq=-1",
            "trainer.test_freq=-1",
            "trainer.val_before_train=false",
            "+ray_kwargs.ray_init.num_cpus=4",
            "+ray_kwargs.ray_init.include_dashboard=false",
            "+ray_kwargs.ray_init.log_to_driver=false",
            *extra,
        ]

    def run(self, name: str, log: str, *, method: str, loop="restrain", dp=1, steps=2, extra=()) -> RunResult:
        """Check and train as ``python -m verl.trainer.main_ppo <overrides>`` would; the log is ``<log>.jsonl``."""
        config = compose(self.overrides(name, method=method, loop=loop, dp=dp, steps=steps, extra=extra))
        main_checks(config)
        script = {prompt.question: prompt.responses for prompt in TRAIN + VALIDATION}
        return run_task(config, script, self.workdir / f"{log}.jsonl")


# ----------------------------------------------------------------------------------------------------
# What the actor received.


def trained_groups(run: RunResult, tokenizer) -> dict[int, dict[str, list[dict]]]:
    """update_actor call -> prompt uid -> its rows in sampling order, each with its prompt and label.

    Padding rows (uid ``pad...``) are left out; :func:`padding_rows` returns them.
    """
    steps: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in run.actor_rows():
        if not row["uid"].startswith("pad"):
            prompt = BY_QUESTION[row["question"]]
            label = prompt.label(tokenizer.decode(row["responses"], skip_special_tokens=True))
            steps[row["call"]][row["uid"]].append({**row, "prompt": prompt, "label": label})
    return {
        call: {uid: sorted(rows, key=lambda r: r["session_id"]) for uid, rows in groups.items()}
        for call, groups in steps.items()
    }


def padding_rows(run: RunResult) -> dict[int, list[dict]]:
    rows = defaultdict(list)
    for row in run.actor_rows():
        if row["uid"].startswith("pad"):
            rows[row["call"]].append(row)
    return rows


def assert_advantages(groups: dict[str, list[dict]], reference) -> None:
    """Each group is its prompt's whole pool, and each row's advantage is ``reference(prompt, labels)[i]``
    on every one of its tokens."""
    for rows in groups.values():
        prompt = rows[0]["prompt"]
        assert {row["question"] for row in rows} == {prompt.question}
        assert [row["session_id"] for row in rows] == list(range(N))
        assert Counter(row["label"] for row in rows) == Counter(label for _, label in prompt.samples)
        expected = reference(prompt, [row["label"] for row in rows])
        for row, value in zip(rows, expected, strict=True):
            assert row["response_mask"] == [1] * len(row["responses"])
            torch.testing.assert_close(
                torch.tensor(row["advantages"]), torch.full((len(row["responses"]),), value), rtol=1e-5, atol=1e-5
            )


def vote_metrics(groups: dict[str, list[dict]], kappa: int, prompt_weights: bool) -> dict[str, float]:
    """The step's restrain/ vote metrics, from its real prompts only."""
    labels = [[row["label"] for row in rows] for rows in groups.values()]
    majority_counts = [max(Counter(x for x in group if x is not None).values(), default=0) for group in labels]
    weights = [u_x(rows[0]["prompt"]) if prompt_weights else 1.0 for rows in groups.values()]
    return {
        "restrain/penalized_fraction": sum(m < kappa for m in majority_counts) / len(labels),
        "restrain/majority_ratio": sum(m / N for m in majority_counts) / len(labels),
        "restrain/no_answer_fraction": sum(x is None for group in labels for x in group) / (N * len(labels)),
        "restrain/prompt_weight_mean": sum(weights) / len(weights),
    }
