"""``ChatAligner``: the Aligner as a LangChain chat model, so corrections are traced and stream
token by token like any other model run."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.errors import GraphBubbleUp

from aligner_chain._backend_factory import AlignerOptions
from aligner_chain.backends.base import CorrectionRequest, CorrectionResult
from aligner_chain.errors import AlignerError, CorrectionFailed
from aligner_chain.messages import (
    ALIGNER_KEY,
    AlignerStatus,
    aligner_metadata,
    message_text,
    replace_content,
    skip_reason,
    split_conversation,
)
from aligner_chain.prompts import fold_history

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
    raises :class:`~aligner_chain.errors.CorrectionFailed` (an ``AlignerError``) with ``.reason``:
    answers that must not be corrected (``"tool_calls"``, ``"invalid_tool_calls"``,
    ``"tool_call_chunks"``, ``"empty"``, ``"no_text_block"``), backend skips (``"too_long"``) and
    failures (``"truncated"``, ``"empty_correction"``, ``"backend_error"``, ...). Use
    :class:`~aligner_chain.runnable.AlignerRunnable` for passthrough semantics. ``stop`` is ignored.
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, /, **kwargs: Any) -> None:
        if model is not None:
            if "model" in kwargs:
                raise TypeError("model given twice (positionally and as model=)")
            kwargs["model"] = model
        super().__init__(**kwargs)

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

    # --- the request ------------------------------------------------------------------------------

    def _prepare(self, messages: list[BaseMessage]) -> tuple[CorrectionRequest, AIMessage]:
        question, history, answer = split_conversation(messages)
        reason = skip_reason(answer)
        if reason is not None:
            raise CorrectionFailed(reason, "this answer is not corrected (see ChatAligner docs)")
        question = fold_history(question, history, self.history_turns)
        return CorrectionRequest(question=question, answer=message_text(answer)), answer

    def _metadata(self, answer: AIMessage, text: str) -> dict[str, Any]:
        original = message_text(answer)
        model, template = self.describe_backend()
        status: AlignerStatus = "unchanged" if text.strip() == original.strip() else "corrected"
        return aligner_metadata(status, original=original, model=model, template=template)

    def _result(self, answer: AIMessage, result: CorrectionResult) -> ChatResult:
        if result.status != "ok" or result.text is None:
            raise CorrectionFailed(result.reason or result.status, result.detail)
        if not result.text.strip():
            raise CorrectionFailed("empty_correction", "the Aligner returned no text")
        meta = self._metadata(answer, result.text)
        content = (
            answer.content if meta["status"] == "unchanged" else replace_content(answer.content, result.text)
        )
        message = AIMessage(
            content=content, id=answer.id, name=answer.name, response_metadata={ALIGNER_KEY: meta}
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    # --- generate -----------------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request, answer = self._prepare(messages)
        try:
            results = self.get_backend().correct([request])
        except (AlignerError, GraphBubbleUp):  # interrupts belong to the graph
            raise
        except Exception as err:
            raise CorrectionFailed("backend_error", repr(err)) from err
        return self._result(answer, _single(results))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request, answer = self._prepare(messages)
        try:
            results = await self.get_backend().acorrect([request])
        except (AlignerError, GraphBubbleUp):  # interrupts belong to the graph
            raise
        except Exception as err:
            raise CorrectionFailed("backend_error", repr(err)) from err
        return self._result(answer, _single(results))

    # --- stream -------------------------------------------------------------------------------------

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request, answer = self._prepare(messages)
        if not isinstance(answer.content, str):  # content blocks: one chunk keeps their layout
            yield _as_chunk(self._generate(messages, stop).generations[0].message)
            return
        deltas = _Deltas(answer)
        try:
            for delta in self.get_backend().stream(request):
                if chunk := deltas.push(delta):
                    yield chunk
        except (AlignerError, GraphBubbleUp):  # interrupts belong to the graph
            raise
        except Exception as err:
            raise CorrectionFailed("backend_error", repr(err)) from err
        yield deltas.finish(self._metadata)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request, answer = self._prepare(messages)
        if not isinstance(answer.content, str):
            yield _as_chunk((await self._agenerate(messages, stop)).generations[0].message)
            return
        deltas = _Deltas(answer)
        try:
            async for delta in self.get_backend().astream(request):
                if chunk := deltas.push(delta):
                    yield chunk
        except (AlignerError, GraphBubbleUp):  # interrupts belong to the graph
            raise
        except Exception as err:
            raise CorrectionFailed("backend_error", repr(err)) from err
        yield deltas.finish(self._metadata)


class _Deltas:
    """Turns backend text deltas into chunks with the answer's id (leading whitespace dropped)."""

    def __init__(self, answer: AIMessage) -> None:
        self.answer = answer
        self.parts: list[str] = []

    def push(self, delta: str) -> ChatGenerationChunk | None:
        if not self.parts:
            delta = delta.lstrip()
        if not delta:
            return None
        self.parts.append(delta)
        return ChatGenerationChunk(message=AIMessageChunk(content=delta, id=self.answer.id))

    def finish(self, metadata: Any) -> ChatGenerationChunk:
        text = "".join(self.parts)
        if not text.strip():
            raise CorrectionFailed("empty_correction", "the Aligner returned no text")
        meta = metadata(self.answer, text)
        last = AIMessageChunk(
            content="", id=self.answer.id, response_metadata={ALIGNER_KEY: meta}, chunk_position="last"
        )
        return ChatGenerationChunk(message=last)


def _single(results: list[CorrectionResult]) -> CorrectionResult:
    if len(results) != 1:
        raise AlignerError(f"the backend returned {len(results)} results for 1 request")
    return results[0]


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
