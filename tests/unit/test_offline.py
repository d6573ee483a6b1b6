"""The offline building blocks without a model: ordered concurrent correction, the resumable output
and the row format's output names."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest

from aligner_chain.backends import CallableBackend, CorrectionRequest, CorrectionResult
from aligner_chain.offline.engine import correct_in_order
from aligner_chain.offline.output import OutputConflict, ResumableOutput
from aligner_chain.offline.rows import OutputFields, output_row, parse_row, result_of_row


def test_results_come_back_in_input_order_with_calls_in_flight() -> None:
    rng, lock = random.Random(0), threading.Lock()
    in_flight, most = [0], [0]

    def slow_upper(question: str, answer: str) -> str:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            delay = rng.random() * 0.01
        time.sleep(delay)
        with lock:
            in_flight[0] -= 1
        return answer.upper()

    items = [f"answer {i}" for i in range(200)]
    groups = list(
        correct_in_order(
            CallableBackend(slow_upper),
            iter(items),
            lambda a: CorrectionRequest("q", a),
            concurrency=6,
            chunk_size=3,
        )
    )
    pairs = [pair for group in groups for pair in group]
    assert [item for item, _ in pairs] == items
    assert [result.text for _, result in pairs] == [a.upper() for a in items]
    assert most[0] > 1 and len(groups) < len(items) / 3 + 1


def test_output_names_with_a_prefix_and_back() -> None:
    fields = OutputFields.with_prefix("aligner_")
    row = {"question": "Q", "answer": "A.", "status": "draft"}
    assert parse_row(row, fields) == CorrectionRequest("Q", "A.")
    with pytest.raises(ValueError, match=r'already has "status".*--output-prefix'):
        parse_row(row)
    out = output_row(row, CorrectionResult.failed("truncated", "no EOS"), fields)
    assert out == {
        **row,
        "aligner_correction": None,
        "aligner_status": "failed",
        "aligner_reason": "truncated",
        "aligner_detail": "no EOS",
    }
    assert result_of_row(out, fields) == CorrectionResult.failed("truncated", "no EOS")
    ok = output_row(row, CorrectionResult.ok("B."), fields)
    assert output_row(row, result_of_row(ok, fields), fields) == ok


def rows(n: int) -> list[dict]:
    return [{"question": f"Q{i}", "answer": f"A{i}"} for i in range(n)]


def test_resumable_output_keeps_finished_lines_and_replaces_failed_ones(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    out = ResumableOutput(path)
    first = [
        output_row(r, CorrectionResult.failed("backend_error") if i == 1 else CorrectionResult.ok("x"))
        for i, r in enumerate(rows(3))
    ]
    out.write(list(enumerate(first)))
    out.finish(3)
    out.close()
    with pytest.raises(OutputConflict, match="--resume"):
        ResumableOutput(path)
    path.write_bytes(path.read_bytes() + b'{"question": "Q3", "ans')  # cut off by a crash
    before = path.read_bytes().splitlines(keepends=True)[:3]

    resumed = ResumableOutput(path, resume=True)
    assert resumed.existing_rows == 3 and dict(resumed.kept) == {"corrected": 2}
    assert [resumed.plan(i, r) for i, r in enumerate(rows(5))] == ["keep", "retry", "keep", "new", "new"]
    with pytest.raises(OutputConflict, match="other input"):
        resumed.plan(0, {"question": "Q9", "answer": "A9"})
    resumed.write([(1, output_row(rows(2)[1], CorrectionResult.ok("y")))])
    assert path.read_bytes().splitlines(keepends=True) == before[:3]  # not committed yet
    resumed.write([(3, output_row(rows(4)[3], CorrectionResult.ok("z")))])
    resumed.finish(4)
    resumed.close()
    after = path.read_bytes().splitlines(keepends=True)
    assert after[0] == before[0] and after[2] == before[2]
    assert [json.loads(line)["correction"] for line in after] == ["x", "y", "x", "z"]
    with pytest.raises(OutputConflict, match="holds 4 rows but the input only 2"):
        ResumableOutput(path, resume=True).finish(2)


def test_an_interrupted_retry_leaves_the_output_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps(output_row(rows(1)[0], CorrectionResult.failed("backend_error"))) + "\n")
    before = path.read_bytes()
    out = ResumableOutput(path, resume=True)
    out.write([(0, output_row(rows(1)[0], CorrectionResult.ok("fixed")))])
    out.close()  # no finish(): interrupted
    assert path.read_bytes() == before
    path.write_text("not a row\n")
    with pytest.raises(OutputConflict, match="line 1 is not an output row"):
        ResumableOutput(path, resume=True)
    ResumableOutput(path, overwrite=True).close()
    assert path.read_bytes() == b""
