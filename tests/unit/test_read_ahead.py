"""Reading a stream ahead: order, errors and early stops reach the reader."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from aligner_chain.read_ahead import aread_ahead, read_ahead


def test_items_arrive_in_order_while_the_reader_is_busy() -> None:
    produced: list[int] = []
    all_produced = threading.Event()

    def source() -> Iterator[int]:
        for i in range(5):
            produced.append(i)
            yield i
        all_produced.set()

    reader = read_ahead(source())
    assert next(reader) == 0
    assert all_produced.wait(5)  # the source ran on while the reader held the first item
    assert list(reader) == [1, 2, 3, 4]


def test_an_error_reaches_the_reader_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise ConnectionError("upstream dropped")

    reader = read_ahead(source())
    assert next(reader) == 1
    with pytest.raises(ConnectionError, match="upstream dropped"):
        next(reader)


def test_closing_early_stops_and_closes_the_source() -> None:
    closed = threading.Event()
    gate = threading.Event()

    def source() -> Iterator[int]:
        try:
            for i in range(1000):
                gate.wait(5)
                yield i
        finally:
            closed.set()

    reader = read_ahead(source())
    gate.set()
    assert next(reader) == 0
    reader.close()
    assert closed.wait(5)


async def test_async_twin() -> None:
    async def source() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ValueError("late")

    got = []
    with pytest.raises(ValueError, match="late"):
        async for item in aread_ahead(source()):
            got.append(item)
    assert got == [1, 2]
