"""Message plumbing: question, answer and history out of messages; content rewrite; metadata.

Everything here is pure (no model, no I/O); the rules built on it (what is sent to the Aligner,
what comes back) live in :mod:`aligner_chain.correction`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    message_chunk_to_message,
)

__all__ = [
    "ALIGNER_KEY",
    "AlignerStatus",
    "HistoryPair",
    "aligner_metadata",
    "as_ai_message",
    "has_text_block",
    "history_pairs",
    "is_text_block",
    "last_ai_index",
    "message_text",
    "normalize_history",
    "question_and_history",
    "replace_content",
    "replace_text",
    "skip_reason",
    "split_conversation",
    "with_metadata",
]

ALIGNER_KEY = "aligner"
"""The ``response_metadata`` key that carries the Aligner's report."""

AlignerStatus = Literal["corrected", "unchanged", "skipped", "failed"]
HistoryPair = tuple[str, str]
"""``(role, text)`` with role ``"user"`` or ``"assistant"``, as :func:`~aligner_chain.prompts.fold_history`
expects."""

_M = TypeVar("_M", bound=BaseMessage)


# --- reading text --------------------------------------------------------------------------------


def is_text_block(block: Any) -> bool:
    """Whether a content block holds text (a bare string or ``{"type": "text", "text": str}``)."""
    if isinstance(block, str):
        return True
    return isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str)


def has_text_block(content: str | list[Any]) -> bool:
    """Whether ``content`` is a string or a list with at least one text block."""
    return isinstance(content, str) or any(is_text_block(b) for b in content)


def message_text(message: BaseMessage) -> str:
    """The message's text as a plain ``str`` (``msg.text`` returns a ``str`` subclass)."""
    return str(message.text)


# --- what to skip --------------------------------------------------------------------------------


def skip_reason(message: BaseMessage) -> str | None:
    """Why an answer must not be corrected, or ``None`` when it can be.

    Reasons: ``"tool_calls"``, ``"invalid_tool_calls"``, ``"tool_call_chunks"`` (a turn that calls
    tools is an action, not an answer), ``"no_text_block"`` (list content without text, e.g. an
    image only) and ``"empty"`` (no non-whitespace text).
    """
    if isinstance(message, AIMessage):
        if message.tool_calls:
            return "tool_calls"
        if message.invalid_tool_calls:
            return "invalid_tool_calls"
    if isinstance(message, AIMessageChunk) and message.tool_call_chunks:
        return "tool_call_chunks"
    if not has_text_block(message.content):
        return "no_text_block"
    if not message_text(message).strip():
        return "empty"
    return None


# --- question and history ------------------------------------------------------------------------


def last_ai_index(messages: Sequence[BaseMessage]) -> int | None:
    """Index of the last ``AIMessage`` (chunks included), or ``None``."""
    return next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], AIMessage)), None)


def _last_human_index(messages: Sequence[BaseMessage], end: int) -> int | None:
    return next((i for i in range(end - 1, -1, -1) if isinstance(messages[i], HumanMessage)), None)


def history_pairs(messages: Sequence[BaseMessage]) -> list[HistoryPair]:
    """Turns as ``(role, text)`` pairs, oldest first: human messages and AI messages with text.

    System, tool and empty messages (e.g. pure tool-calling turns) are left out.
    """
    pairs: list[HistoryPair] = []
    for message in messages:
        text = message_text(message)
        if not text.strip():
            continue
        if isinstance(message, HumanMessage):
            pairs.append(("user", text))
        elif isinstance(message, AIMessage):
            pairs.append(("assistant", text))
    return pairs


def normalize_history(history: Sequence[BaseMessage | Sequence[str]] | None) -> list[HistoryPair]:
    """History given as messages or ``(role, text)`` pairs, as pairs.

    Raises:
        TypeError: an item that is neither a message nor a ``(role, text)`` pair.
        ValueError: a pair whose role is not ``"user"`` or ``"assistant"``.
    """
    if not history:
        return []
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise TypeError(
            f"history must be a list of messages or (role, text) pairs, got {type(history).__name__}"
        )
    messages = [h for h in history if isinstance(h, BaseMessage)]
    if len(messages) == len(history):
        return history_pairs(messages)
    pairs: list[HistoryPair] = []
    for item in history:
        if isinstance(item, BaseMessage):
            pairs.extend(history_pairs([item]))
            continue
        if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
            raise TypeError(
                f"history items must be messages or (role, text) pairs, got {type(item).__name__}: {item!r}"
            )
        role, text = item
        if role not in ("user", "assistant"):
            raise ValueError(f"history role must be 'user' or 'assistant', got {role!r}")
        pairs.append((str(role), str(text)))
    return pairs


