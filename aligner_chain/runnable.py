"""``AlignerRunnable``: a trained Aligner as a LangChain runnable, and ``with_aligner`` for chains.

chain = llm | AlignerRunnable()                  # answer only (the Aligner sees no question)
chain = with_aligner(llm, AlignerRunnable())     # question-aware: same input as ``llm``
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    BaseMessageChunk,
    convert_to_messages,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableLambda,
    RunnableParallel,
    RunnableSequence,
    RunnableSerializable,
)
from langchain_core.runnables.utils import AddableDict
from langgraph.errors import GraphBubbleUp
from pydantic import Field

from aligner_chain._backend_factory import AlignerOptions
from aligner_chain.backends.base import CorrectionRequest, CorrectionResult
from aligner_chain.errors import AlignerError, CorrectionFailed
from aligner_chain.messages import (
    AlignerStatus,
    HistoryPair,
    aligner_metadata,
    as_ai_message,
    message_text,
    normalize_history,
    question_and_history,
    replace_text,
    skip_reason,
    with_metadata,
)
from aligner_chain.prompts import fold_history

__all__ = ["QUESTION_CONFIG_KEY", "AlignerRunnable", "OnFailure", "with_aligner"]

logger = logging.getLogger(__name__)

OnFailure = Literal["passthrough", "raise"]
QUESTION_CONFIG_KEY = "aligner_question"
"""``config={"configurable": {"aligner_question": ...}}`` gives the question for one call."""

_DICT_KEYS = ("question", "answer", "history")


@dataclass
class _Item:
    """One answer on its way through the Aligner."""

    kind: Literal["message", "str"]
    message: AIMessage  # a str answer is wrapped, so predicates and metadata see a message
    question: str
    history: list[HistoryPair]
    skip: str | None = None


class AlignerRunnable(AlignerOptions, RunnableSerializable[Any, Any]):
    """Correct an answer with a trained Aligner; a traced LangChain runnable.

    Input: an ``AIMessage``/``AIMessageChunk``, a ``str``, or ``{"question", "answer", "history"?}``
    (answer a message or a str; history a list of messages or ``(role, text)`` pairs, used when
    ``history_turns > 0``). Output follows the answer: a message gives an ``AIMessage`` (the original,
    content replaced, ``id``/``tool_calls``/``usage_metadata``/``name``/``response_metadata`` kept),
    a str gives a str.

    The question comes from the dict, else from ``config={"configurable": {"aligner_question": q}}``;
    without one the Aligner sees an empty question, which gives weaker corrections (use
    :func:`with_aligner` to pass the question along a chain).

    ``response_metadata["aligner"]`` reports ``status`` (``"corrected"``, ``"unchanged"``,
    ``"skipped"``, ``"failed"``), ``original``, ``model``, ``template``, and ``reason`` when skipped or
    failed. Answers that call tools, have no text, are too long for the Aligner or that ``skip``
    selects are returned untouched with status ``"skipped"``. On a backend failure,
    ``on_failure="passthrough"`` returns the original (status ``"failed"``, a warning logged) and
    ``on_failure="raise"`` raises :class:`~aligner_chain.errors.AlignerError` chained from the cause.

    ``batch``/``abatch`` make one backend call per batch. ``stream``/``transform`` buffer the upstream
    chunks and emit the correction once it is complete (a failed correction never leaks half-way); the
    aligner metadata rides on exactly one chunk. For token-by-token streaming of the Aligner's own
    generation use :class:`~aligner_chain.chat_model.ChatAligner`.
    """

    on_failure: OnFailure = "passthrough"
    """``"passthrough"``: keep the original answer (status ``"failed"``); ``"raise"``: raise."""
    skip: Any = Field(default=None, exclude=True)
    """``skip(message) -> bool``; ``True`` returns that answer untouched (status ``"skipped"``)."""

    def __init__(self, model: str | os.PathLike[str] | None = None, /, **kwargs: Any) -> None:
        if model is not None:
            if "model" in kwargs:
                raise TypeError("model given twice (positionally and as model=)")
            kwargs["model"] = model
        if kwargs.get("skip") is not None and not callable(kwargs["skip"]):
            raise TypeError(f"skip must be a callable (message) -> bool, got {type(kwargs['skip']).__name__}")
        super().__init__(**kwargs)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    # --- direct use by graph / middleware code ---------------------------------------------------

    def correct_message(
        self,
        message: AIMessage,
        question: str = "",
        history: Sequence[BaseMessage | tuple[str, str]] = (),
        config: RunnableConfig | None = None,
    ) -> AIMessage:
        """Correct one answer message (a traced run); returns an ``AIMessage`` with the same id."""
        out = self.invoke({"question": question, "answer": message, "history": list(history)}, config)
        return cast(AIMessage, out)

    async def acorrect_message(
        self,
        message: AIMessage,
        question: str = "",
        history: Sequence[BaseMessage | tuple[str, str]] = (),
        config: RunnableConfig | None = None,
    ) -> AIMessage:
        """Async twin of :meth:`correct_message`."""
        out = await self.ainvoke({"question": question, "answer": message, "history": list(history)}, config)
        return cast(AIMessage, out)

    # --- invoke / batch ----------------------------------------------------------------------------

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Correct many answers with ONE backend call, order kept."""
        return self._batch_with_config(
            self._batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async twin of :meth:`batch` (one backend call per batch)."""
        return await self._abatch_with_config(
            self._abatch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    def _invoke(self, input: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> Any:
        return _raise_or_return(self._run([self._parse(input, config)])[0])

    async def _ainvoke(
        self, input: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> Any:
        return _raise_or_return((await self._arun([self._parse(input, config)]))[0])

    def _batch(
        self, inputs: list[Any], run_manager: list[CallbackManagerForChainRun], config: list[RunnableConfig]
    ) -> list[Any]:
        return self._run(self._parse_all(inputs, config))

    async def _abatch(
        self,
        inputs: list[Any],
        run_manager: list[AsyncCallbackManagerForChainRun],
        config: list[RunnableConfig],
    ) -> list[Any]:
        return await self._arun(self._parse_all(inputs, config))

    # --- streaming ---------------------------------------------------------------------------------

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self.transform(iter([input]), config, **kwargs)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        """Buffer the upstream chunks, correct the whole answer, then emit it as chunks."""
        yield from self._transform_stream_with_config(input, self._transform, config, **kwargs)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Async twin of :meth:`transform`."""
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config, **kwargs):
            yield chunk

    def _transform(
        self, chunks: Iterator[Any], run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> Iterator[Any]:
        final: Any = None
        for chunk in chunks:
            final = _add(final, chunk)
        if final is None:
            return
        yield from _as_chunks(_raise_or_return(self._run([self._parse(final, config)])[0]))

    async def _atransform(
        self,
        chunks: AsyncIterator[Any],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> AsyncIterator[Any]:
        final: Any = None
        async for chunk in chunks:
            final = _add(final, chunk)
        if final is None:
            return
        out = _raise_or_return((await self._arun([self._parse(final, config)]))[0])
        for piece in _as_chunks(out):
            yield piece

    # --- the correction ----------------------------------------------------------------------------

    def _parse_all(self, inputs: list[Any], configs: list[RunnableConfig]) -> list[_Item | Exception]:
        items: list[_Item | Exception] = []
        for input, config in zip(inputs, configs, strict=True):
            try:
                items.append(self._parse(input, config))
            except Exception as err:  # one bad input never sinks the batch (return_exceptions)
                items.append(err)
        return items

    def _parse(self, input: Any, config: RunnableConfig | None) -> _Item:
        question: Any = None
        history: list[HistoryPair] = []
        if isinstance(input, Mapping):
            unknown = sorted(str(k) for k in input if k not in _DICT_KEYS)
            if unknown or "answer" not in input:
                raise ValueError(
                    f"AlignerRunnable input dict must have an 'answer' key (and optionally 'question' and "
                    f"'history'); got keys {sorted(map(str, input))}"
                )
            answer, question = input["answer"], input.get("question")
            history = normalize_history(input.get("history"))
        else:
            answer = input
        if question is None:
            question = ((config or {}).get("configurable") or {}).get(QUESTION_CONFIG_KEY)
        if isinstance(question, BaseMessage):
            question = message_text(question)
        if question is not None and not isinstance(question, str):
            raise TypeError(f"question must be a str or a message, got {type(question).__name__}")
        question = question or ""
        if isinstance(answer, BaseMessage):
            if not isinstance(answer, AIMessage):
                raise TypeError(
                    f"the answer must be an AIMessage (or a str), got {type(answer).__name__}; put "
                    "AlignerRunnable after a chat model, or pass {'question': ..., 'answer': ...}"
                )
            item = _Item("message", as_ai_message(answer), question, history, skip_reason(answer))
        elif isinstance(answer, str):
            item = _Item("str", AIMessage(content=answer), question, history)
            item.skip = None if answer.strip() else "empty"
        else:
            raise TypeError(
                f"AlignerRunnable takes an AIMessage, a str or a dict with 'answer', got "
                f"{type(answer).__name__}"
            )
        if item.skip is None and self.skip is not None and self.skip(item.message):
            item.skip = "skip_predicate"
        return item

    def _request(self, item: _Item) -> CorrectionRequest:
        question = fold_history(item.question, item.history, self.history_turns)
        return CorrectionRequest(question=question, answer=message_text(item.message))

    def _run(self, items: list[_Item | Exception]) -> list[Any]:
        todo = [i for i, item in enumerate(items) if isinstance(item, _Item) and item.skip is None]
        results: list[CorrectionResult] | BaseException = []
        if todo:
            try:
                requests = [self._request(cast(_Item, items[i])) for i in todo]
                results = _checked(self.get_backend().correct(requests), len(requests))
            except GraphBubbleUp:  # interrupts and Command(graph=PARENT) belong to the graph
                raise
            except Exception as err:
                results = err
        return self._finish_all(items, todo, results)

    async def _arun(self, items: list[_Item | Exception]) -> list[Any]:
        todo = [i for i, item in enumerate(items) if isinstance(item, _Item) and item.skip is None]
        results: list[CorrectionResult] | BaseException = []
        if todo:
            try:
                requests = [self._request(cast(_Item, items[i])) for i in todo]
                results = _checked(await self.get_backend().acorrect(requests), len(requests))
            except GraphBubbleUp:  # interrupts and Command(graph=PARENT) belong to the graph
                raise
            except Exception as err:
                results = err
        return self._finish_all(items, todo, results)

    def _finish_all(
        self,
        items: list[_Item | Exception],
        todo: list[int],
        results: list[CorrectionResult] | BaseException,
    ) -> list[Any]:
        by_index = dict(zip(todo, results, strict=True)) if isinstance(results, list) else {}
        model, template = self.describe_backend()
        outputs: list[Any] = []
        for i, item in enumerate(items):
            if isinstance(item, Exception):
                outputs.append(item)
                continue
            try:
                if item.skip is not None:
                    outputs.append(_output(item, "skipped", model, template, reason=item.skip))
                elif isinstance(results, BaseException):
                    reason = getattr(results, "reason", None) or "backend_error"
                    outputs.append(self._failed(item, model, template, reason, repr(results), results))
                else:
                    outputs.append(self._finish(item, by_index[i], model, template))
            except Exception as err:  # on_failure="raise": reported per item
                outputs.append(err)
        return outputs

    def _finish(self, item: _Item, result: CorrectionResult, model: str, template: str) -> Any:
        original = message_text(item.message)
        if result.status == "skipped":
            return _output(item, "skipped", model, template, reason=result.reason, detail=result.detail)
        if result.status == "ok" and result.text is not None:
            if not result.text.strip():
                return self._failed(item, model, template, "empty_correction", "the Aligner returned no text")
            if result.text.strip() == original.strip():
                return _output(item, "unchanged", model, template)
            return _output(item, "corrected", model, template, text=result.text)
        reason = result.reason or "backend_error"
        return self._failed(
            item, model, template, reason, result.detail, CorrectionFailed(reason, result.detail)
        )

    def _failed(
        self,
        item: _Item,
        model: str,
        template: str,
        reason: str,
        detail: str | None,
        cause: BaseException | None = None,
    ) -> Any:
        if self.on_failure == "raise":
            message = f"the Aligner ({model}) failed: {reason}" + (f" ({detail})" if detail else "")
            raise AlignerError(message) from (cause or CorrectionFailed(reason, detail))
        logger.warning("Aligner %s failed (%s), keeping the original answer: %s", model, reason, detail)
        return _output(item, "failed", model, template, reason=reason, detail=detail)


# --- helpers -------------------------------------------------------------------------------------


def _checked(results: list[CorrectionResult], expected: int) -> list[CorrectionResult]:
    if len(results) != expected:
        raise AlignerError(f"the backend returned {len(results)} results for {expected} requests")
    return results


def _raise_or_return(out: Any) -> Any:
    if isinstance(out, Exception):
        raise out
    return out


def _output(
    item: _Item,
    status: AlignerStatus,
    model: str,
    template: str,
    *,
    text: str | None = None,
    reason: str | None = None,
    detail: str | None = None,
) -> Any:
    original = message_text(item.message)
    if item.kind == "str":
        return text if text is not None else original
    meta = aligner_metadata(
        status, original=original, model=model, template=template, reason=reason, detail=detail
    )
    message = replace_text(item.message, text) if text is not None else item.message
    return with_metadata(message, meta)


def _add(final: Any, chunk: Any) -> Any:
    """Aggregate one upstream chunk (message chunks and strs add up; dicts merge by key)."""
    if final is None:
        return chunk
    if isinstance(final, BaseMessageChunk) and isinstance(chunk, BaseMessageChunk):
        return final + chunk
    if isinstance(final, str) and isinstance(chunk, str):
        return final + chunk
    if isinstance(final, Mapping) and isinstance(chunk, Mapping):
        return AddableDict(final) + AddableDict(chunk)
    return chunk  # whole values (e.g. a full AIMessage): the latest wins


_PIECES = re.compile(r"\S+\s*|\s+")


def _as_chunks(out: Any) -> Iterator[Any]:
    """The output as stream chunks: strs and AIMessageChunks (same id) whose sum is ``out``; the
    message fields (metadata, usage, tool calls) ride on the first chunk only."""
    if isinstance(out, str):
        yield from _PIECES.findall(out) or [out]
        return
    if not isinstance(out, AIMessage):
        yield out
        return
    pieces: list[Any] = [out.content]
    if isinstance(out.content, str) and not out.tool_calls and not out.invalid_tool_calls:
        pieces = _PIECES.findall(out.content) or [out.content]
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if i == 0:
            yield AIMessageChunk(
                content=piece,
                id=out.id,
                name=out.name,
                additional_kwargs=out.additional_kwargs,
                response_metadata=out.response_metadata,
                usage_metadata=out.usage_metadata,
                tool_call_chunks=_tool_call_chunks(out),
                chunk_position="last" if last else None,
            )
        else:
            yield AIMessageChunk(content=piece, id=out.id, chunk_position="last" if last else None)


def _tool_call_chunks(message: AIMessage) -> list[Any]:
    chunks = [
        tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c.get("id"), index=i)
        for i, c in enumerate(message.tool_calls)
    ]
    for c in message.invalid_tool_calls:
        chunks.append(
            tool_call_chunk(name=c.get("name"), args=c.get("args"), id=c.get("id"), index=len(chunks))
        )
    return chunks


# --- with_aligner --------------------------------------------------------------------------------


def with_aligner(upstream: Runnable[Any, Any], aligner: AlignerRunnable | None = None) -> Runnable[Any, Any]:
    """Wrap a chat model (or a chain ending in one) so its answer is corrected knowing the question.

    The returned runnable takes ``upstream``'s input (a str, a list of messages, a ``PromptValue``,
    ``{"messages": [...]}``, or the input dict of a ``prompt | llm`` chain), runs ``upstream``, and
    corrects its answer with the question = the last human message of that input (plus earlier turns
    when ``aligner.history_turns > 0``). It is a traced run with stream/async/batch support; a batch
    makes one Aligner call.
    """
    if not isinstance(upstream, Runnable):
        raise TypeError(
            f"upstream must be a LangChain Runnable (a chat model or chain), got {type(upstream).__name__}"
        )
    if aligner is None:
        aligner = AlignerRunnable()
    if not isinstance(aligner, AlignerRunnable):
        raise TypeError(f"aligner must be an AlignerRunnable or None, got {type(aligner).__name__}")
    context: RunnableLambda[Any, dict[str, Any]] = RunnableLambda(
        lambda value: _question_and_history(upstream, value), name="aligner_question"
    )
    gather = RunnableParallel(answer=upstream, context=context)
    unpack = RunnableLambda(_unpack, name="aligner_input")
    return RunnableSequence(gather, unpack, aligner, name=f"{upstream.get_name()}WithAligner")


def _unpack(value: Mapping[str, Any]) -> dict[str, Any]:
    context = value.get("context") or {}
    return {
        "question": context.get("question", ""),
        "history": context.get("history", []),
        "answer": value["answer"],
    }


def _question_and_history(upstream: Runnable[Any, Any], value: Any) -> dict[str, Any]:
    messages = _input_messages(upstream, value)
    if messages is None:
        return {"question": value if isinstance(value, str) else "", "history": []}
    question, history = question_and_history(messages)
    return {"question": question, "history": history}


def _input_messages(upstream: Runnable[Any, Any], value: Any) -> list[BaseMessage] | None:
    """The conversation in ``upstream``'s input, or ``None`` for a plain str question."""
    if isinstance(value, str):
        return None
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, Sequence):
        return convert_to_messages(value)
    if isinstance(value, Mapping):
        if "messages" in value and isinstance(value["messages"], Sequence):
            return convert_to_messages(value["messages"])
        first = upstream.first if isinstance(upstream, RunnableSequence) else None
        if first is not None:
            rendered = first.invoke(value)
            if isinstance(rendered, PromptValue):
                return rendered.to_messages()
        for key in ("question", "input", "query"):
            if isinstance(value.get(key), str):
                return None if not value[key] else convert_to_messages([("human", value[key])])
    raise TypeError(
        f"with_aligner cannot find the question in an input of type {type(value).__name__}; pass a str, "
        "a list of messages, a PromptValue, {'messages': [...]}, or the input dict of a prompt | llm chain"
    )
