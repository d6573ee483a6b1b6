"""What a transient error is, and the retry policy built on it (tenacity).

One definition for every client in the project: the Aligner's completions server
(:class:`~aligner_chain.backends.openai.OpenAIBackend`), bootstrapping's upstream calls and the
evaluation judge. Transient: timeouts, connection errors, and HTTP 408, 409, 425, 429 and every 5xx
(the set the OpenAI and Anthropic SDKs retry, plus 425 Too Early), found by type, by the
``status_code`` of an error or of its ``response``, or by the class names client libraries use.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from tenacity import RetryCallState, retry_if_exception, stop_after_attempt

__all__ = [
    "TRANSIENT_STATUS_CODES",
    "TransientStatus",
    "describe_error",
    "is_transient_error",
    "is_transient_status",
    "retry_options",
]

logger = logging.getLogger(__name__)

TRANSIENT_STATUS_CODES = frozenset({408, 409, 425, 429})
"""Client-side statuses worth retrying; every status >= 500 is transient too."""

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


def is_transient_status(status: int) -> bool:
    """Whether an HTTP status is worth retrying."""
    return status in TRANSIENT_STATUS_CODES or status >= 500


class TransientStatus(Exception):
    """An HTTP response with a transient status; ``retry_after`` is the server's ``Retry-After``."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status_code = status
        self.retry_after = retry_after


def _status_code(err: BaseException) -> int | None:
    for owner in (err, getattr(err, "response", None)):
        code = getattr(owner, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def is_transient_error(err: BaseException, retry_on: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether ``err`` is worth retrying (see the module docstring), or an instance of ``retry_on``."""
    if retry_on and isinstance(err, retry_on):
        return True
    if isinstance(err, (TimeoutError, ConnectionError)):
        return True
    code = _status_code(err)
    if code is not None:
        return is_transient_status(code)
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(err).__mro__)


def retry_options(
    *,
    max_retries: int,
    backoff: float,
    max_backoff: float,
    retry_on: tuple[type[BaseException], ...] = (),
    describe: str = "request",
) -> dict[str, Any]:
    """Keyword arguments for tenacity's ``Retrying``/``AsyncRetrying``: up to ``max_retries`` retries
    of transient errors, exponential backoff from ``backoff`` seconds with jitter, at most
    ``max_backoff`` (which also caps a server's ``Retry-After``); the last error is re-raised."""
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if backoff < 0 or max_backoff < 0:
        raise ValueError("backoff and max_backoff must be >= 0 seconds")

    def wait(state: RetryCallState) -> float:
        err = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(err, "retry_after", None)
        if isinstance(retry_after, (int, float)):
            return float(min(retry_after, max_backoff))
        exponential = backoff * 2 ** (state.attempt_number - 1)
        return float(min(max_backoff, exponential + random.uniform(0, backoff)))

    def log(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "%s failed (%s); retry %d of %d in %.2fs",
            describe,
            describe_error(err) if err else "?",
            state.attempt_number,
            max_retries,
            delay,
        )

    check: Callable[[BaseException], bool] = lambda err: is_transient_error(err, retry_on)  # noqa: E731
    return {
        "stop": stop_after_attempt(max_retries + 1),
        "wait": wait,
        "retry": retry_if_exception(check),
        "before_sleep": log,
        "reraise": True,
    }


def describe_error(err: BaseException) -> str:
    """``"TypeName: message"`` (or the type name alone when the message is empty)."""
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
