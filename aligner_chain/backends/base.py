"""The backend protocol: a batch of (question, answer) requests in, one result per request out."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from aligner_chain.errors import CorrectionFailed

__all__ = ["AlignerBackend", "CorrectionRequest", "CorrectionResult", "ResultStatus"]

ResultStatus = Literal["ok", "skipped", "failed"]


@dataclass(frozen=True)
class CorrectionRequest:
    """One answer to correct. ``question`` may already hold folded history (see ``fold_history``)."""

    question: str
    answer: str


@dataclass(frozen=True)
class CorrectionResult:
    """The outcome for one request.

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

    @abstractmethod
    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        """Correct a batch; one result per request, in order. Per-request problems are results;
        an exception means the whole batch failed (e.g. the model could not be loaded)."""

    async def acorrect(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        """Async twin of :meth:`correct` (default: run it in a worker thread)."""
        return await asyncio.to_thread(self.correct, list(requests))

    def stream(self, request: CorrectionRequest) -> Iterator[str]:
        """Yield the correction as text deltas; raise :class:`CorrectionFailed` when the result is
        skipped or failed (possibly after some deltas). Default: one delta from :meth:`correct`."""
        yield _text_or_raise(self.correct([request])[0])

    async def astream(self, request: CorrectionRequest) -> AsyncIterator[str]:
        """Async twin of :meth:`stream` (default: one delta from :meth:`acorrect`)."""
        yield _text_or_raise((await self.acorrect([request]))[0])


def _text_or_raise(result: CorrectionResult) -> str:
    if result.status != "ok" or result.text is None:
        raise CorrectionFailed(result.reason or result.status, result.detail)
    return result.text
