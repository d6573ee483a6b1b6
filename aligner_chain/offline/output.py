"""The output file of an offline correction run: one row per valid input row, in input order, made
durable as it is written, and resumable.

A new run refuses an output file that already holds rows (unless told to overwrite it). A resumed
run (``resume=True``) reads the rows already there and matches them, by position, with the valid
input rows (each must be that input row plus the result fields, else the run is refused: the output
came from other input). Rows that did not fail are kept byte for byte and not computed again;
failed rows are computed again and replaced in place (the file is rewritten atomically once their
new results are in); the rows after the last one written are appended as they finish. A last line
cut short by a crash is dropped first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from aligner_chain.jsonl import JsonlWriter, dumps_row
from aligner_chain.offline.rows import DEFAULT_FIELDS, OUTPUT_STATUSES, OutputFields

__all__ = ["OutputConflict", "ResumableOutput"]

logger = logging.getLogger(__name__)

Plan = Literal["keep", "retry", "new"]


class OutputConflict(ValueError):
    """The output cannot be written as asked (it exists, or it does not match the input)."""


def _input_key(row: Mapping[str, Any], fields: OutputFields) -> bytes:
    """A digest of a row without the result fields (same for an input row and its output row)."""
    kept = {k: v for k, v in row.items() if k not in fields.names}
    text = json.dumps(kept, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).digest()


class ResumableOutput:
    """Write output rows in input order to ``target`` (a path or an open stream such as stdout).

    Args:
        target: the output path, or a stream (never resumed: a stream has nothing to read back).
        fields: the result field names.
        resume: continue the rows already in ``target``.
        overwrite: replace whatever ``target`` holds.

    Raises:
        OutputConflict: ``target`` holds rows and neither ``resume`` nor ``overwrite`` is set, or it
            holds lines that are not output rows.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | IO[str],
        *,
        fields: OutputFields = DEFAULT_FIELDS,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other")
        self.fields = fields
        self.kept: Counter[str] = Counter()  # statuses of the rows kept from an earlier run
        self._path = Path(target) if isinstance(target, (str, os.PathLike)) else None
        self._stream = None if isinstance(target, (str, os.PathLike)) else target
        self._keys: list[bytes] = []
        self._failed: set[int] = set()
        self._replacements: dict[int, str] = {}
        self._writer: JsonlWriter | None = None
        if self._path is None:
            if resume:
                raise ValueError("resume needs an output file, not a stream")
            return
        holds = self._path.is_file() and self._path.stat().st_size > 0
        if holds and not (resume or overwrite):
            raise OutputConflict(
                f"{self._path} already exists; continue it with --resume (finished rows are kept, failed "
                "rows are tried again) or replace it with --overwrite"
            )
        if holds and resume:
            self._read_existing(self._path)
        elif self._path.exists() and not resume:
            self._path.write_bytes(b"")

    @property
    def existing_rows(self) -> int:
        """How many rows the output held when the run started (after dropping a cut-off line)."""
        return len(self._keys)

    def _read_existing(self, path: Path) -> None:
        with path.open("rb") as handle:
            data = handle.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            logger.warning("%s: dropping its last line, cut short by an interrupted run", path)
            with path.open("rb+") as handle:
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())
        for number, line in enumerate(data[:end].splitlines(), start=1):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            status = row.get(self.fields.status) if isinstance(row, dict) else None
            if status not in OUTPUT_STATUSES:
                raise OutputConflict(
                    f"{path}, line {number} is not an output row (no {self.fields.status!r} of "
                    f"{', '.join(OUTPUT_STATUSES)}); it cannot be resumed: use another --output or "
                    "--overwrite"
                )
            assert isinstance(row, dict)
            if status == "failed":
                self._failed.add(number - 1)
            else:
                self.kept[str(status)] += 1
            self._keys.append(_input_key(row, self.fields))

    def plan(self, position: int, row: Mapping[str, Any], *, where: str = "") -> Plan:
        """What to do with the valid input row at ``position`` (0-based among the valid rows):
        ``"keep"`` its finished output row, ``"retry"`` a failed one, or compute a ``"new"`` one.

        Raises:
            OutputConflict: the output row at that position was written from another input row.
        """
        if position >= len(self._keys):
            return "new"
        if _input_key(row, self.fields) != self._keys[position]:
            raise OutputConflict(
                f"output line {position + 1} was not written from input {where or f'row {position + 1}'}: "
                "the output comes from other input (or the input changed); use another --output or "
                "--overwrite"
            )
        return "retry" if position in self._failed else "keep"

    def write(self, rows: Sequence[tuple[int, Mapping[str, Any]]]) -> None:
        """Write output rows given as ``(position, row)``, in increasing position order."""
        new: list[Mapping[str, Any]] = []
        for position, row in rows:
            if position < len(self._keys):
                if position not in self._failed or self._writer is not None:
                    raise ValueError(f"output row {position + 1} is finished already")
                self._replacements[position] = dumps_row(row)
            else:
                new.append(row)
        if new:
            self._open_for_append().write_many(new)

    def finish(self, valid_input_rows: int) -> None:
        """End the run that saw ``valid_input_rows`` valid input rows: replace the failed rows
        tried again, and check the output held no rows beyond the input.

        Raises:
            OutputConflict: the output held more rows than the input has.
        """
        if valid_input_rows < len(self._keys):
            raise OutputConflict(
                f"the output holds {len(self._keys)} rows but the input only {valid_input_rows} valid rows: "
                "it comes from other input; use another --output or --overwrite"
            )
        self._open_for_append()

    def close(self) -> None:
        """Close the file (rows tried again but not yet committed are dropped: an interrupted run
        leaves the output as it was, and the next ``--resume`` tries them again)."""
        if self._writer is not None:
            self._writer.close()

    def _open_for_append(self) -> JsonlWriter:
        if self._writer is None:
            if self._stream is not None:
                self._writer = JsonlWriter(self._stream)
            else:
                assert self._path is not None
                if self._replacements:
                    self._rewrite(self._path)
                self._writer = JsonlWriter(self._path, append=True)
        return self._writer

    def _rewrite(self, path: Path) -> None:
        """Replace the failed rows tried again, keeping every other line byte for byte (atomically:
        a temporary file, fsync-ed, then renamed)."""
        tmp = path.with_name(path.name + ".tmp")
        with path.open("rb") as source, tmp.open("wb") as out:
            for index, line in enumerate(source):
                replacement = self._replacements.get(index)
                out.write(line if replacement is None else replacement.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        self._failed -= set(self._replacements)
        self._replacements.clear()
