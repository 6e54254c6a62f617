"""Evaluate a checkpoint on the paper's benchmarks: k samples per problem, graded like training.

For each benchmark (a verl-format parquet from ``restrain-prepare-data``, or the bundled copy of
AIME24/AIME25/AMC23/MATH500) the model draws k completions per problem with
:mod:`verl_restrain.jobs.generation`, prompts rendered exactly as verl renders them in training.
Grading uses :mod:`verl_restrain.answers`, the code the trainer votes and rewards with, with each
row's answer kind from :func:`verl_restrain.answers.kinds.answer_kind` (the benchmark's own kind as
the default). Per benchmark, with P problems and c_ps = 1 if sample s of problem p
is correct (``is_correct``):

* ``pass@1``: mean of c_ps over all P * k samples; ``pass@1_std``: the standard deviation (ddof=1)
  across the k per-sample accuracies acc_s = mean_p c_ps, i.e. how much one k = 1 evaluation varies;
* ``maj@k``: share of problems whose majority answer is correct. Answers are clustered by
  equivalence (``cluster_extracted``, ids in order of first appearance); the majority is the largest
  cluster, ties going to the cluster that appeared first (as in training); a problem none of whose
  samples has an answer counts as wrong. The majority is graded through the first sample of its
  cluster (``is_correct``);
* ``pass@k``: share of problems with at least one correct sample;
* ``no_answer``: share of samples from which no final answer is extracted (``extract_answer`` is None).

Results go to a JSON file (:data:`RESULT_FORMAT`, read by ``restrain-make-tables``) and a markdown
table next to it (the JSON name with ``.md``, so ``--output`` must not end in ``.md``), each written
atomically, the JSON last; the samples file is written before both. Every setting, the model
(:func:`verl_restrain.jobs.generation.check_model`), the benchmarks' data and the writability of the
outputs are checked before anything loads.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from verl_restrain import __version__
from verl_restrain.jobs.arguments import build_parser as parser_for
from verl_restrain.jobs.arguments import config_from_args
from verl_restrain.jobs.config import JobInputError, SamplingConfig, batch_seed, override
from verl_restrain.jobs.files import WriteError, atomic_write_text, check_writable, remove_stale_temps

RESULT_FORMAT = "verl_restrain.jobs.evaluation/1"

PAPER_BENCHMARKS = ["math500", "aime24", "aime25", "amc23", "gpqa_diamond", "mmlu_stem"]


@dataclass(kw_only=True)
class EvalConfig(SamplingConfig):
    """Settings of one evaluation run; ``restrain-evaluate`` is generated from them."""

    benchmarks: list[str] = field(
        default_factory=lambda: list(PAPER_BENCHMARKS),
        metadata={"help": "comma-separated benchmark names (default: the paper's six)", "group": "data"},
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "group": "data",
            "help": "folder of <benchmark>.parquet from restrain-prepare-data (AIME24/25, AMC23, MATH500 fall back to "
            "the bundled copy)",
        },
    )
    max_problems: int | None = field(
        default=None, metadata={"help": "evaluate only the first N problems of each benchmark", "group": "data"}
    )
    output: str = field(metadata={"help": "result JSON (a markdown table goes next to it as .md)", "group": "output"})
    label: str | None = field(
        default=None,
        metadata={"help": "run name in tables, e.g. restrain (default: the model folder's name)", "group": "output"},
    )
    samples_output: str | None = field(
        default=None, metadata={"help": "also write every response with its grading (JSON lines)", "group": "output"}
    )
    k: int = field(default=16, metadata={"help": "samples per problem", "group": "sampling"})
    temperature: float = override(SamplingConfig, "temperature", 0.6)
    top_p: float = override(SamplingConfig, "top_p", 0.95)
    max_new_tokens: int = override(SamplingConfig, "max_new_tokens", 8192)
    seed: int = override(SamplingConfig, "seed", 0)

    def validate(self) -> None:
        self.at_least("k", 1)
        super().validate()
        if self.max_problems is not None:
            self.at_least("max_problems", 1)
        if not self.benchmarks:
            raise JobInputError("no benchmark given (--benchmarks)")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise JobInputError(f"--data-dir {self.data_dir} is not a directory")
        if Path(self.output).suffix.lower() == ".md":
            raise JobInputError(
                f"--output {self.output} ends in .md, the name of the markdown table written next to the JSON; "
                "give the JSON file, e.g. results/run.json"
            )

    @property
    def report_path(self) -> Path:
        """The markdown table: ``output`` with ``.md``."""
        return Path(self.output).with_suffix(".md")


def benchmark_file(name: str, data_dir: str | None) -> Path | None:
    """``<data_dir>/<name>.parquet`` if it exists."""
    if data_dir is None:
        return None
    path = Path(data_dir) / f"{name}.parquet"
    return path if path.is_file() else None


def check_benchmarks(names: Sequence[str], data_dir: str | None) -> None:
    """Every benchmark must have a prepared file in ``data_dir`` or a bundled copy."""
    from verl_restrain.data.prepare import BENCHMARKS
    from verl_restrain.data.sources import bundled_names

    bundled = set(bundled_names())
    for name in names:
        if benchmark_file(name, data_dir) is not None or name in bundled:
            continue
        if name not in BENCHMARKS:
            raise ValueError(
                f"unknown benchmark {name!r}: known benchmarks are {', '.join(BENCHMARKS)} "
                "(or put <name>.parquet in --data-dir)"
            )
        where = f"in --data-dir {data_dir}" if data_dir else "(no --data-dir given)"
        raise FileNotFoundError(
            f"no data for {name!r} {where}: run `python scripts/prepare_data.py --benchmarks {name} "
            f"--output-dir DATA_DIR` and pass --data-dir DATA_DIR"
        )


def load_benchmark(name: str, data_dir: str | None) -> tuple[list[dict], str]:
    """The verl rows of a benchmark and where they came from (prepared file, else bundled copy)."""
    path = benchmark_file(name, data_dir)
    if path is not None:
        import pandas as pd

        from verl_restrain.data.sources import plain

        frame = pd.read_parquet(path)
        for column in ("prompt", "reward_model"):
            if column not in frame.columns:
                raise ValueError(f"{path} has no {column!r} column; is it a verl-format file?")
        return [plain(r) for r in frame.to_dict("records")], str(path)
    from verl_restrain.data.prepare import build_rows

    rows, provenance = build_rows(name, source="bundled")
    return rows, provenance["source"]


def row_kind(row: dict, name: str, config: SamplingConfig) -> str:
    """Answer kind of a row: :func:`verl_restrain.answers.kinds.answer_kind` with ``config``'s settings,
    the benchmark's own kind as the default when ``name`` is a known benchmark."""
    from verl_restrain.data.prepare import BENCHMARKS

    default = BENCHMARKS[name].kind if name in BENCHMARKS else None
    return config.row_kind(row.get("data_source"), row.get("extra_info"), default)


