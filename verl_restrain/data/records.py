"""How one record of a source data set becomes a :class:`~verl_restrain.data.rows.Problem`.

Field names are matched case-insensitively (:func:`pick`), so the hub's files, the bundled copies
and the usual re-distributions (e.g. the Qwen2.5-Math evaluation files) all parse alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from verl_restrain.data.rows import Problem, option_letters

# Seed of the option order of GPQA-Diamond (the source lists the correct answer first).
CHOICE_SHUFFLE_SEED = 0

# MMLU's STEM category: the 18 subjects of the "STEM" group of the MMLU paper's categorisation
# (physics, chemistry, biology, computer science, math, engineering), 3,018 test questions. The
# same list makes up the ``mmlu_stem`` evaluation set of Qwen2.5-Math and math-evaluation-harness.
MMLU_STEM_SUBJECTS = (
    "abstract_algebra",
    "astronomy",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "electrical_engineering",
    "elementary_mathematics",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_mathematics",
    "high_school_physics",
    "high_school_statistics",
    "machine_learning",
)

# DAPO-Math-17k wraps every problem in an "Answer:" instruction; we strip it and use our template.
DAPO_PREFIX = "Solve the following math problem step by step."
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
# CJK ideographs, the filter open-r1 uses to split DAPO-Math-17k into its "en" and "cn" configs.
CJK = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff]")


def pick(record: Mapping, *names: str, required: bool = True) -> Any:
    """The first non-empty field of ``record`` among ``names`` (case-insensitive; ``a.b`` for nesting)."""
    lowered = {str(k).lower(): v for k, v in record.items()}
    for name in names:
        head, _, rest = name.partition(".")
        value = lowered.get(head.lower())
        if rest and isinstance(value, Mapping):
            value = pick(value, rest, required=False)
        elif rest:
            value = None
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value
    if required:
        raise KeyError(f"record has none of the fields {list(names)}; its fields are {sorted(record)}")
    return None


def as_text(value: Any) -> str:
    """A question as text: a string, or the user turn of a chat-message list."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and isinstance(value[0], Mapping):
        users = [m["content"] for m in value if m.get("role", "user") == "user"]
        if users:
            return users[-1]
    raise ValueError(f"cannot read a question from {type(value).__name__}: {str(value)[:80]!r}")


def as_answer(value: Any) -> str:
    """A gold answer as text; integral floats lose their ``.0`` (JSON loaders turn 27 into 27.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def as_integer_answer(value: Any) -> str:
    """Competition answers (AIME, AMC) are integers: ``"025"`` and ``25.0`` both become ``"25"``."""
    text = as_answer(value)
    return str(int(text)) if re.fullmatch(r"[+-]?\d+", text) else text


def source_id(record: Mapping, index: int) -> str:
    value = pick(record, "id", "unique_id", "record id", "idx", "extra_info.index", required=False)
    return str(index if value is None else value)


def parse_math(record: Mapping, index: int) -> Problem:
    """A free-form math item: question, final answer, and subject/level where given."""
    level = pick(record, "level", required=False)
    return Problem(
        question=as_text(pick(record, "problem", "question", "prompt")),
        answer=as_answer(pick(record, "answer", "ground_truth", "reward_model.ground_truth")),
        source_id=source_id(record, index),
        subject=str(pick(record, "subject", "type", required=False) or ""),
        level="" if level is None else str(level),
    )


def parse_competition(record: Mapping, index: int) -> Problem:
    """An AIME/AMC item (integer answers)."""
    problem = parse_math(record, index)
    return Problem(problem.question, as_integer_answer(problem.answer), problem.source_id)


def strip_dapo_instruction(text: str) -> str:
    """The bare problem of a DAPO-Math prompt (its "Answer:" instruction removed)."""
    text = text.strip()
    if text.startswith(DAPO_PREFIX):
        _, sep, body = text.partition("\n\n")
        text = body if sep else text
    return text.split(DAPO_SUFFIX, 1)[0].strip()


def parse_dapo(record: Mapping, index: int) -> Problem:
    """A DAPO-Math-17k item, from the original data set or from ``open-r1``'s processed copy."""
    return Problem(
        question=strip_dapo_instruction(as_text(pick(record, "source_prompt", "prompt", "problem", "question"))),
        answer=as_answer(pick(record, "reward_model.ground_truth", "solution", "answer", "ground_truth")),
        source_id=source_id(record, index),
    )


def shuffled_options(options: Sequence[str], seed: int, index: int) -> tuple[list[str], list[int]]:
    """``options`` in a fixed pseudo-random order drawn from ``(seed, index)``, and that permutation."""
    order = np.random.default_rng([seed, index]).permutation(len(options)).tolist()
    return [options[i] for i in order], order


def parse_choice(record: Mapping, index: int, *, seed: int = CHOICE_SHUFFLE_SEED) -> Problem:
    """A multiple-choice item in one of two layouts.

    * GPQA's: ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``. The options are shuffled
      with :func:`shuffled_options` (the source always lists the correct answer first).
    * MMLU's: ``question``, ``choices`` (list), ``answer`` (0-based index or letter), kept in order.
    """
    question = as_text(pick(record, "question", "problem"))
    subject = str(pick(record, "subject", "type", "subdomain", "high-level domain", required=False) or "")
    correct = pick(record, "correct answer", required=False)
    if correct is not None:
        options = [str(correct).strip()] + [
            str(pick(record, f"incorrect answer {k}")).strip() for k in (1, 2, 3)
        ]
        shown, order = shuffled_options(options, seed, index)
        gold = option_letters(len(shown))[order.index(0)]
        return Problem(question, gold, source_id(record, index), tuple(shown), subject, shuffle_seed=seed)
    options = [str(o).strip() for o in pick(record, "choices", "options")]
    letters = option_letters(len(options))
    answer = pick(record, "answer", "label")
    if isinstance(answer, str) and answer.strip().upper() in letters:
        gold = answer.strip().upper()
    else:
        gold = letters[int(answer)]
    return Problem(question, gold, source_id(record, index), tuple(options), subject)


def dedup_english(problems: list[Problem]) -> list[Problem]:
    """Keep the first item of each distinct problem text, and only problems without CJK characters."""
    seen: set[str] = set()
    kept = []
    for problem in problems:
        key = " ".join(problem.question.split())
        if key in seen or CJK.search(key):
            continue
        seen.add(key)
        kept.append(problem)
    return kept


def stem_subjects_only(problems: list[Problem]) -> list[Problem]:
    """MMLU items of the STEM subjects (files without a subject column are taken as already STEM)."""
    if all(not p.subject for p in problems):
        return problems
    return [p for p in problems if p.subject in MMLU_STEM_SUBJECTS]
