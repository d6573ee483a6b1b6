"""The worker thread that serves a :class:`~aligner_chain.backends.local_model.LocalModel`.

Every caller, sync or async, submits a job to one queue, served in arrival order: a batch job (its
rows gathered with the rows of other waiting jobs into dynamic batches of up to ``max_batch_size``,
each one ``generate``) or a stream job (one row generated alone, text pushed to a streamer).
Tokenizers and ``generate`` are not thread-safe, so this thread is the only one that touches them:
prompts are encoded here too. An idle worker exits and is started again by the next job.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aligner_chain.backends.generation import Generation, GenerationRequest, Prompt
from aligner_chain.errors import AlignerError

if TYPE_CHECKING:
    from aligner_chain.backends.local_model import LocalModel

__all__ = ["BatchJob", "BatchingWorker", "StreamJob"]

_IDLE_EXIT_S = 60.0
_STOP = object()


@dataclass(eq=False)
class BatchJob:
    """A batch call: its rows may be spread over several generate batches."""

    requests: list[GenerationRequest]
    future: Future[list[Generation]] = field(default_factory=Future)
    prompts: list[Prompt | Generation] | None = None  # a Generation: settled before generating
    results: list[Generation | None] = field(default_factory=list)
    taken: list[bool] = field(default_factory=list)


@dataclass(eq=False)
class StreamJob:
    """A stream call: iterate ``streamer`` for text deltas, then ``future.result()`` for the
    :class:`Generation`; ``cancelled.set()`` stops the generation early."""

    request: GenerationRequest
    streamer: Any
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future[Generation] = field(default_factory=Future)
    prompt: Prompt | Generation | None = None


Job = BatchJob | StreamJob


class BatchingWorker:
    """One thread, one queue, dynamic batches for ``model``."""

    def __init__(self, model: LocalModel, *, name: str) -> None:
        self._model = model
        self._name = name
        self._lock = threading.Lock()  # guards the thread's life and ``_closed``
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        """Jobs waiting that the worker has not picked up yet."""
        return self._queue.qsize()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise AlignerError(f"{self._model.name!r} is closed")
            self._queue.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Serve what is queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        pending: deque[Job] = deque()
        stopping = False
        while True:
            if not pending:
                if stopping:
                    return
                try:
                    item = self._queue.get(timeout=_IDLE_EXIT_S)
                except queue.Empty:
                    with self._lock:
                        if self._queue.empty():
                            self._thread = None
                            return
                    continue
                if item is _STOP:
                    return
                pending.append(item)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                else:
                    pending.append(item)
            try:
                self._serve(pending)
            except BaseException as err:  # never leave a caller waiting
                for job in pending:
                    fail(job, err)
                pending.clear()

    def _serve(self, pending: deque[Job]) -> None:
        model = self._model
        try:
            model.load()
        except AlignerError as err:
            for job in pending:
                fail(job, err)
            pending.clear()
            return
        for job in pending:
            self._prepare(job)
        head = pending[0]
        if isinstance(head, StreamJob):
            pending.popleft()
            self._serve_stream(head)
            return
        rows: list[tuple[BatchJob, int, Prompt]] = []
        for job in pending:
            if not isinstance(job, BatchJob) or len(rows) == model.max_batch_size:
                break
            assert job.prompts is not None  # set by _prepare
            for i, (taken, prompt) in enumerate(zip(job.taken, job.prompts, strict=True)):
                if taken or isinstance(prompt, Generation):
                    continue
                job.taken[i] = True
                rows.append((job, i, prompt))
                if len(rows) == model.max_batch_size:
                    break
        if rows:
            for (job, i, _), result in zip(rows, model.generate([p for _, _, p in rows]), strict=True):
                job.results[i] = result
        for job in [j for j in pending if isinstance(j, BatchJob) and all(j.taken)]:
            pending.remove(job)
            job.future.set_result([r if r is not None else _lost() for r in job.results])

    def _serve_stream(self, job: StreamJob) -> None:
        prompt = job.prompt
        if isinstance(prompt, Generation) or prompt is None:
            job.streamer.end()
            job.future.set_result(prompt or _lost())
            return
        job.future.set_result(self._model.generate_stream(prompt, job.streamer, job.cancelled))

    def _prepare(self, job: Job) -> None:
        if isinstance(job, StreamJob):
            if job.prompt is None:
                job.prompt = self._model.prepare(job.request)
            return
        if job.prompts is not None:
            return
        job.prompts = [self._model.prepare(request) for request in job.requests]
        job.results = [p if isinstance(p, Generation) else None for p in job.prompts]
        job.taken = [r is not None for r in job.results]


def fail(job: Job, err: BaseException) -> None:
    """Hand ``err`` to the job's caller (and end its stream)."""
    if not job.future.done():
        job.future.set_exception(err if isinstance(err, Exception) else AlignerError(repr(err)))
    if isinstance(job, StreamJob):
        job.streamer.end()


def _lost() -> Generation:
    return Generation("", "failed", "backend_error", "no result was produced for this row")
