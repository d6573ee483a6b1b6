"""``AlignedChatModel`` streaming with a whole-answer Aligner: the upstream's answer is read whole
(its run is hidden from LangGraph's message stream), then the correction streams token by token.

* A turn that calls tools streams as the upstream wrote it, untouched.
* An answer that is not corrected (``skip``, no text, a backend skip or a failure before the first
  token) streams as written with the ``aligner`` report (the runnable's failure policy applies: with
  ``on_failure="raise"`` a failure raises).
* A correction that fails after its first token raises ``AlignerError``: the streamed text cannot be
  taken back, and half a correction never stands for an answer.
* The last chunk carries the upstream's message fields (usage, response metadata) and the report.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.messages import AIMessageChunk, BaseMessage
from langgraph.errors import GraphBubbleUp

from aligner_chain.backends.base import CorrectionResult, Outcome, classify
from aligner_chain.correction import Draft, make_draft
from aligner_chain.errors import AlignerError, CorrectionFailed
from aligner_chain.inputs import Item
from aligner_chain.messages import ALIGNER_KEY, question_and_history, skip_reason
from aligner_chain.runnable import AlignerRunnable
from aligner_chain.streaming import as_chunks

__all__ = ["astream_whole", "stream_whole"]

_TOOL_REASONS = ("tool_calls", "invalid_tool_calls", "tool_call_chunks")


class _Whole:
    """One answer: the upstream's chunks, then its correction."""

    def __init__(
        self, aligner: AlignerRunnable, messages: list[BaseMessage], raw: list[AIMessageChunk]
    ) -> None:
        self.aligner = aligner
        self.raw = raw
        self.total: AIMessageChunk | None = None
        for chunk in raw:
            self.total = chunk if self.total is None else self.total + chunk
        self.draft: Draft | None = None
        self.untouched = self.total is None or skip_reason(self.total) in _TOOL_REASONS
        if not self.untouched:
            assert self.total is not None
            question, history = question_and_history(messages)
            self.draft = make_draft(self.total, question, history, aligner)
        self.parts: list[str] = []

    @property
    def to_correct(self) -> bool:
        return self.draft is not None and self.draft.skip is None

    def delta(self, text: str) -> AIMessageChunk:
        assert self.draft is not None
        self.parts.append(text)
        return AIMessageChunk(content=text, id=self.draft.message.id)

    def as_written(self, outcome: Outcome, cause: BaseException | None = None) -> list[AIMessageChunk]:
        """The original answer with the report (the failure policy applied: may raise)."""
        assert self.draft is not None
        message = self.aligner._finish(Item("message", self.draft), outcome, cause)
        return [_chunk(c) for c in as_chunks(message)]

    def skipped(self) -> list[AIMessageChunk]:
        assert self.draft is not None and self.draft.skip is not None
        return self.as_written(Outcome("skipped", self.draft.text, self.draft.skip))

    def failed(self, err: BaseException) -> list[AIMessageChunk]:
        assert self.draft is not None
        if self.parts:
            raise AlignerError(
                f"the Aligner's correction failed after it began streaming ({err}); the streamed text "
                "cannot be taken back"
            ) from err
        if isinstance(err, CorrectionFailed):
            outcome = Outcome(err.status, self.draft.text, err.reason, err.detail)
        else:
            outcome = Outcome("failed", self.draft.text, "backend_error", repr(err))
        return self.as_written(outcome, err)

    def finished(self) -> list[AIMessageChunk]:
        assert self.draft is not None and self.total is not None
        outcome = classify(self.draft.text, CorrectionResult.ok("".join(self.parts)))
        if outcome.status == "failed":  # an empty correction: nothing was streamed
            return self.as_written(outcome)
        message = self.aligner._finish(Item("message", self.draft), outcome)
        total = self.total
        return [
            AIMessageChunk(
                content="",
                id=self.draft.message.id,
                name=total.name,
                additional_kwargs=total.additional_kwargs,
                usage_metadata=total.usage_metadata,
                response_metadata={
                    **total.response_metadata,
                    ALIGNER_KEY: message.response_metadata[ALIGNER_KEY],
                },
                chunk_position="last",
            )
        ]


def _chunk(value: Any) -> AIMessageChunk:
    assert isinstance(value, AIMessageChunk)
    return value


def stream_whole(
    aligner: AlignerRunnable, messages: list[BaseMessage], chunks: Iterator[AIMessageChunk]
) -> Iterator[AIMessageChunk]:
    """The upstream's ``chunks`` read whole, then the correction token by token."""
    whole = _Whole(aligner, messages, list(chunks))
    if whole.untouched:
        yield from whole.raw
        return
    if not whole.to_correct:
        yield from whole.skipped()
        return
    assert whole.draft is not None
    try:
        for text in aligner.get_backend().stream(whole.draft.request()):
            yield whole.delta(text)
    except GraphBubbleUp:
        raise
    except Exception as err:
        yield from whole.failed(err)
        return
    yield from whole.finished()


async def astream_whole(
    aligner: AlignerRunnable, messages: list[BaseMessage], chunks: AsyncIterator[AIMessageChunk]
) -> AsyncIterator[AIMessageChunk]:
    """Async twin of :func:`stream_whole`."""
    whole = _Whole(aligner, messages, [chunk async for chunk in chunks])
    if whole.untouched:
        for chunk in whole.raw:
            yield chunk
        return
    if not whole.to_correct:
        for chunk in whole.skipped():
            yield chunk
        return
    assert whole.draft is not None
    failure: list[AIMessageChunk] | None = None
    try:
        async for text in aligner.get_backend().astream(whole.draft.request()):
            yield whole.delta(text)
    except GraphBubbleUp:
        raise
    except Exception as err:
        failure = whole.failed(err)
    for chunk in failure if failure is not None else whole.finished():
        yield chunk
