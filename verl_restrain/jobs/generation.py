"""Sampling engines shared by offline prompt scoring and evaluation.

A :class:`Sampler` turns prompts rendered as verl renders them (:mod:`verl_restrain.jobs.prompts`)
into n sampled completions each.

Two engines implement :class:`Sampler`:

* :class:`VLLMSampler` (GPU, or CPU with the ``vllm-cpu`` build): one ``LLM.generate`` call per
  batch of prompts, tensor parallel over the visible GPUs (:func:`default_tensor_parallel_size` says
  how many are used); every prompt gets its own sampling seed, so its completions do not depend on
  which other prompts share its batch.
* :class:`HFSampler` (CPU or GPU): one batched ``model.generate`` call per batch, left padding,
  ``num_return_sequences=n``; the torch RNG is seeded at every call, so a call's completions depend
  only on its prompts, settings and seed, never on earlier calls.

Both tokenize the rendered text with ``add_special_tokens=False``, which gives the same token ids as
verl's ``apply_chat_template(..., tokenize=True)``, and decode with special tokens skipped, as verl's
reward managers do. Sampling matches verl's rollout defaults: top-k off and repetition penalty 1 (the
model's own ``generation_config`` does not override them); generation stops at the model's EOS
tokens. ``temperature=0`` means greedy decoding, each prompt's completion repeated n times.

:func:`load_sampler` picks the engine: ``auto`` is vLLM when it imports and a GPU is visible.
:func:`check_engine` and :func:`verl_restrain.jobs.models.check_model` report a missing vLLM or an
unloadable ``--model`` before anything loads. The prompt and model helpers are importable from here
too.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import threading
from typing import Any, Protocol

from verl_restrain.jobs.models import HUB_ID, check_model
from verl_restrain.jobs.prompts import as_chat, load_tokenizer, prompt_seed, render_prompts, tokenize_prompts

logger = logging.getLogger(__name__)

__all__ = [
    "ENGINES",
    "HUB_ID",
    "HFSampler",
    "Sampler",
    "VLLMSampler",
    "as_chat",
    "check_engine",
    "check_model",
    "default_tensor_parallel_size",
    "exit_on_sigterm",
    "load_sampler",
    "load_tokenizer",
    "prompt_seed",
    "render_prompts",
    "resolve_engine",
    "tokenize_prompts",
    "vllm_engine_defaults",
]

ENGINES = ("auto", "vllm", "hf")

# KV cache of vLLM's CPU backend when no size is given (see vllm_engine_defaults).
CPU_KV_CACHE_BYTES = 4 << 30

VLLM_INSTALL_HINT = 'pip install -e ".[vllm]"'
VLLM_CPU_VENV_HINT = "bash scripts/make_vllm_cpu_venv.sh"


class Sampler(Protocol):
    """Draws n completions for each rendered prompt."""

    tokenizer: Any

    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[str]]:
        """Return ``len(prompts)`` lists of n completions (text after the prompt, EOS removed).

        The result depends only on the arguments (and the engine and model), never on earlier calls.
        """
        ...


def _vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _vllm_runs_on_cpu() -> bool:
    """Whether the installed vLLM is its CPU build (``vllm-cpu``), by vLLM's own platform detection."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def resolve_engine(engine: str) -> str:
    """``"vllm"`` or ``"hf"``: ``auto`` is vLLM when it is installed and a GPU is visible."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    if _vllm_importable() and _visible_gpu_count() > 0:
        return "vllm"
    return "hf"


def _missing_vllm_message() -> str:
    return (
        "engine 'vllm' requested but vLLM is not installed; on a GPU machine install verl's vLLM extra "
        f"with `{VLLM_INSTALL_HINT}` in the verl-restrain checkout (on a CPU-only machine, build a separate "
        f"venv with `{VLLM_CPU_VENV_HINT}`), or use --engine hf"
    )


def check_engine(engine: str) -> str:
    """:func:`resolve_engine`, raising ValueError with the install command when vLLM is chosen but absent."""
    resolved = resolve_engine(engine)
    if resolved == "vllm" and not _vllm_importable():
        raise ValueError(_missing_vllm_message())
    return resolved


def default_tensor_parallel_size(num_gpus: int, num_attention_heads: int | None) -> int:
    """The tensor parallel size vLLM gets when none is given.

    It is the largest power of two that is at most ``num_gpus`` and divides ``num_attention_heads``
    (the largest power of two <= ``num_gpus`` when the head count is unknown): vLLM shards attention
    heads evenly, and powers of two also divide the usual hidden and KV-head sizes. GPUs beyond that
    size stay idle: 8 GPUs serve a 28-head model (Qwen2.5-7B) with size 4, and 3 GPUs never use more
    than 2. vLLM's offline ``LLM`` does not run data parallel in one process (vLLM refuses
    ``LLM(data_parallel_size > 1)`` since vllm-project/vllm#27282), so to use every GPU run one shard
    per GPU instead: ``restrain-score-prompts ... --ray --num-shards <GPUs> --ray-gpus-per-shard 1``.
    """
    if num_gpus < 1:
        raise ValueError("the vLLM engine needs at least one visible GPU")
    size = 1
    while size * 2 <= num_gpus and (not num_attention_heads or num_attention_heads % (size * 2) == 0):
        size *= 2
    return size


class HFSampler:
    """Batched sampling with Hugging Face ``model.generate`` (left padding, one call per batch)."""

    def __init__(
        self,
        model: str,
        *,
        tokenizer: Any = None,
        device: str | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ):
        import torch
        from transformers import AutoModelForCausalLM

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            model, dtype=torch_dtype, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])

    def generation_kwargs(self, *, n: int, temperature: float, top_p: float, max_new_tokens: int) -> dict:
        """Keyword arguments of ``model.generate`` for these settings (also used by the benchmark)."""
        greedy = temperature == 0
        return dict(
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None if greedy else 0,
            min_p=None,
            typical_p=1.0,
            repetition_penalty=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=1 if greedy else n,
            eos_token_id=sorted(self.eos_token_ids),
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def encode(self, prompts: list[str]) -> dict:
        """Left-padded input tensors for ``prompts`` on the model's device."""
        batch = self.tokenizer(
            prompts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt"
        )
        return {key: value.to(self.device) for key, value in batch.items()}

    def decode(self, sequences: Any, prompt_length: int) -> list[str]:
        """Completion text of each generated row, cut at its first EOS token."""
        texts = []
        for row in sequences[:, prompt_length:].tolist():
            end = next((i for i, token in enumerate(row) if token in self.eos_token_ids), len(row))
            texts.append(self.tokenizer.decode(row[:end], skip_special_tokens=True))
        return texts

    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[str]]:
        import torch

        if not prompts:
            return []
        inputs = self.encode(prompts)
        kwargs = self.generation_kwargs(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        # Reseeding here makes a call's samples a function of its arguments alone, so a resumed run
        # reproduces the batches an interrupted one would have produced.
        torch.manual_seed(seed)
        with torch.inference_mode():
            sequences = self.model.generate(**inputs, **kwargs)
        texts = self.decode(sequences, inputs["input_ids"].shape[1])
        per_prompt = kwargs["num_return_sequences"]
        # generate() returns the samples of one prompt on consecutive rows.
        grouped = [texts[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompts))]
        return [group * (n // per_prompt) for group in grouped]


def vllm_engine_defaults(on_cpu: bool, gpu_memory_utilization: float | None, llm_kwargs: dict, environ: dict) -> dict:
    """The ``vllm.LLM`` arguments this package sets for the engine, unless ``llm_kwargs`` sets them.

    * Memory. On a GPU, ``gpu_memory_utilization`` (default 0.9) is the share of GPU memory vLLM
      reserves. On vLLM's CPU backend the same argument is the share of the NUMA node's whole RAM,
      which vLLM refuses to start with when other processes hold more than the rest (0.9 fails on
      any busy machine). There, unless ``gpu_memory_utilization``, ``kv_cache_memory_bytes`` or
      vLLM's ``VLLM_CPU_KVCACHE_SPACE`` (GiB) is given, the KV cache gets a fixed
      :data:`CPU_KV_CACHE_BYTES` (4 GiB).
    * Chunked prefill is off on CPU: when a step's token budget (``max_num_batched_tokens``) splits
      a prompt, vLLM 0.28 rewinds the request's seeded generator, which a CPU generator cannot do
      ("CPU Generator does not use offset"), so every batch longer than the budget would fail. Whole
      prompts are prefilled instead, and the budget defaults to at least the model's length.
    """
    defaults = {}
    if gpu_memory_utilization is not None:
        defaults["gpu_memory_utilization"] = gpu_memory_utilization
    elif not on_cpu:
        defaults["gpu_memory_utilization"] = 0.9
    elif "kv_cache_memory_bytes" not in llm_kwargs and not environ.get("VLLM_CPU_KVCACHE_SPACE"):
        defaults["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    if on_cpu and "enable_chunked_prefill" not in llm_kwargs:
        defaults["enable_chunked_prefill"] = False
    return defaults


def exit_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit(143)`` in this process, so that vLLM can stop its engine.

    Python's default SIGTERM action (``kill PID``, ``timeout``, a scheduler stopping a job) ends the
    process without unwinding, and vLLM's engine-core and worker processes, which hold the KV cache
    (GPU memory on a GPU), then run on as orphans. As ``SystemExit``, SIGTERM unwinds the job and
    runs vLLM's exit handlers, which stop them. Only Python's default action is replaced (never a
    handler that Ray or the caller installed), and only from the main thread.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


class VLLMSampler:
    """Sampling with vLLM's offline ``LLM`` engine, tensor parallel over the visible GPUs.

    ``tensor_parallel_size`` defaults to :func:`default_tensor_parallel_size` of the visible GPUs and
    the model's attention heads, which can leave GPUs idle; see there. With vLLM's CPU build
    (``vllm-cpu``) it is 1; the KV cache size and, on CPU, chunked prefill follow
    :func:`vllm_engine_defaults`.
    """

    def __init__(
        self,
        model: str,
        *,
        tokenizer: Any = None,
        tensor_parallel_size: int | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        gpu_memory_utilization: float | None = None,
        **llm_kwargs: Any,
    ):
        from transformers import AutoConfig
        from vllm import LLM

        on_cpu = _vllm_runs_on_cpu()
        if tensor_parallel_size is None and on_cpu:
            # vLLM's CPU backend has no GPUs to shard over.
            tensor_parallel_size = 1
        if tensor_parallel_size is None:
            config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
            heads = getattr(config.get_text_config(), "num_attention_heads", None)
            tensor_parallel_size = default_tensor_parallel_size(_visible_gpu_count(), heads)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model, trust_remote_code=trust_remote_code)
        exit_on_sigterm()
        self.llm = LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            **vllm_engine_defaults(on_cpu, gpu_memory_utilization, llm_kwargs, dict(os.environ)),
            **llm_kwargs,
        )

    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[str]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        requests = [TokensPrompt(prompt_token_ids=ids) for ids in tokenize_prompts(prompts, self.tokenizer)]
        # vLLM refuses n > 1 with greedy sampling: one greedy completion is repeated n times, as in HFSampler.
        per_prompt = 1 if temperature == 0 else n
        # One SamplingParams per prompt: a per-request seed keeps each prompt's samples independent
        # of the rest of the batch. top_k stays at vLLM's "off" default, as in verl's rollout.
        params = [
            SamplingParams(
                n=per_prompt,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_new_tokens,
                repetition_penalty=1.0,
                seed=prompt_seed(seed, position),
                detokenize=False,
            )
            for position in range(len(prompts))
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        # The text is decoded from the token ids with the Hugging Face tokenizer, as verl's reward
        # managers do: vLLM's own incremental detokenizer drops a multi-byte character cut off by
        # max_tokens, which tokenizer.decode keeps as U+FFFD.
        decode = self.tokenizer.decode
        return [
            [decode(c.token_ids, skip_special_tokens=True) for c in sorted(output.outputs, key=lambda c: c.index)]
            * (n // per_prompt)
            for output in outputs
        ]


def load_sampler(model: str, engine: str = "auto", **engine_kwargs: Any) -> Sampler:
    """A :class:`Sampler` for ``model`` (a local path or hub id) on ``engine`` (auto, vllm or hf).

    ``engine_kwargs`` go to the engine's constructor (``tokenizer``, ``dtype``,
    ``trust_remote_code``; ``device`` for hf; ``tensor_parallel_size``, ``gpu_memory_utilization``
    and any ``vllm.LLM`` argument for vllm).
    """
    resolved = resolve_engine(engine)
    if resolved == "vllm":
        if not _vllm_importable():
            raise ImportError(_missing_vllm_message())
        return VLLMSampler(model, **engine_kwargs)
    return HFSampler(model, **engine_kwargs)
