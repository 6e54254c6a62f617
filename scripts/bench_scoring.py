"""Cost of the offline scoring job over a bare ``model.generate`` loop (HF engine, CPU by default).

Both sides sample the same prompts with the same settings and seeds: the bare loop loads the model,
renders and tokenizes the prompts, calls ``model.generate`` batch by batch and decodes; the job is
the full ``restrain-score-prompts`` run (parquet in, rendering, sampling, answer extraction and
voting, per-batch checkpoints, parquet out). Before timing, each side runs once untimed on one batch,
and the answers module's Math-Verify workers are started, so neither timed run pays a process's
one-off costs (verl's import inside ``render_prompts``, the answers module and its workers, torch's
first ``generate``). In repeat r both sides
sample with seed ``--seed`` + r, so they do the same work and no repeat replays another's samples
(whose votes the answers module would serve from its cache); which side goes first alternates. The
job meets the bar when the median over repeats of job/bare is at most ``--max-ratio`` (1.10); the
exit status is 1 when it does not.

Without ``--model`` the benchmark builds a random Qwen2 model (4 layers, hidden 256) with the test
suite's tiny tokenizer, so generation dominates as it does for a real model. Timings on a loaded
machine are noisy: the load average is printed with them.

    python scripts/bench_scoring.py --prompts 24 --n 8 --max-new-tokens 64 --batch-size 8 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from verl_restrain.answers.sympy_pool import warm_up as math_verify_warm_up
from verl_restrain.jobs.generation import HFSampler, render_prompts
from verl_restrain.jobs.scoring import ScoringConfig, score_prompts
from verl_restrain.jobs.config import batch_seed

QUESTIONS = [
    "What is {a} + {b}?",
    "Compute {a} * {b} - {a}. Then add {b} and simplify the result.",
    "Solve for x: {a}x + {b} = {c}. Give x as a fraction in lowest terms.",
    "A train travels {a} km in {b} hours and then {c} km in {a} hours. What is its average speed in km/h?",
]


def make_dataset(path: Path, num_prompts: int) -> None:
    rows = []
    for i in range(num_prompts):
        question = QUESTIONS[i % len(QUESTIONS)].format(a=i + 2, b=3 * i + 1, c=7 * i + 5)
        content = f"{question} Let's think step by step and output the final answer within \\boxed{{}}."
        rows.append(
            {
                "data_source": "dapo_math_14k",
                "prompt": [{"role": "user", "content": content}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": "0"},
                "extra_info": {"index": i, "split": "train"},
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), path)


def bare_generate_loop(model: str, input_path: Path, args: argparse.Namespace, seed: int) -> int:
    """What any sampling script must do at least: load, render, batch-generate with seeds, decode."""
    sampler = HFSampler(model)
    chats = pq.read_table(input_path).column("prompt").to_pylist()
    prompts = render_prompts(chats, sampler.tokenizer)
    kwargs = sampler.generation_kwargs(
        n=args.n, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens
    )
    completions = 0
    for b, start in enumerate(range(0, len(prompts), args.batch_size)):
        inputs = sampler.encode(prompts[start : start + args.batch_size])
        torch.manual_seed(batch_seed(seed, b))
        with torch.inference_mode():
            sequences = sampler.model.generate(**inputs, **kwargs)
        completions += len(sampler.decode(sequences, inputs["input_ids"].shape[1]))
    return completions


def scoring_job(model: str, input_path: Path, output: Path, args: argparse.Namespace, seed: int) -> dict:
    config = ScoringConfig(
        input=str(input_path),
        output=str(output),
        model=model,
        engine="hf",
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=seed,
        batch_size=args.batch_size,
        resume=False,
        progress=False,
    )
    return score_prompts(config)


def timed(run, *args):
    start = time.perf_counter()
    result = run(*args)
    return time.perf_counter() - start, result


def verdict(ratio: float, max_ratio: float) -> str:
    return f"ratio job/bare: {ratio:.3f} ({'meets' if ratio <= max_ratio else 'MISSES'} the bar of {max_ratio:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model to sample (default: a random 4-layer, hidden-256 Qwen2)")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--max-ratio", type=float, default=1.10, help="the bar job/bare must meet (default 1.10)")
    args = parser.parse_args(argv)
    if min(args.prompts, args.n, args.max_new_tokens, args.batch_size, args.repeats) < 1:
        parser.error("--prompts, --n, --max-new-tokens, --batch-size and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            # The tiny tokenizer lives with the tests (tests/tiny_lm.py).
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from tiny_lm import make_tiny_model_dir

            model = str(make_tiny_model_dir(tmp / "model", seed=0, hidden_size=256, num_layers=4, num_heads=4))
        input_path = tmp / "prompts.parquet"
        make_dataset(input_path, args.prompts)
        warm_path = tmp / "warm-up.parquet"
        make_dataset(warm_path, min(args.prompts, args.batch_size))
        print(
            f"torch threads={torch.get_num_threads()} prompts={args.prompts} n={args.n} "
            f"max_new_tokens={args.max_new_tokens} batch_size={args.batch_size} "
            f"load average={os.getloadavg()[0]:.1f}",
            flush=True,
        )
        # Seed args.seed + r for repeat r (both sides alike) and another one for the warm-up: no timed
        # job replays samples an earlier run voted on, whose verdicts the answers module has cached.
        warm_seed = args.seed + args.repeats
        math_verify_warm_up()  # the job's first vote needing sympy would otherwise wait for the workers
        warm_bare, _ = timed(bare_generate_loop, model, warm_path, args, warm_seed)
        warm_job, _ = timed(scoring_job, model, warm_path, tmp / "warm-up.scored.parquet", args, warm_seed)
        print(f"warm-up on one batch (untimed): bare {warm_bare:.2f}s, job {warm_job:.2f}s", flush=True)

        ratios = []
        for repeat in range(args.repeats):
            seed = args.seed + repeat
            sides = ["bare", "job"] if repeat % 2 == 0 else ["job", "bare"]
            for side in sides:
                if side == "bare":
                    bare, completions = timed(bare_generate_loop, model, input_path, args, seed)
                else:
                    job, summary = timed(scoring_job, model, input_path, tmp / "scored.parquet", args, seed)
            ratios.append(job / bare)
            print(
                f"repeat {repeat} (seed {seed}, {sides[0]} first): bare generate loop {bare:.2f}s "
                f"({completions} completions), scoring job {job:.2f}s ({summary['prompts']} prompts, "
                f"{summary['share_no_valid_answer']:.2f} without a valid answer), ratio {job / bare:.3f}",
                flush=True,
            )
    ratio = statistics.median(ratios)
    load = os.getloadavg()[0]
    print(f"median over {args.repeats} repeats: {verdict(ratio, args.max_ratio)} (load average {load:.1f})")
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
