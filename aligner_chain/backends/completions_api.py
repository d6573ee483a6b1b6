"""The OpenAI-compatible completions wire format: what a response body, an error body and a
stream line mean for a correction (vLLM, SGLang, llama.cpp, TGI and ``transformers serve`` each
phrase errors their own way)."""

from __future__ import annotations

import json
import re
from typing import Any

from aligner_chain.backends.base import CorrectionResult, StreamTrimmer, result_from_finish
from aligner_chain.errors import CorrectionFailed
from aligner_chain.retry import describe_error

__all__ = ["StreamDecoder", "error_message", "error_result", "result_from_response"]

# How servers say the prompt plus max_tokens does not fit the context (vLLM, SGLang, llama.cpp, TGI,
# OpenAI): matched case-insensitively against the error message of a 400/413/422 response.
_CONTEXT_ERROR = re.compile(
    r"context[ _-]?(length|size|window)|maximum context|max_model_len|too long|too many tokens"
    r"|must be <= \d+|exceeds? the (model'?s? )?(maximum|max|available)",
    re.IGNORECASE,
)
_CONTEXT_STATUS = frozenset({400, 413, 422})


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


def error_result(status: int, message: str) -> CorrectionResult:
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
