"""Decoding with ``generate`` in the decoding thread: a left-padded static batch where each row stops
at its own token budget, and a row decoded alone, which picks its fastest exact path: compiled
(static cache, on accelerators), prompt lookup (copy-aware drafts, greedy) or plain. Streams that
wait together share one batch, each row's tokens routed to its own streamer (:class:`RowStreamers`).

Failures become results here: out of memory splits a batch row by row, any other error fails the
rows it touched, so the worker never loses a caller.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aligner_chain.backends.decoding import LoadedModel
from aligner_chain.backends.generation import Generation, Prompt

if TYPE_CHECKING:
    from aligner_chain.backends.compiled_decoding import CompiledDecoding
    from aligner_chain.backends.prompt_lookup import LookupPolicy

__all__ = ["AllCancelled", "Cancelled", "RowBudgets", "RowStreamers", "StaticDecoder", "generate_batch"]

logger = logging.getLogger(__name__)


class RowBudgets:
    """A stopping criterion: each row stops at its own token budget (transformers'
    ``StoppingCriteria`` contract: one bool per row)."""

    def __init__(self, budgets: list[int], width: int) -> None:
        self.budgets = budgets
        self.width = width

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        generated = input_ids.shape[1] - self.width
        return torch.tensor([generated >= b for b in self.budgets], device=input_ids.device)


class Cancelled:
    """A stopping criterion: every row stops once ``event`` is set (the stream's reader left)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)


class AllCancelled:
    """A stopping criterion for a batch of streams: it ends once every stream's reader has left."""

    def __init__(self, events: Sequence[threading.Event]) -> None:
        self.events = events

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = all(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), done, device=input_ids.device)


class RowStreamers:
    """A ``generate`` streamer for a batch: row ``i``'s tokens go to ``streamers[i]`` (each a
    batch-1 streamer such as ``TextIteratorStreamer``) until the row ends (EOS, its budget, or its
    reader left), then that streamer is ended; the padding a finished row keeps receiving is dropped.
    transformers' own streamers take one row only, hence this router."""

    def __init__(
        self,
        streamers: Sequence[Any],
        budgets: Sequence[int],
        eos_ids: frozenset[int],
        cancelled: Sequence[threading.Event],
    ) -> None:
        self.streamers = streamers
        self.budgets = budgets
        self.eos_ids = eos_ids
        self.cancelled = cancelled
        self.counts = [0] * len(streamers)
        self.ended = [False] * len(streamers)
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # the prompt batch first, as generate does: each streamer skips it
            self._prompt_seen = True
            for i, streamer in enumerate(self.streamers):
                streamer.put(value[i : i + 1])
            return
        for i, streamer in enumerate(self.streamers):
            if self.ended[i]:
                continue
            if self.cancelled[i].is_set():
                self._end(i)
                continue
            token = value[i : i + 1]
            streamer.put(token)
            self.counts[i] += 1
            if int(token.reshape(-1)[0]) in self.eos_ids or self.counts[i] >= self.budgets[i]:
                self._end(i)

    def end(self) -> None:
        for i in range(len(self.streamers)):
            self._end(i)

    def _end(self, i: int) -> None:
        if not self.ended[i]:
            self.ended[i] = True
            self.streamers[i].end()


def generate_batch(
    loaded: LoadedModel, prompts: Sequence[Prompt], *, criteria: Sequence[Any] = (), **extra: Any
) -> list[list[int]]:
    """One left-padded ``generate`` call; the new token ids of each row."""
    import torch
    from transformers import StoppingCriteriaList

    input_ids, attention_mask = loaded.left_padded(prompts)
    width = input_ids.shape[1]
    budgets = [p.budget for p in prompts]
    stops = [*criteria, *(loaded.generation_kwargs.get("stopping_criteria") or [])]
    if len(set(budgets)) > 1:
        stops.append(RowBudgets(budgets, width))
    kwargs = {"pad_token_id": loaded.pad_id, **loaded.generation_kwargs, **extra}
    if stops:
        kwargs["stopping_criteria"] = StoppingCriteriaList(stops)
    with torch.inference_mode():
        output = loaded.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max(budgets), **kwargs
        )
    new: list[list[int]] = output[:, width:].tolist()
    return new


