"""The LangGraph correction node in real graphs: StateGraph + ToolNode + a scripted tool-calling model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Annotated, Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import ParentCommand
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt
from pydantic import BaseModel

from aligner_chain.backends import CallableBackend, CorrectionRequest, CorrectionResult
from aligner_chain.chat_model import ChatAligner
from aligner_chain.errors import AlignerError, CorrectionFailed
from aligner_chain.graph import make_aligner_node, make_final_answer_router, route_final_answer
from aligner_chain.runnable import AlignerRunnable

QUESTION = "What is the weather in Paris?"
DRAFT = "It is sunny in Paris, 30 degrees, go outside."
FIXED = "It is sunny in Paris (30 degrees). Remember sunscreen if you go outside."


# --- a scripted tool-calling chat model -------------------------------------------------------


class ScriptedChatModel(GenericFakeChatModel):
    """Replies from a script; binds tools (ignored); streams text word by word, tool calls whole."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        return self

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        message = self._generate(messages, stop=stop, **kwargs).generations[0].message
        assert isinstance(message, AIMessage)
        if message.tool_calls or not isinstance(message.content, str):
            chunk = AIMessageChunk(
                content=message.content,
                id=message.id,
                tool_call_chunks=[
                    {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                    for i, c in enumerate(message.tool_calls)
                ],
                chunk_position="last",
            )
            yield ChatGenerationChunk(message=chunk)
            return
        words = message.content.split(" ")
        for i, word in enumerate(words):
            text = word if i == 0 else " " + word
            last = i == len(words) - 1
            chunk = AIMessageChunk(content=text, id=message.id, chunk_position="last" if last else None)
            yield ChatGenerationChunk(message=chunk)


def weather_script(final: str = DRAFT) -> ScriptedChatModel:
    return ScriptedChatModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    id="ai-tool-turn",
                    tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}],
                ),
                AIMessage(content=final, id="ai-final"),
            ]
        )
    )


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny, 30 degrees in {city}."


