"""A local Aligner: a transformers causal LM (optionally with a PEFT adapter) on GPU, MPS or CPU.

One worker thread owns the model and serves every caller, sync or async, in arrival order: requests
waiting in its queue are gathered into dynamic batches of up to ``max_batch_size`` rows and each
batch is one left-padded greedy ``generate``. Tokenizers and ``generate`` are not thread-safe, so no
two generations ever run on one model at once; streams go through the same queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aligner_chain.backends.base import AlignerBackend, CorrectionRequest, CorrectionResult
from aligner_chain.backends.devices import check_device, check_dtype, resolve_device, resolve_dtype
from aligner_chain.backends.model_sources import (
    ModelSources,
    load_adapter,
    resolve_sources,
    template_from_config,
)
from aligner_chain.errors import AlignerError, CorrectionFailed
from aligner_chain.prompts import AlignerTemplate, get_template, parse_correction
from aligner_chain.tokenization import encode_prompt

if TYPE_CHECKING:
    import torch

__all__ = ["TransformersBackend", "resolve_device", "resolve_dtype"]

logger = logging.getLogger(__name__)

_RESERVED_GENERATION_KWARGS = ("input_ids", "attention_mask", "max_new_tokens", "streamer")
_SANE_CONTEXT = 10_000_000  # tokenizers without a limit report model_max_length ~ 1e30
_IDLE_EXIT_S = 60.0  # an idle worker thread exits (and is restarted on the next request)


@dataclass(eq=False)
class _CorrectJob:
    """A ``correct`` call: its rows may be spread over several generate batches."""

    requests: list[CorrectionRequest]
    future: Future[list[CorrectionResult]] = field(default_factory=Future)
    ids: list[list[int]] | None = None
    results: list[CorrectionResult | None] = field(default_factory=list)
    taken: list[bool] = field(default_factory=list)


@dataclass(eq=False)
class _StreamJob:
    """A ``stream`` call: one request generated alone, text pushed to ``streamer``."""

    request: CorrectionRequest
    streamer: Any
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future[CorrectionResult] = field(default_factory=Future)
    ids: list[int] | None = None


_Job = _CorrectJob | _StreamJob
_STOP = object()


class TransformersBackend(AlignerBackend):
    """Correct with a local transformers model (a hub id or a directory), optionally with a PEFT adapter.

    Args:
        model: a hub id or a local directory. A directory (or hub repo) that holds
            ``adapter_config.json`` is a PEFT adapter: it is loaded on top of the base model its
            ``adapter_config.json`` (or ``aligner_config.json``'s ``base_model``) records.
        adapter: a PEFT adapter (directory or hub id) to load on top of ``model``.
        template: a template name or string; ``None`` uses the ``aligner_config.json`` template of
            the adapter or model (local directory or hub repo), else ``"aligner-v1"``.
        max_new_tokens: the longest correction. A prompt that does not fit the model's context
            together with it is skipped (``"too_long"``); a correction without EOS within it fails
            (``"truncated"``).
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"mps"``, ``"cuda"``, ``"cuda:N"``.
        dtype: ``"auto"`` (bfloat16 on CUDA, float16 on MPS, float32 on CPU), ``"float32"``,
            ``"bfloat16"`` or ``"float16"``.
        trust_remote_code: passed to ``from_pretrained``; off unless you trust the repository.
        max_batch_size: the most rows one ``generate`` call handles.
        generation_kwargs: extra ``generate`` arguments (e.g. ``do_sample=True, temperature=0.7``)
            over the default greedy decoding.
        revision: the hub revision of ``model`` (branch, tag or commit).

    Nothing is loaded until the first correction (or :meth:`load`). ``batch_sizes`` records the
    size of every ``generate`` batch, in order.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        adapter: str | os.PathLike[str] | None = None,
        template: str | AlignerTemplate | None = None,
        max_new_tokens: int = 1024,
        device: str | Any = "auto",
        dtype: str | Any = "auto",
        trust_remote_code: bool = False,
        max_batch_size: int = 8,
        generation_kwargs: Mapping[str, Any] | None = None,
        revision: str | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)) or not os.fspath(model):
            raise ValueError("model must be a hub id or a local directory (a non-empty str or path)")
        if adapter is not None and (not isinstance(adapter, (str, os.PathLike)) or not os.fspath(adapter)):
            raise ValueError("adapter must be a PEFT adapter directory or hub id (a non-empty str or path)")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        if not _is_torch_object(device, "device"):
            check_device(device)
        if not _is_torch_object(dtype, "dtype"):
            check_dtype(dtype)
        kwargs = dict(generation_kwargs or {})
        reserved = [k for k in _RESERVED_GENERATION_KWARGS if k in kwargs]
        if reserved:
            raise ValueError(
                f"generation_kwargs must not set {reserved}; the backend sets them (use max_new_tokens= "
                "for the length)"
            )
        self._model_source = os.fspath(model)
        self._adapter_source = os.fspath(adapter) if adapter is not None else None
        self._template_arg = template
        self._template: AlignerTemplate | None = get_template(template) if template is not None else None
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.max_batch_size = max_batch_size
        self.generation_kwargs: dict[str, Any] = {"do_sample": False, **kwargs}
        self.revision = revision
        self.batch_sizes: list[int] = []

        self._load_lock = threading.Lock()
        self._lock = threading.Lock()  # guards the worker thread's life and ``_closed``
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._model: Any = None
        self._tokenizer: Any = None
        self._resolved_device: str | None = None
        self._resolved_dtype: torch.dtype | None = None
        self._eos_ids: frozenset[int] = frozenset()
        self._pad_id = 0
        self._context: int | None = None
        if self._template is None and self._local_dirs_only():
            self._template = self._template_from_config()

    # -- metadata --------------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        if self._adapter_source is None:
            return self._model_source
        return f"{self._model_source}+{self._adapter_source}"

    @property
    def template_name(self) -> str:
        return self.template.name

    @property
    def template(self) -> AlignerTemplate:
        """The resolved template (may look up ``aligner_config.json`` on the hub the first time)."""
        if self._template is None:
            with self._load_lock:
                if self._template is None:
                    self._template = self._template_from_config()
        return self._template

    @property
    def resolved_device(self) -> str | None:
        """The device the model was loaded on (``None`` before loading)."""
        return self._resolved_device

    @property
    def resolved_dtype(self) -> torch.dtype | None:
        """The dtype the model was loaded in (``None`` before loading)."""
        return self._resolved_dtype

    @property
    def loaded_model(self) -> Any:
        """The loaded ``PreTrainedModel`` (adapter merged in), or ``None`` before loading."""
        return self._model

    @property
    def queue_depth(self) -> int:
        """Calls waiting for the worker that it has not picked up yet."""
        return self._queue.qsize()

    @property
    def context_length(self) -> int | None:
        """The model's context in tokens (``None`` before loading, or when the model has no limit)."""
        return self._context

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the tokenizer and model now (thread-safe; later calls return at once).

        Raises:
            AlignerError: the model, adapter or tokenizer could not be loaded.
        """
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is not None:
                return
            try:
                self._load()
            except AlignerError:
                raise
            except Exception as err:
                raise AlignerError(
                    f"could not load the Aligner {self.model_name!r}: {type(err).__name__}: {err}"
                ) from err

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device)
        sources = self._sources()
        if self._template is None:
            self._template = self._template_from_config()
        # ``revision`` names a commit of ``model``: the adapter when ``model`` is one, else the base.
        model_is_adapter = sources.adapter is not None and self._adapter_source is None
        base_revision = None if model_is_adapter else self.revision
        tokenizer_revision = self.revision if sources.tokenizer == self._model_source else None
        tokenizer = AutoTokenizer.from_pretrained(
            sources.tokenizer, revision=tokenizer_revision, trust_remote_code=self.trust_remote_code
        )
        load_kwargs: dict[str, Any] = {
            "dtype": dtype,
            "revision": base_revision,
            "trust_remote_code": self.trust_remote_code,
            "use_safetensors": True,
        }
        if device != "cpu":
            load_kwargs["device_map"] = {"": device}
        model: Any = AutoModelForCausalLM.from_pretrained(sources.base, **load_kwargs)
        if sources.adapter is not None:
            model = load_adapter(model, sources.adapter, self.revision if model_is_adapter else None)
        model.to(device)
        model.eval()

        eos = _as_ids(model.generation_config.eos_token_id) | _as_ids(tokenizer.eos_token_id)
        eos |= _as_ids(self.generation_kwargs.get("eos_token_id"))
        if not eos:
            raise AlignerError(
                f"{self.model_name!r} has no EOS token (tokenizer.eos_token and generation_config "
                "are unset); without it no correction can end"
            )
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else min(eos)
        self._eos_ids = frozenset(eos)
        self._context = _context_length(model.config, tokenizer)
        self._tokenizer = tokenizer
        self._resolved_device = device
        self._resolved_dtype = dtype
        self._model = model
        logger.info("loaded Aligner %s on %s (%s), context %s", self.model_name, device, dtype, self._context)

    def _local_dirs_only(self) -> bool:
        sources = [self._model_source] + ([self._adapter_source] if self._adapter_source else [])
        return all(Path(s).is_dir() for s in sources)

    def _template_from_config(self) -> AlignerTemplate:
        return template_from_config(self._model_source, self._adapter_source, self.revision)

    def _sources(self) -> ModelSources:
        return resolve_sources(self._model_source, self._adapter_source, self.revision)

    # -- public API ------------------------------------------------------------------------------

    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        if not requests:
            return []
        return self._submit_correct(requests).result()

    async def acorrect(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        if not requests:
            return []
        return await asyncio.wrap_future(self._submit_correct(requests))

    def stream(self, request: CorrectionRequest) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        self.load()
        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        job = _StreamJob(request, streamer)
        self._submit(job)
        trim = _Trim()
        try:
            for text in streamer:
                delta = trim.feed(text)
                if delta:
                    yield delta
            _raise_unless_ok(job.future.result())
        finally:
            job.cancelled.set()

    async def astream(self, request: CorrectionRequest) -> AsyncIterator[str]:
        from transformers import AsyncTextIteratorStreamer

        await asyncio.to_thread(self.load)
        streamer = AsyncTextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        job = _StreamJob(request, streamer)
        self._submit(job)
        trim = _Trim()
        try:
            async for text in streamer:
                delta = trim.feed(text)
                if delta:
                    yield delta
            _raise_unless_ok(await asyncio.wrap_future(job.future))
        finally:
            job.cancelled.set()

    def close(self) -> None:
        """Serve what is queued, then stop the worker thread and release the model."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
            if worker is not None:
                self._queue.put(_STOP)
        if worker is not None and worker is not threading.current_thread():
            worker.join()
        self._model = None

    def __enter__(self) -> TransformersBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TransformersBackend({self.model_name!r}, device={self.device!r}, dtype={self.dtype!r}, "
            f"max_new_tokens={self.max_new_tokens}, max_batch_size={self.max_batch_size})"
        )

    # -- the worker ----------------------------------------------------------------------------

    def _submit_correct(self, requests: Sequence[CorrectionRequest]) -> Future[list[CorrectionResult]]:
        for i, request in enumerate(requests):
            if not isinstance(request, CorrectionRequest):
                raise TypeError(f"requests[{i}] must be a CorrectionRequest, got {type(request).__name__}")
        job = _CorrectJob(list(requests))
        self._submit(job)
        return job.future

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise AlignerError(f"{self!r} is closed")
            self._queue.put(job)
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._run_worker, name=f"aligner-{Path(self.model_name).name}", daemon=True
                )
                self._worker.start()

    def _run_worker(self) -> None:
        pending: deque[_Job] = deque()
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
                            self._worker = None
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
                    _fail(job, err)
                pending.clear()

    def _serve(self, pending: deque[_Job]) -> None:
        try:
            self.load()
        except AlignerError as err:
            for job in pending:
                _fail(job, err)
            pending.clear()
            return
        for job in pending:
            self._prepare(job)
        head = pending[0]
        if isinstance(head, _StreamJob):
            pending.popleft()
            self._serve_stream(head)
            return
        rows: list[tuple[_CorrectJob, int]] = []
        for job in pending:
            if not isinstance(job, _CorrectJob) or len(rows) == self.max_batch_size:
                break
            for i, taken in enumerate(job.taken):
                if not taken:
                    job.taken[i] = True
                    rows.append((job, i))
                    if len(rows) == self.max_batch_size:
                        break
        if rows:
            ids = [job.ids[i] for job, i in rows if job.ids is not None]
            for (job, i), result in zip(rows, self._generate_batch(ids), strict=True):
                job.results[i] = result
        for job in [j for j in pending if isinstance(j, _CorrectJob) and all(j.taken)]:
            pending.remove(job)
            job.future.set_result([r if r is not None else _lost() for r in job.results])

    def _prepare(self, job: _Job) -> None:
        if job.ids is not None:
            return
        if isinstance(job, _StreamJob):
            job.ids = self._encode(job.request)
            return
        job.ids = [self._encode(r) for r in job.requests]
        job.results = [self._too_long(ids) for ids in job.ids]
        job.taken = [r is not None for r in job.results]

    def _encode(self, request: CorrectionRequest) -> list[int]:
        return encode_prompt(self._tokenizer, self.template.format(request.question, request.answer))

    def _too_long(self, ids: list[int]) -> CorrectionResult | None:
        if self._context is None or len(ids) + self.max_new_tokens <= self._context:
            return None
        return CorrectionResult.skipped(
            "too_long",
            f"prompt of {len(ids)} tokens + max_new_tokens={self.max_new_tokens} exceeds the model's "
            f"context of {self._context} tokens",
        )

    def _generate_batch(self, prompts: list[list[int]]) -> list[CorrectionResult]:
        import torch

        self.batch_sizes.append(len(prompts))
        try:
            return [self._finish(row) for row in self._generate(prompts)]
        except torch.OutOfMemoryError as err:
            _empty_cache()
            if len(prompts) == 1:
                return [CorrectionResult.failed("out_of_memory", str(err))]
            logger.warning("out of memory with a batch of %d; retrying row by row", len(prompts))
            return [result for ids in prompts for result in self._generate_batch([ids])]
        except Exception as err:
            logger.exception("generate failed for a batch of %d", len(prompts))
            return [CorrectionResult.failed("backend_error", f"{type(err).__name__}: {err}")] * len(prompts)

    def _generate(self, prompts: list[list[int]], **extra: Any) -> list[list[int]]:
        """One left-padded ``generate`` call; the new token ids of each row."""
        import torch

        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        device = self._resolved_device or "cpu"
        kwargs = {"pad_token_id": self._pad_id, **self.generation_kwargs, **extra}
        with torch.inference_mode():
            output = self._model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=self.max_new_tokens,
                **kwargs,
            )
        new: list[list[int]] = output[:, width:].tolist()
        return new

    def _finish(self, tokens: list[int]) -> CorrectionResult:
        end = next((i for i, token in enumerate(tokens) if token in self._eos_ids), None)
        if end is None:
            if not self._stops_early():
                return CorrectionResult.failed(
                    "truncated",
                    f"no EOS within max_new_tokens={self.max_new_tokens}; raise max_new_tokens",
                )
            while tokens and tokens[-1] == self._pad_id:  # a row stopped by a stop string
                tokens = tokens[:-1]
            if len(tokens) >= self.max_new_tokens:
                return CorrectionResult.failed(
                    "truncated", f"no stop within max_new_tokens={self.max_new_tokens}"
                )
            end = len(tokens)
        text = self._tokenizer.decode(tokens[:end], skip_special_tokens=True)
        return CorrectionResult.ok(parse_correction(text))

    def _stops_early(self) -> bool:
        return bool(
            self.generation_kwargs.get("stop_strings") or self.generation_kwargs.get("stopping_criteria")
        )

    def _serve_stream(self, job: _StreamJob) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        assert job.ids is not None  # set by _prepare
        skipped = self._too_long(job.ids)
        if skipped is not None:
            job.future.set_result(skipped)
            job.streamer.end()
            return

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: Any) -> Any:
                return torch.full((input_ids.shape[0],), job.cancelled.is_set(), device=input_ids.device)

        criteria = StoppingCriteriaList(
            [_Cancelled(), *(self.generation_kwargs.get("stopping_criteria") or [])]
        )
        self.batch_sizes.append(1)
        try:
            tokens = self._generate([job.ids], streamer=job.streamer, stopping_criteria=criteria)[0]
            result = self._finish(tokens)
        except torch.OutOfMemoryError as err:
            _empty_cache()
            result = CorrectionResult.failed("out_of_memory", str(err))
            job.streamer.end()
        except Exception as err:
            logger.exception("generate failed for a stream")
            result = CorrectionResult.failed("backend_error", f"{type(err).__name__}: {err}")
            job.streamer.end()
        job.future.set_result(result)


