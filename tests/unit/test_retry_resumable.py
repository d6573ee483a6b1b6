"""Retries of transient errors, the bounded worker pool, and the crash-safe logs resumable jobs use."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from aligner_chain.jsonl import write_jsonl
from aligner_chain.retry import is_transient_error, is_transient_status
from training.common.concurrency import call_with_retries, map_as_completed
from training.common.resumable import JsonlLog, stable_key


class _HTTPError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class _ResponseError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__("failed")
        self.response = _Response(status_code)


class RateLimitError(Exception):
    """Named like the OpenAI/Anthropic client class: transient by name."""


class _QuotaError(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TimeoutError("slow"), True),
        (ConnectionResetError("reset"), True),
        (_HTTPError(429), True),
        (_HTTPError(503), True),
        (_ResponseError(502), True),
        (RateLimitError("slow down"), True),
        (_HTTPError(400), False),
        (_HTTPError(401), False),
        (_ResponseError(404), False),
        (ValueError("bad prompt"), False),
        (KeyError("x"), False),
    ],
)
def test_is_transient_error(error: BaseException, transient: bool) -> None:
    assert is_transient_error(error) is transient


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        *((code, True) for code in (408, 409, 425, 429, 500, 503, 529)),
        *((code, False) for code in (400, 401, 403, 404, 413, 422)),
    ],
)
def test_one_definition_of_a_transient_status(status: int, transient: bool) -> None:
    """The OpenAI backend and the bootstrap/eval clients share it (aligner_chain.retry)."""
    assert is_transient_status(status) is transient
    assert is_transient_error(_HTTPError(status)) is transient


def test_retry_on_adds_types() -> None:
    assert not is_transient_error(_QuotaError())
    assert is_transient_error(_QuotaError(), (_QuotaError,))


def _flaky(failures: list[BaseException], result: str = "ok") -> tuple[list[int], object]:
    attempts: list[int] = []

    def fn() -> str:
        attempts.append(1)
        if len(attempts) <= len(failures):
            raise failures[len(attempts) - 1]
        return result

    return attempts, fn


def test_call_with_retries_recovers_from_transient_errors() -> None:
    attempts, fn = _flaky([TimeoutError("t1"), _HTTPError(503)])
    assert call_with_retries(fn, retries=3, wait_seconds=0.001) == "ok"  # type: ignore[arg-type]
    assert len(attempts) == 3


def test_call_with_retries_does_not_retry_other_errors() -> None:
    attempts, fn = _flaky([ValueError("bad request")])
    with pytest.raises(ValueError, match="bad request"):
        call_with_retries(fn, retries=3, wait_seconds=0.001)  # type: ignore[arg-type]
    assert len(attempts) == 1


def test_call_with_retries_raises_the_last_transient_error_when_exhausted() -> None:
    attempts, fn = _flaky([TimeoutError("a"), TimeoutError("b"), TimeoutError("c")])
    with pytest.raises(TimeoutError, match="b"):
        call_with_retries(fn, retries=1, wait_seconds=0.001)  # type: ignore[arg-type]
    assert len(attempts) == 2


def test_call_with_retries_rejects_negative_retries() -> None:
    with pytest.raises(ValueError, match="retries"):
        call_with_retries(lambda: 1, retries=-1)


def test_map_as_completed_bounds_concurrency_and_returns_every_item() -> None:
    lock = threading.Lock()
    in_flight, peak = [0], [0]

    def work(x: int) -> int:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.01)
        with lock:
            in_flight[0] -= 1
        if x == 7:
            raise ValueError("seven")
        return x * x

    results = list(map_as_completed(work, range(20), max_concurrency=3))
    assert peak[0] == 3
    assert sorted(item for item, _, _ in results) == list(range(20))
    by_item = {item: (value, error) for item, value, error in results}
    assert by_item[4] == (16, None)
    assert by_item[7][0] is None and isinstance(by_item[7][1], ValueError)


def test_map_as_completed_stop_keeps_running_results_and_starts_no_more() -> None:
    started: list[int] = []
    stop = threading.Event()

    def work(x: int) -> int:
        started.append(x)
        time.sleep(0.02 if x else 0.0)
        return x

    seen = []
    for item, _, _ in map_as_completed(work, range(50), max_concurrency=4, stop=stop):
        seen.append(item)
        stop.set()
    assert sorted(seen) == sorted(started)  # what ran was reported
    assert len(started) == 4  # only the first batch ever started


def test_map_as_completed_rejects_zero_concurrency() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        list(map_as_completed(lambda x: x, [1], max_concurrency=0))


def test_stable_key_is_stable_and_unambiguous() -> None:
    assert stable_key("What is 2+2?") == stable_key("What is 2+2?")
    assert len(stable_key("q")) == 32
    assert stable_key("ab", "c") != stable_key("a", "bc")
    assert stable_key("q1") != stable_key("q2")


def test_jsonl_log_appends_reads_and_skips_a_torn_line(tmp_path: Path) -> None:
    log = JsonlLog(tmp_path / "log.jsonl")
    assert log.read() == []
    log.append({"key": "a", "n": 1})
    log.extend([{"key": "b", "n": 2}, {"key": "c", "text": "</s> ü"}])
    with (tmp_path / "log.jsonl").open("a") as fh:  # a crash in the middle of a write
        fh.write('{"key": "d", "n"')
    log.append({"key": "e"})  # starts on its own line, not glued to the torn one
    assert [r["key"] for r in log.read()] == ["a", "b", "c", "e"]
    assert [r["key"] for r in log] == ["a", "b", "c", "e"]
    assert log.read()[2]["text"] == "</s> ü"


def test_jsonl_log_is_thread_safe(tmp_path: Path) -> None:
    log = JsonlLog(tmp_path / "log.jsonl", fsync=False)
    threads = [
        threading.Thread(target=lambda i=i: [log.append({"t": i, "j": j}) for j in range(25)])
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = log.read()
    assert len(rows) == 100
    assert {(r["t"], r["j"]) for r in rows} == {(i, j) for i in range(4) for j in range(25)}


def test_write_jsonl_atomic_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "rows.jsonl"
    write_jsonl(target, [{"a": 1}, {"a": 2}])
    write_jsonl(target, iter([{"a": 3}]))
    assert [json.loads(line) for line in target.read_text().splitlines()] == [{"a": 3}]
    assert not (tmp_path / "sub" / "rows.jsonl.tmp").exists()