@dataclass
class Graded:
    """Grading of one problem's k samples."""

    answers: list[str | None]
    correct: list[bool]
    clusters: list[int]
    majority_correct: bool


def grade_problem(responses: Sequence[str], gold: str, kind: str) -> Graded:
    """Extract, cluster and grade one problem's samples (see the module docstring)."""
    from verl_restrain.answers import cluster_extracted, extract_answer, is_correct

    answers = [extract_answer(r, kind) for r in responses]
    clusters = list(cluster_extracted(answers, kind))
    correct = [bool(is_correct(r, gold, kind)) for r in responses]
    valid = [c for c in clusters if c >= 0]
    majority_correct = False
    if valid:
        counts = np.bincount(valid)
        majority = int(np.argmax(counts))  # argmax takes the first maximum: the earliest cluster
        majority_correct = correct[clusters.index(majority)]
    return Graded(answers, correct, clusters, majority_correct)


def benchmark_metrics(graded: Sequence[Graded], k: int) -> dict[str, float]:
    """Pass@1 mean/std over samples, maj@k, pass@k and the no-answer share (module docstring)."""
    correct = np.array([g.correct for g in graded], dtype=float)  # (P, k)
    no_answer = np.array([[a is None for a in g.answers] for g in graded], dtype=float)  # (P, k)
    per_sample = correct.mean(axis=0)  # (k,) accuracy of sample s over problems
    return {
        "pass@1": float(correct.mean()),
        "pass@1_std": float(per_sample.std(ddof=1)) if k > 1 else 0.0,
        f"maj@{k}": float(np.mean([g.majority_correct for g in graded])),
        f"pass@{k}": float(correct.max(axis=1).mean()),
        "no_answer": float(no_answer.mean()),
    }


