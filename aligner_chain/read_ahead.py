"""Read a stream ahead in the background, so its producer keeps going while the reader works.

``AlignedChatModel`` reads its upstream this way when it corrects sentence by sentence: while the
Aligner corrects one sentence, the upstream goes on writing the next ones. A provider's HTTP stream
or a local model's worker thread writes on its own anyway; this also keeps a lazy Python generator
(one that only works when asked for the next chunk) going. Items, the end and any exception reach
the reader in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

__all__ = ["aread_ahead", "read_ahead"]

T = TypeVar("T")

_END = object()


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_ahead(source: Iterator[T]) -> Iterator[T]:
    """Iterate ``source`` in a daemon thread (in a copy of the caller's context) and yield its items
    here. Closing this iterator early stops reading after the item in progress."""
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                items.put(item)
                if stop.is_set():
                    break
        except BaseException as err:  # handed to the reader
            items.put(_Raised(err))
        finally:
            close = getattr(source, "close", None)
            if stop.is_set() and close is not None:
                close()
            items.put(_END)

    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(produce,), name="aligner-chain-read-ahead", daemon=True
    )
    thread.start()
    try:
        while (item := items.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()


async def aread_ahead(source: AsyncIterator[T]) -> AsyncIterator[T]:
    """Async twin of :func:`read_ahead`: ``source`` is read by a task on the running loop."""
    items: asyncio.Queue[Any] = asyncio.Queue()

    async def produce() -> None:
        try:
            async for item in source:
                items.put_nowait(item)
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # handed to the reader
            items.put_nowait(_Raised(err))
        finally:
            items.put_nowait(_END)

    task = asyncio.ensure_future(produce())
    try:
        while (item := await items.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
