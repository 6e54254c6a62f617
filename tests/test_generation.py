"""Prompt rendering (same as verl's rollout) and the sampling engines, on a tiny random Qwen model."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_lm import make_tiny_model_dir

from verl_restrain.jobs import generation
from verl_restrain.jobs.generation import (
    HFSampler,
    check_engine,
    default_tensor_parallel_size,
    load_sampler,
    load_tokenizer,
    prompt_seed,
    render_prompts,
    resolve_engine,
    tokenize_prompts,
)

CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Think first."}, {"role": "user", "content": "Solve 3x + 4 = 10."}],
    [{"role": "user", "content": "Which of the following is correct? A) 1 B) 2"}],
]
SETTINGS = dict(n=3, temperature=1.0, top_p=0.95, max_new_tokens=8)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def sampler(model_dir):
    return HFSampler(str(model_dir))


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
@pytest.mark.parametrize("template_kwargs", [None, {"enable_thinking": False}])
def test_rendering_matches_verl_rollout_tokens(tmp_path, arch, template_kwargs):
    """The rendered text tokenizes to the ids verl's agent loop builds for the rollout engine."""
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    model_dir = make_tiny_model_dir(tmp_path / arch, arch=arch)
    tokenizer = load_tokenizer(str(model_dir))
    builder = create_continuous_token_builder(tokenizer, hf_model_type=arch, chat_template_kwargs=template_kwargs)
    rendered = render_prompts(CHATS, tokenizer, template_kwargs)
    expected = [builder.build_initial_tokens([dict(m) for m in chat]) for chat in CHATS]
    assert tokenize_prompts(rendered, tokenizer) == expected


def test_rendering_uses_chat_template_and_kwargs(model_dir):
    tokenizer = load_tokenizer(str(model_dir))
    plain, no_think = (render_prompts(CHATS[:1], tokenizer, kwargs)[0] for kwargs in (None, {"enable_thinking": False}))
    assert plain == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert no_think == plain + "<think>\n\n</think>\n\n"
    # verl sets these itself and drops them from data.apply_chat_template_kwargs.
    assert render_prompts(CHATS[:1], tokenizer, {"tokenize": True, "return_dict": True}) == [plain]


def test_rendering_accepts_numpy_chats_and_rejects_non_chats(model_dir):
    tokenizer = load_tokenizer(str(model_dir))
    as_numpy = [np.array(chat, dtype=object) for chat in CHATS]
    assert render_prompts(as_numpy, tokenizer) == render_prompts(CHATS, tokenizer)
    with pytest.raises(ValueError, match="prompt 1: not a chat"):
        render_prompts([CHATS[0], "just a string"], tokenizer)
    with pytest.raises(ValueError, match="without 'role'/'content'"):
        render_prompts([[{"text": "hi"}]], tokenizer)


def test_hf_sampler_shapes_and_seed_determinism(sampler):
    prompts = render_prompts(CHATS, sampler.tokenizer)
    first = sampler.generate(prompts, seed=7, **SETTINGS)
    again = sampler.generate(prompts, seed=7, **SETTINGS)
    other = sampler.generate(prompts, seed=8, **SETTINGS)
    assert len(first) == len(CHATS) and all(len(samples) == SETTINGS["n"] for samples in first)
    assert all(isinstance(text, str) for samples in first for text in samples)
    assert first == again
    assert first != other


def test_hf_sampler_does_not_depend_on_history(sampler):
    """A call's samples are the same whatever ran before it (what resuming after a crash needs)."""
    prompts = render_prompts(CHATS, sampler.tokenizer)
    fresh = sampler.generate(prompts, seed=3, **SETTINGS)
    sampler.generate(prompts[:1], seed=99, **SETTINGS)
    assert sampler.generate(prompts, seed=3, **SETTINGS) == fresh


def test_hf_sampler_matches_plain_generate(sampler):
    """The engine is model.generate with left padding: same samples as calling it directly."""
    import torch

    prompts = render_prompts(CHATS, sampler.tokenizer)
    texts = sampler.generate(prompts, seed=11, **SETTINGS)
    inputs = sampler.tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    assert (inputs["attention_mask"][:, 0] == 0).any(), "prompts of different lengths must be left-padded"
    torch.manual_seed(11)
    sequences = sampler.model.generate(**inputs, **sampler.generation_kwargs(**SETTINGS))
    direct = sampler.decode(sequences, inputs["input_ids"].shape[1])
    assert [t for samples in texts for t in samples] == direct


