"""JSONL reading and writing for the whole project (the CLI, training data, bootstrapping, evaluation).

Reading: :func:`iter_jsonl` yields ``(line_number, row)`` pairs (1-based line numbers, blank lines
skipped). A malformed line (not JSON, or not an object when ``objects_only``) is handed to
``on_malformed`` as a :class:`MalformedLine` and skipped, or raises ``ValueError`` naming the source
and line when no handler is given::

    for line_number, row in iter_jsonl("rows.jsonl", on_malformed=lambda bad: print(bad)):
        ...

Writing: :class:`JsonlWriter` writes one JSON object per line and, after each :meth:`~JsonlWriter.write`
or :meth:`~JsonlWriter.write_many`, flushes and ``fsync``-s regular files, so a row that was written
survives a crash of the process or the machine. Opened in append mode (the default) on a file whose
last line was cut off by a crash, it first ends that line, so the next row is never glued to it (a
reader then reports the cut line as malformed). :func:`write_jsonl` replaces a whole file atomically.
Resumable jobs build on these: append rows as they finish, and on restart read the file back to skip
the work already done::

    done = set()
    if path.exists():
        done = {row["id"] for _, row in iter_jsonl(path, on_malformed=lambda bad: None)}
    with JsonlWriter(path) as out:
        for item in todo:
            if item.id not in done:
                out.write(compute(item))
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = ["JsonlWriter", "MalformedLine", "dumps_row", "iter_jsonl", "write_jsonl"]

Source = str | os.PathLike[str] | IO[str] | Iterable[str]


@dataclass(frozen=True)
class MalformedLine:
    """A line that could not be read as a row: where it is, what it held, and why."""

    source: str
    line_number: int
    text: str
    error: str

    def __str__(self) -> str:
        shown = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return f"{self.source}:{self.line_number}: {self.error}: {shown!r}"


def iter_jsonl(
    source: Source,
    *,
    on_malformed: Callable[[MalformedLine], None] | None = None,
    objects_only: bool = True,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-blank line of ``source``.

    Args:
        source: a path, an open text stream (e.g. ``sys.stdin``) or any iterable of lines.
        on_malformed: called with each malformed line, which is then skipped; ``None`` raises.
        objects_only: a line that is valid JSON but not an object is malformed too.

    Raises:
        ValueError: a malformed line and no ``on_malformed`` handler.
        OSError: the file cannot be opened.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as handle:
            yield from _iter_lines(handle, str(source), on_malformed, objects_only)
    else:
        yield from _iter_lines(source, getattr(source, "name", "<stream>"), on_malformed, objects_only)


def _iter_lines(
    lines: Iterable[str],
    name: str,
    on_malformed: Callable[[MalformedLine], None] | None,
    objects_only: bool,
) -> Iterator[tuple[int, Any]]:
    for line_number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        error: str | None = None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            error = f"not valid JSON ({err.msg} at column {err.colno})"
        else:
            if objects_only and not isinstance(value, dict):
                error = f"expected a JSON object, got {type(value).__name__}"
        if error is None:
            yield line_number, value
            continue
        bad = MalformedLine(name, line_number, text, error)
        if on_malformed is None:
            raise ValueError(f"malformed JSONL row: {bad}")
        on_malformed(bad)


def dumps_row(row: Mapping[str, Any]) -> str:
    """One row as a JSONL line (UTF-8 kept readable, newline included)."""
    return json.dumps(row, ensure_ascii=False) + "\n"


class JsonlWriter:
    """Write rows to a JSONL file or stream; every write is flushed and fsync-ed (crash-safe).

    Args:
        target: a path (opened for append, or overwritten with ``append=False``; parent folders are
            created) or an open text stream such as ``sys.stdout`` (flushed, never closed here).
        append: keep what a path already holds and add to it.
        fsync: also ``os.fsync`` after each write, where the target is a real file.
    """

    def __init__(
        self, target: str | os.PathLike[str] | IO[str], *, append: bool = True, fsync: bool = True
    ) -> None:
        self._fsync = fsync
        self._owned = isinstance(target, (str, os.PathLike))
        if isinstance(target, (str, os.PathLike)):
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            if append:
                _end_partial_line(path)
            self._stream: IO[str] = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        else:
            self._stream = target
        self.rows_written = 0

    def write(self, row: Mapping[str, Any]) -> None:
        """Write one row and make it durable."""
        self.write_many([row])

    def write_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Write rows as one block and make them durable (one flush + fsync for the block)."""
        lines = [dumps_row(row) for row in rows]
        if not lines:
            return
        self._stream.write("".join(lines))
        self._stream.flush()
        if self._fsync:
            # Pipes, terminals and in-memory streams cannot be fsync-ed; flushing is all there is.
            with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
                os.fsync(self._stream.fileno())
        self.rows_written += len(lines)

    def close(self) -> None:
        """Close the file this writer opened (a stream passed in is left open)."""
        if self._owned:
            self._stream.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Replace ``path`` with ``rows`` atomically (a temporary file, fsync-ed, then renamed: a reader
    sees the old file or the new one, never half of it); returns how many rows were written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(dumps_row(row))
            count += 1
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return count


def _end_partial_line(path: Path) -> None:
    """Terminate a last line cut off by a crash, so appended rows start on a line of their own."""
    try:
        with open(path, "rb+") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
    except FileNotFoundError:
        return
