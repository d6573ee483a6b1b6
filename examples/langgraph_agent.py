"""A tool-using LangGraph agent whose final answer is corrected by an Aligner, streamed.

The graph: ``model -> tools -> model -> aligner -> END``. ``route_final_answer`` sends tool-calling
turns to ``"tools"`` and final answers to ``"aligner"``; the aligner node (``make_aligner_node``)
replaces the final answer in place (same message id), so the state keeps one message per turn and the
tool-calling turns are untouched. With ``stream_mode="messages"`` the client sees the model's draft
(node ``model``), then the correction token by token (node ``aligner``) under the same message id:
replace the draft with it.

Runs offline: the upstream model is a fake chat model replaying a tool call then a final answer, and
the Aligner is the tiny demo Aligner that ``make demo`` trains into ``runs/quickstart/aligner``.

With a real provider and the released Aligner::

    from langchain_openai import ChatOpenAI          # or: from langchain_anthropic import ChatAnthropic
    from aligner_chain import AlignerRunnable

    model = ChatOpenAI(model="gpt-4.1-mini").bind_tools([get_weather])
    graph = build_graph(model, AlignerRunnable("aligner/aligner-7b-v1.0"))

Usage: ``python examples/langgraph_agent.py [--aligner PATH_OR_HUB_ID] [--max-new-tokens N]``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from aligner_chain import AlignerRunnable
from aligner_chain.graph import make_aligner_node, route_final_answer

DEFAULT_ALIGNER = "runs/quickstart/aligner"
QUESTION = "Should I go for a run in Paris this afternoon?"


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"{city}: 34 degrees Celsius, clear sky, UV index 9."


class ReplayChatModel(GenericFakeChatModel):
    """Stands in for a provider chat model: replays scripted replies, tool calls included."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ReplayChatModel:
        return self

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._generate(messages, stop=stop, **kwargs).generations[0].message
        assert isinstance(reply, AIMessage)
        calls = [
            tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
            for i, c in enumerate(reply.tool_calls)
        ]
        chunk = AIMessageChunk(
            content=reply.content, id=reply.id, tool_call_chunks=calls, chunk_position="last"
        )
        yield ChatGenerationChunk(message=chunk)


def scripted_model() -> ReplayChatModel:
    return ReplayChatModel(
        messages=iter(
            [
                AIMessage(
                    "", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}]
                ),
                AIMessage("It is 34 degrees with a UV index of 9: perfect, run as far as you can at 3 pm!"),
            ]
        )
    )


def build_graph(model: BaseChatModel | Runnable[Any, Any], aligner: AlignerRunnable) -> Any:
    """model -> (tools -> model)* -> aligner -> END."""

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_node("tools", ToolNode([get_weather]))
    builder.add_node("aligner", make_aligner_node(aligner))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", route_final_answer, ["tools", "aligner"])
    builder.add_edge("tools", "model")
    builder.add_edge("aligner", END)
    return builder.compile(checkpointer=InMemorySaver())


def resolve_aligner(value: str) -> str | None:
    """A local Aligner directory or a hub id (``org/name``); ``None`` (after saying why) otherwise."""
    if Path(value).is_dir():
        return value
    if value != DEFAULT_ALIGNER and re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", value):
        return value  # a hub id: downloaded by transformers on first use
    print(
        f"No Aligner at {value!r}. Train the tiny demo Aligner with `make demo` (it is saved to "
        f"{DEFAULT_ALIGNER}), or pass --aligner a local Aligner directory or a hub id such as "
        "aligner/aligner-7b-v1.0.",
        file=sys.stderr,
    )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A LangGraph agent with an Aligner node, streamed.")
    parser.add_argument("--aligner", default=DEFAULT_ALIGNER, help="Aligner directory or hub id")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest correction (tokens)")
    args = parser.parse_args(argv)
    model_path = resolve_aligner(args.aligner)
    if model_path is None:
        return 2

    graph = build_graph(scripted_model(), AlignerRunnable(model_path, max_new_tokens=args.max_new_tokens))
    config: Any = {"configurable": {"thread_id": "demo"}}
    print(f"user: {QUESTION}")
    node = None
    for chunk, meta in graph.stream({"messages": [HumanMessage(QUESTION)]}, config, stream_mode="messages"):
        if meta["langgraph_node"] != node:
            node = meta["langgraph_node"]
            print(f"\n[{node}] ", end="")
        if isinstance(chunk, AIMessageChunk) and chunk.tool_call_chunks:
            print(f"calls {[c['name'] for c in chunk.tool_call_chunks]}", end="")
        elif not isinstance(chunk, AIMessageChunk) and "aligner" in chunk.response_metadata:
            # A whole message (not a token): the correction failed and the original is kept;
            # a UI replaces what it streamed for this message id with this text.
            status = chunk.response_metadata["aligner"]["status"]
            print(f"\n[{node}: {status}, whole message replaces the tokens above] ", end="")
        print(chunk.text, end="", flush=True)
    print()

    messages = graph.get_state(config).values["messages"]
    final = messages[-1]
    meta = final.response_metadata.get("aligner", {})
    print(f"\nstate: {len(messages)} messages ({', '.join(m.type for m in messages)})")
    print(f"aligner status: {meta.get('status')} {meta.get('reason') or ''}".rstrip())
    print(f"draft:     {meta.get('original')}")
    print(f"corrected: {final.text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
