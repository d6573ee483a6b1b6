"""A backend that calls a Python function: rules, tests, or any engine you wrap yourself."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aligner_chain.arguments import strict_keywords
from aligner_chain.backends.base import AlignerBackend, CorrectionRequest, CorrectionResult
from aligner_chain.prompts import GRANULARITIES, Granularity

__all__ = ["CallableBackend"]


class CallableBackend(AlignerBackend):
    """Correct with ``fn(question, answer) -> str``, or at ``granularity="sentence"`` with
    ``fn(question, sentence, prefix) -> str`` (the sentence's revision, ``""`` to drop it; ``prefix``
    is the corrected answer before it). An exception from ``fn`` fails that request with reason
    ``"backend_error"``; other requests in the batch are unaffected."""

    @strict_keywords
    def __init__(
        self,
        fn: Callable[..., str],
        *,
        name: str = "callable",
        granularity: Granularity = "answer",
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {granularity!r}")
        self._fn = fn
        self._name = name
        self._granularity: Granularity = granularity
        self.calls: list[int] = []  # batch sizes seen, in order

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def template_name(self) -> str:
        return "none"

    @property
    def granularity(self) -> Granularity:
        return self._granularity

    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        self.calls.append(len(requests))
        results = []
        for request in requests:
            try:
                results.append(CorrectionResult.ok(self._call(request)))
            except Exception as err:  # reported per request, never lost
                results.append(CorrectionResult.failed("backend_error", repr(err)))
        return results

    def _call(self, request: CorrectionRequest) -> str:
        if self._granularity == "sentence":
            if request.prefix is None:
                raise ValueError("a sentence-level backend needs requests with a prefix")
            return self._fn(request.question, request.answer, request.prefix)
        if request.prefix is not None:
            raise ValueError("a whole-answer backend got a request with a prefix")
        return self._fn(request.question, request.answer)