class RecordingBackend(CallableBackend):
    """CallableBackend that records the questions and which entry points ran."""

    def __init__(self, fn: Any = None) -> None:
        super().__init__(fn or (lambda q, a: FIXED))
        self.questions: list[str] = []
        self.entry: list[str] = []

    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        self.entry.append("correct")
        self.questions.extend(r.question for r in requests)
        return super().correct(requests)

    async def acorrect(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        self.entry.append("acorrect")
        self.questions.extend(r.question for r in requests)
        return super().correct(requests)

    def stream(self, request: CorrectionRequest) -> Iterator[str]:
        self.entry.append("stream")
        self.questions.append(request.question)
        text = self._fn(request.question, request.answer)
        for i, word in enumerate(text.split(" ")):
            yield word if i == 0 else " " + word

    async def astream(self, request: CorrectionRequest) -> AsyncIterator[str]:
        self.entry.append("astream")
        self.questions.append(request.question)
        text = self._fn(request.question, request.answer)
        for i, word in enumerate(text.split(" ")):
            yield word if i == 0 else " " + word


def build_graph(aligner_node: Any, model: ScriptedChatModel | None = None, checkpointer: Any = None) -> Any:
    """model -> (tools -> model)* -> aligner -> END, routed by route_final_answer."""
    model = model or weather_script()

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_node("tools", ToolNode([get_weather]))
    builder.add_node(aligner_node)
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", route_final_answer, ["tools", "aligner"])
    builder.add_edge("tools", "model")
    builder.add_edge("aligner", END)
    return builder.compile(checkpointer=checkpointer)


def runnable(backend: CallableBackend | None = None, **kwargs: Any) -> AlignerRunnable:
    return AlignerRunnable(backend=backend or RecordingBackend(), **kwargs)


def assert_turns_ok(messages: list[BaseMessage], final_text: str = FIXED) -> AIMessage:
    """Human, tool-calling AI (untouched), tool result, final AI (corrected in place)."""
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    tool_turn, final = messages[1], messages[3]
    assert isinstance(tool_turn, AIMessage) and isinstance(final, AIMessage)
    assert tool_turn.id == "ai-tool-turn"
    assert tool_turn.tool_calls[0]["name"] == "get_weather"
    assert "aligner" not in tool_turn.response_metadata
    assert final.id == "ai-final"
    assert final.content == final_text
    return final


# --- the node in a graph ----------------------------------------------------------------------


def test_final_answer_corrected_in_place_tool_turns_untouched() -> None:
    backend = RecordingBackend()
    graph = build_graph(make_aligner_node(runnable(backend)))
    result = graph.invoke({"messages": [HumanMessage(QUESTION)]})
    final = assert_turns_ok(result["messages"])
    meta = final.response_metadata["aligner"]
    assert meta["status"] == "corrected"
    assert meta["original"] == DRAFT
    assert meta["model"] == "callable"
    json.dumps(meta)  # JSON-safe
    assert backend.questions == [QUESTION]  # one correction, the question is the human turn
    assert backend.entry == ["correct"]  # not streaming: one non-streaming call


async def test_async_path_uses_async_backend() -> None:
    backend = RecordingBackend()
    graph = build_graph(make_aligner_node(runnable(backend)))
    result = await graph.ainvoke({"messages": [HumanMessage(QUESTION)]})
    assert_turns_ok(result["messages"])
    assert backend.entry == ["acorrect"]


def test_chat_aligner_accepted_as_aligner() -> None:
    backend = RecordingBackend()
    graph = build_graph(make_aligner_node(ChatAligner(backend=backend)))
    final = assert_turns_ok(graph.invoke({"messages": [HumanMessage(QUESTION)]})["messages"])
    assert final.response_metadata["aligner"]["status"] == "corrected"
    assert final.response_metadata["aligner"]["original"] == DRAFT


def test_checkpointer_round_trip_keeps_metadata_and_one_message_per_turn() -> None:
    backend = RecordingBackend()
    graph = build_graph(make_aligner_node(runnable(backend)), checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "t1"}}
    graph.invoke({"messages": [HumanMessage(QUESTION)]}, config)
    # InMemorySaver serialises channel values, so this state went through the serializer.
    messages = graph.get_state(config).values["messages"]
    final = assert_turns_ok(messages)
    assert final.response_metadata["aligner"]["status"] == "corrected"
    assert final.response_metadata["aligner"]["original"] == DRAFT

    # A second turn on the same thread: the first answer is not corrected again.
    graph2 = build_graph(
        make_aligner_node(runnable(backend)),
        model=ScriptedChatModel(messages=iter([AIMessage(content="Bye now.", id="ai-2")])),
        checkpointer=graph.checkpointer,
    )
    graph2.invoke({"messages": [HumanMessage("Thanks!")]}, config)
    messages = graph2.get_state(config).values["messages"]
    assert len(messages) == 6
    assert [m.id for m in messages if isinstance(m, AIMessage)] == ["ai-tool-turn", "ai-final", "ai-2"]
    assert messages[3].content == FIXED
    assert messages[5].response_metadata["aligner"]["original"] == "Bye now."
    assert backend.questions == [QUESTION, "Thanks!"]


def test_history_turns_fold_earlier_turns_into_the_question() -> None:
    backend = RecordingBackend()
    node = make_aligner_node(runnable(backend), history_turns=2)
    update = node.invoke(
        {
            "messages": [
                HumanMessage("I live in Paris."),
                AIMessage("Nice city.", id="a1"),
                HumanMessage("Is it warm?"),
                AIMessage("Yes.", id="a2"),
            ]
        }
    )
    assert update["messages"][0].id == "a2"
    (question,) = backend.questions
    assert "I live in Paris." in question and "Nice city." in question and "Is it warm?" in question


def test_history_turns_default_to_the_aligners_own() -> None:
    backend = RecordingBackend()
    node = make_aligner_node(runnable(backend, history_turns=2))
    messages = [
        HumanMessage("I live in Paris."),
        AIMessage("Nice.", id="a1"),
        HumanMessage("Warm?"),
        AIMessage("Yes."),
    ]
    node.invoke({"messages": messages})
    (question,) = backend.questions
    assert "I live in Paris." in question and question.endswith("Warm?")


