"""Retries for transient errors (tenacity) and a bounded thread pool that reports as results finish.

Shared by bootstrapping (upstream calls) and evaluation (judge calls).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

__all__ = ["TRANSIENT_STATUS_CODES", "call_with_retries", "is_transient_error", "map_as_completed"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: HTTP status codes worth retrying: timeouts, conflicts, rate limits and server errors.
TRANSIENT_STATUS_CODES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
_TRANSIENT_NAMES = frozenset(
    {
        "RateLimitError",
        "APIConnectionError",
        "APITimeoutError",
        "InternalServerError",
        "ServiceUnavailableError",
        "OverloadedError",
        "TransportError",
        "TimeoutException",
        "ConnectError",
        "ReadTimeout",
        "RemoteProtocolError",
    }
)


def _status_code(err: BaseException) -> int | None:
    for owner in (err, getattr(err, "response", None)):
        code = getattr(owner, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def is_transient_error(err: BaseException, retry_on: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether ``err`` is worth retrying: timeouts, connection errors, rate limits, 5xx responses
    (by type, by the ``status_code`` of the error or its ``response``, or by the usual client
    library class names), or an instance of one of ``retry_on``."""
    if retry_on and isinstance(err, retry_on):
        return True
    if isinstance(err, (TimeoutError, ConnectionError)):
        return True
    code = _status_code(err)
    if code is not None:
        return code in TRANSIENT_STATUS_CODES
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(err).__mro__)


def call_with_retries(
    fn: Callable[[], R],
    *,
    retries: int = 3,
    wait_seconds: float = 1.0,
    max_wait_seconds: float = 30.0,
    retry_on: tuple[type[BaseException], ...] = (),
) -> R:
    """Call ``fn``; retry up to ``retries`` times on transient errors with exponential backoff
    (``wait_seconds``, doubling, at most ``max_wait_seconds``). Other errors, and the last transient
    one, are raised as they are."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    retrying = Retrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential(multiplier=wait_seconds, max=max_wait_seconds),
        retry=retry_if_exception(lambda e: is_transient_error(e, retry_on)),
        reraise=True,
        before_sleep=lambda state: logger.warning(
            "transient error (attempt %d of %d), retrying: %r",
            state.attempt_number,
            retries + 1,
            state.outcome.exception() if state.outcome else None,
        ),
    )
    return retrying(fn)


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
