"""Benchmark: the answer code against naive Math-Verify and the datasets' own labels, on real output.

Reads ``../shared/data/real_responses/`` (see its SOURCES.md; ``--data`` points elsewhere):

- ``tora``: ToRA-70B and ToRA-Code-34B on GSM8K (two responses per question, paired by ``idx``);
  the dataset's label is ToRA's own extracted answer (``pred``) equal to ``gt`` as a number;
- ``math``: the MATH test set's human solutions, graded against their own last box (the label is
  "correct" for every one);
- ``gsm``: four GPT-3 solutions per GSM8K test question, ending in a line ``A: <n>``, with the
  upstream ``is_correct`` labels; the gold is the ``A:`` line of ``ground_truth``.

For each it prints the no-answer rate of ``extract_answer``; the agreement of ``is_correct`` with
naive Math-Verify, ``verify(parse("$" + gold + "$"), parse(response))``, and with the labels; the
agreement of ``cluster_answers`` with naive Math-Verify's partition (``parse`` every response,
``verify`` both ways on every pair, connected components) on the multi-response groups; then every
class of disagreement with one example. Then the bars:

- ToRA: ``is_correct`` agrees with naive Math-Verify on at least 99.5% of the responses compared;
- MATH: every solution holding a single box grades correct against its own box;
- MATH: every gold answer written with ``,\\!`` thousands separators accepts the plain number;
- GSM: an answer is extracted from at least 99% of the solutions, and ``is_correct`` agrees with
  the upstream labels on at least 99.5% of those.

Exits 1 when a bar is missed. Naive Math-Verify is the slow part (3 to 5 minutes on one core for
all 12,914 responses): ``--math-verify-limit N`` compares only the first N questions of each
dataset with it, while the answer code and the bars that need no Math-Verify still run on
everything; ``--jobs`` spreads Math-Verify over processes.

    python scripts/bench_real_responses.py                          # everything
    python scripts/bench_real_responses.py --math-verify-limit 100  # Math-Verify on a subset
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "real_responses"

TORA_FILES = ("tora/tora-70b-v1.0_gsm8k.jsonl", "tora/tora-code-34b-v1.0_gsm8k.jsonl")
MATH_FILE = "math_test/test.jsonl"
GSM_FILE = "grade_school_math/example_model_solutions.jsonl"
GSM_SOLVERS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")

TORA_AGREEMENT_BAR = 0.995
GSM_EXTRACTION_BAR = 0.99
GSM_AGREEMENT_BAR = 0.995
TAIL_CHARS = 240
"""How much of a response's end an example shows."""


@dataclass
class Question:
    """One question: its gold answer, its responses and, per response, the dataset's label."""

    dataset: str
    key: str
    gold: str
    responses: list[str]
    labels: list[bool | None]


@dataclass
class Tally:
    """Counts of one comparison, with every disagreement filed under its class."""

    agree: int = 0
    total: int = 0
    classes: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))

    def add(self, agrees: bool, cls: str | None = None, example: dict | None = None) -> None:
        self.total += 1
        if agrees:
            self.agree += 1
        else:
            self.classes[cls or "disagreement"].append(example or {})

    @property
    def rate(self) -> float:
        return self.agree / self.total if self.total else math.nan

    def line(self) -> str:
        return f"{self.agree}/{self.total} ({100 * self.rate:.2f}%)" if self.total else "not measured"


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def last_box(text: str) -> str | None:
    """Content of the last ``\\boxed{}`` (brace matched): the MATH dataset's own gold convention."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    open_pos = text.find("{", start)
    if open_pos < 0:
        return None
    depth = 0
    for i in range(open_pos, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_pos + 1 : i]
    return None


def _as_number(text: str) -> float | None:
    try:
        return float(str(text).replace(",", "").strip())
    except ValueError:
        return None


def _tora_label(pred: str, gold: str) -> bool:
    """ToRA's grading of its own extracted answer on GSM8K: equal as numbers (relative 1e-4)."""
    a, b = _as_number(pred), _as_number(gold)
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-4)


