"""An upstream answer stream corrected sentence by sentence: chunks in, corrected chunks out.

:class:`SentenceStream` is what ``AlignerRunnable.transform``/``atransform`` (and so ``with_aligner``)
and ``AlignedChatModel`` run when the Aligner is sentence-level. Each completed sentence is
corrected with the corrected prefix (:class:`~aligner_chain.sentence_loop.SentenceLoop`) and comes out
at once as its own chunk, while later text is still arriving.

* Input chunks: ``AIMessageChunk``/``AIMessage`` or ``str`` pieces of the answer, or dicts
  ``{"answer": piece}`` with ``"question"``/``"history"`` in any chunk (the question may arrive after
  the first sentences: they wait for it).
* Output follows the answer's type: text chunks (``AIMessageChunk`` with the answer's id, or ``str``);
  a message stream ends with one chunk carrying every message-level field (``usage_metadata``,
  ``response_metadata`` with the ``aligner`` report, ``additional_kwargs``, ``name``) and
  ``chunk_position="last"``. Non-text content blocks (e.g. reasoning) pass through as they come.
* An answer that calls tools (a tool call chunk arrives) or that ``skip`` selects (asked before each
  sentence, about the answer so far) passes through from there on, as written, and is reported
  ``skipped``; sentences already corrected stay corrected.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage

from aligner_chain.backends.base import AlignerBackend, Outcome
from aligner_chain.correction import Draft, make_draft
from aligner_chain.inputs import Item
from aligner_chain.messages import (
    ALIGNER_KEY,
    as_ai_message,
    is_text_block,
    message_text,
    normalize_history,
    skip_reason,
)
from aligner_chain.prompts import fold_history
from aligner_chain.segmentation import Unit
from aligner_chain.sentence_loop import SentenceLoop, acorrect_in_rounds, correct_in_rounds
from aligner_chain.streaming import add_chunk, as_chunks

if TYPE_CHECKING:
    from aligner_chain.runnable import AlignerRunnable

__all__ = ["SentenceStream", "acorrect_drafts", "astream_sentences", "correct_drafts", "stream_sentences"]

logger = logging.getLogger(__name__)

_TOOL_REASONS = ("tool_calls", "invalid_tool_calls", "tool_call_chunks")

RELEASE = object()
"""A step: the corrected text's held whitespace goes out now (before text that bypasses the loop)."""


