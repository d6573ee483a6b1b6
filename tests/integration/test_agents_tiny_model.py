"""The aligner node and middleware on a real (tiny, random) local model: streamed corrections.

``forced_eos_token_id`` makes the random model end every correction with EOS at
``max_new_tokens``, so corrections complete deterministically; without it the random model runs out
of tokens and the correction fails as ``"truncated"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langgraph.graph import MessagesState

from aligner_chain.backends.transformers import TransformersBackend
from aligner_chain.graph import make_aligner_node
from aligner_chain.middleware import AlignerMiddleware
from aligner_chain.runnable import AlignerRunnable
from tests.unit.test_graph import DRAFT, QUESTION, build_graph, get_weather, weather_script

EOS_ID = 1  # the tiny tokenizer's </s>


@pytest.fixture(scope="module")
def completing(tiny_model_dir: Path) -> AlignerRunnable:
    backend = TransformersBackend(
        tiny_model_dir, device="cpu", max_new_tokens=12, generation_kwargs={"forced_eos_token_id": EOS_ID}
    )
    return AlignerRunnable(backend=backend)


@pytest.fixture(scope="module")
def truncating(tiny_model_dir: Path) -> AlignerRunnable:
    return AlignerRunnable(backend=TransformersBackend(tiny_model_dir, device="cpu", max_new_tokens=6))


def _node_chunks(parts: list[tuple[BaseMessage, dict[str, Any]]], node: str) -> list[BaseMessage]:
    return [m for m, meta in parts if meta["langgraph_node"] == node]


def test_node_streams_the_local_models_correction(completing: AlignerRunnable) -> None:
    graph = build_graph(make_aligner_node(completing))
    state: MessagesState = {"messages": [HumanMessage(QUESTION)]}
    parts = list(graph.stream(state, stream_mode=["messages", "values"]))
    messages_parts = [p for mode, p in parts if mode == "messages"]
    final_state = [p for mode, p in parts if mode == "values"][-1]
    final = final_state["messages"][-1]
    meta = final.response_metadata["aligner"]
    assert meta["status"] in {"corrected", "unchanged"}
    assert meta["original"] == DRAFT
    assert meta["model"] == str(completing.get_backend().model_name)

    chunks = _node_chunks(messages_parts, "aligner")
    assert len(chunks) > 1, "token by token"
    assert all(isinstance(c, AIMessageChunk) and c.id == "ai-final" for c in chunks)
    assert "".join(c.text for c in chunks) == final.text


async def test_node_async_streaming_equals_invoke(completing: AlignerRunnable) -> None:
    """The streamed correction is the same text the non-streaming path produces (greedy)."""
    invoked = build_graph(make_aligner_node(completing)).invoke({"messages": [HumanMessage(QUESTION)]})
    graph = build_graph(make_aligner_node(completing))
    parts = [p async for p in graph.astream({"messages": [HumanMessage(QUESTION)]}, stream_mode="messages")]
    streamed = "".join(c.text for c in _node_chunks(parts, "aligner"))
    assert streamed == invoked["messages"][-1].text


def test_truncated_stream_falls_back_to_the_original(truncating: AlignerRunnable) -> None:
    graph = build_graph(make_aligner_node(truncating))
    parts = list(graph.stream({"messages": [HumanMessage(QUESTION)]}, stream_mode=["messages", "values"]))
    final = [p for mode, p in parts if mode == "values"][-1]["messages"][-1]
    assert final.content == DRAFT
    assert final.response_metadata["aligner"]["status"] == "failed"
    assert final.response_metadata["aligner"]["reason"] == "truncated"
    # The client saw partial tokens, then the whole original flagged as failed, to replace them with.
    emitted = _node_chunks([p for mode, p in parts if mode == "messages"], "aligner")
    assert emitted[-1].content == DRAFT
    assert emitted[-1].response_metadata["aligner"]["status"] == "failed"


def test_middleware_streams_the_local_models_correction(completing: AlignerRunnable) -> None:
    agent = create_agent(weather_script(), tools=[get_weather], middleware=[AlignerMiddleware(completing)])
    parts = list(agent.stream({"messages": [HumanMessage(QUESTION)]}, stream_mode=["messages", "values"]))
    final = [p for mode, p in parts if mode == "values"][-1]["messages"][-1]
    chunks = _node_chunks([p for mode, p in parts if mode == "messages"], "AlignerMiddleware.after_model")
    assert len(chunks) > 1
    assert "".join(c.text for c in chunks) == final.text
    assert final.id == "ai-final"
    assert final.response_metadata["aligner"]["original"] == DRAFT