def test_no_update_for_tool_calls_empty_text_non_ai_and_skip() -> None:
    backend = RecordingBackend()
    node = make_aligner_node(runnable(backend), skip=lambda m: "secret" in m.text)
    tool_turn = AIMessage("", id="t", tool_calls=[{"name": "get_weather", "args": {}, "id": "c"}])
    with_text_and_tools = AIMessage(
        "Let me check.", id="t2", tool_calls=[{"name": "get_weather", "args": {}, "id": "c"}]
    )
    cases: list[list[BaseMessage]] = [
        [HumanMessage("hi"), tool_turn],
        [HumanMessage("hi"), with_text_and_tools],
        [HumanMessage("hi"), AIMessage("   ", id="e")],
        [HumanMessage("hi")],
        [],
        [HumanMessage("hi"), AIMessage("a secret answer", id="s")],
    ]
    for messages in cases:
        assert node.invoke({"messages": messages}) == {}
    already = runnable(backend).invoke({"question": "hi", "answer": AIMessage("x", id="done")})
    assert node.invoke({"messages": [HumanMessage("hi"), already]}) == {}  # never corrected twice
    assert backend.questions == ["hi"]


def test_custom_messages_key_and_pydantic_state() -> None:
    class State(BaseModel):
        chat: Annotated[list[BaseMessage], add_messages]

    node = make_aligner_node(runnable(), messages_key="chat", name="fix")
    builder = StateGraph(State)
    builder.add_node(node)
    builder.add_edge(START, "fix")
    builder.add_edge("fix", END)
    out = builder.compile().invoke({"chat": [HumanMessage("q"), AIMessage("draft", id="x")]})
    assert [m.id for m in out["chat"]] == [out["chat"][0].id, "x"]
    assert out["chat"][1].content == FIXED

    with pytest.raises(ValueError, match="messages_key"):
        make_aligner_node(runnable()).invoke({"chat": []})


def test_invalid_options_name_the_field() -> None:
    with pytest.raises(ValueError, match="on_failure"):
        make_aligner_node(runnable(), on_failure="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="history_turns"):
        make_aligner_node(runnable(), history_turns=-1)
    with pytest.raises(TypeError, match="aligner"):
        make_aligner_node("not an aligner")  # type: ignore[arg-type]


# --- routing ----------------------------------------------------------------------------------


def test_route_final_answer_and_custom_names() -> None:
    tool_turn = AIMessage("", tool_calls=[{"name": "get_weather", "args": {}, "id": "c"}])
    assert route_final_answer({"messages": [HumanMessage("q"), tool_turn]}) == "tools"
    assert route_final_answer({"messages": [HumanMessage("q"), AIMessage("a")]}) == "aligner"
    router = make_final_answer_router(tools="act", aligner="polish", messages_key="chat")
    assert router({"chat": [tool_turn]}) == "act"
    assert router({"chat": [AIMessage("a")]}) == "polish"
    with pytest.raises(ValueError, match="messages_key"):
        route_final_answer({"chat": []})


def test_works_after_tools_condition_graph() -> None:
    """A graph that uses tools_condition routes END through the aligner via a plain edge."""
    model = weather_script()

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_node("tools", ToolNode([get_weather]))
    builder.add_node("aligner", make_aligner_node(runnable()))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition, {"tools": "tools", END: "aligner"})
    builder.add_edge("tools", "model")
    builder.add_edge("aligner", END)
    assert_turns_ok(builder.compile().invoke({"messages": [HumanMessage(QUESTION)]})["messages"])


# --- streaming --------------------------------------------------------------------------------


def _aligner_chunks(parts: list[tuple[BaseMessage, dict[str, Any]]], node: str = "aligner") -> list[Any]:
    return [m for m, meta in parts if meta["langgraph_node"] == node]