def markdown_report(result: dict) -> str:
    """One row per benchmark: Pass@1 mean ± std, maj@k, pass@k, no-answer share (percent)."""
    k = result["settings"]["k"]
    lines = [
        f"Model: `{result['model']}` ({result['engine']}, k={k}, temperature={result['settings']['temperature']}, "
        f"top_p={result['settings']['top_p']}, max_new_tokens={result['settings']['max_new_tokens']}, "
        f"seed={result['settings']['seed']})",
        "",
        f"| Benchmark | Problems | Pass@1 (mean ± std over {k} samples) | maj@{k} | pass@{k} | No answer |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in result["benchmarks"].items():
        lines.append(
            f"| {name} | {m['num_problems']} | {100 * m['pass@1']:.1f} ± {100 * m['pass@1_std']:.1f} | "
            f"{100 * m[f'maj@{k}']:.1f} | {100 * m[f'pass@{k}']:.1f} | {100 * m['no_answer']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def evaluate(config: EvalConfig) -> dict:
    """Sample, grade and report every benchmark of ``config``; write the JSON and markdown files."""
    from tqdm.auto import tqdm

    from verl_restrain.jobs.generation import check_engine, load_sampler, load_tokenizer, render_prompts

    engine = check_engine(config.engine)
    check_benchmarks(config.benchmarks, config.data_dir)
    data = {}
    for name in config.benchmarks:
        rows, origin = load_benchmark(name, config.data_dir)
        if not rows:
            raise ValueError(f"{origin} has no rows")
        data[name] = (rows[: config.max_problems] if config.max_problems else rows, origin)
    batch_size = config.batch_size_for(engine)
    outputs = [("--output", config.output), ("--output", config.report_path), ("--samples-output", config.samples_output)]
    for name, path in outputs:
        if path:
            remove_stale_temps(path)
            try:
                check_writable(path)
            except WriteError as error:
                raise JobInputError(f"{name}: {error}") from None

    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    # Rendering every prompt before the model loads surfaces malformed chats in seconds.
    rendered = {
        name: render_prompts([r["prompt"] for r in rows], tokenizer, config.apply_chat_template_kwargs)
        for name, (rows, _) in data.items()
    }
    sampler = load_sampler(
        config.model, engine, tokenizer=tokenizer, trust_remote_code=config.trust_remote_code, **config.engine_kwargs
    )
    result = {
        "format": RESULT_FORMAT,
        "label": config.label or Path(config.model.rstrip("/")).name,
        "model": config.model,
        "engine": engine,
        "settings": {
            key: value
            for key, value in asdict(config).items()
            if key
            in (
                "k",
                "temperature",
                "top_p",
                "max_new_tokens",
                "seed",
                "max_problems",
                "apply_chat_template_kwargs",
                "answer_kind_map",
                "default_answer_kind",
            )
        },
        "package_version": __version__,
        "benchmarks": {},
    }
    samples = []
    bar = tqdm(
        total=sum(len(rows) for rows, _ in data.values()),
        unit="problem",
        desc="evaluating",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    try:
        for name, (rows, origin) in data.items():
            bar.set_description(f"evaluating {name}")
            graded: list[Graded] = []
            for batch_index, start in enumerate(range(0, len(rows), batch_size)):
                prompts = rendered[name][start : start + batch_size]
                responses = sampler.generate(
                    prompts,
                    n=config.k,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    max_new_tokens=config.max_new_tokens,
                    seed=batch_seed(config.seed, zlib.crc32(name.encode()), batch_index),
                )
                for offset, completions in enumerate(responses):
                    row = rows[start + offset]
                    gold = str(row["reward_model"]["ground_truth"])
                    g = grade_problem(completions, gold, row_kind(row, name, config))
                    graded.append(g)
                    if config.samples_output:
                        samples.append(
                            {"benchmark": name, "index": start + offset, "gold": gold, "responses": completions,
                             "answers": g.answers, "correct": g.correct, "clusters": g.clusters,
                             "majority_correct": g.majority_correct}
                        )
                bar.update(len(prompts))
            metrics = benchmark_metrics(graded, config.k)
            kinds = sorted({row_kind(r, name, config) for r in rows})
            result["benchmarks"][name] = {
                "num_problems": len(graded), "k": config.k, "kind": ",".join(kinds), "source": origin, **metrics
            }
            bar.write(
                f"{name}: pass@1 {100 * metrics['pass@1']:.1f}  maj@{config.k} {100 * metrics[f'maj@{config.k}']:.1f}  "
                f"pass@{config.k} {100 * metrics[f'pass@{config.k}']:.1f}  no answer {100 * metrics['no_answer']:.1f}%"
            )
    finally:
        bar.close()
    if config.samples_output:
        atomic_write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), config.samples_output)
    write_result(result, config.output)
    return result


def write_result(result: dict, output: str | Path) -> tuple[Path, Path]:
    """Write ``result``'s markdown table to ``output`` with ``.md``, then the JSON to ``output``.

    The JSON, written last, marks a complete evaluation; both writes are atomic.
    """
    output = Path(output)
    report = atomic_write_text(markdown_report(result), output.with_suffix(".md"))
    atomic_write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", output)
    return output, report


def build_parser():
    return parser_for(
        EvalConfig,
        groups=("data", "output", "sampling", "answers"),
        prog="restrain-evaluate",
        description="Sample k answers per problem from a model and report Pass@1, maj@k, pass@k and no-answer share.",
        epilog="A verl FSDP checkpoint is converted first: python -m verl.model_merger merge --backend fsdp "
        "--local_dir CKPT/global_step_N/actor --target_dir HF_DIR",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``restrain-evaluate``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        result = evaluate(config_from_args(EvalConfig, args))
    except WriteError as exc:
        raise SystemExit(f"evaluate: {exc}; make room (or fix the folder) and rerun the same command") from exc
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"evaluate: {exc}") from exc
    print(markdown_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
