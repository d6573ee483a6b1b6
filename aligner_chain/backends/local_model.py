"""A local causal LM and its tokenizer: loaded lazily, generating left-padded batches, served by one
worker thread (:mod:`aligner_chain.backends.batching`). The Aligner backend and the bootstrap
upstream (``training``) both generate through it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aligner_chain.arguments import strict_keywords
from aligner_chain.backends.availability import check_source
from aligner_chain.backends.batching import BatchingWorker, BatchJob, StreamJob
from aligner_chain.backends.devices import check_device, check_dtype, resolve_device, resolve_dtype
from aligner_chain.backends.generation import FinishReason, Generation, GenerationRequest, Prompt
from aligner_chain.backends.model_sources import ModelSources, load_causal_lm, load_tokenizer, resolve_sources
from aligner_chain.errors import AlignerError

if TYPE_CHECKING:
    import torch

__all__ = ["LocalModel"]

logger = logging.getLogger(__name__)

_RESERVED_GENERATION_KWARGS = ("input_ids", "attention_mask", "max_new_tokens", "streamer")
_SANE_CONTEXT = 10_000_000  # tokenizers without a limit report model_max_length ~ 1e30


class LocalModel:
    """A transformers causal LM (a hub id or a directory, optionally with a PEFT adapter) generating
    greedily (unless ``generation_kwargs`` say otherwise) behind one worker thread.

    See :class:`~aligner_chain.backends.transformers.TransformersBackend` for the arguments.
    ``batch_sizes`` records the size of every ``generate`` batch, in order.
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
        max_batch_size: int = 8,
        generation_kwargs: Mapping[str, Any] | None = None,
        revision: str | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)) or not os.fspath(model):
            raise ValueError("model must be a hub id or a local directory (a non-empty str or path)")
        if adapter is not None and (not isinstance(adapter, (str, os.PathLike)) or not os.fspath(adapter)):
            raise ValueError("adapter must be a PEFT adapter directory or hub id (a non-empty str or path)")
        _check_positive("max_new_tokens", max_new_tokens)
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
        self.model_source = os.fspath(model)
        self.adapter_source = os.fspath(adapter) if adapter is not None else None
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.max_batch_size = max_batch_size
        self.generation_kwargs: dict[str, Any] = {"do_sample": False, **kwargs}
        self.revision = revision
        self.batch_sizes: list[int] = []

        self._load_lock = threading.Lock()
        self._load_failure: tuple[float, str] | None = None  # (retry after, why)
        self._worker = BatchingWorker(self, name=f"aligner-chain-{Path(self.name).name}")
        self.model: Any = None
        self.tokenizer: Any = None
        self.resolved_device: str | None = None
        self.resolved_dtype: torch.dtype | None = None
        self.context_length: int | None = None
        self._eos_ids: frozenset[int] = frozenset()
        self._pad_id = 0

    @property
    def name(self) -> str:
        """The model (and adapter) served, for logs and metadata."""
        if self.adapter_source is None:
            return self.model_source
        return f"{self.model_source}+{self.adapter_source}"

    @property
    def queue_depth(self) -> int:
        """Calls waiting for the worker that it has not picked up yet."""
        return self._worker.queue_depth

    def sources(self) -> ModelSources:
        return resolve_sources(self.model_source, self.adapter_source, self.revision)

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the tokenizer and model now (thread-safe; later calls return at once).

        A failure is remembered for ``load_retry_after_s`` seconds: calls in the meantime fail at
        once with the same reason instead of trying (and maybe downloading) again.

        Raises:
            AlignerError: the model, adapter or tokenizer could not be loaded.
        """
        if self.model is not None:
            return
        with self._load_lock:
            if self.model is not None:
                return
            failed = self._load_failure
            if failed is not None and time.monotonic() < failed[0]:
                left = failed[0] - time.monotonic()
                raise AlignerError(f"{failed[1]} (not tried again for another {left:.0f} s)")
            try:
                self._load()
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

    def _load(self) -> None:
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
        self._pad_id = int(pad) if pad is not None else min(eos)
        self._eos_ids = frozenset(eos)
        self.context_length = _context_length(model.config, tokenizer)
        self.tokenizer = tokenizer
        self.resolved_device = device
        self.resolved_dtype = dtype
        self.model = model
        logger.info("loaded %s on %s (%s), context %s", self.name, device, dtype, self.context_length)

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
        self.model = None

    # -- generating (in the worker thread) --------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> Prompt | Generation:
        """The encoded prompt and its budget: ``max_new_tokens``, or the room left in the context
        when that is less; a ``too_long`` result when the room is less than the request needs."""
        ids = request.encode(self.tokenizer)
        if self.context_length is None:
            return Prompt(ids, self.max_new_tokens)
        room = self.context_length - len(ids)
        needed = max(1, request.needs(self.tokenizer) if request.needs is not None else 1)
        if room < needed:
            return Generation(
                "",
                "too_long",
                detail=f"the prompt ({len(ids)} tokens) leaves {max(room, 0)} of the model's "
                f"{self.context_length}-token context and the answer needs about {needed}",
            )
        return Prompt(ids, min(self.max_new_tokens, room))

    def generate(self, prompts: list[Prompt]) -> list[Generation]:
        """One batch, one :class:`Generation` per prompt (out of memory: row by row). Each row stops
        at its own token budget, so a row's result does not depend on what it is batched with."""
        import torch

        self.batch_sizes.append(len(prompts))
        try:
            rows = self._generate(prompts)
            return [self._finish(row, prompt.budget) for row, prompt in zip(rows, prompts, strict=True)]
        except torch.OutOfMemoryError as err:
            _empty_cache()
            if len(prompts) == 1:
                return [Generation("", "failed", "out_of_memory", str(err))]
            logger.warning("out of memory with a batch of %d; retrying row by row", len(prompts))
            return [result for prompt in prompts for result in self.generate([prompt])]
        except Exception as err:
            logger.exception("generate failed for a batch of %d", len(prompts))
            return [Generation("", "failed", "backend_error", f"{type(err).__name__}: {err}")] * len(prompts)

    def _generate(
        self, prompts: list[Prompt], *, criteria: Sequence[Any] = (), **extra: Any
    ) -> list[list[int]]:
        """One left-padded ``generate`` call; the new token ids of each row."""
        import torch
        from transformers import StoppingCriteriaList

        width = max(len(p.ids) for p in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt.ids) :] = torch.tensor(prompt.ids, dtype=torch.long)
            attention_mask[row, width - len(prompt.ids) :] = 1
        budgets = [p.budget for p in prompts]
        stops = [*criteria, *(self.generation_kwargs.get("stopping_criteria") or [])]
        if len(set(budgets)) > 1:
            stops.append(_RowBudgets(budgets, width))
        kwargs = {"pad_token_id": self._pad_id, **self.generation_kwargs, **extra}
        if stops:
            kwargs["stopping_criteria"] = StoppingCriteriaList(stops)
        device = self.resolved_device or "cpu"
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max(budgets),
                **kwargs,
            )
        new: list[list[int]] = output[:, width:].tolist()
        return new

    def _finish(self, tokens: list[int], budget: int) -> Generation:
        end = next((i for i, token in enumerate(tokens) if token in self._eos_ids), None)
        reason: FinishReason = "stop"
        if end is None:
            while tokens and tokens[-1] == self._pad_id:  # a row that stopped on a stop string
                tokens = tokens[:-1]
            end = len(tokens)
            if not self._stops_early() or end >= budget:
                reason = "length"
        return Generation(self.tokenizer.decode(tokens[:end], skip_special_tokens=True), reason, tokens=end)

    def _stops_early(self) -> bool:
        return bool(
            self.generation_kwargs.get("stop_strings") or self.generation_kwargs.get("stopping_criteria")
        )

    def generate_stream(self, prompt: Prompt, streamer: Any, cancelled: threading.Event) -> Generation:
        """One prompt, its text pushed to ``streamer`` as it is generated; stops when ``cancelled``."""
        import torch

        self.batch_sizes.append(1)
        try:
            tokens = self._generate([prompt], criteria=[_Cancelled(cancelled)], streamer=streamer)
            return self._finish(tokens[0], prompt.budget)
        except torch.OutOfMemoryError as err:
            _empty_cache()
            streamer.end()
            return Generation("", "failed", "out_of_memory", str(err))
        except Exception as err:
            logger.exception("generate failed for a stream")
            streamer.end()
            return Generation("", "failed", "backend_error", f"{type(err).__name__}: {err}")


class _RowBudgets:
    """A stopping criterion: each row stops at its own token budget (transformers'
    ``StoppingCriteria`` contract: one bool per row)."""

    def __init__(self, budgets: list[int], width: int) -> None:
        self.budgets = budgets
        self.width = width

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        generated = input_ids.shape[1] - self.width
        return torch.tensor([generated >= b for b in self.budgets], device=input_ids.device)


class _Cancelled:
    """A stopping criterion: every row stops once ``event`` is set (the stream's reader left)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)


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


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
