"""How corrections travel through LangChain streams: adding up upstream chunks, cutting an output
back into chunks (message fields on exactly one), and telling whether a run is streamed to a client.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessageChunk
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.utils import AddableDict

if TYPE_CHECKING:
    from uuid import UUID

__all__ = ["add_chunk", "as_chunks", "is_streaming"]


def add_chunk(total: Any, chunk: Any) -> Any:
    """Add one upstream chunk to ``total`` (message chunks and strs add up; dicts merge by key;
    whole values such as a full ``AIMessage`` replace it)."""
    if total is None:
        return chunk
    if isinstance(total, BaseMessageChunk) and isinstance(chunk, BaseMessageChunk):
        return total + chunk
    if isinstance(total, str) and isinstance(chunk, str):
        return total + chunk
    if isinstance(total, Mapping) and isinstance(chunk, Mapping):
        return AddableDict(total) + AddableDict(chunk)
    return chunk


_PIECES = re.compile(r"\S+\s*|\s+")


def as_chunks(out: Any) -> Iterator[Any]:
    """``out`` as stream chunks: strs, or ``AIMessageChunk`` s (same id) whose sum is ``out``; the
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
        position: Literal["last"] | None = "last" if i == len(pieces) - 1 else None
        if i:
            yield AIMessageChunk(content=piece, id=out.id, chunk_position=position)
            continue
        yield AIMessageChunk(
            content=piece,
            id=out.id,
            name=out.name,
            additional_kwargs=out.additional_kwargs,
            response_metadata=out.response_metadata,
            usage_metadata=out.usage_metadata,
            tool_call_chunks=_tool_call_chunks(out),
            chunk_position=position,
        )


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


@runtime_checkable
class _StreamingHandler(Protocol):
    """What LangChain chat models look for to decide to stream (``stream_mode="messages"``,
    ``astream_events``): a callback handler that taps run outputs. Matched structurally, so no
    private class is imported."""

    def tap_output_iter(self, run_id: UUID, output: Iterator[Any]) -> Iterator[Any]: ...

    def tap_output_aiter(self, run_id: UUID, output: AsyncIterator[Any]) -> AsyncIterator[Any]: ...


def is_streaming(config: RunnableConfig | None) -> bool:
    """Whether the current run is being streamed token by token to a client."""
    callbacks = (config or {}).get("callbacks")
    if callbacks is None:
        return False
    handlers = callbacks if isinstance(callbacks, list) else getattr(callbacks, "handlers", [])
    return any(isinstance(h, _StreamingHandler) for h in handlers)