def test_hf_sampler_stops_at_eos(sampler):
    """Completions never contain the EOS token or anything generated after it."""
    import torch

    eos = min(sampler.eos_token_ids)
    prompt_length = 2
    body = sampler.tokenizer("The answer is", add_special_tokens=False)["input_ids"]
    row = [5, 6] + body + [eos] + body
    assert sampler.decode(torch.tensor([row]), prompt_length) == ["The answer is"]


def test_greedy_repeats_one_completion(sampler):
    prompts = render_prompts(CHATS[:2], sampler.tokenizer)
    out = sampler.generate(prompts, n=3, temperature=0.0, top_p=1.0, max_new_tokens=6, seed=0)
    assert all(len(samples) == 3 and len(set(samples)) == 1 for samples in out)


def test_prompt_seed_is_stable_and_distinct():
    seeds = {prompt_seed(0, i) for i in range(1000)}
    assert len(seeds) == 1000
    assert prompt_seed(5, 3) == prompt_seed(5, 3) != prompt_seed(6, 3)
    assert all(0 <= s < 2**32 for s in seeds)


def test_engine_selection(monkeypatch):
    monkeypatch.setattr(generation, "_vllm_importable", lambda: True)
    monkeypatch.setattr(generation, "_visible_gpu_count", lambda: 2)
    assert resolve_engine("auto") == "vllm"
    monkeypatch.setattr(generation, "_visible_gpu_count", lambda: 0)
    assert resolve_engine("auto") == "hf"
    monkeypatch.setattr(generation, "_visible_gpu_count", lambda: 4)
    monkeypatch.setattr(generation, "_vllm_importable", lambda: False)
    assert resolve_engine("auto") == "hf"
    assert resolve_engine("vllm") == "vllm"
    assert resolve_engine("hf") == "hf"
    with pytest.raises(ValueError, match="unknown engine 'sglang'"):
        resolve_engine("sglang")
    with pytest.raises(ImportError, match="vLLM is not installed"):
        load_sampler("unused-model-path", engine="vllm")


def test_missing_vllm_names_the_install_command(monkeypatch):
    monkeypatch.setattr(generation, "_vllm_importable", lambda: False)
    install = r'pip install -e "\.\[vllm\]"'
    with pytest.raises(ValueError, match=f"vLLM is not installed.*{install}.*--engine hf"):
        check_engine("vllm")
    with pytest.raises(ImportError, match=install):
        load_sampler("unused-model-path", engine="vllm")
    assert check_engine("auto") == check_engine("hf") == "hf"


def test_load_sampler_hf(model_dir):
    assert isinstance(load_sampler(str(model_dir), engine="hf"), HFSampler)


@pytest.mark.parametrize(
    "gpus, heads, expected",
    [(1, 28, 1), (2, 28, 2), (4, 28, 4), (8, 28, 4), (8, 32, 8), (3, 16, 2), (6, 12, 4), (8, 14, 2), (8, None, 8)],
)
def test_default_tensor_parallel_size(gpus, heads, expected):
    assert default_tensor_parallel_size(gpus, heads) == expected


def test_default_tensor_parallel_size_needs_a_gpu():
    with pytest.raises(ValueError, match="at least one visible GPU"):
        default_tensor_parallel_size(0, 28)


@pytest.mark.skipif(not generation._vllm_importable(), reason="vLLM is not installed (it needs a GPU machine)")
@pytest.mark.skipif(generation._visible_gpu_count() == 0, reason="the vLLM engine needs a GPU")
def test_vllm_sampler_deterministic_per_prompt(model_dir):
    """vLLM: a prompt's samples depend on its seed and position, not on the rest of the batch."""
    sampler = load_sampler(str(model_dir), engine="vllm", enforce_eager=True, gpu_memory_utilization=0.3)
    prompts = render_prompts(CHATS, sampler.tokenizer)
    full = sampler.generate(prompts, seed=1, **SETTINGS)
    assert sampler.generate(prompts, seed=1, **SETTINGS) == full
    assert len(full) == len(CHATS) and all(len(s) == SETTINGS["n"] for s in full)
