"""AlignerMiddleware inside real langchain.agents.create_agent agents."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware, ModelRetryMiddleware
from langchain.agents.structured_output import ProviderStrategy, ToolStrategy
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from pydantic import BaseModel

from aligner_chain.errors import AlignerError
from aligner_chain.middleware import AlignerMiddleware
from aligner_chain.runnable import AlignerRunnable
from tests.unit.test_graph import (
    DRAFT,
    FIXED,
    QUESTION,
    RecordingBackend,
    ScriptedChatModel,
    assert_turns_ok,
    get_weather,
    weather_script,
)

NODE = "AlignerMiddleware.after_model"


def middleware(backend: RecordingBackend | None = None, **kwargs: Any) -> AlignerMiddleware:
    return AlignerMiddleware(AlignerRunnable(backend=backend or RecordingBackend()), **kwargs)


def test_agent_final_answer_corrected_tool_turn_untouched() -> None:
    backend = RecordingBackend()
    agent = create_agent(weather_script(), tools=[get_weather], middleware=[middleware(backend)])
    result = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    final = assert_turns_ok(result["messages"])
    meta = final.response_metadata["aligner"]
    assert meta["status"] == "corrected" and meta["original"] == DRAFT
    json.dumps(meta)
    assert backend.questions == [QUESTION]
    assert backend.entry == ["correct"]


async def test_agent_async_path() -> None:
    backend = RecordingBackend()
    agent = create_agent(weather_script(), tools=[get_weather], middleware=[middleware(backend)])
    result = await agent.ainvoke({"messages": [HumanMessage(QUESTION)]})
    assert_turns_ok(result["messages"])
    assert backend.entry == ["acorrect"]


def test_default_name_and_custom_name() -> None:
    assert middleware().name == "AlignerMiddleware"
    named = middleware(name="polish")
    assert named.name == "polish"
    agent = create_agent(weather_script(), tools=[get_weather], middleware=[named])
    assert "polish.after_model" in agent.get_graph().nodes


def test_checkpointer_round_trip_in_agent() -> None:
    agent = create_agent(
        weather_script(), tools=[get_weather], middleware=[middleware()], checkpointer=InMemorySaver()
    )
    config: Any = {"configurable": {"thread_id": "a1"}}
    agent.invoke({"messages": [HumanMessage(QUESTION)]}, config)
    final = assert_turns_ok(agent.get_state(config).values["messages"])
    assert final.response_metadata["aligner"]["original"] == DRAFT


@pytest.mark.parametrize("use_async", [False, True])
async def test_human_in_the_loop_interrupt_passes_through(use_async: bool) -> None:
    backend = RecordingBackend()
    agent = create_agent(
        weather_script(),
        tools=[get_weather],
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"get_weather": True}), middleware(backend)],
        checkpointer=InMemorySaver(),
    )
    config: Any = {"configurable": {"thread_id": f"hitl-{use_async}"}}
    start = {"messages": [HumanMessage(QUESTION)]}
    first = await agent.ainvoke(start, config) if use_async else agent.invoke(start, config)
    assert "__interrupt__" in first
    assert backend.questions == []  # the tool-calling turn was not sent to the Aligner
    resume = Command(resume={"decisions": [{"type": "approve"}]})
    done = await agent.ainvoke(resume, config) if use_async else agent.invoke(resume, config)
    final = assert_turns_ok(done["messages"])
    assert final.response_metadata["aligner"]["status"] == "corrected"
    assert backend.questions == [QUESTION]


class FlakyModel(ScriptedChatModel):
    failures: int = 1

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("upstream hiccup")
        return super()._generate(*args, **kwargs)


def test_model_retry_middleware_then_one_correction() -> None:
    backend = RecordingBackend()
    model = FlakyModel(messages=iter([AIMessage(DRAFT, id="ai-final")]))
    agent = create_agent(
        model,
        middleware=[ModelRetryMiddleware(max_retries=2, initial_delay=0, jitter=False), middleware(backend)],
    )
    messages = agent.invoke({"messages": [HumanMessage(QUESTION)]})["messages"]
    assert len(messages) == 2
    assert messages[1].id == "ai-final" and messages[1].content == FIXED
    assert model.failures == 0
    assert backend.questions == [QUESTION]


class Weather(BaseModel):
    city: str
    summary: str


def test_response_format_tool_strategy_left_consistent() -> None:
    backend = RecordingBackend()
    model = ScriptedChatModel(
        messages=iter(
            [
                AIMessage(
                    "Here is the report.",
                    id="ai-structured",
                    tool_calls=[
                        {"name": "Weather", "args": {"city": "Paris", "summary": "sunny"}, "id": "s1"}
                    ],
                )
            ]
        )
    )
    agent = create_agent(model, response_format=ToolStrategy(Weather), middleware=[middleware(backend)])
    result = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    assert result["structured_response"] == Weather(city="Paris", summary="sunny")
    ai = next(m for m in result["messages"] if isinstance(m, AIMessage))
    assert ai.content == "Here is the report." and "aligner" not in ai.response_metadata
    assert isinstance(result["messages"][-1], ToolMessage)
    assert backend.questions == []


def test_response_format_provider_strategy_left_consistent() -> None:
    backend = RecordingBackend()
    text = '{"city": "Paris", "summary": "sunny"}'
    model = ScriptedChatModel(messages=iter([AIMessage(text, id="ai-json")]))
    agent = create_agent(model, response_format=ProviderStrategy(Weather), middleware=[middleware(backend)])
    result = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    assert result["structured_response"] == Weather(city="Paris", summary="sunny")
    final = result["messages"][-1]
    assert final.content == text and "aligner" not in final.response_metadata
    assert backend.questions == []


def _boom(question: str, answer: str) -> str:
    raise RuntimeError("aligner server down")


def test_failure_passthrough_and_raise_in_agent() -> None:
    agent = create_agent(
        weather_script(), tools=[get_weather], middleware=[middleware(RecordingBackend(_boom))]
    )
    final = assert_turns_ok(agent.invoke({"messages": [HumanMessage(QUESTION)]})["messages"], DRAFT)
    assert final.response_metadata["aligner"]["status"] == "failed"

    strict = create_agent(
        weather_script(),
        tools=[get_weather],
        middleware=[middleware(RecordingBackend(_boom), on_failure="raise")],
    )
    with pytest.raises(AlignerError):
        strict.invoke({"messages": [HumanMessage(QUESTION)]})


def test_skip_predicate_and_history_turns() -> None:
    backend = RecordingBackend()
    model = ScriptedChatModel(
        messages=iter([AIMessage("Short.", id="a"), AIMessage("Longer answer.", id="b")])
    )
    agent = create_agent(
        model, middleware=[middleware(backend, skip=lambda m: len(m.text) < 10, history_turns=2)]
    )
    first = agent.invoke({"messages": [HumanMessage("One?")]})["messages"]
    assert first[-1].content == "Short." and "aligner" not in first[-1].response_metadata
    second = agent.invoke({"messages": [*first, HumanMessage("Two?")]})["messages"]
    assert second[-1].content == FIXED
    (question,) = backend.questions
    assert "One?" in question and "Short." in question and "Two?" in question


def test_stream_messages_shows_corrected_tokens() -> None:
    agent = create_agent(weather_script(), tools=[get_weather], middleware=[middleware()])
    parts: list[tuple[BaseMessage, dict[str, Any]]] = list(
        agent.stream({"messages": [HumanMessage(QUESTION)]}, stream_mode="messages")
    )
    chunks = [m for m, meta in parts if meta["langgraph_node"] == NODE]
    assert len(chunks) > 1 and all(isinstance(c, AIMessageChunk) for c in chunks)
    assert {c.id for c in chunks} == {"ai-final"}
    assert "".join(c.text for c in chunks) == FIXED


async def test_astream_messages_async_agent() -> None:
    backend = RecordingBackend()
    agent = create_agent(weather_script(), tools=[get_weather], middleware=[middleware(backend)])
    parts = [p async for p in agent.astream({"messages": [HumanMessage(QUESTION)]}, stream_mode="messages")]
    chunks = [m for m, meta in parts if meta["langgraph_node"] == NODE]
    assert "".join(c.text for c in chunks) == FIXED
    assert "astream" in backend.entry


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="on_failure"):
        AlignerMiddleware(AlignerRunnable(backend=RecordingBackend()), on_failure="drop")  # type: ignore[arg-type]


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "langchain" or m.startswith("langchain.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "langchain", None)
    monkeypatch.delitem(sys.modules, "aligner_chain.middleware")
    with pytest.raises(ImportError, match=r'pip install "aligner-chain\[agents\]"'):
        importlib.import_module("aligner_chain.middleware")
