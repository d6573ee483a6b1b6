"""The row format of offline correction: what an input row must hold, what the output adds.

An input row is a JSON object with ``question`` and ``answer`` strings and any other keys, which are
kept. The output row is the input row plus four fields (names configurable with a prefix):
``correction`` (the Aligner's text when ``corrected`` or ``unchanged``, else null), ``status``
(``corrected``, ``unchanged``, ``skipped``, ``failed``), ``reason`` (why skipped or failed, else
null) and, when there is one, ``detail``. An input row that already holds one of these fields is
refused: writing the result would overwrite it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aligner_chain.backends.base import CorrectionRequest, CorrectionResult, classify

__all__ = ["OUTPUT_STATUSES", "OutputFields", "output_row", "parse_row", "result_of_row"]

OUTPUT_STATUSES = ("corrected", "unchanged", "skipped", "failed")


@dataclass(frozen=True)
class OutputFields:
    """The names the results are written under; :meth:`with_prefix` renames all four at once."""

    correction: str = "correction"
    status: str = "status"
    reason: str = "reason"
    detail: str = "detail"
    prefix: str = ""

    @classmethod
    def with_prefix(cls, prefix: str) -> OutputFields:
        """``correction``, ``status``, ``reason`` and ``detail`` with ``prefix`` in front."""
        if not isinstance(prefix, str):
            raise TypeError(f"the output prefix must be a str, got {type(prefix).__name__}")
        return cls(
            correction=prefix + "correction",
            status=prefix + "status",
            reason=prefix + "reason",
            detail=prefix + "detail",
            prefix=prefix,
        )

    @property
    def names(self) -> tuple[str, str, str, str]:
        return (self.correction, self.status, self.reason, self.detail)

    def clashes(self, keys: Any) -> list[str]:
        """The output names among ``keys`` (input fields the results would overwrite)."""
        present = set(keys)
        return [name for name in self.names if name in present]

    def clash_message(self, clashes: list[str], *, flag: str = "--output-prefix") -> str:
        names = ", ".join(f'"{name}"' for name in clashes)
        example = "aligner_" if not self.prefix else self.prefix + "aligner_"
        return (
            f"the row already has {names}, where the results go; it is not overwritten. Write the "
            f"results under other names with {flag} (e.g. {flag} {example})"
        )


DEFAULT_FIELDS = OutputFields()


def parse_row(value: Any, fields: OutputFields = DEFAULT_FIELDS) -> CorrectionRequest:
    """The request in one parsed JSONL value.

    Raises:
        ValueError: not an object, ``question``/``answer`` missing or not strings, or the row
            already holds an output field (the message names it and how to rename the outputs).
    """
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    problems = []
    for key in ("question", "answer"):
        if key not in value:
            problems.append(f'"{key}" is missing')
        elif not isinstance(value[key], str):
            problems.append(f'"{key}" must be a string, got {type(value[key]).__name__}')
    if problems:
        raise ValueError("; ".join(problems))
    clashes = fields.clashes(value)
    if clashes:
        raise ValueError(fields.clash_message(clashes))
    return CorrectionRequest(value["question"], value["answer"])


def output_row(
    row: Mapping[str, Any], result: CorrectionResult, fields: OutputFields = DEFAULT_FIELDS
) -> dict[str, Any]:
    """The input row with the result fields set from ``result`` (``detail`` only when there is one)."""
    out = dict(row)
    outcome = classify(str(row.get("answer", "")), result)
    kept = outcome.status in ("corrected", "unchanged")
    out[fields.correction] = result.text if kept else None
    out[fields.status] = outcome.status
    out[fields.reason] = None if kept else outcome.reason
    if outcome.detail:
        out[fields.detail] = outcome.detail
    return out


def result_of_row(row: Mapping[str, Any], fields: OutputFields = DEFAULT_FIELDS) -> CorrectionResult:
    """The result an output row records (the inverse of :func:`output_row`, up to the outcome)."""
    status, reason, detail = row.get(fields.status), row.get(fields.reason), row.get(fields.detail)
    if status in ("corrected", "unchanged"):
        return CorrectionResult.ok(str(row.get(fields.correction) or ""))
    if status == "skipped":
        return CorrectionResult.skipped(str(reason), detail)
    return CorrectionResult.failed(str(reason or "backend_error"), detail)