def test_stream_messages_shows_corrected_tokens_with_original_id() -> None:
    backend = RecordingBackend()
    graph = build_graph(make_aligner_node(runnable(backend)))
    parts = list(graph.stream({"messages": [HumanMessage(QUESTION)]}, stream_mode="messages"))
    chunks = _aligner_chunks(parts)
    assert len(chunks) > 1, "the correction streams token by token"
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert {c.id for c in chunks} == {"ai-final"}
    assert "".join(c.text for c in chunks) == FIXED
    assert "stream" in backend.entry
    # The client also saw the draft, from the model node, under the same id.
    drafts = _aligner_chunks(parts, "model")
    assert "".join(c.text for c in drafts if c.id == "ai-final") == DRAFT


async def test_astream_messages_async() -> None:
    backend = RecordingBackend()
    graph = build_graph(make_aligner_node(runnable(backend)))
    parts = [p async for p in graph.astream({"messages": [HumanMessage(QUESTION)]}, stream_mode="messages")]
    chunks = _aligner_chunks(parts)
    assert "".join(c.text for c in chunks) == FIXED
    assert {c.id for c in chunks} == {"ai-final"}
    assert "astream" in backend.entry


async def test_astream_events_shows_the_correction_run() -> None:
    graph = build_graph(make_aligner_node(runnable()))
    events = [e async for e in graph.astream_events({"messages": [HumanMessage(QUESTION)]}, version="v2")]
    aligner_events = [e for e in events if e["metadata"].get("langgraph_node") == "aligner"]
    starts = [e for e in aligner_events if e["event"] == "on_chat_model_start"]
    assert [e["name"] for e in starts] == ["ChatAligner"]
    streamed = [e["data"]["chunk"].text for e in aligner_events if e["event"] == "on_chat_model_stream"]
    assert "".join(streamed) == FIXED
    (end,) = [e for e in aligner_events if e["event"] == "on_chat_model_end"]
    assert end["data"]["output"].id == "ai-final"


def test_stream_updates_mode_does_not_stream_the_correction() -> None:
    backend = RecordingBackend()
    graph = build_graph(make_aligner_node(runnable(backend)))
    updates = list(graph.stream({"messages": [HumanMessage(QUESTION)]}, stream_mode="updates"))
    (aligner_update,) = [u["aligner"] for u in updates if "aligner" in u]
    assert aligner_update["messages"][0].content == FIXED
    assert backend.entry == ["correct"]


def test_one_node_serves_streamed_and_plain_runs() -> None:
    backend = RecordingBackend()
    node = make_aligner_node(runnable(backend))
    list(build_graph(node).stream({"messages": [HumanMessage(QUESTION)]}, stream_mode="messages"))
    assert_turns_ok(build_graph(node).invoke({"messages": [HumanMessage(QUESTION)]})["messages"])
    assert backend.entry == ["stream", "correct"]


class TooLongBackend(RecordingBackend):
    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        return [CorrectionResult.skipped("too_long", "prompt exceeds the context") for _ in requests]

    def stream(self, request: CorrectionRequest) -> Iterator[str]:
        raise CorrectionFailed("too_long", "prompt exceeds the context")


@pytest.mark.parametrize("stream_mode", ["values", "messages"])
def test_too_long_is_skipped_not_failed_even_with_raise(stream_mode: str) -> None:
    graph = build_graph(make_aligner_node(runnable(TooLongBackend()), on_failure="raise"))
    *_, last = graph.stream({"messages": [HumanMessage(QUESTION)]}, stream_mode=[stream_mode, "values"])
    final = last[1]["messages"][-1]
    assert final.content == DRAFT
    assert final.response_metadata["aligner"]["status"] == "skipped"
    assert final.response_metadata["aligner"]["reason"] == "too_long"


# --- failure policy and interrupts ------------------------------------------------------------


def _boom(question: str, answer: str) -> str:
    raise RuntimeError("aligner server down")


def test_failure_passthrough_keeps_the_answer_and_flags_it() -> None:
    graph = build_graph(make_aligner_node(runnable(RecordingBackend(_boom))))
    final = assert_turns_ok(graph.invoke({"messages": [HumanMessage(QUESTION)]})["messages"], DRAFT)
    meta = final.response_metadata["aligner"]
    assert meta["status"] == "failed"
    assert meta["original"] == DRAFT
    assert meta["reason"]


