"""A tool-using LangGraph agent whose final answer is corrected by an Aligner, streamed.

The graph: ``model -> tools -> model -> aligner -> END``. ``route_final_answer`` sends tool-calling
turns to ``"tools"`` and final answers to ``"aligner"``; the aligner node (``make_aligner_node``)
replaces the final answer in place (same message id), so the state keeps one message per turn and the
tool-calling turns are untouched. With ``stream_mode="messages"`` the client sees the model's draft
(node ``model``), then the correction token by token (node ``aligner``) under the same message id:
replace the draft with it.

Runs offline: the upstream model is a fake chat model replaying a tool call then a wrong final
answer, and the Aligner is the tiny demo Aligner that ``make demo`` trains into
``runs/quickstart/aligner``. The offline script stays inside what that Aligner learned (the synthetic
task of ``training/demo/synthetic.py``, in its exact phrasings): the agent calls ``add(4, 5)``, then
misreads the result as "4 plus 5 is 8.", which the Aligner corrects to "4 plus 5 is 9.".

With a real provider and the released Aligner::

    from langchain_openai import ChatOpenAI          # or: from langchain_anthropic import ChatAnthropic
    from aligner_chain import AlignerRunnable

    model = ChatOpenAI(model="gpt-4.1-mini").bind_tools([add])
    graph = build_graph(model, AlignerRunnable("aligner/aligner-7b-v1.0"))

Usage: ``python examples/langgraph_agent.py [--aligner PATH_OR_HUB_ID] [--max-new-tokens N]``
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from aligner_chain import AlignerRunnable
from aligner_chain.graph import make_aligner_node, route_final_answer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import ReplayChatModel, parse_args, replay, resolve_aligner, show

QUESTION = "What is 4 plus 5?"


@tool
def add(a: int, b: int) -> int:
    """The sum of two integers."""
    return a + b


def scripted_model() -> ReplayChatModel:
    """A tool call, then a final answer that gets the tool's result wrong."""
    call = {"name": "add", "args": {"a": 4, "b": 5}, "id": "call-1"}
    return replay([AIMessage("", tool_calls=[call]), AIMessage("4 plus 5 is 8.")])


def build_graph(model: BaseChatModel | Runnable[Any, Any], aligner: AlignerRunnable) -> Any:
    """model -> (tools -> model)* -> aligner -> END."""

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_node("tools", ToolNode([add]))
    builder.add_node("aligner", make_aligner_node(aligner))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", route_final_answer, ["tools", "aligner"])
    builder.add_edge("tools", "model")
    builder.add_edge("aligner", END)
    return builder.compile(checkpointer=InMemorySaver())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "A LangGraph agent with an Aligner node, streamed.")
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
    print(f"\nstate: {len(messages)} messages ({', '.join(m.type for m in messages)})")
    show("final answer in the graph state", messages[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
