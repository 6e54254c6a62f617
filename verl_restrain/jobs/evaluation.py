"""Evaluate a checkpoint on the paper's benchmarks: k samples per problem, graded like training.

For each benchmark (a verl-format parquet from ``scripts/prepare_data.py``, or the bundled copy of
AIME24/AIME25/AMC23/MATH500) the model draws k completions per problem with
:mod:`verl_restrain.jobs.generation` (vLLM on GPUs, Hugging Face transformers otherwise), prompts rendered
exactly as verl renders them in training. Grading uses :mod:`verl_restrain.answers`, the code the
trainer votes and rewards with. Per benchmark, with P problems and c_ps = 1 if sample s of problem p
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

Results go to a JSON file (:data:`RESULT_FORMAT`, read by ``scripts/make_tables.py``) and a markdown
table next to it (the JSON name with ``.md``, so ``--output`` must not end in ``.md``). A ``--model``
that is not a loadable Hugging Face folder or hub id is an error before anything loads
(:func:`verl_restrain.jobs.generation.check_model`). verl's FSDP checkpoints are converted to a Hugging
Face folder first with verl's own merger: ``python -m verl.model_merger merge --backend fsdp
--local_dir <ckpt>/global_step_N/actor --target_dir <hf_dir>``.
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from verl_restrain import __version__
from verl_restrain.jobs.generation import check_model

RESULT_FORMAT = "verl_restrain.jobs.evaluation/1"

# Prompts per generate call: vLLM schedules a large batch itself; HF pads a batch to its longest row.
DEFAULT_BATCH_SIZE = {"vllm": 1024, "hf": 8}


@dataclass
class EvalConfig:
    """Settings of one evaluation run; see ``--help``."""

    model: str
    benchmarks: list[str]
    output: str
    data_dir: str | None = None
    k: int = 16
    engine: str = "auto"
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 8192
    seed: int = 0
    batch_size: int | None = None
    label: str | None = None
    max_problems: int | None = None
    samples_output: str | None = None
    apply_chat_template_kwargs: dict = field(default_factory=dict)
    engine_kwargs: dict = field(default_factory=dict)
    trust_remote_code: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        from verl_restrain.jobs.generation import ENGINES

        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_problems is not None and self.max_problems < 1:
            raise ValueError(f"--max-problems must be >= 1, got {self.max_problems}")
        if not self.benchmarks:
            raise ValueError("no benchmark given (--benchmarks)")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise FileNotFoundError(f"--data-dir {self.data_dir} is not a directory")
        if Path(self.output).suffix.lower() == ".md":
            raise ValueError(
                f"--output {self.output} ends in .md, the name of the markdown table written next to the JSON; "
                "give the JSON file, e.g. results/run.json"
            )
        check_model(self.model)


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


def row_kind(row: dict, name: str) -> str:
    """Answer kind of a row: its ``extra_info.kind``, else the benchmark's, else ``math``."""
    kind = (row.get("extra_info") or {}).get("kind")
    if kind in ("math", "choice"):
        return kind
    from verl_restrain.data.prepare import BENCHMARKS

    return BENCHMARKS[name].kind if name in BENCHMARKS else "math"


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


