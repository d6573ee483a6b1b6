"""Append-only JSONL logs that survive a crash: each record is flushed and fsynced as it is written,
and a line torn by a crash mid-write is skipped on the next read.

Bootstrapping and evaluation keep their progress in such logs, keyed by a stable hash of the work
item, so a restart skips what is already done and nothing is paid for twice.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from aligner_chain.jsonl import JsonlWriter, MalformedLine, iter_jsonl

__all__ = ["JsonlLog", "stable_key"]

logger = logging.getLogger(__name__)


def stable_key(*parts: str) -> str:
    """A short, stable hex key for a work item (the same text gives the same key in every run)."""
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()[:32]


class JsonlLog:
    """An append-only JSONL file of dict records, built on :mod:`aligner_chain.jsonl`.

    :meth:`append` writes one line, flushes and fsyncs it before returning, and is safe to call
    from several threads. :meth:`read` returns every complete record; a line cut short by a crash
    (never acknowledged) is skipped with a warning.
    """

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()

    def read(self) -> list[dict[str, Any]]:
        """All complete records in order (an empty list when the file does not exist)."""
        if not self.path.is_file():
            return []

        def torn(bad: MalformedLine) -> None:
            logger.warning("skipping a line cut short by an interrupted run: %s", bad)

        return [row for _, row in iter_jsonl(self.path, on_malformed=torn)]

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably (written, flushed and fsynced before this returns)."""
        self.extend([record])

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        """Append several records with one flush and fsync."""
        rows = list(records)
        if not rows:
            return
        with self._lock, JsonlWriter(self.path, fsync=self._fsync) as writer:
            writer.write_many(rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.read())
