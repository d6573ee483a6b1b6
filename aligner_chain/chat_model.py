"""``ChatAligner``: the Aligner as a LangChain chat model, so corrections are traced and stream
token by token like any other model run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.errors import GraphBubbleUp

from aligner_chain.backends.base import CorrectionResult, Outcome, classify
from aligner_chain.correction import Draft, answer_after, make_draft
from aligner_chain.errors import AlignerError, CorrectionFailed
from aligner_chain.messages import ALIGNER_KEY, split_conversation
from aligner_chain.options import AlignerOptions
from aligner_chain.sentence_loop import SentenceLoop, acorrect_in_rounds, correct_in_rounds

__all__ = ["ChatAligner"]


class ChatAligner(AlignerOptions, BaseChatModel):
    """The Aligner as a ``BaseChatModel``: a conversation ending in a human question and an AI
    answer goes in, the corrected answer comes out as an ``AIMessage``.

    The output keeps the answer's ``id`` and ``name``; its content is the correction (list content
    keeps its non-text blocks) and ``response_metadata["aligner"]`` holds ``status``
    (``"corrected"`` or ``"unchanged"``), ``original``, ``model`` and ``template``. Turns before the
    question are folded into it when ``history_turns > 0``. ``stream``/``astream`` yield the
    correction token by token as the Aligner generates it (the metadata rides on the last chunk); a
    sentence-level Aligner corrects the answer sentence by sentence and streams each sentence once
    corrected (the metadata adds ``granularity`` and each sentence's outcome).

    A chat model has no "keep the original" answer, so every case where no correction is made
    raises :class:`~aligner_chain.errors.CorrectionFailed` (an ``AlignerError``) with ``.reason``
    and ``.status``: answers that must not be corrected (``"tool_calls"``, ``"invalid_tool_calls"``,
    ``"tool_call_chunks"``, ``"empty"``, ``"no_text_block"``, ``"skip_predicate"``) and backend skips
    (``"too_long"``) are ``status="skipped"``; failures (``"truncated"``, ``"empty_correction"``,
    ``"backend_error"``, ...) are ``status="failed"``. Use
    :class:`~aligner_chain.runnable.AlignerRunnable` for passthrough semantics. ``stop`` is ignored.
    """

    @property
    def _llm_type(self) -> str:
        return "aligner"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "adapter": self.adapter,
            "template": self.template,
            "max_new_tokens": self.max_new_tokens,
            "history_turns": self.history_turns,
            "base_url": self.base_url,
            "backend": type(self.backend).__name__ if self.backend is not None else None,
        }

    def _draft(self, messages: list[BaseMessage]) -> Draft:
        question, history, answer = split_conversation(messages)
        draft = make_draft(answer, question, history, self)
        if draft.skip is not None:
            raise CorrectionFailed(draft.skip, "this answer is not corrected", status="skipped")
        return draft

    def _loop(self, draft: Draft) -> SentenceLoop:
        return SentenceLoop(draft.question, model=self.describe_backend()[0])

    def _message(self, draft: Draft, outcome: Outcome | Exception) -> AIMessage:
        """The corrected answer as this model's output (its own run: no upstream usage or calls);
        raises unless the answer was corrected or kept."""
        if isinstance(outcome, Exception):
            raise outcome
        if outcome.status in ("failed", "skipped"):
            raise outcome.error()
        model, template = self.describe_backend()
        after = answer_after(draft, outcome, model=model, template=template)
        return AIMessage(
            content=after.content,
            id=draft.message.id,
            name=draft.message.name,
            response_metadata={ALIGNER_KEY: after.response_metadata[ALIGNER_KEY]},
        )

    # --- generate -----------------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        draft = self._draft(messages)
        backend = self.get_backend()
        with _backend_errors():
            if backend.granularity == "sentence":
                (outcome,) = correct_in_rounds(backend, [self._loop(draft)], [draft.text])
                return _chat_result(self._message(draft, outcome))
            (result,) = _one(backend.correct([draft.request()]))
        return _chat_result(self._message(draft, _outcome(draft, result)))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        draft = self._draft(messages)
        backend = self.get_backend()
        with _backend_errors():
            if backend.granularity == "sentence":
                (outcome,) = await acorrect_in_rounds(backend, [self._loop(draft)], [draft.text])
                return _chat_result(self._message(draft, outcome))
            (result,) = _one(await backend.acorrect([draft.request()]))
        return _chat_result(self._message(draft, _outcome(draft, result)))

    # --- stream -------------------------------------------------------------------------------------

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        draft = self._draft(messages)
        if not isinstance(draft.message.content, str):  # content blocks: one chunk keeps their layout
            yield _as_chunk(self._generate(messages, stop).generations[0].message)
            return
        backend = self.get_backend()
        with _backend_errors():
            if backend.granularity == "sentence":  # each sentence streams once corrected
                loop = self._loop(draft)
                for unit in [*loop.feed(draft.text), *loop.flush()]:
                    if text := loop.correct(backend, unit):
                        yield _delta_chunk(draft, text)
                yield from self._closing(draft, loop)
                return
            parts: list[str] = []
            for delta in backend.stream(draft.request()):
                parts.append(delta)
                yield _delta_chunk(draft, delta)
        yield self._last_chunk(draft, _outcome(draft, CorrectionResult.ok("".join(parts))))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        draft = self._draft(messages)
        if not isinstance(draft.message.content, str):
            yield _as_chunk((await self._agenerate(messages, stop)).generations[0].message)
            return
        backend = self.get_backend()
        with _backend_errors():
            if backend.granularity == "sentence":
                loop = self._loop(draft)
                for unit in [*loop.feed(draft.text), *loop.flush()]:
                    if text := await loop.acorrect(backend, unit):
                        yield _delta_chunk(draft, text)
                for chunk in self._closing(draft, loop):
                    yield chunk
                return
            parts: list[str] = []
            async for delta in backend.astream(draft.request()):
                parts.append(delta)
                yield _delta_chunk(draft, delta)
        yield self._last_chunk(draft, _outcome(draft, CorrectionResult.ok("".join(parts))))

    def _closing(self, draft: Draft, loop: SentenceLoop) -> Iterator[ChatGenerationChunk]:
        """A sentence loop's held-back text, then the closing chunk."""
        if tail := loop.finish():
            yield _delta_chunk(draft, tail)
        yield self._last_chunk(draft, loop.outcome())

    def _last_chunk(self, draft: Draft, outcome: Outcome) -> ChatGenerationChunk:
        """The closing chunk: no text, the ``aligner`` report (raises unless corrected or kept)."""
        meta = self._message(draft, outcome).response_metadata
        last = AIMessageChunk(content="", id=draft.message.id, response_metadata=meta, chunk_position="last")
        return ChatGenerationChunk(message=last)


def _outcome(draft: Draft, result: CorrectionResult) -> Outcome:
    return classify(draft.text, CorrectionResult.ok(result.text_or_raise()))


@contextmanager
def _backend_errors() -> Iterator[None]:
    """Backend exceptions as ``CorrectionFailed("backend_error")``; ours and interrupts pass."""
    try:
        yield
    except (AlignerError, GraphBubbleUp):
        raise
    except Exception as err:
        raise CorrectionFailed("backend_error", repr(err)) from err


def _one(results: list[CorrectionResult]) -> list[CorrectionResult]:
    if len(results) != 1:
        raise AlignerError(f"the backend returned {len(results)} results for 1 request")
    return results


def _delta_chunk(draft: Draft, delta: str) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content=delta, id=draft.message.id))


def _chat_result(message: AIMessage) -> ChatResult:
    return ChatResult(generations=[ChatGeneration(message=message)])


def _as_chunk(message: BaseMessage) -> ChatGenerationChunk:
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content=message.content,
            id=message.id,
            name=message.name,
            response_metadata=message.response_metadata,
            chunk_position="last",
        )
    )
