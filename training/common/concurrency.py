"""Calls to remote models from bootstrapping (upstream answers) and evaluation (judge verdicts):
retries of transient errors (what is transient: :mod:`aligner_chain.retry`) and a bounded thread
pool that reports each call as it finishes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from aligner_chain.retry import retry_options

__all__ = ["call_with_retries", "map_as_completed"]

T = TypeVar("T")
R = TypeVar("R")


def call_with_retries(
    fn: Callable[[], R],
    *,
    retries: int = 3,
    wait_seconds: float = 1.0,
    max_wait_seconds: float = 30.0,
    retry_on: tuple[type[BaseException], ...] = (),
) -> R:
    """Call ``fn``; retry up to ``retries`` times on transient errors with exponential backoff
    (``wait_seconds``, doubling, with jitter, at most ``max_wait_seconds``). Other errors, and the
    last transient one, are raised as they are."""
    from tenacity import Retrying

    options = retry_options(
        max_retries=retries,
        backoff=wait_seconds,
        max_backoff=max_wait_seconds,
        retry_on=retry_on,
        describe="call",
    )
    return Retrying(**options)(fn)


def map_as_completed(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    max_concurrency: int,
    stop: threading.Event | None = None,
) -> Iterator[tuple[T, R | None, BaseException | None]]:
    """Run ``fn`` over ``items`` on at most ``max_concurrency`` threads; yield ``(item, result,
    error)`` as each finishes. Items are submitted lazily: once ``stop`` is set no new call starts,
    and the calls already running are still yielded (their work is not lost)."""
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    iterator = iter(items)
    executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="aligner-chain")
    running: dict[Future[R], T] = {}
    try:
        for item in iterator:
            running[executor.submit(fn, item)] = item
            if len(running) >= max_concurrency:
                break
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                item = running.pop(future)
                error = future.exception()
                yield item, (None if error else future.result()), error
                if stop is not None and stop.is_set():
                    continue
                nxt = next(iterator, _SENTINEL)
                if nxt is not _SENTINEL:
                    running[executor.submit(fn, nxt)] = nxt
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


_SENTINEL: Any = object()
