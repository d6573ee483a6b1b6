"""The OpenAI-compatible completions wire format: what a response body, an error body and a
stream line mean for a correction (vLLM, SGLang, llama.cpp, TGI and ``transformers serve`` each
phrase errors their own way), and the length budget a context error lets a request retry with."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aligner_chain.backends.base import CorrectionResult, StreamTrimmer, result_from_finish
from aligner_chain.errors import CorrectionFailed
from aligner_chain.retry import TransientStatus, describe_error, is_transient_status

__all__ = [
    "TEXT_ONLY_HINT",
    "Payload",
    "StreamDecoder",
    "api_root",
    "context_numbers",
    "error_message",
    "error_result",
    "raise_if_transient",
    "result_from_response",
]

# How servers say the prompt plus max_tokens does not fit the context (vLLM, SGLang, llama.cpp, TGI,
# OpenAI, transformers serve): matched case-insensitively against the error message of a 400/413/422.
_CONTEXT_ERROR = re.compile(
    r"context[ _-]?(length|size|window)|maximum context|max_model_len|max-model-len|too long"
    r"|too many tokens|must be <= \d+|exceeds? the (model'?s? )?(maximum|max|available)"
    r"|the model takes at most \d+",
    re.IGNORECASE,
)
_CONTEXT_STATUS = frozenset({400, 413, 422})
# Where servers state the context and the prompt's length in that message.
_CONTEXT_LIMIT = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"maximum context length is (\d+)",  # vLLM, OpenAI
        r"context length \((\d+) tokens\)",  # SGLang, newer vLLM
        r"takes at most (\d+)",  # transformers serve
        r"with (\d+) maximum context length",
        r"maximum allowed input length of (\d+)",
    )
]
_PROMPT_LENGTH = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"\((\d+) in the messages",  # vLLM
        r"messages resulted in (\d+) tokens",
        r"input \((\d+) tokens\)",  # SGLang, newer vLLM
        r"prompt has (\d+) tokens",  # transformers serve
        r"prompt contains (\d+) tokens",
        r"input length (\d+) exceeds",
    )
]
# How a server that takes text prompts only refuses token ids (transformers serve: "prompt must be a
# string."): the request cannot work as sent, so the message says what to change.
_TEXT_ONLY_ERROR = re.compile(r"prompt must be a string", re.IGNORECASE)
TEXT_ONLY_HINT = (
    "this server takes text prompts only, not token ids: leave out tokenizer= (--tokenizer) to send "
    "text, or serve the Aligner with a server that accepts token ids (vLLM, SGLang)"
)


def error_message(body: bytes) -> str:
    """The server's error message: OpenAI's ``{"error": {"message"}}``, TGI's ``{"error": "..."}``,
    or vLLM's ``{"message"}``; else the body text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    return _message_from_json(data) or text[:500]


def _message_from_json(data: Any) -> str | None:
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail")
            return str(message) if message else json.dumps(error)[:500]
        if isinstance(error, str):
            return error
    return None


def context_numbers(message: str) -> tuple[int, int] | None:
    """``(context length, prompt tokens)`` when a context-length error message states both."""
    limit = next((int(m.group(1)) for p in _CONTEXT_LIMIT if (m := p.search(message))), None)
    prompt = next((int(m.group(1)) for p in _PROMPT_LENGTH if (m := p.search(message))), None)
    return (limit, prompt) if limit is not None and prompt is not None else None


def error_result(status: int, message: str) -> CorrectionResult:
    if status in _CONTEXT_STATUS and _TEXT_ONLY_ERROR.search(message):
        return CorrectionResult.failed("server_error", f"HTTP {status}: {message} ({TEXT_ONLY_HINT})")
    if status in _CONTEXT_STATUS and _CONTEXT_ERROR.search(message):
        return CorrectionResult.skipped("too_long", message)
    return CorrectionResult.failed("server_error", f"HTTP {status}: {message}")


def result_from_response(status: int, body: bytes) -> CorrectionResult:
    if status >= 400:
        return error_result(status, error_message(body))
    try:
        choice = json.loads(body)["choices"][0]
        text, finish_reason = choice["text"], choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError) as err:
        return CorrectionResult.failed(
            "backend_error", f"unreadable completions response ({describe_error(err)})"
        )
    return result_from_finish(text, finish_reason)


class StreamDecoder:
    """Turns SSE lines into correction deltas whose concatenation equals the parsed correction."""

    def __init__(self) -> None:
        self.trim = StreamTrimmer()
        self.finish_reason: str | None = None
        self.done = False

    def feed(self, line: str) -> str:
        if not line.startswith("data:"):
            return ""  # blank separators, comments, event names
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            self.done = True
            return ""
        try:
            chunk = json.loads(data)
        except ValueError as err:
            raise CorrectionFailed("backend_error", f"unreadable stream chunk {data[:200]!r}") from err
        if isinstance(chunk, dict) and "error" in chunk:
            error_result(400, _message_from_json(chunk) or data[:500]).text_or_raise()
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not choices:
            return ""  # e.g. a final usage-only chunk
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return self.trim.feed(choice.get("text") or "")

    def finish(self) -> None:
        """Raise :class:`CorrectionFailed` unless the stream ended with the model stopping itself."""
        result_from_finish("", self.finish_reason).text_or_raise()


@dataclass(frozen=True)
class Payload:
    """A request body and what the length budget needs: the prompt text, the answer and (with a
    tokenizer) the tokens the answer takes."""

    body: dict[str, Any]
    prompt_text: str
    answer: str
    answer_tokens: int | None

    def with_room(self, result: CorrectionResult) -> dict[str, Any] | None:
        """The body again with ``max_tokens`` = the room the server says is left, when its context
        error states it and it is at least what the answer takes; ``None`` otherwise."""
        if result.status != "skipped" or result.reason != "too_long" or not result.detail:
            return None
        numbers = context_numbers(result.detail)
        if numbers is None:
            return None
        limit, prompt_tokens = numbers
        room = limit - prompt_tokens
        needed = self.answer_tokens
        if needed is None:  # text prompts: the answer's share of the prompt's tokens
            needed = math.ceil(prompt_tokens * len(self.answer) / max(len(self.prompt_text), 1)) + 1
        if room < needed or room >= int(self.body["max_tokens"]):
            return None
        return {**self.body, "max_tokens": room}


def api_root(base_url: str) -> str:
    """``base_url`` checked and normalised: an http(s) URL ending in its API root (``/v1`` added to a
    bare ``http://host:port``)."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(
            f"base_url must be an http(s) URL such as http://localhost:8000/v1, got {base_url!r}"
        )
    url = base_url.rstrip("/")
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url


def raise_if_transient(status: int, headers: Mapping[str, str], content: bytes) -> None:
    """Raise :class:`TransientStatus` (with the server's ``Retry-After``) for a status worth retrying."""
    if is_transient_status(status):
        retry_after: float | None
        try:
            retry_after = float(headers.get("retry-after", ""))
        except ValueError:
            retry_after = None
        raise TransientStatus(status, error_message(content), retry_after)
