"""The single-process engine: corrections computed by a pool of threads with requests in flight
across batches, results handed back in input order.

Rows are read lazily and cut into chunks (``chunk_size`` rows per backend call: one batched
``generate`` for a local model, one request per row for a server). Up to ``concurrency`` chunks run
at once and more are queued behind them, so a thread that finishes takes the next chunk at once:
a slow row never makes the others wait for a whole batch, and a server fleet stays busy. Results
come back in input order as soon as every row before them is done.

Why our own loop rather than ``ThreadPoolExecutor.map``: ``map`` submits every item up front (a
100k-row file would sit in memory as futures) and hands results back only one by one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

from aligner_chain.backends.base import AlignerBackend, CorrectionRequest, CorrectionResult
from aligner_chain.offline.corrections import correct_requests

__all__ = ["correct_in_order"]

T = TypeVar("T")

QUEUED_PER_WORKER = 4
"""Chunks submitted per worker thread: enough queued work that no thread waits for the slowest row."""


def correct_in_order(
    backend: AlignerBackend,
    items: Iterable[T],
    request: Callable[[T], CorrectionRequest],
    *,
    concurrency: int = 1,
    chunk_size: int = 8,
) -> Iterator[list[tuple[T, CorrectionResult]]]:
    """Correct ``request(item)`` for every item; yield ``(item, result)`` pairs in input order, in
    groups of the ones that are ready together (so a writer can write each group at once).

    Args:
        backend: what corrects (safe to call from several threads, as every backend is).
        items: anything; read lazily, ``QUEUED_PER_WORKER * concurrency`` chunks ahead at most.
        request: the correction request of an item.
        concurrency: backend calls in flight at once.
        chunk_size: rows per backend call.
    """
    if concurrency < 1 or chunk_size < 1:
        raise ValueError(f"concurrency and chunk_size must be >= 1, got {concurrency} and {chunk_size}")
    iterator = iter(items)
    window: deque[tuple[list[T], Future[list[CorrectionResult]]]] = deque()
    limit = QUEUED_PER_WORKER * concurrency
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="aligner-correct")
    try:
        while True:
            chunk = list(islice(iterator, chunk_size))
            if chunk:
                requests = [request(item) for item in chunk]
                window.append((chunk, pool.submit(correct_requests, backend, requests)))
            if not window:
                return
            # Block for the oldest chunk only when the window is full or nothing is left to submit.
            ready = _take_ready(window, block=len(window) >= limit or not chunk)
            if ready:
                yield ready
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _take_ready(
    window: deque[tuple[list[T], Future[list[CorrectionResult]]]], *, block: bool
) -> list[tuple[T, CorrectionResult]]:
    ready: list[tuple[T, CorrectionResult]] = []
    while window and (window[0][1].done() or (block and not ready)):
        chunk, future = window.popleft()
        ready.extend(zip(chunk, future.result(), strict=True))
    return ready
