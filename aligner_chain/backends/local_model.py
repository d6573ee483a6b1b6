"""A local causal LM and its tokenizer: loaded lazily, in the worker thread that serves it
(:mod:`aligner_chain.backends.batching`), decoding by the plan chosen for its device
(:mod:`aligner_chain.backends.decoding`). The Aligner backend and the bootstrap upstream
(``training``) both generate through it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aligner_chain.arguments import strict_keywords
from aligner_chain.backends.availability import check_source
from aligner_chain.backends.batching import BatchingWorker
from aligner_chain.backends.decoding import DecodingOptions, DecodingPlan, LoadedModel, plan_decoding
from aligner_chain.backends.devices import check_device, check_dtype, resolve_device, resolve_dtype
from aligner_chain.backends.generation import Generation, GenerationRequest, Prompt
from aligner_chain.backends.jobs import BatchJob, ReadyJob, StreamJob
from aligner_chain.backends.model_sources import ModelSources, load_causal_lm, load_tokenizer, resolve_sources
from aligner_chain.errors import AlignerError

if TYPE_CHECKING:
    import torch

    from aligner_chain.backends.compiled_decoding import CompiledDecoding
    from aligner_chain.backends.continuous import ContinuousScheduler
    from aligner_chain.backends.prompt_lookup import LookupPolicy
    from aligner_chain.backends.static_decoding import StaticDecoder

__all__ = ["LocalModel"]

logger = logging.getLogger(__name__)

_RESERVED_GENERATION_KWARGS = ("input_ids", "attention_mask", "max_new_tokens", "streamer")
_OWNED_GENERATION_KWARGS = {"prompt_lookup_num_tokens": "prompt_lookup=", "compile_config": "compiled="}
_SANE_CONTEXT = 10_000_000  # tokenizers without a limit report model_max_length ~ 1e30
_IDLE_EXIT_S = 60.0
_IDLE_EXIT_WITH_POOL_S = 0.25  # a CPU worker with an OpenMP team releases it soon after going idle


class LocalModel:
    """A transformers causal LM (a hub id or a directory, optionally with a PEFT adapter) generating
    greedily (unless ``generation_kwargs`` say otherwise) behind one worker thread.

    See :class:`~aligner_chain.backends.transformers.TransformersBackend` for the arguments.
    ``batch_sizes`` records the size of every ``generate`` batch, in order (rows decoded alone
    count 1; rows of the continuous batch are not ``generate`` batches); ``plan`` is the decoding
    plan chosen at load and ``modes`` counts the rows (and static batches) each path served.
    """

    load_retry_after_s: float = 60.0
    """How long a failed load is remembered before the next call tries again."""

    @strict_keywords
    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        adapter: str | os.PathLike[str] | None = None,
        max_new_tokens: int = 1024,
        device: str | Any = "auto",
        dtype: str | Any = "auto",
        trust_remote_code: bool = False,
        max_batch_size: int | None = None,
        generation_kwargs: Mapping[str, Any] | None = None,
        revision: str | None = None,
        scheduling: str = "auto",
        prompt_lookup: str = "auto",
        compiled: str = "auto",
        threads: int | None = None,
        continuous_batching_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)) or not os.fspath(model):
            raise ValueError("model must be a hub id or a local directory (a non-empty str or path)")
        if adapter is not None and (not isinstance(adapter, (str, os.PathLike)) or not os.fspath(adapter)):
            raise ValueError("adapter must be a PEFT adapter directory or hub id (a non-empty str or path)")
        _check_positive("max_new_tokens", max_new_tokens)
        if max_batch_size is not None:
            _check_positive("max_batch_size", max_batch_size)
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
        owned = [f"{k} (use {v})" for k, v in _OWNED_GENERATION_KWARGS.items() if k in kwargs]
        if owned:
            raise ValueError(f"generation_kwargs must not set {', '.join(owned)}")
        self.decoding = DecodingOptions(
            scheduling=scheduling,  # type: ignore[arg-type]
            prompt_lookup=prompt_lookup,  # type: ignore[arg-type]
            compiled=compiled,  # type: ignore[arg-type]
            threads=threads,
            continuous_batching_config=continuous_batching_config,
        )
        self.generation_kwargs: dict[str, Any] = {"do_sample": False, **kwargs}
        self.decoding.check(self.generation_kwargs)
        self.model_source = os.fspath(model)
        self.adapter_source = os.fspath(adapter) if adapter is not None else None
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.requested_batch_size = max_batch_size
        self.revision = revision
        self.batch_sizes: list[int] = []

        self._load_lock = threading.Lock()
        self._load_failure: tuple[float, str] | None = None  # (retry after, why)
        self._worker = BatchingWorker(self, name=f"aligner-chain-{Path(self.name).name}")
        self._loaded: LoadedModel | None = None
        self.plan: DecodingPlan | None = None
        self.continuous: ContinuousScheduler | None = None
        self.compiled: CompiledDecoding | None = None
        self.lookup: LookupPolicy | None = None
        self._decoder: StaticDecoder | None = None

    @property
    def name(self) -> str:
        """The model (and adapter) served, for logs and metadata."""
        if self.adapter_source is None:
            return self.model_source
        return f"{self.model_source}+{self.adapter_source}"

    @property
    def model(self) -> Any:
        """The loaded ``PreTrainedModel``, or ``None`` before loading."""
        return self._loaded.model if self._loaded is not None else None

    @property
    def tokenizer(self) -> Any:
        return self._loaded.tokenizer if self._loaded is not None else None

    @property
    def resolved_device(self) -> str | None:
        return self._loaded.device if self._loaded is not None else None

    @property
    def resolved_dtype(self) -> torch.dtype | None:
        return self._loaded.dtype if self._loaded is not None else None

    @property
    def context_length(self) -> int | None:
        return self._loaded.context_length if self._loaded is not None else None

    @property
    def max_batch_size(self) -> int:
        """Rows per static batch: as given, else chosen for the device at load (before loading:
        the device's target, not yet bounded by memory)."""
        if self.plan is not None:
            return self.plan.max_batch_size
        if self.requested_batch_size is not None:
            return self.requested_batch_size
        from aligner_chain.backends.capacity import BATCH_TARGETS

        try:
            kind = resolve_device(self.device).split(":")[0]
        except Exception:  # an unavailable device: loading reports it
            kind = "cpu"
        return BATCH_TARGETS.get(kind, BATCH_TARGETS["cpu"])

    @property
    def queue_depth(self) -> int:
        """Calls waiting for the worker that it has not picked up yet."""
        return self._worker.queue_depth

    @property
    def worker_thread(self) -> threading.Thread | None:
        """The worker thread while it runs."""
        return self._worker.thread

    @property
    def modes(self) -> Counter[str]:
        """Rows (and static batches, ``"batch"``) served per decoding path so far."""
        counts: Counter[str] = Counter(self._decoder.modes if self._decoder is not None else {})
        if self.continuous is not None:
            counts["continuous"] = self.continuous.submitted
        return counts

    def sources(self) -> ModelSources:
        return resolve_sources(self.model_source, self.adapter_source, self.revision)

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the tokenizer and model now, and warm up the decoding paths that need it, in the
        worker thread (thread-safe; later calls return at once).

        A failure is remembered for ``load_retry_after_s`` seconds: calls in the meantime fail at
        once with the same reason instead of trying (and maybe downloading) again.

        Raises:
            AlignerError: the model, adapter or tokenizer could not be loaded.
        """
        if self._loaded is not None:
            return
        if threading.current_thread() is self._worker.thread:
            self._load_here()
            return
        job = ReadyJob()
        self._worker.submit(job)
        job.future.result()

    def _load_here(self) -> None:
        with self._load_lock:
            if self._loaded is not None:
                return
            failed = self._load_failure
            if failed is not None and time.monotonic() < failed[0]:
                left = failed[0] - time.monotonic()
                raise AlignerError(f"{failed[1]} (not tried again for another {left:.0f} s)")
            try:
                loaded = self._load()
                self._prepare_decoding(loaded)
            except Exception as err:
                error = (
                    err
                    if isinstance(err, AlignerError)
                    else AlignerError(f"could not load {self.name!r}: {type(err).__name__}: {err}")
                )
                self._load_failure = (time.monotonic() + self.load_retry_after_s, str(error))
                if error is err:
                    raise
                raise error from err
            self._load_failure = None
            self._loaded = loaded

    def _load(self) -> LoadedModel:
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device)
        check_source(self.model_source, field="model", revision=self.revision)
        if self.adapter_source is not None:
            check_source(self.adapter_source, field="adapter")
        sources = self.sources()
        # ``revision`` names a commit of ``model``: the adapter when ``model`` is one, else the base.
        model_is_adapter = sources.adapter is not None and self.adapter_source is None
        tokenizer_revision = self.revision if sources.tokenizer == self.model_source else None
        tokenizer = load_tokenizer(
            sources, revision=tokenizer_revision, trust_remote_code=self.trust_remote_code
        )
        model = load_causal_lm(
            sources,
            dtype=dtype,
            device=device,
            trust_remote_code=self.trust_remote_code,
            base_revision=None if model_is_adapter else self.revision,
            adapter_revision=self.revision if model_is_adapter else None,
        )
        eos = _as_ids(model.generation_config.eos_token_id) | _as_ids(tokenizer.eos_token_id)
        eos |= _as_ids(self.generation_kwargs.get("eos_token_id"))
        if not eos:
            raise AlignerError(
                f"{self.name!r} has no EOS token (tokenizer.eos_token and generation_config are unset); "
                "without it no generation can end"
            )
        pad = tokenizer.pad_token_id
        loaded = LoadedModel(
            model=model,
            tokenizer=tokenizer,
            device=device,
            dtype=dtype,
            eos_ids=frozenset(eos),
            pad_id=int(pad) if pad is not None else min(eos),
            context_length=_context_length(model.config, tokenizer),
            generation_kwargs=self.generation_kwargs,
        )
        logger.info("loaded %s on %s (%s), context %s", self.name, device, dtype, loaded.context_length)
        return loaded

    def _prepare_decoding(self, loaded: LoadedModel) -> None:
        """Choose the decoding plan for the device and build (and warm up) its paths."""
        from aligner_chain.backends.capacity import (
            continuous_bounds,
            default_batch_size,
            free_memory_bytes,
            kv_bytes_per_token,
        )
        from aligner_chain.backends.static_decoding import StaticDecoder

        device = loaded.device
        kv = kv_bytes_per_token(loaded.model.config, loaded.dtype)
        free = free_memory_bytes(device)
        row_tokens = min(loaded.context_length or 2 * self.max_new_tokens, 2 * self.max_new_tokens)
        batch = self.requested_batch_size or default_batch_size(
            device, kv_per_token=kv, row_tokens=row_tokens, free_bytes=free
        )
        plan = plan_decoding(
            self.decoding,
            device=device,
            generation_kwargs=self.generation_kwargs,
            max_batch_size=batch,
            threads=self.worker_threads(),
            attn_implementation=getattr(loaded.model.config, "_attn_implementation", None),
        )
        logger.info("%s decodes with: %s (batches of %d)", self.name, "; ".join(plan.notes), batch)
        compiled = lookup = None
        if plan.compiled:
            from aligner_chain.backends.compiled_decoding import CompiledDecoding

            compiled = CompiledDecoding(loaded)
            compiled.warm_up()
        if plan.prompt_lookup != "off":
            from aligner_chain.backends.prompt_lookup import LookupPolicy

            lookup = LookupPolicy(plan.prompt_lookup)
        if plan.scheduling == "continuous":
            from aligner_chain.backends.continuous import ContinuousScheduler

            bounds = continuous_bounds(
                device, kv_per_token=kv, free_bytes=free, context_length=loaded.context_length
            )
            self.continuous = ContinuousScheduler(loaded, bounds, self.decoding.continuous_batching_config)
        self.compiled, self.lookup, self.plan = compiled, lookup, plan
        self._decoder = StaticDecoder(loaded, lookup=lookup, compiled=compiled)

    # -- the worker thread's pool -----------------------------------------------------------------

    def worker_threads(self) -> int:
        """The torch thread pool of the worker thread: ``threads=`` or the device's default."""
        from aligner_chain.backends.threads import default_threads

        if self.decoding.threads is not None:
            return self.decoding.threads
        if self._loaded is not None:
            return default_threads(self._loaded.device)
        try:
            return default_threads(resolve_device(self.device))
        except Exception:  # an unavailable device: loading reports it
            return default_threads("cpu")

    def own_thread_pool(self) -> None:
        """Size the calling (worker) thread's torch pool; other threads keep theirs."""
        from aligner_chain.backends.threads import own_thread_pool

        own_thread_pool(self.worker_threads())

    def idle_exit_s(self) -> float | None:
        """How long the worker waits idle before exiting (``None``: until closed)."""
        if self.compiled is not None:
            return None  # compiled graphs belong to the worker thread
        device = self._loaded.device if self._loaded is not None else "cpu"
        if device.startswith("cpu") and self.worker_threads() > 1:
            return _IDLE_EXIT_WITH_POOL_S
        return _IDLE_EXIT_S

    # -- submitting (served by the worker thread) -------------------------------------------------

    def submit(self, requests: Sequence[GenerationRequest]) -> Future[list[Generation]]:
        """Queue a batch; the future holds one :class:`Generation` per request, in order."""
        job = BatchJob(list(requests))
        self._worker.submit(job)
        return job.future

    def open_stream(self, request: GenerationRequest, *, asynchronous: bool = False) -> StreamJob:
        """Queue one row to stream (loads the model first: the streamer needs the tokenizer; an
        asynchronous one must be opened on the event loop that reads it)."""
        from transformers import AsyncTextIteratorStreamer, TextIteratorStreamer

        self.load()
        kind = AsyncTextIteratorStreamer if asynchronous else TextIteratorStreamer
        job = StreamJob(request, kind(self.tokenizer, skip_prompt=True, skip_special_tokens=True))
        self._worker.submit(job)
        return job

    def close(self) -> None:
        """Serve what is queued, then stop the worker thread and release the model."""
        self._worker.close()
        if self.continuous is not None:
            self.continuous.close()
            self.continuous = None
        self._loaded = None
        self._decoder = None
        self.compiled = None

    # -- generating (in the worker thread) --------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> Prompt | Generation:
        """The encoded prompt and its budget: ``max_new_tokens``, or the room left in the context
        when that is less; a ``too_long`` result when the room is less than the request needs."""
        loaded = self._loaded
        assert loaded is not None, "prepare runs after load"
        tokenizer = loaded.tokenizer
        ids = request.encode(tokenizer)
        needed = max(1, request.needs(tokenizer) if request.needs is not None else 1)
        expected = needed if request.needs is not None else None
        draft = request.draft(tokenizer) if request.draft is not None and self.lookup is not None else None
        if loaded.context_length is None:
            return Prompt(ids, self.max_new_tokens, expected, draft)
        room = loaded.context_length - len(ids)
        if room < needed:
            return Generation(
                "",
                "too_long",
                detail=f"the prompt ({len(ids)} tokens) leaves {max(room, 0)} of the model's "
                f"{loaded.context_length}-token context and the answer needs about {needed}",
            )
        return Prompt(ids, min(self.max_new_tokens, room), expected, draft)

    def generate(self, prompts: list[Prompt]) -> list[Generation]:
        """One :class:`Generation` per prompt: one static batch, or a lone row by its fastest exact
        path. Each row stops at its own token budget, so a row's result does not depend on what it
        is batched with (out of memory: row by row)."""
        assert self._decoder is not None, "generate runs after load"
        self.batch_sizes.append(len(prompts))
        return self._decoder.generate(prompts)

    def generate_stream(self, prompt: Prompt, streamer: Any, cancelled: threading.Event) -> Generation:
        """One prompt, its text pushed to ``streamer`` as it is generated; stops when ``cancelled``."""
        assert self._decoder is not None, "generate_stream runs after load"
        self.batch_sizes.append(1)
        return self._decoder.generate_stream(prompt, streamer, cancelled)

    def generate_streams(
        self, prompts: list[Prompt], streamers: list[Any], cancelled: list[threading.Event]
    ) -> list[Generation]:
        """Streams that wait together, in one batch; each row's text pushed to its own streamer."""
        assert self._decoder is not None, "generate_streams runs after load"
        self.batch_sizes.append(len(prompts))
        return self._decoder.generate_streams(prompts, streamers, cancelled)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


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
