"""Continuous batching (transformers' manager) behind the backend, on CPU with explicit small cache
bounds: it is the CUDA default and not the CPU one, but it runs here, so every contract is tested
here: same results as static batches (ok, truncated, too_long, order), concurrent callers from
threads and asyncio, streaming, cancellation when a caller goes away, rows the cache cannot hold.

The copy model (conftest) ends each correction with EOS at a chosen length, so results are exact.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from aligner_chain.backends import CorrectionRequest, CorrectionResult
from aligner_chain.backends.transformers import TransformersBackend
from tests.conftest import COPY_TEMPLATE

BOUNDS = {"num_blocks": 48, "page_size": 32, "max_batch_tokens": 256}  # 1536 tokens, a few MiB


def make(copy_model: Any, **kwargs: Any) -> TransformersBackend:
    options: dict[str, Any] = {"template": COPY_TEMPLATE, "device": "cpu", "max_new_tokens": 64}
    return TransformersBackend(copy_model.path, **{**options, **kwargs})


def requests_for(copy_model: Any) -> list[CorrectionRequest]:
    rows = [CorrectionRequest(f"Question {n}?", copy_model.chain_text(n)) for n in (5, 30, 50)]
    rows += [CorrectionRequest("Why?", "Because of the weather." + copy_model.marker(n)) for n in (12, 40)]
    rows.append(CorrectionRequest("Long?", "It is long." + copy_model.marker(90)))  # past 64: truncated
    rows.append(CorrectionRequest("Huge?", "word " * 1200 + copy_model.marker(3)))  # past the context
    return rows


@pytest.fixture(scope="module")
def continuous(copy_model: Any) -> Any:
    with make(copy_model, scheduling="continuous", continuous_batching_config=BOUNDS) as b:
        yield b


@pytest.fixture(scope="module")
def expected(copy_model: Any) -> list[CorrectionResult]:
    with make(copy_model, scheduling="static") as static:
        return static.correct(requests_for(copy_model))


def test_same_results_as_static_batches(
    continuous: TransformersBackend, expected: Any, copy_model: Any
) -> None:
    assert [(r.status, r.reason) for r in expected] == [("ok", None)] * 5 + [
        ("failed", "truncated"),
        ("skipped", "too_long"),
    ]
    assert continuous.correct(requests_for(copy_model)) == expected
    assert continuous.decoding_plan is not None and continuous.decoding_plan.scheduling == "continuous"
    assert continuous.engine.modes["continuous"] >= 6 and continuous.batch_sizes == [], "no static batch ran"
    scheduler = continuous.engine.continuous
    assert scheduler is not None and scheduler.capacity_tokens == 48 * 32, "the bounds asked for"
    assert scheduler.config.num_blocks == 48 and scheduler.config.max_batch_tokens == 256


def test_concurrent_callers_from_threads_and_asyncio(
    continuous: TransformersBackend, expected: Any, copy_model: Any
) -> None:
    requests = requests_for(copy_model)
    calls = [[r] for r in requests] + [requests[::-1], requests[1:4]]
    by_request = dict(zip(requests, expected, strict=True))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(continuous.correct, calls))
    assert got == [[by_request[r] for r in call] for call in calls]

    async def together() -> list[list[CorrectionResult]]:
        return list(await asyncio.gather(*(continuous.acorrect(call) for call in calls)))

    assert asyncio.run(together()) == got


def test_streams_through_the_running_batch(
    continuous: TransformersBackend, expected: Any, copy_model: Any
) -> None:
    requests = requests_for(copy_model)
    deltas = list(continuous.stream(requests[2]))
    assert len(deltas) > 1 and "".join(deltas) == expected[2].text

    async def both() -> list[str]:
        async def collect(request: CorrectionRequest) -> str:
            return "".join([d async for d in continuous.astream(request)])

        return list(await asyncio.gather(collect(requests[1]), collect(requests[3])))

    assert asyncio.run(both()) == [expected[1].text, expected[3].text]


def wait_idle(backend: TransformersBackend) -> None:
    scheduler = backend.engine.continuous
    assert scheduler is not None
    deadline = time.monotonic() + 30
    while scheduler.in_flight:
        assert time.monotonic() < deadline, "the running batch never let the row go"
        time.sleep(0.01)


def test_a_caller_that_goes_away_is_cancelled(copy_model: Any, expected: Any) -> None:
    long_one = CorrectionRequest("Long?", copy_model.chain_text(copy_model.longest))
    with make(
        copy_model, scheduling="continuous", continuous_batching_config=BOUNDS, max_new_tokens=400
    ) as b:
        b.load()
        scheduler = b.engine.continuous
        assert scheduler is not None
        stream = b.stream(long_one)
        assert next(stream)
        stream.close()  # the reader left
        wait_idle(b)
        assert scheduler.cancelled == 1

        async def abandon() -> None:
            task = asyncio.create_task(b.acorrect([long_one]))
            while not scheduler.in_flight:
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(abandon())
        wait_idle(b)
        assert scheduler.cancelled == 2
        assert b.correct(requests_for(copy_model)[:2]) == expected[:2], "the batch runs on"


def test_rows_the_cache_cannot_hold_run_alone(copy_model: Any, expected: Any) -> None:
    small = {"num_blocks": 3, "page_size": 32, "max_batch_tokens": 64}  # 96 tokens
    requests = requests_for(copy_model)[:2]  # ~25 and ~60 prompt tokens, + 64 new
    with make(copy_model, scheduling="continuous", continuous_batching_config=small) as b:
        assert b.correct(requests) == expected[:2]
        assert b.engine.modes["continuous"] == 1 and b.batch_sizes == [1], "the long row ran alone"
