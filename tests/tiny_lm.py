"""Tiny random-weight Qwen2/Qwen3 causal LMs with a small chat tokenizer, for CPU tests.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in code on a fixed corpus of
math-flavoured text (so sampled responses sometimes contain ``\\boxed{7}`` or ``(B)``), wrapped in a
``PreTrainedTokenizerFast`` with a ChatML chat template like Qwen's; the model is built from a
``Qwen2Config``/``Qwen3Config`` with seeded random weights. ``make_tiny_model_dir`` saves both to a
directory that ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained`` load like a hub checkpoint.

Usage::

    from tiny_lm import make_tiny_model_dir   # pytest puts tests/ on sys.path (no __init__.py)
    model_dir = make_tiny_model_dir(tmp_path / "model", seed=0)            # Qwen2, 2 layers
    model_dir = make_tiny_model_dir(tmp_path / "m3", arch="qwen3", hidden_size=128)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# ChatML as in Qwen2.5's template: a default system turn when the conversation has none, and an
# ``enable_thinking`` switch as in Qwen3's, so that apply_chat_template kwargs visibly matter.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)

# Whole-answer tokens, so that a random model's samples often end in a parseable final answer and
# the votes in tests have real clusters.
ANSWER_TOKENS = [f"\\boxed{{{digit}}}" for digit in range(10)] + [f"({letter})" for letter in "ABCD"]

_CORPUS = [
    "Let's think step by step and output the final answer within \\boxed{}.",
    "The answer is \\boxed{0}. The answer is \\boxed{1}. The answer is \\boxed{2}.",
    "The answer is \\boxed{3}. The answer is \\boxed{4}. The answer is \\boxed{5}.",
    "The answer is \\boxed{6}. The answer is \\boxed{7}. The answer is \\boxed{8}.",
    "The answer is \\boxed{9}. So x = 12, y = 3/4 and \\frac{1}{2} + \\sqrt{2}.",
    "The answer is (A). The answer is (B). The answer is (C). The answer is (D).",
    "What is 2 + 3? Compute 7 * 8 - 5. Solve for x: 3x + 4 = 10.",
    "Which of the following is correct? A) 1 B) 2 C) 3 D) 4",
    "First, we add the numbers. Then we multiply, so the total is 42.",
    "<think>\n\n</think>\n\n",
]


def make_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a fixed corpus, with Qwen-style specials and chat template.

    Training is deterministic, so every call returns the same vocabulary. Byte-level pre-tokenization
    makes ``decode(encode(text)) == text`` for any text, as with Qwen's tokenizer. The
    :data:`ANSWER_TOKENS` are added as whole tokens.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer.add_tokens(ANSWER_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def make_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    arch: str = "qwen2",
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    initializer_range: float = 0.02,
) -> torch.nn.Module:
    """A Qwen2 or Qwen3 causal LM with seeded random weights sized to ``tokenizer``.

    The head dimension is ``hidden_size // num_heads``; vLLM needs at least 32 (``hidden_size=128``
    with 4 heads). ``initializer_range`` is the std of the random weights: at the default 0.02, greedy
    decoding repeats one token whatever the prompt; at 0.1 greedy completions differ per prompt.
    """
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[arch]
    eos_ids = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=2048,
        initializer_range=initializer_range,
        tie_word_embeddings=True,
        bos_token_id=eos_ids[1],
        eos_token_id=eos_ids,
        pad_token_id=eos_ids[1],
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=eos_ids[1], eos_token_id=eos_ids, pad_token_id=eos_ids[1], do_sample=True
    )
    return model


def make_tiny_model_dir(path: str | os.PathLike, seed: int = 0, **model_kwargs) -> Path:
    """Save a tiny random Qwen2/Qwen3 model and its tokenizer to ``path``; return ``path``.

    ``model_kwargs`` go to :func:`make_model` (``arch``, ``hidden_size``, ``num_layers``, ...).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    model = make_model(tokenizer, seed=seed, **model_kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
