"""Prompts as verl renders them for training rollouts, shared by scoring, evaluation and ReST-EM.

A prompt is a chat (a list of ``{"role", "content"}`` messages, the ``prompt`` column of a verl
dataset). :func:`render_prompts` gives the exact text verl 0.9.1 feeds the rollout engine;
:func:`tokenize_prompts` its token ids.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["as_chat", "load_tokenizer", "prompt_seed", "render_prompts", "tokenize_prompts"]

# Keys of ``data.apply_chat_template_kwargs`` that verl drops because it sets them itself.
_RESERVED_TEMPLATE_KWARGS = ("tokenize", "return_dict", "return_tensors", "add_generation_prompt")

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
