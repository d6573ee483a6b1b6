"""A backend that calls a Python function: rules, tests, or any engine you wrap yourself."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aligner_chain.arguments import strict_keywords
from aligner_chain.backends.base import AlignerBackend, CorrectionRequest, CorrectionResult

__all__ = ["CallableBackend"]


class CallableBackend(AlignerBackend):
    """Correct with ``fn(question, answer) -> str``. An exception from ``fn`` fails that request
    with reason ``"backend_error"``; other requests in the batch are unaffected."""

    @strict_keywords
    def __init__(self, fn: Callable[[str, str], str], *, name: str = "callable") -> None:
        self._fn = fn
        self._name = name
        self.calls: list[int] = []  # batch sizes seen, in order

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def template_name(self) -> str:
        return "none"

    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        self.calls.append(len(requests))
        results = []
        for request in requests:
            try:
                results.append(CorrectionResult.ok(self._fn(request.question, request.answer)))
            except Exception as err:  # reported per request, never lost
                results.append(CorrectionResult.failed("backend_error", repr(err)))
        return results
