"""Prompt and completion encoding shared by training and inference.

Text (questions, answers, corrections) is always encoded with ``split_special_tokens=True``: a
string such as ``</s>`` or ``<|im_end|>`` inside an answer stays text and never becomes a control
token. Special tokens are only added as ids (BOS by the tokenizer, EOS after a completion).
"""

from __future__ import annotations

from typing import Any

__all__ = ["encode_completion", "encode_prompt", "encode_text"]


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a rendered prompt, with the tokenizer's own BOS and no control tokens from text."""
    ids: list[int] = tokenizer(prompt, add_special_tokens=True, split_special_tokens=True)["input_ids"]
    return ids


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of plain text, no special tokens added and none made from the text."""
    ids: list[int] = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids


def encode_completion(tokenizer: Any, completion: str) -> list[int]:
    """Token ids of a completion (from ``format_completion``) followed by the EOS id."""
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token; set tokenizer.eos_token before training")
    return [*encode_text(tokenizer, completion), tokenizer.eos_token_id]
