"""Rows from wherever users keep them: a JSONL, JSON (a list) or CSV file, a directory written by
``datasets``' ``save_to_disk``, or a hub dataset id. Training data, bootstrap prompts and evaluation
rows are all read here; JSONL goes through :func:`aligner_chain.jsonl.iter_jsonl`, so a bad line is
reported with its file and line number."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from aligner_chain.jsonl import iter_jsonl

__all__ = ["read_located_records", "read_records"]

_FILE_TYPES = (".json", ".jsonl", ".csv")


def read_records(source: str | Path, split: str = "train", *, what: str = "data") -> list[Any]:
    """The raw records of ``source`` (``split`` for hub datasets and saved ``DatasetDict`` s).

    Raises:
        ValueError: the source cannot be read; the message starts ``cannot read {what} {source}``
            and says why (the line of a malformed JSONL row, a missing file, an unknown file type).
    """
    return [record for _, record in read_located_records(source, split, what=what)]


def read_located_records(
    source: str | Path, split: str = "train", *, what: str = "data"
) -> list[tuple[str, Any]]:
    """Like :func:`read_records`, each record with where it is: ``"line N"`` in a JSONL or CSV file,
    ``"item N"`` in a JSON list or a dataset (1-based)."""
    source = str(source)
    path = Path(source)
    try:
        if path.is_dir():
            return _items(_read_saved_dataset(path, split))
        if path.is_file():
            return _read_file(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error, ValueError) as err:
        raise ValueError(f"cannot read {what} {source}: {err}") from err
    if path.suffix.lower() in _FILE_TYPES or source.startswith((".", "/", "~")):
        raise ValueError(f"cannot read {what} {source}: no such file or directory")
    return _items(_read_hub_dataset(source, split, what))


def _items(records: list[Any]) -> list[tuple[str, Any]]:
    return [(f"item {i}", record) for i, record in enumerate(records, start=1)]


def _read_file(path: Path) -> list[tuple[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [(f"line {n}", row) for n, row in iter_jsonl(path, objects_only=False)]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError("a .json file must hold a list of objects (use .jsonl for one per line)")
        return _items(data)
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            return [(f"line {reader.line_num}", row) for row in reader]
    raise ValueError(f"unsupported file type {suffix!r}; use .json, .jsonl or .csv")


def _read_saved_dataset(path: Path, split: str) -> list[Any]:
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"not a directory written by datasets' save_to_disk ({err})") from err
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise ValueError(f"split {split!r} not found; splits are {sorted(loaded)}")
        loaded = loaded[split]
    return [dict(r) for r in loaded]


def _read_hub_dataset(source: str, split: str, what: str) -> list[Any]:
    from datasets import load_dataset

    try:
        ds = load_dataset(source, split=split)
    except Exception as err:  # the hub raises many types; all mean "cannot read it"
        raise ValueError(f"cannot read {what} {source} (hub dataset, split {split!r}): {err}") from err
    return [dict(r) for r in ds]