def test_failure_passthrough_while_streaming_emits_the_original() -> None:
    graph = build_graph(make_aligner_node(runnable(RecordingBackend(_boom))))
    parts = list(graph.stream({"messages": [HumanMessage(QUESTION)]}, stream_mode="messages"))
    emitted = _aligner_chunks(parts)
    # The client gets the whole original answer back, flagged, so it can replace what it has.
    assert len(emitted) == 1
    assert emitted[0].id == "ai-final" and emitted[0].content == DRAFT
    assert emitted[0].response_metadata["aligner"]["status"] == "failed"


@pytest.mark.parametrize("aligner_on_failure", ["passthrough", "raise"])
def test_failure_raise_propagates(aligner_on_failure: str) -> None:
    aligner = runnable(RecordingBackend(_boom), on_failure=aligner_on_failure)
    graph = build_graph(make_aligner_node(aligner, on_failure="raise"))
    with pytest.raises(AlignerError):
        graph.invoke({"messages": [HumanMessage(QUESTION)]})


async def test_failure_raise_propagates_async_and_streaming() -> None:
    graph = build_graph(make_aligner_node(runnable(RecordingBackend(_boom)), on_failure="raise"))
    with pytest.raises(AlignerError):
        async for _ in graph.astream({"messages": [HumanMessage(QUESTION)]}, stream_mode="messages"):
            pass


class ReviewedBackend(CallableBackend):
    """Asks a human (interrupt) to approve each correction: the interrupt must reach the graph."""

    def __init__(self) -> None:
        super().__init__(lambda q, a: a)

    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        decision = interrupt({"proposed": FIXED})
        return [CorrectionResult.ok(FIXED if decision == "approve" else r.answer) for r in requests]


@pytest.mark.parametrize("use_async", [False, True])
async def test_interrupt_inside_the_correction_passes_through(use_async: bool) -> None:
    graph = build_graph(make_aligner_node(runnable(ReviewedBackend())), checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": f"review-{use_async}"}}
    start = {"messages": [HumanMessage(QUESTION)]}
    first = await graph.ainvoke(start, config) if use_async else graph.invoke(start, config)
    assert first["__interrupt__"][0].value == {"proposed": FIXED}
    assert graph.get_state(config).next == ("aligner",)
    resume = Command(resume="approve")
    done = await graph.ainvoke(resume, config) if use_async else graph.invoke(resume, config)
    final = assert_turns_ok(done["messages"])
    assert final.response_metadata["aligner"]["status"] == "corrected"


def test_interrupt_in_skip_predicate_passes_through() -> None:
    def ask(message: BaseMessage) -> bool:
        return bool(interrupt("skip this one?") == "yes")

    graph = build_graph(make_aligner_node(runnable(), skip=ask), checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "skip"}}
    assert "__interrupt__" in graph.invoke({"messages": [HumanMessage(QUESTION)]}, config)
    done = graph.invoke(Command(resume="yes"), config)
    assert done["messages"][-1].content == DRAFT
    assert "aligner" not in done["messages"][-1].response_metadata


class EscalatingBackend(CallableBackend):
    """Hands the conversation to the parent graph (a ``Command`` bubbling up) instead of correcting."""

    def __init__(self) -> None:
        super().__init__(lambda q, a: a)

    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        raise ParentCommand(Command(graph=Command.PARENT, goto="escalate"))


@pytest.mark.parametrize("use_async", [False, True])
async def test_command_to_parent_graph_passes_through(use_async: bool) -> None:
    """A ``Command`` raised inside the correction reaches the parent graph even with passthrough."""
    agent = build_graph(make_aligner_node(runnable(EscalatingBackend()), on_failure="passthrough"))

    def escalate(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage("A human will answer shortly.", id="human")]}

    parent = StateGraph(MessagesState)
    parent.add_node("agent", agent, destinations=("escalate",))
    parent.add_node("escalate", escalate)
    parent.add_edge(START, "agent")
    parent.add_edge("agent", END)
    graph = parent.compile()
    start = {"messages": [HumanMessage(QUESTION)]}
    result = await graph.ainvoke(start) if use_async else graph.invoke(start)
    assert result["messages"][-1].id == "human"
    assert all("aligner" not in m.response_metadata for m in result["messages"])
