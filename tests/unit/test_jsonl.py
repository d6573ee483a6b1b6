"""JSONL helpers: line numbers, malformed lines, crash-safe appends."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from aligner_chain.jsonl import JsonlWriter, MalformedLine, iter_jsonl, write_jsonl


def test_iter_jsonl_reports_malformed_lines_with_numbers(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\nnot json\n[1, 2]\n{"a": 2}\n', encoding="utf-8")
    bad: list[MalformedLine] = []
    rows = list(iter_jsonl(path, on_malformed=bad.append))
    assert rows == [(1, {"a": 1}), (5, {"a": 2})]
    assert [(b.line_number, b.text) for b in bad] == [(3, "not json"), (4, "[1, 2]")]
    assert "not valid JSON" in bad[0].error and "expected a JSON object, got list" in bad[1].error
    assert str(bad[0]).startswith(f"{path}:3: not valid JSON")
    assert list(iter_jsonl(["[1]"], objects_only=False)) == [(1, [1])]


def test_iter_jsonl_raises_without_handler() -> None:
    with pytest.raises(ValueError, match=r"<stream>:2: not valid JSON"):
        list(iter_jsonl(['{"a": 1}', "{broken"]))


def test_writer_appends_durably_and_repairs_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.jsonl"
    with JsonlWriter(path) as first:
        first.write_many([{"i": 0}, {"text": "é </s>"}])
    assert first.rows_written == 2
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"i": 2, "cut off by a cra')  # a crash mid-row
    with JsonlWriter(path) as writer:
        writer.write({"i": 3})
    bad: list[MalformedLine] = []
    rows = [row for _, row in iter_jsonl(path, on_malformed=bad.append)]
    assert rows == [{"i": 0}, {"text": "é </s>"}, {"i": 3}]
    assert [b.line_number for b in bad] == [3]
    assert "é" in path.read_text(encoding="utf-8")  # readable UTF-8, not \u escapes
    with JsonlWriter(path, append=False) as writer:
        writer.write_many([{"i": 9}])
    assert path.read_text(encoding="utf-8") == '{"i": 9}\n'


def test_writer_on_a_stream_flushes_and_leaves_it_open() -> None:
    stream = io.StringIO()
    writer = JsonlWriter(stream)
    writer.write_many([{"a": 1}, {"b": 2}])
    writer.close()
    assert [json.loads(line) for line in stream.getvalue().splitlines()] == [{"a": 1}, {"b": 2}]
    assert writer.rows_written == 2 and not stream.closed


def test_write_jsonl_replaces_the_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "rows.jsonl"
    assert write_jsonl(path, [{"a": 1}, {"b": "é"}]) == 2
    assert write_jsonl(path, iter([{"c": 3}])) == 1
    assert path.read_text(encoding="utf-8") == '{"c": 3}\n'
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]  # no temporary file left
