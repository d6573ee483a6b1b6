"""Errors raised by aligner-chain."""

from __future__ import annotations

from typing import Literal

__all__ = ["SKIP_REASONS", "AlignerError", "CorrectionFailed"]

SKIP_REASONS = frozenset(
    {
        "tool_calls",
        "invalid_tool_calls",
        "tool_call_chunks",
        "empty",
        "no_text_block",
        "skip_predicate",
        "too_long",
    }
)
"""Reasons that mean "not for the Aligner" (a skip) rather than "the Aligner broke" (a failure)."""


class AlignerError(RuntimeError):
    """A correction could not be made and the caller asked to be told (``on_failure="raise"``)."""


class CorrectionFailed(AlignerError):
    """One answer was not corrected; ``reason`` is a short machine-readable code.

    ``status`` says which: ``"failed"`` (the Aligner broke: ``"truncated"``, ``"backend_error"``...)
    or ``"skipped"`` (the answer is not for the Aligner: ``"too_long"``, ``"tool_calls"``...); by
    default it follows the reason (:data:`SKIP_REASONS`).
    """

    def __init__(
        self,
        reason: str,
        detail: str | None = None,
        *,
        status: Literal["failed", "skipped"] | None = None,
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.status: Literal["failed", "skipped"] = status or (
            "skipped" if reason in SKIP_REASONS else "failed"
        )
        super().__init__(f"{reason}: {detail}" if detail else reason)