def batch_seed(seed: int, benchmark: str, batch_index: int) -> int:
    """Sampling seed of one batch, fixed by the run seed, the benchmark and the batch position."""
    entropy = [seed, zlib.crc32(benchmark.encode()), batch_index]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


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
    batch_size = config.batch_size or DEFAULT_BATCH_SIZE[engine]

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
            if key in ("k", "temperature", "top_p", "max_new_tokens", "seed", "max_problems", "apply_chat_template_kwargs")
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
                    seed=batch_seed(config.seed, name, batch_index),
                )
                for offset, completions in enumerate(responses):
                    row = rows[start + offset]
                    gold = str(row["reward_model"]["ground_truth"])
                    g = grade_problem(completions, gold, row_kind(row, name))
                    graded.append(g)
                    if config.samples_output:
                        samples.append(
                            {"benchmark": name, "index": start + offset, "gold": gold, "responses": completions,
                             "answers": g.answers, "correct": g.correct, "clusters": g.clusters,
                             "majority_correct": g.majority_correct}
                        )
                bar.update(len(prompts))
            metrics = benchmark_metrics(graded, config.k)
            kinds = sorted({row_kind(r, name) for r in rows})
            result["benchmarks"][name] = {
                "num_problems": len(graded), "k": config.k, "kind": ",".join(kinds), "source": origin, **metrics
            }
            bar.write(
                f"{name}: pass@1 {100 * metrics['pass@1']:.1f}  maj@{config.k} {100 * metrics[f'maj@{config.k}']:.1f}  "
                f"pass@{config.k} {100 * metrics[f'pass@{config.k}']:.1f}  no answer {100 * metrics['no_answer']:.1f}%"
            )
    finally:
        bar.close()
    write_result(result, config.output)
    if config.samples_output:
        path = Path(config.samples_output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
    return result


def write_result(result: dict, output: str | Path) -> tuple[Path, Path]:
    """Write ``result`` as JSON to ``output`` and its markdown table to the same name with ``.md``."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(output)
    report = output.with_suffix(".md")
    report.write_text(markdown_report(result), encoding="utf-8")
    return output, report


def _key_values(items: Sequence[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs with JSON values where they parse (``enable_thinking=false`` -> False)."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Sample k answers per problem from a model and report Pass@1, maj@k, pass@k and no-answer share.",
        epilog="A verl FSDP checkpoint is converted first: python -m verl.model_merger merge --backend fsdp "
        "--local_dir CKPT/global_step_N/actor --target_dir HF_DIR",
    )
    parser.add_argument("--model", required=True, help="Hugging Face model folder (or hub id)")
    parser.add_argument(
        "--benchmarks", default="math500,aime24,aime25,amc23,gpqa_diamond,mmlu_stem",
        help="comma-separated benchmark names (default: the paper's six)",
    )
    parser.add_argument(
        "--data-dir", default=None,
        help="folder of <benchmark>.parquet from prepare_data.py (AIME24/25, AMC23, MATH500 fall back to the bundled copy)",
    )
    parser.add_argument("--output", required=True, help="result JSON (a markdown table goes next to it as .md)")
    parser.add_argument("--label", default=None, help="run name in tables, e.g. restrain (default: model folder name)")
    parser.add_argument("--k", type=int, default=16, help="samples per problem")
    parser.add_argument("--engine", default="auto", help="auto (vLLM when installed and a GPU is visible), vllm or hf")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per generate call (default: vllm 1024, hf 8)")
    parser.add_argument("--max-problems", type=int, default=None, help="evaluate only the first N problems of each benchmark")
    parser.add_argument("--samples-output", default=None, help="also write every response with its grading (JSON lines)")
    parser.add_argument(
        "--chat-template-kwarg", action="append", default=[], metavar="KEY=VALUE",
        help="verl's data.apply_chat_template_kwargs, e.g. enable_thinking=false (repeatable)",
    )
    parser.add_argument(
        "--engine-kwarg", action="append", default=[], metavar="KEY=VALUE",
        help="passed to the engine, e.g. tensor_parallel_size=2, gpu_memory_utilization=0.8, dtype=float32",
    )
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``scripts/evaluate.py``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        config = EvalConfig(
            model=args.model,
            benchmarks=list(dict.fromkeys(b.strip() for b in args.benchmarks.split(",") if b.strip())),
            output=args.output,
            data_dir=args.data_dir,
            k=args.k,
            engine=args.engine,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            batch_size=args.batch_size,
            label=args.label,
            max_problems=args.max_problems,
            samples_output=args.samples_output,
            apply_chat_template_kwargs=_key_values(args.chat_template_kwarg, "--chat-template-kwarg"),
            engine_kwargs=_key_values(args.engine_kwarg, "--engine-kwarg"),
            trust_remote_code=args.trust_remote_code,
            progress=not args.no_progress,
        )
        result = evaluate(config)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"evaluate: {exc}") from exc
    print(markdown_report(result))
    return 0