def question_and_history(messages: Sequence[BaseMessage]) -> tuple[str, list[HistoryPair]]:
    """``(question, history)`` of a chat model's input: the last human message and the turns before it."""
    index = _last_human_index(messages, len(messages))
    if index is None:
        return "", history_pairs(messages)
    return message_text(messages[index]), history_pairs(messages[:index])


def split_conversation(messages: Sequence[BaseMessage]) -> tuple[str, list[HistoryPair], AIMessage]:
    """``(question, history, answer)`` of a conversation that ends in an AI answer.

    The answer is the last message; the question is the last human message before it; history is
    every turn before that question (oldest first).

    Raises:
        ValueError: the conversation is empty or does not end in an ``AIMessage``.
    """
    if not messages:
        raise ValueError("messages is empty; pass [HumanMessage(question), AIMessage(answer)]")
    answer = messages[-1]
    if not isinstance(answer, AIMessage):
        raise ValueError(
            f"the last message must be the AIMessage answer to correct, got {type(answer).__name__}; "
            "pass [..., HumanMessage(question), AIMessage(answer)]"
        )
    q_index = _last_human_index(messages, len(messages) - 1)
    if q_index is None:
        return "", history_pairs(messages[:-1]), answer
    return message_text(messages[q_index]), history_pairs(messages[:q_index]), answer


# --- rewriting -----------------------------------------------------------------------------------


def replace_content(content: str | list[Any], text: str) -> str | list[Any]:
    """``content`` with its text replaced by ``text``.

    A string becomes ``text``. In a list, non-text blocks (images, reasoning, citations...) stay in
    place, the first text block carries ``text`` (its other keys kept) and the other text blocks are
    dropped, so the message's text is exactly ``text``. A list without text gets a text block at the
    end.
    """
    if isinstance(content, str):
        return text
    out: list[Any] = []
    placed = False
    for block in content:
        if not is_text_block(block):
            out.append(block)
        elif not placed:
            out.append(text if isinstance(block, str) else {**block, "text": text})
            placed = True
    if not placed:
        out.append({"type": "text", "text": text})
    return out


def replace_text(message: _M, text: str) -> _M:
    """A copy of ``message`` (id, tool calls, usage, name and metadata kept) with its text replaced."""
    return message.model_copy(update={"content": replace_content(message.content, text)})


def with_metadata(message: _M, metadata: Mapping[str, Any]) -> _M:
    """A copy of ``message`` with ``response_metadata["aligner"] = metadata`` (other keys kept)."""
    return message.model_copy(
        update={"response_metadata": {**message.response_metadata, ALIGNER_KEY: dict(metadata)}}
    )


def as_ai_message(message: AIMessage) -> AIMessage:
    """An ``AIMessage`` for an ``AIMessage`` or ``AIMessageChunk`` (tool call chunks parsed)."""
    if isinstance(message, AIMessageChunk):
        converted = message_chunk_to_message(message)
        assert isinstance(converted, AIMessage)  # the chunk's first base class
        return converted
    return message


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


def aligner_metadata(
    status: AlignerStatus,
    *,
    original: str,
    model: str,
    template: str,
    reason: str | None = None,
    detail: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON-safe ``response_metadata["aligner"]`` dict.

    Always ``status``, ``original``, ``model`` and ``template``; ``reason`` (a short code) for
    ``"skipped"`` and ``"failed"`` (``"unknown"`` when none is given); ``detail`` when known.
    """
    if status not in ("corrected", "unchanged", "skipped", "failed"):
        raise ValueError(f"status must be corrected, unchanged, skipped or failed, got {status!r}")
    meta: dict[str, Any] = {
        "status": status,
        "original": str(original),
        "model": str(model),
        "template": str(template),
    }
    if status in ("skipped", "failed"):
        meta["reason"] = str(reason or "unknown")
    elif reason:
        meta["reason"] = str(reason)
    if detail:
        meta["detail"] = str(detail)
    meta.update({str(k): _json_safe(v) for k, v in extra.items()})
    return meta