class SentenceStream:
    """One streamed answer through a sentence-level Aligner (see the module docstring).

    ``aligner`` gives the options (``history_turns``, ``skip``, ``on_failure``) and the backend;
    ``question``/``history`` may be given here or arrive in dict chunks; ``run`` is the traced run
    the outcome is recorded on.
    """

    def __init__(
        self,
        aligner: AlignerRunnable,
        *,
        question: str | None = None,
        history: Any = None,
        run: Any = None,
    ) -> None:
        self._aligner = aligner
        self._run = run
        self.backend: AlignerBackend = aligner.get_backend()
        model, _ = aligner.describe_backend()
        self.loop = SentenceLoop("", on_failure=aligner.on_failure, model=model)
        self._question = question
        self._history = history
        self._total: Any = None  # the upstream answer so far (a message chunk or a str)
        self._kind: Literal["message", "str"] | None = None
        self._id: str | None = None
        self._held: deque[Unit] = deque()  # completed units waiting for the question
        self._passing: str | None = None  # why the rest passes through (tool calls, skip)
        self._flushed = False
        self._emitted = ""

    # -- steps: units to correct, or chunks ready to go --------------------------------------------

    def take(self, chunk: Any) -> list[Unit | Any]:
        """Take one upstream chunk; the steps it makes ready, in order."""
        piece = chunk
        if not isinstance(chunk, Mapping) and self._question is None:
            self._question = ""  # a bare answer stream: the question is the config's or none
        if isinstance(chunk, Mapping):
            unknown = sorted(str(k) for k in chunk if k not in ("question", "answer", "history"))
            if unknown:
                raise ValueError(f"AlignerRunnable input dict has unknown keys {unknown}")
            if chunk.get("question") is not None:
                question = chunk["question"]
                self._question = message_text(question) if isinstance(question, BaseMessage) else question
            if chunk.get("history") is not None:
                self._history = chunk["history"]
            if "answer" not in chunk:
                return self._release()
            piece = chunk["answer"]
        steps: list[Unit | Any] = []
        self._check_kind(piece)
        self._total = add_chunk(self._total, piece)
        if isinstance(piece, BaseMessage) and self._id is None:
            self._id = piece.id
        if self._passing is None and isinstance(piece, AIMessage):
            reason = skip_reason(piece)
            if reason in _TOOL_REASONS:
                self._passing = reason
                steps.append(RELEASE)
        if self._passing is not None:
            if not self._flushed:  # what waits goes out as written, then the rest as it comes
                self._flushed = True
                self._held.extend(self.loop.flush())
                steps.extend(self._release())
            steps.append(self._raw(piece))
            return steps
        steps.extend(self._blocks(piece))
        for unit in self.loop.feed(_text(piece)):
            self._held.append(unit)
        steps.extend(self._release())
        return steps

    def close(self) -> list[Unit | Any]:
        """The upstream is done: the last steps (then :meth:`tail` and :meth:`final`)."""
        if self._question is None:
            self._question = ""
        if not self._flushed:
            self._flushed = True
            self._held.extend(self.loop.flush())
        return self._release()

    def tail(self) -> list[Any]:
        """The end of the corrected text (held whitespace), once every step has run."""
        text = self.loop.finish()
        return [self.out(text)] if text and self._passing is None else []

    def _release(self) -> list[Unit | Any]:
        if self._question is None and self._passing is None:
            return []
        if self._question is not None:
            self.loop.question = fold_history(
                self._question, normalize_history(self._history), self._aligner.history_turns
            )
        steps: list[Unit | Any] = []
        while self._held:
            unit = self._held.popleft()
            if self._passing is None and self._aligner.skip is not None and self._skipped():
                self._passing = "skip_predicate"
                steps.append(RELEASE)
            steps.append(self.out(unit.text) if self._passing else unit)
        return steps

    def _skipped(self) -> bool:
        total = self._total
        message = as_ai_message(total) if isinstance(total, AIMessage) else AIMessage(content=total or "")
        return bool(self._aligner.skip(message))

    # -- chunks out -------------------------------------------------------------------------------

    def out(self, text: str) -> Any:
        """A text chunk of the answer's type."""
        self._emitted += text
        if self._kind == "str":
            return text
        return AIMessageChunk(content=text, id=self._id)

    def _raw(self, piece: Any) -> Any:
        """An upstream chunk passed through as written (message-level fields go in the final chunk)."""
        if isinstance(piece, str):
            return self.out(piece)
        self._emitted += message_text(piece)
        if isinstance(piece, AIMessageChunk):
            calls = list(piece.tool_call_chunks)
        else:  # a whole message that calls tools
            calls = next(iter(as_chunks(piece))).tool_call_chunks
        return AIMessageChunk(content=piece.content, id=self._id, tool_call_chunks=calls)

    def _blocks(self, piece: Any) -> list[Any]:
        """Non-text content blocks of a message chunk, passed through as they come."""
        if not isinstance(piece, BaseMessage) or isinstance(piece.content, str):
            return []
        blocks = [b for b in piece.content if not is_text_block(b)]
        return [AIMessageChunk(content=blocks, id=self._id)] if blocks else []

    def final(self) -> list[Any]:
        """The closing chunks: the original when nothing was emitted of a failed correction, and
        (for messages) the chunk with every message-level field and the ``aligner`` report.

        Raises:
            AlignerError: the answer failed and ``on_failure="raise"``.
        """
        draft = self._draft()
        outcome = self.outcome(draft)
        after = None if draft is None else self._aligner._finish(Item("message", draft, self._run), outcome)
        out: list[Any] = []
        if not self._emitted and outcome.text:  # every sentence dropped: the original instead
            out.append(self.out(outcome.text))
        if self._kind != "message" or after is None:
            return out
        total = self._total
        out.append(
            AIMessageChunk(
                content="",
                id=self._id,
                name=total.name,
                additional_kwargs=total.additional_kwargs,
                response_metadata={
                    **total.response_metadata,
                    ALIGNER_KEY: after.response_metadata[ALIGNER_KEY],
                },
                usage_metadata=total.usage_metadata,
                chunk_position="last",
            )
        )
        return out

    def outcome(self, draft: Draft | None = None) -> Outcome:
        """The answer's outcome: ``skipped`` when it called tools or ``skip`` chose it before any
        sentence was corrected (``extra["passed_through"]`` names why the rest passed through)."""
        draft = draft or self._draft()
        reason = self._passing
        if reason is None and not self.loop.sentences and draft is not None:
            reason = draft.skip
        if reason is None:
            return self.loop.outcome()
        if not self.loop.sentences:
            return Outcome("skipped", draft.text if draft is not None else "", reason)
        outcome = self.loop.outcome()
        extra = {**outcome.extra, "passed_through": reason}
        if outcome.status == "unchanged":
            return Outcome("skipped", outcome.text, reason, None, extra)
        return Outcome(outcome.status, outcome.text, outcome.reason, outcome.detail, extra)

    def _draft(self) -> Draft | None:
        if self._total is None:
            return None
        message = self._total if isinstance(self._total, AIMessage) else AIMessage(content=self._total)
        return make_draft(message, self._question or "", normalize_history(self._history), self._aligner)

    def _check_kind(self, piece: Any) -> None:
        kind: Literal["message", "str"]
        if isinstance(piece, str):
            kind = "str"
        elif isinstance(piece, AIMessage):
            kind = "message"
        else:
            raise TypeError(
                "AlignerRunnable takes AIMessage(Chunk)s, strs or dicts with 'answer', got "
                f"{type(piece).__name__}"
            )
        if self._kind is None:
            self._kind = kind
        elif kind != self._kind:
            raise TypeError(f"the answer stream mixes {self._kind} and {kind} chunks")


