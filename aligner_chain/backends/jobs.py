"""What a caller hands the worker thread: a batch, a stream, or a request to load; and how a job's
caller gets its result (or error) exactly once, even if it went away meanwhile."""

from __future__ import annotations

import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aligner_chain.backends.generation import Generation, GenerationRequest, Prompt
from aligner_chain.errors import AlignerError

__all__ = ["BatchJob", "Job", "ReadyJob", "StreamJob", "fail", "lost", "settle"]

T = TypeVar("T")


@dataclass(eq=False)
class BatchJob:
    """A batch call: its rows may be spread over several batches (or the continuous batch)."""

    requests: list[GenerationRequest]
    future: Future[list[Generation]] = field(default_factory=Future)
    prompts: list[Prompt | Generation] | None = None  # a Generation: settled before generating
    results: list[Generation | None] = field(default_factory=list)
    taken: list[bool] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def deliver(self, row: int, result: Generation) -> None:
        """Record one row's result; the last one settles the future."""
        with self.lock:
            self.results[row] = result
            done = all(r is not None for r in self.results)
        if done:
            settle(self.future, [r if r is not None else lost() for r in self.results])


@dataclass(eq=False)
class StreamJob:
    """A stream call: iterate ``streamer`` for text deltas, then ``future.result()`` for the
    :class:`Generation`; ``cancelled.set()`` stops the generation early."""

    request: GenerationRequest
    streamer: Any
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future[Generation] = field(default_factory=Future)
    prompt: Prompt | Generation | None = None


@dataclass(eq=False)
class ReadyJob:
    """Load (and warm up) the model in the worker thread, where it will decode."""

    future: Future[None] = field(default_factory=Future)


Job = BatchJob | StreamJob | ReadyJob


def settle(future: Future[T], result: T) -> None:
    """Hand ``result`` to a future's caller, unless the caller went away (cancelled it)."""
    try:
        if not future.done():
            future.set_result(result)
    except InvalidStateError:  # cancelled in between
        pass


def fail(job: Job, err: BaseException) -> None:
    """Hand ``err`` to the job's caller (and end its stream)."""
    try:
        if not job.future.done():
            job.future.set_exception(err if isinstance(err, Exception) else AlignerError(repr(err)))
    except InvalidStateError:
        pass
    if isinstance(job, StreamJob):
        job.streamer.end()


def lost() -> Generation:
    return Generation("", "failed", "backend_error", "no result was produced for this row")
