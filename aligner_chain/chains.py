"""``with_aligner``: wrap a chat model (or a chain ending in one) so the Aligner knows the question."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import (
    Runnable,
    RunnableGenerator,
    RunnableLambda,
    RunnableParallel,
    RunnableSequence,
)
from langchain_core.runnables.utils import AddableDict

from aligner_chain.messages import question_and_history
from aligner_chain.runnable import AlignerRunnable

__all__ = ["input_messages", "with_aligner"]


def with_aligner(upstream: Runnable[Any, Any], aligner: AlignerRunnable | None = None) -> Runnable[Any, Any]:
    """Wrap a chat model (or a chain ending in one) so its answer is corrected knowing the question.

    The returned runnable takes ``upstream``'s input (a str, a list of messages, a ``PromptValue``,
    ``{"messages": [...]}``, or the input dict of a ``prompt | llm`` chain), runs ``upstream``, and
    corrects its answer with the question = the last human message of that input (plus earlier turns
    when ``aligner.history_turns > 0``). It is a traced run with stream/async/batch support; a batch
    makes one Aligner call. Streamed, the upstream's chunks flow through as they arrive, so a
    sentence-level Aligner corrects each sentence while the upstream is still writing.
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
    unpack = RunnableGenerator(_unpack, _aunpack, name="aligner_input")
    return RunnableSequence(gather, unpack, aligner, name=f"{upstream.get_name()}WithAligner")


def _unpack_one(value: Mapping[str, Any]) -> Iterator[AddableDict]:
    """One chunk of ``{"answer", "context"}`` as the Aligner's input chunks (they add up to
    ``{"question", "history", "answer"}``)."""
    if "context" in value:
        context = value["context"] or {}
        yield AddableDict(question=context.get("question", ""), history=context.get("history", []))
    if "answer" in value:
        yield AddableDict(answer=value["answer"])


def _unpack(chunks: Iterator[Mapping[str, Any]]) -> Iterator[AddableDict]:
    for chunk in chunks:
        yield from _unpack_one(chunk)


async def _aunpack(chunks: AsyncIterator[Mapping[str, Any]]) -> AsyncIterator[AddableDict]:
    async for chunk in chunks:
        for piece in _unpack_one(chunk):
            yield piece


def _question_and_history(upstream: Runnable[Any, Any], value: Any) -> dict[str, Any]:
    messages = input_messages(upstream, value)
    if messages is None:
        return {"question": value if isinstance(value, str) else "", "history": []}
    question, history = question_and_history(messages)
    return {"question": question, "history": history}


def input_messages(upstream: Runnable[Any, Any], value: Any) -> list[BaseMessage] | None:
    """The conversation in ``upstream``'s input, or ``None`` for a plain str question.

    Raises:
        TypeError: an input in which no conversation can be found.
    """
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
