"""One offline correction job: input rows read and planned against the output (kept, retried or
new), corrected by an engine (this process, or Ray Data), written in input order and counted.
``aligner-chain correct`` is this job behind command-line flags."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

from aligner_chain.backends.base import CorrectionRequest
from aligner_chain.backends.factory import build_backend
from aligner_chain.jsonl import MalformedLine, iter_jsonl
from aligner_chain.offline.output import ResumableOutput
from aligner_chain.offline.ray_options import RayOptions
from aligner_chain.offline.rows import OUTPUT_STATUSES, output_row, parse_row

__all__ = ["CorrectJob"]

_CHUNK_SIZE = 8
"""Rows per backend call for a backend that has no batch size of its own."""


@dataclass(frozen=True)
class _Pending:
    """A valid input row to correct: its position among the valid rows, the row, the request."""

    position: int
    row: dict[str, Any]
    request: CorrectionRequest


class CorrectJob:
    """Correct the rows of ``source`` into ``output``.

    Args:
        source: a JSONL path or an open text stream.
        output: where the rows go (its ``plan`` says which rows are already done).
        bar: a tqdm bar (disabled or not) that counts every input row handled.
        prefix: what messages about bad rows start with.
    """

    def __init__(self, source: str | IO[str], output: ResumableOutput, bar: Any, *, prefix: str) -> None:
        self.source, self.output, self.bar, self.prefix = source, output, bar, prefix
        self.source_name = source if isinstance(source, str) else getattr(source, "name", "<stdin>")
        self.fields = output.fields
        self.counts: Counter[str] = Counter()
        self.valid_rows = 0
        self.started = time.perf_counter()

    # -- engines ----------------------------------------------------------------------------------

    def run_here(self, options: Mapping[str, Any], *, concurrency: int, chunk_size: int | None) -> None:
        """Correct in this process: ``concurrency`` backend calls of ``chunk_size`` rows in flight
        (``None``: a local model's own batch size, chosen for its device at load).

        Raises:
            AlignerUnavailable: the model cannot be loaded or the server reached (nothing written).
        """
        from aligner_chain.offline.corrections import check_aligner
        from aligner_chain.offline.engine import correct_in_order

        backend = build_backend(**options)
        check_aligner(backend)
        self._start_clock()
        for ready in correct_in_order(
            backend,
            self._pending(),
            lambda item: item.request,
            concurrency=concurrency,
            chunk_size=chunk_size or int(getattr(backend, "max_batch_size", _CHUNK_SIZE)),
        ):
            self._write(
                [(item.position, output_row(item.row, result, self.fields)) for item, result in ready]
            )

    def run_on_ray(self, options: Mapping[str, Any], layout: RayOptions) -> None:
        """Correct on Ray Data: each pending row travels with its position and the row itself, so
        nothing is held here while Ray works."""
        from aligner_chain.offline.ray_data import iter_corrections

        def staged() -> Iterator[tuple[int, CorrectionRequest, str]]:
            for item in self._pending():
                yield item.position, item.request, json.dumps(item.row, ensure_ascii=False)

        backend_options = dict(options)
        model = backend_options.pop("model", None)
        for group in iter_corrections(staged(), model, options=layout, backend_options=backend_options):
            self._write(
                [
                    (row_id, output_row(json.loads(payload or "{}"), result, self.fields))
                    for row_id, result, payload in group
                ]
            )

    def finish(self) -> None:
        """Commit the output (rows tried again replace their failed lines)."""
        self.output.finish(self.valid_rows)

    # -- rows -------------------------------------------------------------------------------------

    def _start_clock(self) -> None:
        """Rows/s count from here (after the model is loaded)."""
        self.started = time.perf_counter()
        self.bar.reset(total=self.bar.total)

    def _pending(self) -> Iterator[_Pending]:
        """The rows to correct, in order; invalid rows are reported, finished ones counted."""
        for line_number, value in iter_jsonl(self.source, on_malformed=self._report_line):
            try:
                request = parse_row(value, self.fields)
            except ValueError as err:
                self._report(line_number, str(err))
                continue
            position, self.valid_rows = self.valid_rows, self.valid_rows + 1
            if self.output.plan(position, value, where=f"line {line_number}") == "keep":
                self.bar.update(1)
                continue
            yield _Pending(position, value, request)

    def _report_line(self, bad: MalformedLine) -> None:
        self._report(bad.line_number, bad.error)

    def _report(self, line_number: int, error: str) -> None:
        from tqdm import tqdm

        self.counts["invalid"] += 1
        self.bar.update(1)
        tqdm.write(
            f"{self.prefix}: {self.source_name}, line {line_number}: {error}; row left out", file=sys.stderr
        )

    def _write(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        self.output.write(rows)
        self.counts.update(row[self.fields.status] for _, row in rows)
        self.bar.update(len(rows))

    # -- summary ----------------------------------------------------------------------------------

    def summary(self) -> tuple[str, int]:
        """The summary line and the exit status: 1 when a row failed or was left out, else 0."""
        counts, seconds = self.counts, time.perf_counter() - self.started
        written = sum(counts[status] for status in OUTPUT_STATUSES)
        parts = ", ".join(f"{counts[status]} {status}" for status in OUTPUT_STATUSES)
        rate = f"{written / seconds:.1f}" if seconds > 0 else "n/a"
        message = f"{self.prefix}: wrote {written} row(s) ({parts}) in {seconds:.1f} s ({rate} rows/s)"
        kept = sum(self.output.kept.values())
        if kept:
            message += f"; kept {kept} finished row(s) from before"
        if counts["invalid"]:
            message += f"; left out {counts['invalid']} invalid input row(s) (see above)"
        return message, 1 if counts["failed"] or counts["invalid"] else 0