def load_tora(data: Path) -> list[Question]:
    models = [{row["idx"]: row for row in _read_jsonl(data / name)} for name in TORA_FILES]
    questions = []
    for idx in sorted(set(models[0]) & set(models[1])):
        rows = [model[idx] for model in models]
        questions.append(
            Question(
                "tora",
                f"idx {idx}",
                rows[0]["gt"],
                [row["code"][0] for row in rows],
                [_tora_label(row["pred"][0], row["gt"]) for row in rows],
            )
        )
    return questions


def load_math(data: Path) -> list[Question]:
    questions = []
    for row in _read_jsonl(data / MATH_FILE):
        gold = last_box(row["solution"])
        if gold is not None:
            questions.append(Question("math", f"idx {row['idx']}", gold, [row["solution"]], [True]))
    return questions


def gsm_final_line(text: str) -> str | None:
    """The ``<n>`` of a final line ``A: <n>``."""
    match = re.search(r"^A:[ \t]*(\S.*?)[ \t]*\Z", text.strip(), flags=re.M)
    return match.group(1) if match else None


def load_gsm(data: Path) -> list[Question]:
    questions = []
    for number, row in enumerate(_read_jsonl(data / GSM_FILE)):
        gold = gsm_final_line(row["ground_truth"])
        if gold is not None:
            questions.append(
                Question(
                    "gsm",
                    f"line {number + 1}",
                    gold,
                    [row[solver]["solution"] for solver in GSM_SOLVERS],
                    [bool(row[solver]["is_correct"]) for solver in GSM_SOLVERS],
                )
            )
    return questions


# ---- naive Math-Verify (runs in pool workers) ------------------------------------------------------


def _naive_init() -> None:
    logging.disable(logging.WARNING)  # Math-Verify logs every timeout and parse failure


