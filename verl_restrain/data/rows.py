"""One benchmark item and the verl row it becomes.

verl's ``RLHFDataset`` reads every parquet file with ``datasets`` and concatenates the validation
files, which only works when all files share one Arrow schema. Every row this package writes
therefore has exactly the columns and nested fields of :data:`ROW_SCHEMA`, whatever the benchmark
(empty strings / lists where a field does not apply):

    data_source   stable benchmark name, e.g. ``"math500"``
    prompt        [{"role": "user", "content": <template text>}]
    ability       ``"math"`` or ``"stem"``
    reward_model  {"style": "rule", "ground_truth": <gold answer>}
    extra_info    {"index": position in the file, "split", "kind": answer kind for
                   ``verl_restrain.answers`` ("math" | "choice"), "source_id": id in the source
                   data set, "subject", "level", "options": the options in the order shown
                   (multiple choice), "shuffle_seed": seed of that order (-1 if not shuffled)}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from verl_restrain.jobs.files import atomic_write_table

# The one instruction every math prompt ends with; the answer is read from the last \boxed{}.
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# Multiple choice: the options follow the question as "A) ...", and the letter goes in \boxed{}.
CHOICE_INSTRUCTION = (
    "Please reason step by step, and put the letter of the correct option ({letters}) within \\boxed{{}}."
)

ROW_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("index", pa.int64()),
                    ("split", pa.string()),
                    ("kind", pa.string()),
                    ("source_id", pa.string()),
                    ("subject", pa.string()),
                    ("level", pa.string()),
                    ("options", pa.list_(pa.string())),
                    ("shuffle_seed", pa.int64()),
                ]
            ),
        ),
    ]
)

# Key of the parquet footer entry that records how a file was made.
PROVENANCE_KEY = b"verl_restrain.prepare"


def option_letters(count: int) -> list[str]:
    """``["A", "B", ...]`` for ``count`` options (at most 26)."""
    if not 2 <= count <= 26:
        raise ValueError(f"a multiple-choice item needs 2 to 26 options, got {count}")
    return [chr(ord("A") + i) for i in range(count)]


@dataclass(frozen=True)
class Problem:
    """One benchmark item before formatting.

    ``answer`` is the gold: the final answer for math, the option letter for multiple choice.
    ``options`` is non-empty exactly for multiple choice, already in the order shown.
    """

    question: str
    answer: str
    source_id: str
    options: tuple[str, ...] = ()
    subject: str = ""
    level: str = ""
    shuffle_seed: int = -1

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise ValueError(f"item {self.source_id!r} has an empty question")
        if not self.answer.strip():
            raise ValueError(f"item {self.source_id!r} has an empty gold answer")
        if self.options and self.answer not in option_letters(len(self.options)):
            raise ValueError(f"item {self.source_id!r}: gold {self.answer!r} is not an option letter")

    @property
    def kind(self) -> str:
        return "choice" if self.options else "math"


def render_question(problem: Problem) -> str:
    """The user message: the question, the lettered options if any, and the answer instruction."""
    if not problem.options:
        return f"{problem.question.strip()}\n\n{MATH_INSTRUCTION}"
    letters = option_letters(len(problem.options))
    lines = "\n".join(f"{letter}) {text.strip()}" for letter, text in zip(letters, problem.options))
    instruction = CHOICE_INSTRUCTION.format(letters=", ".join(letters[:-1]) + f" or {letters[-1]}")
    return f"{problem.question.strip()}\n\n{lines}\n\n{instruction}"


def make_row(problem: Problem, *, data_source: str, ability: str, split: str, index: int) -> dict:
    """The verl row of ``problem`` (see the module docstring for the fields)."""
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": render_question(problem)}],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": problem.answer},
        "extra_info": {
            "index": index,
            "split": split,
            "kind": problem.kind,
            "source_id": problem.source_id,
            "subject": problem.subject,
            "level": problem.level,
            "options": list(problem.options),
            "shuffle_seed": problem.shuffle_seed,
        },
    }


def rows_to_table(rows: Sequence[dict], provenance: dict | None = None) -> pa.Table:
    """Arrow table of ``rows`` in :data:`ROW_SCHEMA`, with ``provenance`` in the footer metadata."""
    table = pa.Table.from_pylist(list(rows), schema=ROW_SCHEMA)
    if provenance is not None:
        table = table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True).encode()})
    return table


def write_rows(rows: Sequence[dict], path: str | Path, provenance: dict | None = None) -> Path:
    """Write ``rows`` to ``path`` as parquet (:func:`verl_restrain.jobs.files.atomic_write_table`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_table(rows_to_table(rows, provenance), path)


def read_provenance(path: str | Path) -> dict:
    """The provenance dict stored by :func:`write_rows` (empty if the file has none)."""
    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}
