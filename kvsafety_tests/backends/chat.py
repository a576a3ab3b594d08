"""What every backend does the same way to the model's tokenizer, so that all of them see the same
tokens: the chat-templated prompt and the ids that end an answer. Imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["chat_prompt_ids", "eos_ids"]


def chat_prompt_ids(tokenizer: Any, prompt: str, system_prompt: str | None = None) -> list[int]:
    """The prompt in the model's chat template, up to where the assistant's answer begins, as
    token ids (every backend encodes with this, so all see the same tokens)."""
    messages = [{"role": "user", "content": prompt}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_ids(generation_eos: int | list[int] | None, tokenizer: Any) -> list[int]:
    """The ids that end an answer: the generation config's ``eos_token_id`` (one id, a list, or
    None) plus the tokenizer's, sorted, each once."""
    if isinstance(generation_eos, list):
        ids = list(generation_eos)
    else:
        ids = [generation_eos] if generation_eos is not None else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))