def _text(piece: Any) -> str:
    return piece if isinstance(piece, str) else message_text(piece)


# -- drivers --------------------------------------------------------------------------------------


def stream_sentences(stream: SentenceStream, chunks: Iterator[Any]) -> Iterator[Any]:
    """Run ``stream`` over ``chunks``: each completed sentence corrected and yielded at once."""

    def run(steps: list[Unit | Any]) -> Iterator[Any]:
        for step in steps:
            text = None
            if isinstance(step, Unit):
                text = stream.loop.correct(stream.backend, step)
            elif step is RELEASE:
                text = stream.loop.release_whitespace()
            else:
                yield step
            if text:
                yield stream.out(text)

    for chunk in chunks:
        yield from run(stream.take(chunk))
    yield from run(stream.close())
    yield from stream.tail()
    yield from stream.final()


async def astream_sentences(stream: SentenceStream, chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Async twin of :func:`stream_sentences`."""

    async def run(steps: list[Unit | Any]) -> list[Any]:
        out = []
        for step in steps:
            text = None
            if isinstance(step, Unit):
                text = await stream.loop.acorrect(stream.backend, step)
            elif step is RELEASE:
                text = stream.loop.release_whitespace()
            else:
                out.append(step)
            if text:
                out.append(stream.out(text))
        return out

    async for chunk in chunks:
        for piece in await run(stream.take(chunk)):
            yield piece
    for piece in await run(stream.close()):
        yield piece
    for piece in [*stream.tail(), *stream.final()]:
        yield piece


# -- whole answers --------------------------------------------------------------------------------


def _loops(aligner: AlignerRunnable, drafts: Sequence[Draft]) -> list[SentenceLoop]:
    model, _ = aligner.describe_backend()
    return [SentenceLoop(d.question, on_failure=aligner.on_failure, model=model) for d in drafts]


def correct_drafts(aligner: AlignerRunnable, drafts: Sequence[Draft]) -> list[Outcome | Exception]:
    """Whole answers through a sentence-level Aligner, in rounds (one backend call per round)."""
    loops = _loops(aligner, drafts)
    return correct_in_rounds(aligner.get_backend(), loops, [d.text for d in drafts])


async def acorrect_drafts(aligner: AlignerRunnable, drafts: Sequence[Draft]) -> list[Outcome | Exception]:
    """Async twin of :func:`correct_drafts`."""
    loops = _loops(aligner, drafts)
    return await acorrect_in_rounds(aligner.get_backend(), loops, [d.text for d in drafts])
