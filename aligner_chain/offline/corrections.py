"""Correcting a batch of rows with a backend, the same way in every engine (one process or Ray
actors): empty answers are skipped without a model call, a sentence-level Aligner corrects each
answer sentence by sentence, and a batch the backend could not run at all comes back as failed
rows, never as a lost batch. :func:`check_aligner` makes sure the Aligner
can be had before a long job starts."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from langchain_core.messages import AIMessage

from aligner_chain.backends.base import AlignerBackend, CorrectionRequest, CorrectionResult, Outcome
from aligner_chain.errors import AlignerError
from aligner_chain.messages import skip_reason

__all__ = ["AlignerUnavailable", "check_aligner", "correct_requests"]

logger = logging.getLogger(__name__)


class AlignerUnavailable(AlignerError):
    """The Aligner could not be loaded or reached, so no row can be corrected."""


def correct_requests(
    backend: AlignerBackend, requests: Sequence[CorrectionRequest]
) -> list[CorrectionResult]:
    """One result per request, in order. An empty or whitespace-only answer is ``skipped`` with
    reason ``"empty"`` (there is nothing to correct); if the backend raises, every row sent fails
    with ``"backend_error"`` and the error as detail."""
    results: list[CorrectionResult | None] = [
        CorrectionResult.skipped("empty", "the answer is empty") if _empty(r) else None for r in requests
    ]
    todo = [i for i, result in enumerate(results) if result is None]
    if todo:
        for i, result in zip(todo, _correct(backend, [requests[i] for i in todo]), strict=True):
            results[i] = result
    return [result for result in results if result is not None]


def _empty(request: CorrectionRequest) -> bool:
    return skip_reason(AIMessage(content=request.answer)) == "empty"  # the rule every front end uses


def _correct(backend: AlignerBackend, requests: list[CorrectionRequest]) -> list[CorrectionResult]:
    try:
        if backend.granularity == "sentence":
            return _by_sentence(backend, requests)
        results = backend.correct(requests)
    except Exception as err:  # the whole batch failed (e.g. the model could not be loaded)
        logger.warning("a batch of %d rows failed: %s: %s", len(requests), type(err).__name__, err)
        detail = f"{type(err).__name__}: {err}"
        return [CorrectionResult.failed("backend_error", detail) for _ in requests]
    if len(results) != len(requests):
        detail = f"the backend returned {len(results)} results for {len(requests)} rows"
        return [CorrectionResult.failed("backend_error", detail) for _ in requests]
    return list(results)


def _by_sentence(backend: AlignerBackend, requests: list[CorrectionRequest]) -> list[CorrectionResult]:
    """Whole answers through a sentence-level Aligner: sentence by sentence after the corrected
    prefix, one backend call per round (:func:`~aligner_chain.sentence_loop.correct_in_rounds`)."""
    from aligner_chain.sentence_loop import SentenceLoop, correct_in_rounds

    loops = [SentenceLoop(r.question, model=backend.model_name) for r in requests]
    outcomes = correct_in_rounds(backend, loops, [r.answer for r in requests])
    return [_as_result(r.answer, o) for r, o in zip(requests, outcomes, strict=True)]


def _as_result(answer: str, outcome: Outcome | Exception) -> CorrectionResult:
    if isinstance(outcome, Exception):
        return CorrectionResult.failed("backend_error", f"{type(outcome).__name__}: {outcome}")
    if outcome.status == "corrected":
        return CorrectionResult.ok(outcome.text)
    if outcome.status == "unchanged":
        return CorrectionResult.ok(answer)
    return CorrectionResult(outcome.status, reason=outcome.reason, detail=outcome.detail)


def check_aligner(backend: AlignerBackend) -> None:
    """Load a local model now, or check that a server answers, so a job that cannot run stops at
    once instead of writing every row as failed.

    Raises:
        AlignerUnavailable: the model could not be loaded, or the server could not be reached or
            refused the API key. (A server that does not list ``model`` only gets a warning: some
            servers do not list LoRA adapters.)
    """
    from aligner_chain.backends.openai import OpenAIBackend

    if isinstance(backend, OpenAIBackend):
        _check_server(backend)
        return
    load = getattr(backend, "load", None)
    if callable(load):
        try:
            load()
        except Exception as err:
            raise AlignerUnavailable(f"the Aligner could not be loaded: {err}") from err


def _check_server(backend: AlignerBackend) -> None:
    import httpx

    from aligner_chain.backends.openai import OpenAIBackend

    assert isinstance(backend, OpenAIBackend)
    try:
        served = backend.served_models()
    except httpx.HTTPStatusError as err:
        status = err.response.status_code
        if status in (401, 403):
            raise AlignerUnavailable(
                f"the server at {backend.base_url} refused the API key (HTTP {status}); set $ALIGNER_API_KEY"
            ) from err
        return  # a server without a model list: the requests will tell
    except httpx.HTTPError as err:
        raise AlignerUnavailable(
            f"cannot reach the Aligner server at {backend.base_url}: {type(err).__name__}: {err}"
        ) from err
    if served and backend.model_name not in served:
        logger.warning(
            "the server at %s lists %s, not %r; requests may be refused (pass the served name as the model)",
            backend.base_url,
            served,
            backend.model_name,
        )
