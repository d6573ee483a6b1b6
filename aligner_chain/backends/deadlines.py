"""A total deadline for an HTTP exchange, from connecting to the last byte.

httpx's timeouts bound each network operation (connect, each read): a server that drips a byte a
second never trips them. These helpers check the clock as each chunk arrives (and, async, bound each
wait by the time left), so an exchange ends at its deadline whatever the server does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import httpx

__all__ = ["DeadlineExceeded", "abefore", "aread_before", "before"]

_T = TypeVar("_T")


class DeadlineExceeded(httpx.TimeoutException):
    """An attempt ran past its total deadline (a transient timeout: retried)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no complete answer within the {seconds:g} s deadline")


def before(deadline: float, items: Iterator[_T]) -> Iterator[_T]:
    """``items`` until the deadline passes (checked as each arrives; httpx bounds each wait)."""
    for item in items:
        if time.monotonic() > deadline:
            raise DeadlineExceeded(deadline)
        yield item


async def abefore(deadline: float, items: AsyncIterator[_T]) -> AsyncIterator[_T]:
    """Async twin of :func:`before`; the wait for each item is bounded by the time left too."""
    iterator = items.__aiter__()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(deadline)
        try:
            item = await asyncio.wait_for(iterator.__anext__(), left)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError as err:
            raise DeadlineExceeded(deadline) from err
        yield item


async def aread_before(deadline: float, response: httpx.Response) -> bytes:
    return b"".join([chunk async for chunk in abefore(deadline, response.aiter_bytes())])
