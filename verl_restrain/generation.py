"""Sampling engines shared by offline prompt scoring and evaluation.

A prompt is a chat (a list of ``{"role", "content"}`` messages, the ``prompt`` column of a verl
dataset). :func:`render_prompts` turns chats into the exact text verl 0.9.1 feeds the rollout
engine during training; a :class:`Sampler` turns rendered prompts into n sampled completions each.

Two engines implement :class:`Sampler`:

* :class:`VLLMSampler` (GPU): one ``LLM.generate`` call per batch of prompts, tensor parallel over
  the visible GPUs; every prompt gets its own sampling seed, so its completions do not depend on
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
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Protocol, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "ENGINES",
    "HFSampler",
    "Sampler",
    "VLLMSampler",
    "as_chat",
    "default_tensor_parallel_size",
    "load_sampler",
    "load_tokenizer",
    "prompt_seed",
    "render_prompts",
    "resolve_engine",
    "tokenize_prompts",
]

ENGINES = ("auto", "vllm", "hf")

# Keys of ``data.apply_chat_template_kwargs`` that verl drops because it sets them itself.
_RESERVED_TEMPLATE_KWARGS = ("tokenize", "return_dict", "return_tensors", "add_generation_prompt")


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


def as_chat(prompt: Any) -> list[dict]:
    """A dataset prompt as a list of message dicts (numpy arrays from pandas become lists).

    Raises ValueError when it is not a non-empty list of ``{"role", "content"}`` dicts.
    """
    if isinstance(prompt, np.ndarray):
        prompt = prompt.tolist()
    if not isinstance(prompt, (list, tuple)) or not prompt or not all(isinstance(m, dict) for m in prompt):
        raise ValueError(f"not a chat (a non-empty list of {{'role', 'content'}} messages): {prompt!r:.200}")
    for message in prompt:
        if "role" not in message or "content" not in message:
            raise ValueError(f"a message without 'role'/'content': {message!r:.200}")
    return [dict(message) for message in prompt]


def render_prompts(
    messages_list: Sequence[Any],
    tokenizer: Any,
    apply_chat_template_kwargs: dict | None = None,
) -> list[str]:
    """Render chats exactly as verl 0.9.1 renders a dataset prompt for training rollouts.

    verl's agent loop (``SingleTurnAgentLoop`` through ``ContinuousTokenBuilder.build_initial_tokens``)
    calls ``verl.utils.tokenizer.chat_template.apply_chat_template(tokenizer, messages,
    tokenize=True, add_generation_prompt=True, tools=None, **data.apply_chat_template_kwargs)``. This
    calls the same helper with ``tokenize=False``; tokenizing the text with
    ``add_special_tokens=False`` (:func:`tokenize_prompts`) gives the same ids, since transformers
    renders the text and tokenizes it that way. No system prompt is added beyond what the chat
    template itself adds.

    Args:
        messages_list: one chat per prompt, each a list of ``{"role", "content"}`` dicts.
        tokenizer: a Hugging Face tokenizer with a chat template.
        apply_chat_template_kwargs: verl's ``data.apply_chat_template_kwargs`` (for example
            ``{"enable_thinking": False}``); ``tokenize``/``return_dict``/``return_tensors`` are
            ignored as in verl.
    """
    from verl.utils.tokenizer.chat_template import apply_chat_template

    kwargs = {k: v for k, v in (apply_chat_template_kwargs or {}).items() if k not in _RESERVED_TEMPLATE_KWARGS}
    rendered = []
    for position, chat in enumerate(messages_list):
        try:
            messages = as_chat(chat)
        except ValueError as error:
            raise ValueError(f"prompt {position}: {error}") from None
        rendered.append(apply_chat_template(tokenizer, messages, tokenize=False, add_generation_prompt=True, **kwargs))
    return rendered


def tokenize_prompts(prompts: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of rendered prompts, as verl's rollout sees them (no special tokens added)."""
    return [list(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]


def prompt_seed(seed: int, position: int) -> int:
    """A 32-bit sampling seed for the prompt at ``position`` of a call seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


def load_tokenizer(model: str, *, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, with left padding and a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_engine(engine: str) -> str:
    """``"vllm"`` or ``"hf"``: ``auto`` is vLLM when it is installed and a GPU is visible."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    if _vllm_importable() and _visible_gpu_count() > 0:
        return "vllm"
    return "hf"


def default_tensor_parallel_size(num_gpus: int, num_attention_heads: int | None) -> int:
    """The largest power of two <= ``num_gpus`` that divides the attention head count.

    vLLM shards attention heads (and the MLP) evenly, so 8 GPUs serve a 28-head model (Qwen2.5-7B)
    with tensor parallel size 4; powers of two also divide the usual hidden and KV-head sizes.
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


class VLLMSampler:
    """Sampling with vLLM's offline ``LLM`` engine, tensor parallel over the visible GPUs."""

    def __init__(
        self,
        model: str,
        *,
        tokenizer: Any = None,
        tensor_parallel_size: int | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        gpu_memory_utilization: float = 0.9,
        **llm_kwargs: Any,
    ):
        from transformers import AutoConfig
        from vllm import LLM

        if tensor_parallel_size is None:
            config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
            heads = getattr(config.get_text_config(), "num_attention_heads", None)
            tensor_parallel_size = default_tensor_parallel_size(_visible_gpu_count(), heads)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.llm = LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            gpu_memory_utilization=gpu_memory_utilization,
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
        # One SamplingParams per prompt: a per-request seed keeps each prompt's samples independent
        # of the rest of the batch. top_k stays at vLLM's "off" default, as in verl's rollout.
        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_new_tokens,
                repetition_penalty=1.0,
                seed=prompt_seed(seed, position),
                skip_special_tokens=True,
            )
            for position in range(len(prompts))
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [[c.text for c in sorted(output.outputs, key=lambda c: c.index)] for output in outputs]


def load_sampler(model: str, engine: str = "auto", **engine_kwargs: Any) -> Sampler:
    """A :class:`Sampler` for ``model`` (a local path or hub id) on ``engine`` (auto, vllm or hf).

    ``engine_kwargs`` go to the engine's constructor (``tokenizer``, ``dtype``,
    ``trust_remote_code``; ``device`` for hf; ``tensor_parallel_size``, ``gpu_memory_utilization``
    and any ``vllm.LLM`` argument for vllm).
    """
    resolved = resolve_engine(engine)
    if resolved == "vllm":
        if not _vllm_importable():
            raise ImportError("engine 'vllm' requested but vLLM is not installed (pip install 'verl[vllm]')")
        return VLLMSampler(model, **engine_kwargs)
    return HFSampler(model, **engine_kwargs)
