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

from aligner_chain.backends.base import CorrectionResult, classify
from aligner_chain.correction import Draft, answer_after, make_draft
from aligner_chain.errors import AlignerError, CorrectionFailed
from aligner_chain.messages import ALIGNER_KEY, split_conversation
from aligner_chain.options import AlignerOptions

__all__ = ["ChatAligner"]


class ChatAligner(AlignerOptions, BaseChatModel):
    """The Aligner as a ``BaseChatModel``: a conversation ending in a human question and an AI
    answer goes in, the corrected answer comes out as an ``AIMessage``.

    The output keeps the answer's ``id`` and ``name``; its content is the correction (list content
    keeps its non-text blocks) and ``response_metadata["aligner"]`` holds ``status``
    (``"corrected"`` or ``"unchanged"``), ``original``, ``model`` and ``template``. Turns before the
    question are folded into it when ``history_turns > 0``. ``stream``/``astream`` yield the
    correction token by token as the Aligner generates it (the metadata rides on the last chunk).

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

    def _message(self, draft: Draft, text: str) -> AIMessage:
        """The corrected answer as this model's output (its own run: no upstream usage or calls)."""
        outcome = classify(draft.text, CorrectionResult.ok(text))
        if outcome.status == "failed":
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
        with _backend_errors():
            (result,) = _one(self.get_backend().correct([draft.request()]))
        return _chat_result(self._message(draft, result.text_or_raise()))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        draft = self._draft(messages)
        with _backend_errors():
            (result,) = _one(await self.get_backend().acorrect([draft.request()]))
        return _chat_result(self._message(draft, result.text_or_raise()))

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
        parts: list[str] = []
        with _backend_errors():
            for delta in self.get_backend().stream(draft.request()):
                parts.append(delta)
                yield _delta_chunk(draft, delta)
        yield self._last_chunk(draft, "".join(parts))

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
        parts: list[str] = []
        with _backend_errors():
            async for delta in self.get_backend().astream(draft.request()):
                parts.append(delta)
                yield _delta_chunk(draft, delta)
        yield self._last_chunk(draft, "".join(parts))

    def _last_chunk(self, draft: Draft, text: str) -> ChatGenerationChunk:
        """The closing chunk: no text, the ``aligner`` report (raises when the correction is empty)."""
        meta = self._message(draft, text).response_metadata
        last = AIMessageChunk(content="", id=draft.message.id, response_metadata=meta, chunk_position="last")
        return ChatGenerationChunk(message=last)


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
