"""The backend protocol, and what a result means.

A backend turns a batch of :class:`CorrectionRequest` into one :class:`CorrectionResult` each: what the
engine did (``ok`` with the generated text, ``skipped``, ``failed``). This module owns the rules every
front end shares:

* :func:`result_from_finish`: how a finished generation (text + finish reason) becomes a result, for
  local models and servers alike (``length`` is ``truncated``: half a correction never replaces an
  answer);
* :func:`classify`: what a result means for the answer (``corrected``, ``unchanged``, ``skipped``,
  ``failed``);
* :meth:`CorrectionResult.text_or_raise`: a result as text or :class:`CorrectionFailed`;
* :class:`StreamTrimmer`: streamed deltas trimmed exactly like :func:`parse_correction`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aligner_chain.errors import CorrectionFailed
from aligner_chain.prompts import Granularity, parse_correction

__all__ = [
    "FINISHED",
    "AlignerBackend",
    "CorrectionRequest",
    "CorrectionResult",
    "Outcome",
    "OutcomeStatus",
    "ResultStatus",
    "StreamTrimmer",
    "classify",
    "result_from_finish",
]

ResultStatus = Literal["ok", "skipped", "failed"]
OutcomeStatus = Literal["corrected", "unchanged", "skipped", "failed"]

FINISHED = frozenset({"stop", "eos", "eos_token", "stop_sequence"})
"""Finish reasons that mean the model stopped by itself (vLLM/SGLang/llama.cpp/local: ``stop``; TGI:
``eos_token`` or ``stop_sequence``)."""


@dataclass(frozen=True)
class CorrectionRequest:
    """One answer to correct. ``question`` may already hold folded history (see ``fold_history``).

    For a sentence-level Aligner ``answer`` is one sentence and ``prefix`` the corrected answer
    before it (``""`` for the first sentence); ``prefix=None`` is a whole answer.
    """

    question: str
    answer: str
    prefix: str | None = None


@dataclass(frozen=True)
class CorrectionResult:
    """What the backend did for one request.

    ``status="ok"`` carries ``text`` (the correction, parsed); ``"skipped"`` (e.g. ``"too_long"``)
    and ``"failed"`` (e.g. ``"truncated"``, ``"backend_error"``) carry a short ``reason`` code and a
    human-readable ``detail``.
    """

    status: ResultStatus
    text: str | None = None
    reason: str | None = None
    detail: str | None = None

    @classmethod
    def ok(cls, text: str) -> CorrectionResult:
        return cls("ok", text=text)

    @classmethod
    def skipped(cls, reason: str, detail: str | None = None) -> CorrectionResult:
        return cls("skipped", reason=reason, detail=detail)

    @classmethod
    def failed(cls, reason: str, detail: str | None = None) -> CorrectionResult:
        return cls("failed", reason=reason, detail=detail)

    def text_or_raise(self) -> str:
        """The text of an ``ok`` result; :class:`CorrectionFailed` (with ``reason`` and ``status``)
        for a skipped or failed one."""
        if self.status == "ok" and self.text is not None:
            return self.text
        status: Literal["failed", "skipped"] = "skipped" if self.status == "skipped" else "failed"
        raise CorrectionFailed(self.reason or self.status, self.detail, status=status)


def result_from_finish(
    generated: str, finish_reason: str | None, max_new_tokens: int | None = None
) -> CorrectionResult:
    """The result of a finished generation: the parsed correction when the model stopped by itself,
    ``failed("truncated")`` when it hit the token budget, ``failed("server_error")`` otherwise."""
    if finish_reason == "length":
        budget = f"max_new_tokens={max_new_tokens}" if max_new_tokens else "max_new_tokens"
        return CorrectionResult.failed("truncated", f"no EOS within {budget}; raise max_new_tokens")
    if finish_reason is None:
        return CorrectionResult.failed("backend_error", "the generation ended without a finish reason")
    if finish_reason not in FINISHED:
        return CorrectionResult.failed("server_error", f"unexpected finish_reason {finish_reason!r}")
    return CorrectionResult.ok(parse_correction(generated))


@dataclass(frozen=True)
class Outcome:
    """What a result means for the answer: ``text`` is what the answer carries afterwards (the
    correction when ``corrected``, else the original)."""

    status: OutcomeStatus
    text: str
    reason: str | None = None
    detail: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """More facts for the ``aligner`` metadata (e.g. each sentence's outcome)."""

    def error(self) -> CorrectionFailed:
        """The exception for a skipped or failed outcome."""
        status: Literal["failed", "skipped"] = "skipped" if self.status == "skipped" else "failed"
        return CorrectionFailed(self.reason or self.status, self.detail, status=status)


def classify(answer: str, result: CorrectionResult, *, granularity: Granularity = "answer") -> Outcome:
    """The one rule for outcomes: an empty correction fails (``"empty_correction"``), except at
    sentence level where it drops the sentence (``corrected`` to ``""``); one equal to the answer up
    to surrounding whitespace is ``unchanged``; any other text is ``corrected``."""
    if result.status != "ok" or result.text is None:
        status: OutcomeStatus = "skipped" if result.status == "skipped" else "failed"
        return Outcome(status, answer, result.reason or "backend_error", result.detail)
    if not result.text.strip():
        if granularity == "sentence" and answer.strip():
            return Outcome("corrected", "")
        return Outcome("failed", answer, "empty_correction", "the Aligner returned no text")
    if result.text.strip() == answer.strip():
        return Outcome("unchanged", answer)
    return Outcome("corrected", result.text)


class StreamTrimmer:
    """Turns raw generated text deltas into correction deltas whose concatenation equals
    :func:`parse_correction` of the whole text: leading whitespace is dropped and trailing
    whitespace is held back until more text follows."""

    def __init__(self) -> None:
        self._started = False
        self._held = ""

    def feed(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        text = self._held + text
        body = text.rstrip()
        self._held = text[len(body) :]
        return body


class AlignerBackend(ABC):
    """Where corrections are computed. Implementations must be safe to call from many threads
    and coroutines at once; they batch and serialise internally as their engine requires."""

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The model (and adapter) this backend serves, for metadata."""

    @property
    @abstractmethod
    def template_name(self) -> str:
        """The resolved template's name (``"custom"`` for a user string), for metadata."""

    @property
    def granularity(self) -> Granularity:
        """What the model corrects: ``"answer"`` (whole answers) or ``"sentence"`` (one sentence
        after the corrected prefix; requests carry ``prefix``). Backends with a template report its
        kind."""
        return "answer"

    @abstractmethod
    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        """Correct a batch; one result per request, in order. Per-request problems are results;
        an exception means the whole batch failed (e.g. the model could not be loaded)."""

    async def acorrect(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        """Async twin of :meth:`correct` (default: run it in a worker thread)."""
        return await asyncio.to_thread(self.correct, list(requests))

    def stream(self, request: CorrectionRequest) -> Iterator[str]:
        """Yield the correction as text deltas (concatenated: the parsed correction); raise
        :class:`CorrectionFailed` when the result is skipped or failed (possibly after some deltas).
        Default: one delta from :meth:`correct`."""
        yield self.correct([request])[0].text_or_raise()

    async def astream(self, request: CorrectionRequest) -> AsyncIterator[str]:
        """Async twin of :meth:`stream` (default: one delta from :meth:`acorrect`)."""
        yield (await self.acorrect([request]))[0].text_or_raise()