class StaticDecoder:
    """``generate`` for a batch, or for one row by the fastest exact path the plan allows.

    ``modes`` counts the rows (and static batches) each path served: ``"batch"``, ``"compiled"``,
    ``"prompt_lookup"``, ``"plain"``.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        lookup: LookupPolicy | None = None,
        compiled: CompiledDecoding | None = None,
    ) -> None:
        self.loaded = loaded
        self.lookup = lookup
        self.compiled = compiled
        self.modes: Counter[str] = Counter()

    def generate(self, prompts: list[Prompt]) -> list[Generation]:
        """One :class:`Generation` per prompt (out of memory: row by row)."""
        import torch

        try:
            if len(prompts) == 1:
                return [self._alone(prompts[0])]
            rows = generate_batch(self.loaded, prompts)
            self.modes["batch"] += 1
            return [self.loaded.finish(row, p.budget) for row, p in zip(rows, prompts, strict=True)]
        except torch.OutOfMemoryError as err:
            _empty_cache()
            if len(prompts) == 1:
                return [Generation("", "failed", "out_of_memory", str(err))]
            logger.warning("out of memory with a batch of %d; retrying row by row", len(prompts))
            return [result for prompt in prompts for result in self.generate([prompt])]
        except Exception as err:
            logger.exception("generate failed for a batch of %d", len(prompts))
            return [Generation("", "failed", "backend_error", f"{type(err).__name__}: {err}")] * len(prompts)

    def generate_stream(self, prompt: Prompt, streamer: Any, cancelled: threading.Event) -> Generation:
        """One row, its text pushed to ``streamer`` as it is generated; stops when ``cancelled``."""
        import torch

        try:
            return self._alone(prompt, streamer=streamer, criteria=[Cancelled(cancelled)])
        except torch.OutOfMemoryError as err:
            _empty_cache()
            streamer.end()
            return Generation("", "failed", "out_of_memory", str(err))
        except Exception as err:
            logger.exception("generate failed for a stream")
            streamer.end()
            return Generation("", "failed", "backend_error", f"{type(err).__name__}: {err}")

    def generate_streams(
        self, prompts: list[Prompt], streamers: list[Any], cancelled: list[threading.Event]
    ) -> list[Generation]:
        """Streams that wait together: one static batch, each row's text pushed to its own streamer
        as it is generated (one stream alone takes :meth:`generate_stream`'s fastest path)."""
        import torch

        if len(prompts) == 1:
            return [self.generate_stream(prompts[0], streamers[0], cancelled[0])]
        router = RowStreamers(streamers, [p.budget for p in prompts], self.loaded.eos_ids, cancelled)
        try:
            rows = generate_batch(self.loaded, prompts, criteria=[AllCancelled(cancelled)], streamer=router)
        except Exception as err:
            if not isinstance(err, torch.OutOfMemoryError):
                logger.exception("generate failed for a batch of %d streams", len(prompts))
            else:
                _empty_cache()
            router.end()
            reason = "out_of_memory" if isinstance(err, torch.OutOfMemoryError) else "backend_error"
            return [Generation("", "failed", reason, f"{type(err).__name__}: {err}")] * len(prompts)
        self.modes["batch"] += 1
        return [self.loaded.finish(row, p.budget) for row, p in zip(rows, prompts, strict=True)]

    def _alone(self, prompt: Prompt, *, streamer: Any = None, criteria: Sequence[Any] = ()) -> Generation:
        compiled, lookup = self.compiled, self.lookup
        if compiled is not None and compiled.fits(prompt):
            self.modes["compiled"] += 1
            tokens = compiled.generate(prompt, streamer=streamer, criteria=criteria)
        elif lookup is not None and lookup.should_draft():
            from aligner_chain.backends.prompt_lookup import generate_with_lookup

            self.modes["prompt_lookup"] += 1
            tokens = generate_with_lookup(
                self.loaded, prompt, policy=lookup, streamer=streamer, criteria=criteria
            )
        else:
            self.modes["plain"] += 1
            extra = {"streamer": streamer} if streamer is not None else {}
            tokens = generate_batch(self.loaded, [prompt], criteria=criteria, **extra)[0]
        return self.loaded.finish(tokens, prompt.budget)


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
