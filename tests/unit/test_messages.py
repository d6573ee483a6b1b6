"""Message plumbing: text, skip rules, question/history extraction, content rewrite, metadata."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage

from aligner_chain.messages import (
    aligner_metadata,
    as_ai_message,
    history_pairs,
    message_text,
    normalize_history,
    question_and_history,
    replace_content,
    replace_text,
    skip_reason,
    split_conversation,
    with_metadata,
)

IMAGE: dict[str, Any] = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
CALL = {"name": "search", "args": {"q": "x"}, "id": "call-1"}


def test_text_of_str_and_block_content() -> None:
    assert message_text(AIMessage("plain")) == "plain"
    blocks: list[Any] = [
        {"type": "text", "text": "Hello "},
        IMAGE,
        "world",
        {"type": "reasoning", "reasoning": "r"},
    ]
    assert message_text(AIMessage(content=blocks)) == "Hello world"
    assert type(message_text(AIMessage(content=blocks))) is str


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (AIMessage("Let me look.", tool_calls=[CALL]), "tool_calls"),
        (
            AIMessage("x", invalid_tool_calls=[{"name": "s", "args": "{bad", "id": "1", "error": "json"}]),
            "invalid_tool_calls",
        ),
        (
            AIMessageChunk(
                content="", tool_call_chunks=[{"name": "s", "args": "{", "id": "1", "index": 0}]
            ).model_copy(update={"tool_calls": []}),
            "tool_call_chunks",
        ),
        (AIMessage(""), "empty"),
        (AIMessage("  \n "), "empty"),
        (AIMessage(content=[IMAGE]), "no_text_block"),
        (AIMessage(content=[]), "no_text_block"),
        (AIMessage(content=[IMAGE, {"type": "text", "text": "a cat"}]), None),
        (AIMessage("A fine answer."), None),
    ],
)
def test_skip_reason(message: AIMessage, reason: str | None) -> None:
    assert skip_reason(message) == reason


def test_streamed_tool_call_chunk_is_skipped() -> None:
    chunk = AIMessageChunk(content="", tool_call_chunks=[{"name": "s", "args": '{"q', "id": "1", "index": 0}])
    assert skip_reason(chunk) == "tool_calls"  # langchain_core parses partial calls into tool_calls


def test_question_is_the_last_human_message_before_the_answer() -> None:
    messages = [
        SystemMessage("be nice"),
        HumanMessage("first question"),
        AIMessage("first answer"),
        HumanMessage("second question"),
        AIMessage("", tool_calls=[CALL]),
        ToolMessage("tool result", tool_call_id="call-1"),
        AIMessage("final answer"),
    ]
    assert split_conversation(messages[:3])[0] == "first question"
    assert split_conversation([AIMessage("no question")])[0] == ""
    assert question_and_history([HumanMessage("only a question")]) == ("only a question", [])

    question, history, answer = split_conversation(messages)
    assert question == "second question"
    assert history == [("user", "first question"), ("assistant", "first answer")]
    assert answer.text == "final answer"
    assert question_and_history(messages[:4]) == ("second question", history)


def test_split_conversation_needs_an_ai_answer_last() -> None:
    with pytest.raises(ValueError, match="AIMessage"):
        split_conversation([HumanMessage("q")])
    with pytest.raises(ValueError, match="empty"):
        split_conversation([])
    assert split_conversation([AIMessage("a")])[0] == ""


def test_history_pairs_leave_out_system_tool_and_empty_turns() -> None:
    messages = [
        SystemMessage("sys"),
        HumanMessage("hi"),
        AIMessage("", tool_calls=[CALL]),
        ToolMessage("r", tool_call_id="call-1"),
        AIMessage("hello"),
    ]
    assert history_pairs(messages) == [("user", "hi"), ("assistant", "hello")]


def test_normalize_history_accepts_messages_and_pairs() -> None:
    assert normalize_history(None) == []
    assert normalize_history([HumanMessage("a"), AIMessage("b")]) == [("user", "a"), ("assistant", "b")]
    assert normalize_history([("user", "a"), AIMessage("b")]) == [("user", "a"), ("assistant", "b")]
    with pytest.raises(ValueError, match="role"):
        normalize_history([("system", "x")])
    with pytest.raises(TypeError, match="history"):
        normalize_history("not a list")
    with pytest.raises(TypeError, match="pairs"):
        normalize_history([42])  # type: ignore[list-item]


def test_replace_content_keeps_non_text_blocks() -> None:
    assert replace_content("old", "new") == "new"
    blocks: list[Any] = [
        {"type": "reasoning", "reasoning": "thinking"},
        {"type": "text", "text": "part 1", "annotations": [{"type": "citation"}]},
        IMAGE,
        {"type": "text", "text": "part 2"},
        "part 3",
    ]
    out = replace_content(blocks, "corrected")
    assert out == [
        {"type": "reasoning", "reasoning": "thinking"},
        {"type": "text", "text": "corrected", "annotations": [{"type": "citation"}]},
        IMAGE,
    ]
    assert blocks[1]["text"] == "part 1"  # input untouched
    assert replace_content(["a", IMAGE], "b") == ["b", IMAGE]
    assert replace_content([IMAGE], "b") == [IMAGE, {"type": "text", "text": "b"}]


def test_replace_text_and_metadata_keep_every_other_field() -> None:
    message = AIMessage(
        "draft",
        id="run-1",
        name="bot",
        usage_metadata={"input_tokens": 3, "output_tokens": 5, "total_tokens": 8},
        response_metadata={"model_name": "gpt-x", "finish_reason": "stop"},
        additional_kwargs={"refusal": None},
    )
    meta = aligner_metadata("corrected", original="draft", model="m", template="aligner-v1")
    out = with_metadata(replace_text(message, "better"), meta)
    assert out.content == "better"
    assert (out.id, out.name, out.usage_metadata) == (message.id, message.name, message.usage_metadata)
    assert out.additional_kwargs == message.additional_kwargs
    assert out.response_metadata == {"model_name": "gpt-x", "finish_reason": "stop", "aligner": meta}
    assert message.content == "draft" and "aligner" not in message.response_metadata


def test_metadata_is_json_safe_and_reason_required_for_skip_and_failure() -> None:
    ok = aligner_metadata("corrected", original="a", model="m", template="t")
    assert ok == {"status": "corrected", "original": "a", "model": "m", "template": "t"}
    failed = aligner_metadata(
        "failed", original="a", model="m", template="t", detail="oom", extra={1: object()}
    )
    assert failed["reason"] == "unknown" and failed["detail"] == "oom"
    json.dumps(failed)
    assert aligner_metadata("skipped", original="", model="m", template="t", reason="too_long")["reason"] == (
        "too_long"
    )
    with pytest.raises(ValueError, match="status"):
        aligner_metadata("done", original="a", model="m", template="t")  # type: ignore[arg-type]


def test_as_ai_message_turns_chunks_into_messages() -> None:
    chunk = AIMessageChunk(
        content="hi", id="x", usage_metadata={"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
    )
    message = as_ai_message(chunk)
    assert type(message) is AIMessage
    assert (message.id, message.content, message.usage_metadata) == ("x", "hi", chunk.usage_metadata)
    plain = AIMessage("x")
    assert as_ai_message(plain) is plain
