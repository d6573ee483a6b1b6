"""Continuous batching: transformers' ``ContinuousBatchingManager`` (paged attention), kept running
for the model's life, with one dispatcher thread that routes its outputs to their callers.

Rows join and leave the running batch at every decode step, so a short correction is not held
until the longest in its batch ends and a request that arrives mid-batch starts at the next step.
Each row gets its own ``max_new_tokens`` (its budget). The paged cache has explicit bounds
(:func:`~aligner_chain.backends.capacity.continuous_bounds`, or ``continuous_batching_config``)
instead of the manager's default of most of the free memory.

The manager hands out results from one queue (asking it for one request's result puts the others
back), so one thread here takes every output and routes it: streaming outputs carry the whole token
list so far, and the delta goes to the row's streamer; a finished output settles the row. A
cancelled request produces no output at all, so :meth:`ContinuousScheduler.cancel` settles it
itself. If the manager dies, every waiting row fails at once and the scheduler reports itself
unhealthy (the worker falls back to static batches).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aligner_chain.backends.capacity import ContinuousBounds
from aligner_chain.backends.decoding import CONTINUOUS_GENERATION_KWARGS, LoadedModel
from aligner_chain.backends.generation import Generation, Prompt

__all__ = ["ContinuousScheduler"]

logger = logging.getLogger(__name__)

_POLL_S = 0.1
_CANCELLED = "cancelled: the caller went away"


@dataclass(eq=False)
class _Route:
    prompt: Prompt
    on_done: Callable[[Generation], None]
    streamer: Any = None
    cancelled: threading.Event | None = None
    seen: int = 0


class ContinuousScheduler:
    """A running continuous-batching manager for ``loaded``, with its dispatcher thread.

    ``submit`` queues a row (``on_done`` receives its :class:`Generation`, in the dispatcher
    thread); a row with a ``streamer`` gets its tokens pushed as they are generated and stops when
    ``cancelled`` is set.
    """

    def __init__(
        self, loaded: LoadedModel, bounds: ContinuousBounds, overrides: Mapping[str, Any] | None = None
    ) -> None:
        import torch
        from transformers import ContinuousBatchingConfig, GenerationConfig

        self.loaded = loaded
        config = {"auto_switch_to_flash": False, **bounds.as_config(), **(overrides or {})}
        self.config = ContinuousBatchingConfig(**config)
        self.capacity_tokens = int(self.config.page_size) * int(self.config.num_blocks or 0)
        sampling = {k: v for k, v in loaded.generation_kwargs.items() if k in CONTINUOUS_GENERATION_KWARGS}
        sampling.pop("eos_token_id", None)
        generation = GenerationConfig(
            **{"do_sample": False, **sampling},
            eos_token_id=sorted(loaded.eos_ids),
            pad_token_id=loaded.pad_id,
            max_new_tokens=1,
        )
        self._lock = threading.Lock()
        self._routes: dict[str, _Route] = {}
        self._closing = threading.Event()
        self.failure: str | None = None
        self.submitted = 0
        self.cancelled = 0
        with torch.inference_mode():
            self.manager = loaded.model.init_continuous_batching(
                generation_config=generation, continuous_batching_config=self.config
            )
            if loaded.device.startswith("cuda"):
                self.manager.warmup()  # records CUDA graphs now, not on the first request
            self.manager.start()
        self._thread = threading.Thread(target=self._dispatch, name="aligner-chain-dispatch", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """Whether the manager still runs (a dead one fails its rows; new rows go elsewhere)."""
        return self.failure is None and not self._closing.is_set()

    @property
    def in_flight(self) -> int:
        """Rows submitted and not settled yet."""
        return len(self._routes)

    def fits(self, prompt: Prompt) -> bool:
        """Whether the prompt and its budget fit the paged cache at all."""
        return len(prompt.ids) + prompt.budget <= self.capacity_tokens

    def submit(
        self,
        prompt: Prompt,
        on_done: Callable[[Generation], None],
        *,
        streamer: Any = None,
        cancelled: threading.Event | None = None,
    ) -> str:
        """Queue ``prompt`` in the running batch; its request id."""
        import torch

        request_id = uuid.uuid4().hex
        route = _Route(prompt, on_done, streamer, cancelled)
        if streamer is not None:
            streamer.put(torch.tensor([prompt.ids]))  # the prompt first, as generate does (skipped)
        with self._lock:
            self._routes[request_id] = route
        self.submitted += 1
        added = self.manager.add_request(
            prompt.ids, request_id=request_id, max_new_tokens=prompt.budget, streaming=streamer is not None
        )
        if added is None:  # the manager refused it (stopping or failed)
            self._settle(request_id, Generation("", "failed", "backend_error", "continuous batching stopped"))
        return request_id

    def cancel(self, request_id: str) -> None:
        """Stop a row (its caller went away) and settle it: the manager delivers nothing for it."""
        self.manager.cancel_request(request_id)
        if request_id in self._routes:
            self.cancelled += 1
        self._settle(request_id, Generation("", "failed", "backend_error", _CANCELLED))

    def close(self, timeout: float | None = 60.0) -> None:
        """Finish the rows in flight, then stop the manager and the dispatcher."""
        if self._closing.is_set():
            return
        self._closing.set()
        try:
            self.manager.stop(block=True, timeout=timeout)
        finally:
            self._thread.join(timeout)
            self._fail_all("continuous batching stopped")

    # -- the dispatcher thread --------------------------------------------------------------------

    def _dispatch(self) -> None:
        manager = self.manager
        while True:
            output = manager.get_result(timeout=_POLL_S)
            if output is None:
                if not manager.is_running():
                    break
                continue
            try:
                self._route(output)
            except Exception:  # a caller's streamer failed: never stop routing the others
                logger.exception("routing a continuous-batching output failed")
        if not self._closing.is_set():
            self.failure = "the continuous batching manager stopped"
            logger.error("%s; failing %d waiting rows", self.failure, self.in_flight)
        self._fail_all(self.failure or "continuous batching stopped")

    def _route(self, output: Any) -> None:
        import torch

        request_id = output.request_id
        with self._lock:
            route = self._routes.get(request_id)
        if route is None:
            return  # cancelled meanwhile
        tokens = list(output.generated_tokens)
        if route.streamer is not None:
            if route.cancelled is not None and route.cancelled.is_set() and not output.is_finished():
                self.cancel(request_id)
                return
            if len(tokens) > route.seen:
                route.streamer.put(torch.tensor(tokens[route.seen :]))
                route.seen = len(tokens)
        if not output.is_finished():
            return
        if output.error is not None:
            result = Generation("", "failed", "backend_error", str(output.error))
        else:
            result = self.loaded.finish(tokens, route.prompt.budget)
        self._settle(request_id, result)

    def _settle(self, request_id: str, result: Generation) -> None:
        with self._lock:
            route = self._routes.pop(request_id, None)
        if route is None:
            return
        if route.streamer is not None:
            route.streamer.end()
        route.on_done(result)

    def _fail_all(self, why: str) -> None:
        for request_id in list(self._routes):
            self._settle(request_id, Generation("", "failed", "backend_error", why))