def naive_math_verify(question: Question) -> tuple[list[bool], list[int], list[str | None]]:
    """Naive Math-Verify on one question: per response the verdict against the gold and the string
    it read, and the partition of the responses (connected components of ``verify`` both ways)."""
    from math_verify import parse, verify

    gold = parse(f"${question.gold}$")
    parsed = [parse(response) for response in question.responses]
    verdicts = [bool(gold and answer and verify(gold, answer)) for answer in parsed]
    parent = list(range(len(parsed)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(parsed)):
        for j in range(i + 1, len(parsed)):
            if parsed[i] and parsed[j] and verify(parsed[i], parsed[j]) and verify(parsed[j], parsed[i]):
                parent[root(j)] = root(i)
    first: dict[int, int] = {}
    ids = [-1 if not answer else first.setdefault(root(i), len(first)) for i, answer in enumerate(parsed)]
    read = [str(answer[-1]) if answer else None for answer in parsed]
    return verdicts, ids, read


def run_naive(questions: list[Question], jobs: int) -> list[tuple[list[bool], list[int], list[str | None]]]:
    progress = dict(total=len(questions), desc="naive math-verify", file=sys.stderr)
    if jobs <= 1:
        _naive_init()
        return [naive_math_verify(question) for question in tqdm(questions, **progress)]
    with multiprocessing.get_context("spawn").Pool(jobs, initializer=_naive_init) as pool:
        return list(tqdm(pool.imap(naive_math_verify, questions, chunksize=4), **progress))


# ---- comparison ------------------------------------------------------------------------------------


def _tail(text: str) -> str:
    tail = text[-TAIL_CHARS:].replace("\n", "\\n")
    return ("..." if len(text) > TAIL_CHARS else "") + tail


def _cause(answers, ours: str | None, mv_read: str | None) -> str:
    """Why our verdict differs from Math-Verify's: which side read no answer, or a different one."""
    if ours is None:
        return "no answer extracted (Math-Verify read one)"
    if mv_read is None:
        return "Math-Verify read no answer"
    theirs = answers.canonicalize(mv_read)
    if theirs is not None and answers.same_answer(ours, theirs):
        return "same answer read, equivalence differs"
    return "another answer read"


@dataclass
class Report:
    responses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    no_answer: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    vs_math_verify: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    vs_labels: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    clusters: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    single_box: Tally = field(default_factory=Tally)
    thousands_golds: Tally = field(default_factory=Tally)
    gsm_extracted: Tally = field(default_factory=Tally)
    gsm_agreement: Tally = field(default_factory=Tally)


def _example(question: Question, i: int, ours, **extra) -> dict:
    return {"where": f"{question.dataset} {question.key} #{i}", "gold": question.gold, "ours": ours,
            **extra, "tail": _tail(question.responses[i])}


def compare(questions: list[Question], naive: dict[int, tuple], report: Report) -> None:
    """Our verdicts, extractions and clusters for every question; naive Math-Verify's where given
    (``naive``: question index -> ``naive_math_verify`` result)."""
    from verl_restrain import answers

    for q, question in enumerate(tqdm(questions, desc="answer code", file=sys.stderr)):
        name = question.dataset
        extracted = [answers.extract_answer(response) for response in question.responses]
        verdicts = [answers.is_correct(response, question.gold) for response in question.responses]
        ids = answers.cluster_extracted(extracted) if len(extracted) > 1 else None
        for i, (ours, verdict, label) in enumerate(zip(extracted, verdicts, question.labels)):
            report.responses[name] += 1
            report.no_answer[name] += ours is None
            if label is not None:
                cls = f"ours {verdict}, label {label}" + (": no answer extracted" if ours is None else "")
                report.vs_labels[name].add(verdict == label, cls, _example(question, i, ours))
            if name == "gsm":
                report.gsm_extracted.add(ours is not None, "no answer extracted", _example(question, i, ours))
                if ours is not None:
                    report.gsm_agreement.add(verdict == label, cls, _example(question, i, ours))
        if name == "math" and len(re.findall(r"\\boxed|\\fbox", question.responses[0])) == 1:
            report.single_box.add(verdicts[0], "single-box solution graded wrong", _example(question, 0, extracted[0]))
        if name == "math" and ",\\!" in question.gold:
            plain = re.sub(r",\\!\s*", "", question.gold)
            accepted = answers.is_correct(f"$\\boxed{{{plain}}}$", question.gold)
            report.thousands_golds.add(accepted, "plain number rejected",
                                       {"where": f"math {question.key}", "gold": question.gold, "plain": plain})
        if q not in naive:
            continue
        mv_verdicts, mv_ids, mv_read = naive[q]
        for i, (ours, verdict, theirs) in enumerate(zip(extracted, verdicts, mv_verdicts)):
            cls = f"ours {verdict}, Math-Verify {theirs}: {_cause(answers, ours, mv_read[i])}"
            report.vs_math_verify[name].add(verdict == theirs, cls, _example(question, i, ours, math_verify=mv_read[i]))
        if ids is not None:
            joined = "same partition"
            if ids != mv_ids:
                ours_pairs = {(i, j) for i in range(len(ids)) for j in range(i) if ids[i] == ids[j] >= 0}
                mv_pairs = {(i, j) for i in range(len(ids)) for j in range(i) if mv_ids[i] == mv_ids[j] >= 0}
                ours_missing = any(i < 0 <= j for i, j in zip(ids, mv_ids))
                theirs_missing = any(j < 0 <= i for i, j in zip(ids, mv_ids))
                if ours_missing or theirs_missing:
                    joined = ("no answer extracted (Math-Verify read one)" if ours_missing
                              else "Math-Verify read no answer (ours did)")
                elif ours_pairs - mv_pairs:
                    joined = "ours joins answers Math-Verify keeps apart"
                else:
                    joined = "ours keeps apart answers Math-Verify joins"
            report.clusters[name].add(ids == mv_ids, joined, {
                "where": f"{name} {question.key}", "ours": extracted, "ours_ids": ids,
                "math_verify": mv_read, "math_verify_ids": mv_ids})


def _print_classes(title: str, tally: Tally, show: int) -> None:
    for cls, examples in sorted(tally.classes.items(), key=lambda item: -len(item[1])):
        print(f"  [{title}] {cls}: {len(examples)}")
        for example in examples[:show]:
            for key, value in example.items():
                print(f"      {key}: {value!r}")


def bars(report: Report) -> list[tuple[str, Tally, float]]:
    """(bar, what was measured, required rate) for every bar; a bar is met when the rate reaches it."""
    return [
        ("ToRA: is_correct agrees with naive Math-Verify", report.vs_math_verify["tora"], TORA_AGREEMENT_BAR),
        ("MATH: single-box solutions graded correct against their own box", report.single_box, 1.0),
        ("MATH: ',\\!' gold answers accept the plain number", report.thousands_golds, 1.0),
        ("GSM: solutions with an extracted answer", report.gsm_extracted, GSM_EXTRACTION_BAR),
        ("GSM: of those, is_correct agrees with the upstream labels", report.gsm_agreement, GSM_AGREEMENT_BAR),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"the real_responses folder (default: {DEFAULT_DATA})")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N questions of each dataset, for everything")
    parser.add_argument("--math-verify-limit", type=int, default=None,
                        help="compare only the first N questions of each dataset with naive Math-Verify "
                        "(default: all; 0: none)")
    parser.add_argument("--jobs", type=int, default=1, help="processes for naive Math-Verify (default 1)")
    parser.add_argument("--show", type=int, default=1, help="examples printed per disagreement class (default 1)")
    args = parser.parse_args(argv)
    if not (args.data / "SOURCES.md").is_file():
        parser.error(f"no real_responses folder at {args.data} (expected its SOURCES.md); pass --data")
    for option in ("limit", "math_verify_limit"):
        if getattr(args, option) is not None and getattr(args, option) < 0:
            parser.error(f"--{option.replace('_', '-')} must be >= 0")

    logging.disable(logging.WARNING)
    from verl_restrain.answers.sympy_pool import warm_up

    warm_up()
    report = Report()
    start = time.perf_counter()
    timings = {}
    for loader in (load_tora, load_math, load_gsm):
        questions = loader(args.data)[: args.limit]
        compared = questions[: args.math_verify_limit]
        t0 = time.perf_counter()
        naive = dict(enumerate(run_naive(compared, args.jobs))) if compared else {}
        t1 = time.perf_counter()
        compare(questions, naive, report)
        timings[loader.__name__.removeprefix("load_")] = (time.perf_counter() - t1, t1 - t0, len(compared))
    print(f"data: {args.data}  ({time.perf_counter() - start:.1f} s)")

    for name in ("tora", "math", "gsm"):
        ours_s, naive_s, compared = timings[name]
        print(f"\n== {name}: {report.responses[name]} responses ==")
        print(f"  no answer extracted:               {report.no_answer[name]} "
              f"({100 * report.no_answer[name] / max(1, report.responses[name]):.2f}%)")
        print(f"  is_correct vs naive Math-Verify:   {report.vs_math_verify[name].line()}"
              f"  [{compared} questions]")
        print(f"  is_correct vs the dataset's labels: {report.vs_labels[name].line()}")
        if name in report.clusters:
            print(f"  clusters vs naive Math-Verify:     {report.clusters[name].line()} groups")
        print(f"  time: answer code {ours_s:.1f} s, naive Math-Verify {naive_s:.1f} s")

    print("\n== disagreements, by class ==")
    for name in ("tora", "math", "gsm"):
        _print_classes(f"{name} vs Math-Verify", report.vs_math_verify[name], args.show)
        _print_classes(f"{name} vs labels", report.vs_labels[name], args.show)
        if name in report.clusters:
            _print_classes(f"{name} clusters", report.clusters[name], args.show)
    _print_classes("math single box", report.single_box, args.show)
    _print_classes("math ',\\!' golds", report.thousands_golds, args.show)

    print("\n== bars ==")
    missed = False
    for what, tally, required in bars(report):
        if not tally.total:
            print(f"  {what}: not measured")
            continue
        met = tally.rate >= required
        missed |= not met
        print(f"  {what}: {tally.line()} (bar {100 * required:g}%): {'met' if met else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