class _Trim:
    """Strips stream deltas the way :func:`parse_correction` strips the whole text: leading
    whitespace is dropped and trailing whitespace held back until more text follows."""

    def __init__(self) -> None:
        self._started = False
        self._held = ""

    def feed(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        body = text.rstrip()
        if not body:
            self._held += text
            return ""
        out = self._held + body
        self._held = text[len(body) :]
        return out


def _raise_unless_ok(result: CorrectionResult) -> None:
    if result.status != "ok":
        raise CorrectionFailed(result.reason or result.status, result.detail)


def _fail(job: _Job, err: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(err if isinstance(err, Exception) else AlignerError(repr(err)))
    if isinstance(job, _StreamJob):
        job.streamer.end()


def _lost() -> CorrectionResult:
    return CorrectionResult.failed("backend_error", "no result was produced for this row")


def _is_torch_object(value: object, kind: str) -> bool:
    return type(value).__module__ == "torch" and type(value).__name__ == kind


def _as_ids(value: object) -> frozenset[int]:
    if value is None:
        return frozenset()
    if isinstance(value, int):
        return frozenset({value})
    if isinstance(value, (list, tuple, set, frozenset)):
        return frozenset(int(v) for v in value)
    return frozenset()


def _context_length(config: Any, tokenizer: Any) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for candidate in (getattr(text_config, "max_position_embeddings", None), tokenizer.model_max_length):
        if isinstance(candidate, int) and 0 < candidate < _SANE_CONTEXT:
            return candidate
    return None


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
