"""The worker thread that serves a :class:`~aligner_chain.backends.local_model.LocalModel`: one
queue, every caller (sync or async, batch or stream) in arrival order, and the scheduling.

* Static batches: the waiting rows of every batch job are gathered into batches of up to
  ``max_batch_size``; when more rows wait than fit, a batch takes the oldest row and the rows
  closest to it in expected length, so short rows are not held until a long one ends. When callers
  that were just served are likely to come back (the last batch ended moments ago and fewer rows
  wait than it held), the worker waits briefly for them, so concurrent callers share full batches
  instead of alternating a large batch and a lone row. A lone row (or a lone stream) is decoded
  alone, by the fastest exact path (compiled, prompt lookup or plain); streams that wait together
  share one batch.
* Continuous batching: rows go to the running :class:`~aligner_chain.backends.continuous.ContinuousScheduler`
  as they arrive (streams too); a lone row while nothing runs takes the compiled path when there is one.
  A caller that goes away cancels its rows.

Tokenizers and ``generate`` are not thread-safe, so this thread is the only one that touches them:
prompts are encoded here too. It sizes its own torch thread pool when it starts
(:mod:`aligner_chain.backends.threads`) and exits when idle (soon on CPU, where its idle OpenMP
team would slow the rest of the process); the next job starts it again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from aligner_chain.backends.generation import Generation, Prompt
from aligner_chain.backends.jobs import BatchJob, Job, ReadyJob, StreamJob, fail, lost, settle
from aligner_chain.errors import AlignerError

if TYPE_CHECKING:
    from aligner_chain.backends.local_model import LocalModel

__all__ = ["BatchingWorker"]

logger = logging.getLogger(__name__)

_STOP = object()


class BatchingWorker:
    """One thread, one queue, scheduling for ``model``."""

    gather_max_s = 0.25
    """The longest a batch waits for callers that were just served to come back..."""
    gather_share = 0.1
    """... never longer than this share of the last batch's duration ..."""
    gather_quiet_s = 0.03
    """... and no longer once nobody arrived for this long."""

    def __init__(self, model: LocalModel, *, name: str) -> None:
        self._model = model
        self._name = name
        self._lock = threading.Lock()  # guards the thread's life and ``_closed``
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_batch_end = 0.0
        self._last_batch_s = 0.0
        self._last_batch_rows = 0

    @property
    def queue_depth(self) -> int:
        """Jobs waiting that the worker has not picked up yet."""
        return self._queue.qsize()

    @property
    def thread(self) -> threading.Thread | None:
        """The worker thread while it runs."""
        return self._thread

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

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        pending: deque[Job] = deque()
        try:
            self._model.own_thread_pool()
            self._loop(pending)
        except BaseException as err:  # never leave a caller waiting, and let the next job restart
            with self._lock:
                self._thread = None
                self._drain(pending)
            logger.exception("the worker of %s stopped", self._model.name)
            for job in pending:
                fail(job, err)

    def _loop(self, pending: deque[Job]) -> None:
        stopping = False
        while True:
            if not pending:
                if stopping:
                    return
                try:
                    item = self._queue.get(timeout=self._model.idle_exit_s())
                except queue.Empty:
                    with self._lock:
                        if self._queue.empty():
                            self._thread = None
                            return
                    continue
                if item is _STOP:
                    return
                pending.append(item)
            stopping = self._drain(pending) or stopping
            try:
                self._serve(pending)
            except BaseException as err:  # never leave a caller waiting
                for job in pending:
                    fail(job, err)
                pending.clear()

    def _drain(self, pending: deque[Job]) -> bool:
        """Move every queued job to ``pending``; whether a stop was queued."""
        stopping = False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return stopping
            if item is _STOP:
                stopping = True
            else:
                pending.append(item)

    def _serve(self, pending: deque[Job]) -> None:
        model = self._model
        try:
            model.load()
        except AlignerError as err:
            for job in pending:
                fail(job, err)
            pending.clear()
            return
        for job in [j for j in pending if isinstance(j, ReadyJob)]:
            pending.remove(job)
            settle(job.future, None)
        for job in [j for j in pending if _abandoned(j)]:
            pending.remove(job)
        for job in pending:
            self._prepare(job)
        continuous = model.continuous
        if continuous is not None and continuous.healthy:
            if not self._alone_compiled(pending):
                self._to_continuous(pending)
            return
        head = pending[0] if pending else None
        if isinstance(head, StreamJob):
            self._serve_streams(pending)
            return
        self._gather(pending)
        rows = self._pick_rows(pending, model.max_batch_size)
        if rows:
            started = time.monotonic()
            results = model.generate([p for _, _, p in rows])
            self._last_batch_end = time.monotonic()
            self._last_batch_s = self._last_batch_end - started
            self._last_batch_rows = len(rows)
            for (job, i, _), result in zip(rows, results, strict=True):
                job.deliver(i, result)
        for job in [j for j in pending if isinstance(j, BatchJob) and all(j.taken)]:
            pending.remove(job)
            settle(job.future, [r if r is not None else lost() for r in job.results])

    # -- static batches ---------------------------------------------------------------------------

    def _gather(self, pending: deque[Job]) -> None:
        """Wait briefly for callers that were just served to come back, so they share this batch."""
        limit = self._model.max_batch_size
        waiting = _waiting_rows(pending)
        expected = min(limit, self._last_batch_rows + waiting)
        since = time.monotonic() - self._last_batch_end
        if waiting >= expected or since > max(self.gather_max_s, self._last_batch_s):
            return
        deadline = time.monotonic() + min(self.gather_max_s, self.gather_share * self._last_batch_s)
        while waiting < expected:
            timeout = min(deadline - time.monotonic(), self.gather_quiet_s)
            if timeout <= 0:
                return
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                return  # nobody came for a while: they are not coming
            if item is _STOP:
                self._queue.put(_STOP)
                return
            pending.append(item)
            self._prepare(item)
            if isinstance(item, StreamJob):
                return
            waiting = _waiting_rows(pending)

    def _pick_rows(self, pending: deque[Job], limit: int) -> list[tuple[BatchJob, int, Prompt]]:
        """Up to ``limit`` waiting rows: all of them when they fit, else the oldest and the rows
        closest to it in expected length."""
        rows: list[tuple[BatchJob, int, Prompt]] = []
        for job in pending:
            if not isinstance(job, BatchJob):
                continue
            assert job.prompts is not None  # set by _prepare
            for i, (taken, prompt) in enumerate(zip(job.taken, job.prompts, strict=True)):
                if not taken and isinstance(prompt, Prompt):
                    rows.append((job, i, prompt))
        if len(rows) > limit:
            anchor = _length(rows[0][2])
            rows = [rows[0], *sorted(rows[1:], key=lambda row: abs(_length(row[2]) - anchor))[: limit - 1]]
        for job, i, _ in rows:
            job.taken[i] = True
        return rows

    def _serve_stream(self, job: StreamJob) -> None:
        prompt = job.prompt
        if isinstance(prompt, Generation) or prompt is None:
            job.streamer.end()
            settle(job.future, prompt or lost())
            return
        settle(job.future, self._model.generate_stream(prompt, job.streamer, job.cancelled))

    def _serve_streams(self, pending: deque[Job]) -> None:
        """The stream at the head, with every other stream waiting (up to a batch): alone, it takes
        the fastest exact path; together, they share one static batch."""
        streams: list[StreamJob] = []
        for job in list(pending):
            if isinstance(job, StreamJob) and len(streams) < self._model.max_batch_size:
                pending.remove(job)
                streams.append(job)
        ready: list[tuple[StreamJob, Prompt]] = []
        for job in streams:
            if isinstance(job.prompt, Prompt):
                ready.append((job, job.prompt))
            else:  # refused before decoding (too long) or lost
                job.streamer.end()
                settle(job.future, job.prompt or lost())
        if not ready:
            return
        results = self._model.generate_streams(
            [prompt for _, prompt in ready],
            [job.streamer for job, _ in ready],
            [job.cancelled for job, _ in ready],
        )
        for (job, _), result in zip(ready, results, strict=True):
            settle(job.future, result)

    # -- continuous batching ----------------------------------------------------------------------

    def _alone_compiled(self, pending: deque[Job]) -> bool:
        """Serve a lone row by the compiled path while nothing else runs (lowest latency)."""
        model = self._model
        continuous, compiled = model.continuous, model.compiled
        if compiled is None or continuous is None or continuous.in_flight or len(pending) != 1:
            return False
        job = pending[0]
        if isinstance(job, StreamJob):
            prompt = job.prompt
            if not isinstance(prompt, Prompt) or not compiled.fits(prompt):
                return False
            pending.popleft()
            self._serve_stream(job)
            return True
        if not isinstance(job, BatchJob) or _waiting_rows(pending) != 1:
            return False
        rows = self._pick_rows(pending, 1)
        if not compiled.fits(rows[0][2]):
            rows[0][0].taken[rows[0][1]] = False
            return False
        pending.popleft()
        job.deliver(rows[0][1], model.generate([rows[0][2]])[0])
        return True

    def _to_continuous(self, pending: deque[Job]) -> None:
        """Hand every waiting row to the continuous batch (rows it cannot hold run here, alone)."""
        model = self._model
        continuous = model.continuous
        assert continuous is not None
        while pending:
            job = pending.popleft()
            if isinstance(job, StreamJob):
                prompt = job.prompt
                if isinstance(prompt, Prompt) and continuous.fits(prompt):
                    continuous.submit(
                        prompt, _settle_with(job.future), streamer=job.streamer, cancelled=job.cancelled
                    )
                else:
                    self._serve_stream(job)
                continue
            if not isinstance(job, BatchJob):
                continue
            assert job.prompts is not None
            request_ids: list[str] = []
            for i, prompt in enumerate(job.prompts):
                if job.taken[i] or not isinstance(prompt, Prompt):
                    continue
                job.taken[i] = True
                if continuous.fits(prompt):
                    request_ids.append(continuous.submit(prompt, _row_delivery(job, i)))
                else:
                    job.deliver(i, model.generate([prompt])[0])
            if all(r is not None for r in job.results):
                settle(job.future, [r if r is not None else lost() for r in job.results])
            job.future.add_done_callback(_cancel_on_abandon(continuous, request_ids))

    # -- preparing --------------------------------------------------------------------------------

    def _prepare(self, job: Job) -> None:
        if isinstance(job, StreamJob):
            if job.prompt is None:
                job.prompt = self._model.prepare(job.request)
            return
        if not isinstance(job, BatchJob) or job.prompts is not None:
            return
        job.prompts = [self._model.prepare(request) for request in job.requests]
        job.results = [p if isinstance(p, Generation) else None for p in job.prompts]
        job.taken = [r is not None for r in job.results]


def _settle_with(future: Future[Generation]) -> Any:
    return lambda result: settle(future, result)


def _row_delivery(job: BatchJob, row: int) -> Any:
    return lambda result: job.deliver(row, result)


def _cancel_on_abandon(continuous: Any, request_ids: list[str]) -> Any:
    def cancel(future: Future[Any]) -> None:
        if future.cancelled():
            for request_id in request_ids:
                continuous.cancel(request_id)

    return cancel


def _abandoned(job: Job) -> bool:
    """A job whose caller went away before it was served (its future was cancelled)."""
    return job.future.cancelled()


def _waiting_rows(pending: deque[Job]) -> int:
    count = 0
    for job in pending:
        if isinstance(job, BatchJob) and job.prompts is not None:
            rows = zip(job.taken, job.prompts, strict=True)
            count += sum(1 for taken, prompt in rows if not taken and isinstance(prompt, Prompt))
    return count


def _length(prompt: Prompt) -> int:
    return prompt.expected if prompt.expected is not None else prompt.budget
