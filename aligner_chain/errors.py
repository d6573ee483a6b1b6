"""Errors raised by aligner-chain."""

from __future__ import annotations

__all__ = ["AlignerError", "CorrectionFailed"]


class AlignerError(RuntimeError):
    """A correction could not be made and the caller asked to be told (``on_failure="raise"``)."""


class CorrectionFailed(AlignerError):
    """A backend could not correct one answer; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
