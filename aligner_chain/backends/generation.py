"""What a local generation takes and gives: a request (how to encode the prompt, how many new tokens
it needs, what its output is likely to copy), the encoded prompt with its token budget, and the
result with its finish reason."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["FinishReason", "Generation", "GenerationRequest", "Prompt"]

FinishReason = Literal["stop", "length", "too_long", "failed"]


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt: ``encode(tokenizer)`` gives its token ids, ``needs(tokenizer)`` the fewest new
    tokens worth generating (the Aligner: about the answer's length) and ``draft(tokenizer)`` the
    token ids the output is likely to copy (the Aligner: the answer; prompt lookup drafts from them;
    ``None``: from the whole prompt). All three run in the worker thread."""

    encode: Callable[[Any], list[int]]
    needs: Callable[[Any], int] | None = None
    draft: Callable[[Any], list[int]] | None = None


@dataclass(frozen=True)
class Prompt:
    """An encoded prompt and its token budget (``max_new_tokens``, or less where the context ends);
    ``expected``: about how many tokens it will take (orders rows of similar length into a batch);
    ``draft``: the ids prompt lookup drafts from (``None``: the prompt)."""

    ids: list[int]
    budget: int
    expected: int | None = None
    draft: list[int] | None = None


@dataclass(frozen=True)
class Generation:
    """What one row produced. ``finish_reason``: ``"stop"`` (EOS or a stop string), ``"length"``
    (the token budget reached; ``text`` holds what was generated), ``"too_long"`` (the prompt leaves
    less room in the context than the request needs; nothing generated) or ``"failed"`` (``reason``:
    ``"out_of_memory"``, ``"backend_error"``); ``tokens``: the new tokens ``text`` was decoded from."""

    text: str
    finish_reason: FinishReason
    reason: str | None = None
    detail: str | None = None
    tokens: int = 0
