"""AlignedChatModel with scripted upstreams and rule Aligners: what a drop-in chat model must do.

Agents (``create_agent``) and a hand-built LangGraph graph run for real; the upstream is a scripted
tool-calling chat model that records what it was called with, the Aligner a ``CallableBackend``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.structured_output import ProviderStrategy
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableBinding
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.graph import END, START, MessagesState, StateGraph
from pydantic import BaseModel, Field

from aligner_chain import AlignedChatModel, AlignerError, AlignerRunnable
from aligner_chain.backends import CallableBackend, CorrectionRequest

ANSWER = "The capital of France is Rome. Paris has 2 million people. It rains in Rome."
FIXED = "The capital of France is Paris. Paris has 2 million people. It rains in Rome."
USAGE = UsageMetadata(input_tokens=7, output_tokens=15, total_tokens=22)


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}."


class Weather(BaseModel):
    city: str = Field(description="the city")
    degrees: float


class Scripted(BaseChatModel):
    """A tool-calling chat model that answers from a script and records every call.

    With tools bound and a human message last it calls the first tool (the one ``tool_choice``
    names, when it names one); with ``response_format`` it answers JSON; else it answers ``answer``.
    ``_stream`` streams text word by word (usage and metadata on the last chunk), tool calls whole.
    """

    answer: str = ANSWER
    arguments: dict[str, Any] = Field(default_factory=lambda: {"city": "Paris"})
    json_answer: dict[str, Any] = Field(default_factory=lambda: {"city": "Oslo", "degrees": 3.0})
    calls: list[dict[str, Any]] = Field(default_factory=list)
    gate: Any = None  # a threading.Event the stream waits on once its first sentence is complete

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Any:
        formatted = [convert_to_openai_tool(t) for t in tools]
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def _reply(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> AIMessage:
        self.calls.append({**kwargs, **({"stop": stop} if stop else {})})
        tools = kwargs.get("tools") or []
        if tools and not isinstance(messages[-1], ToolMessage):
            names = [t["function"]["name"] for t in tools]
            choice = kwargs.get("tool_choice")
            name = choice if choice in names else names[0]
            args = self.json_answer if name == "Weather" else self.arguments
            return AIMessage("", id="ai-tools", tool_calls=[{"name": name, "args": args, "id": "call-1"}])
        if kwargs.get("response_format"):
            return AIMessage(json.dumps(self.json_answer), id="ai-json")
        return AIMessage(
            self.answer,
            id="ai-answer",
            usage_metadata=USAGE,
            response_metadata={"model_name": "scripted-1", "finish_reason": "stop"},
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages, stop, kwargs))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        message = self._reply(messages, stop, kwargs)
        if message.tool_calls:
            calls = [
                {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": 0}
                for c in message.tool_calls
            ]
            yield ChatGenerationChunk(
                message=AIMessageChunk(content="", id=message.id, tool_call_chunks=calls)
            )
            return
        words = message.text.split(" ")
        for i, word in enumerate(words):
            if self.gate is not None and word == "2":  # the first sentence is complete before it
                assert self.gate.wait(5), "the first sentence never came out while the upstream wrote"
            last = i == len(words) - 1
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=word if i == 0 else " " + word,
                    id=message.id,
                    usage_metadata=message.usage_metadata if last else None,
                    response_metadata=message.response_metadata if last else {},
                )
            )


def rome_to_paris_sentences(question: str, sentence: str, prefix: str) -> str:
    return sentence.replace("capital of France is Rome", "capital of France is Paris")


def rome_to_paris(question: str, answer: str) -> str:
    return answer.replace("capital of France is Rome", "capital of France is Paris")


class WordStreaming(CallableBackend):
    """A whole-answer rule Aligner that streams its correction word by word (and can fail late)."""

    def __init__(self, fn: Any = rome_to_paris, fail_after: int | None = None) -> None:
        super().__init__(fn)
        self.fail_after = fail_after
        self.requests: list[CorrectionRequest] = []

    def stream(self, request: CorrectionRequest) -> Iterator[str]:
        self.requests.append(request)
        words = self._fn(request.question, request.answer).split(" ")
        for i, word in enumerate(words):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("the Aligner broke")
            yield word if i == 0 else " " + word

    async def astream(self, request: CorrectionRequest) -> AsyncIterator[str]:
        for piece in self.stream(request):
            yield piece


def sentence_aligner(**options: Any) -> AlignerRunnable:
    return AlignerRunnable(
        backend=CallableBackend(rome_to_paris_sentences, granularity="sentence"), **options
    )


def whole_aligner(**options: Any) -> AlignerRunnable:
    return AlignerRunnable(backend=WordStreaming(), **options)


@pytest.fixture(params=["sentence", "answer"])
def aligner(request: pytest.FixtureRequest) -> AlignerRunnable:
    return sentence_aligner() if request.param == "sentence" else whole_aligner()


@pytest.fixture
def upstream() -> Scripted:
    return Scripted(calls=[])


# --- answers ------------------------------------------------------------------------------------


def test_invoke_corrects_and_keeps_the_upstreams_message_fields(upstream: Scripted, aligner: AlignerRunnable):
    model = AlignedChatModel(upstream, aligner)
    answer = model.invoke("What is the capital of France?")
    assert answer.text == FIXED
    assert answer.id == "ai-answer"
    assert answer.usage_metadata == USAGE
    assert answer.response_metadata["model_name"] == "scripted-1"
    assert answer.response_metadata["finish_reason"] == "stop"
    report = answer.response_metadata["aligner"]
    assert report["status"] == "corrected" and report["original"] == ANSWER
    if aligner.get_backend().granularity == "sentence":
        assert [s["status"] for s in report["sentences"]] == ["corrected", "unchanged", "unchanged"]


def test_stream_and_invoke_give_the_same_message(upstream: Scripted, aligner: AlignerRunnable):
    model = AlignedChatModel(upstream, aligner)
    chunks = list(model.stream("What is the capital of France?"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert chunks[-1].chunk_position == "last"
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    invoked = model.invoke("What is the capital of France?")
    assert total.text == invoked.text == FIXED
    assert total.usage_metadata == USAGE
    assert total.response_metadata["aligner"] == invoked.response_metadata["aligner"]
    assert {c.id for c in chunks} == {"ai-answer"}
    assert sum(1 for c in chunks if c.usage_metadata) == 1


def test_sentences_stream_one_by_one_while_the_upstream_still_writes(upstream: Scripted):
    """The upstream waits after its first sentence until the client has the corrected first
    sentence: only a model that corrects and streams sentence by sentence gets past it."""
    upstream.gate = threading.Event()
    model = AlignedChatModel(upstream, sentence_aligner())
    texts = []
    for chunk in model.stream("What is the capital of France?"):
        texts.append(chunk.text)
        if chunk.text:
            upstream.gate.set()
    assert texts == [
        "The capital of France is Paris.",
        " Paris has 2 million people.",
        " It rains in Rome.",
        "",
    ]


def test_the_upstream_keeps_writing_while_a_sentence_is_corrected(upstream: Scripted):
    """The Aligner holds the first sentence until the upstream has written the third: the upstream
    is read ahead while the Aligner works."""
    written: list[str] = []
    third_written = threading.Event()

    def slow_fix(question: str, sentence: str, prefix: str) -> str:
        if not prefix:
            assert third_written.wait(5), "the upstream stopped while the Aligner worked"
        return rome_to_paris_sentences(question, sentence, prefix)

    class Watched(Scripted):
        def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
            for chunk in super()._stream(*args, **kwargs):
                written.append(chunk.text)
                if "rains" in "".join(written):
                    third_written.set()
                yield chunk

    aligner = AlignerRunnable(backend=CallableBackend(slow_fix, granularity="sentence"))
    assert AlignedChatModel(Watched(calls=[]), aligner).invoke("q", stream=True).text == FIXED


async def test_async_twins(upstream: Scripted, aligner: AlignerRunnable):
    model = AlignedChatModel(upstream, aligner)
    assert (await model.ainvoke("What is the capital of France?")).text == FIXED
    pieces = [c.text async for c in model.astream("What is the capital of France?")]
    assert "".join(pieces) == FIXED
    streamed = [
        event["data"]["chunk"].text
        async for event in model.astream_events("What is the capital of France?", version="v2")
        if event["event"] == "on_chat_model_stream" and event["name"] == "AlignedChatModel"
    ]
    assert "".join(streamed) == FIXED


def test_the_question_is_the_last_human_message_with_history_per_the_aligner(upstream: Scripted):
    seen: list[str] = []

    def record(question: str, answer: str) -> str:
        seen.append(question)
        return answer

    aligner = AlignerRunnable(backend=CallableBackend(record), history_turns=2)
    conversation = [
        HumanMessage("Hi, I am Ann."),
        AIMessage("Hello Ann."),
        HumanMessage("Capital of France?"),
    ]
    AlignedChatModel(upstream, aligner).invoke(conversation)
    assert seen == [
        "Conversation so far:\nUser: Hi, I am Ann.\nAssistant: Hello Ann.\n"
        "Current question: Capital of France?"
    ]


# --- batch --------------------------------------------------------------------------------------


def test_batch_makes_one_aligner_call(upstream: Scripted):
    backend = WordStreaming()
    model = AlignedChatModel(upstream, AlignerRunnable(backend=backend))
    answers = model.batch(["a", "b", "c"])
    assert [a.text for a in answers] == [FIXED] * 3
    assert backend.calls == [3]
    tools = model.bind_tools([get_weather]).batch(["weather?", "weather?"])
    assert all(a.tool_calls and "aligner" not in a.response_metadata for a in tools)
    assert backend.calls == [3]  # tool calls never reach the Aligner


async def test_sentence_level_batch_makes_one_call_per_sentence_round(upstream: Scripted):
    backend = CallableBackend(rome_to_paris_sentences, granularity="sentence")
    model = AlignedChatModel(upstream, AlignerRunnable(backend=backend))
    assert [a.text for a in await model.abatch(["a", "b"])] == [FIXED, FIXED]
    assert backend.calls == [2, 2, 2]


def test_batch_returns_exceptions_per_input(upstream: Scripted):
    model = AlignedChatModel(upstream, sentence_aligner(on_failure="raise"))
    broken = AlignerRunnable(
        backend=CallableBackend(lambda q, s, p: 1 / 0 if "Rome" in s else s, granularity="sentence"),
        on_failure="raise",
    )
    out = AlignedChatModel(upstream, broken).batch(["a"], return_exceptions=True)
    assert isinstance(out[0], AlignerError)
    assert model.batch(["a"])[0].text == FIXED


# --- tools and structured output ----------------------------------------------------------------


def test_bind_tools_binds_the_upstream_and_tool_turns_are_untouched(
    upstream: Scripted, aligner: AlignerRunnable
):
    model = AlignedChatModel(upstream, aligner)
    bound = model.bind_tools([get_weather], tool_choice="get_weather")
    assert isinstance(bound, RunnableBinding) and bound.bound is model
    assert bound.kwargs["tools"][0]["function"]["name"] == "get_weather"  # LangGraph reads this
    turn = bound.invoke("Weather in Paris?")
    assert turn.tool_calls[0]["args"] == {"city": "Paris"} and turn.id == "ai-tools"
    assert "aligner" not in turn.response_metadata
    assert upstream.calls[-1]["tool_choice"] == "get_weather"
    streamed = list(bound.stream("Weather in Paris?"))
    total = streamed[0]
    for chunk in streamed[1:]:
        total += chunk
    assert total.tool_calls[0]["args"] == {"city": "Paris"} and not total.text


def test_a_model_without_tool_calling_says_so_when_binding():
    model = AlignedChatModel(GenericFakeChatModel(messages=iter([])), sentence_aligner())
    with pytest.raises(NotImplementedError, match="does not support tool calling"):
        model.bind_tools([get_weather])


def test_with_structured_output_is_the_upstreams_and_not_rewritten(upstream: Scripted):
    model = AlignedChatModel(upstream, whole_aligner())
    assert model.with_structured_output(Weather).invoke("Weather in Oslo?") == Weather(city="Oslo", degrees=3)
    raw = model.with_structured_output(Weather, include_raw=True).invoke("Weather in Oslo?")
    assert raw["parsed"] == Weather(city="Oslo", degrees=3)
    assert raw["raw"].response_metadata["aligner"]["status"] == "skipped"
    assert raw["raw"].response_metadata["aligner"]["reason"] == "structured_output"


def test_a_response_format_answer_is_not_rewritten(upstream: Scripted, aligner: AlignerRunnable):
    upstream.json_answer = {"city": "Rome", "note": "The capital of France is Rome."}
    model = AlignedChatModel(upstream, aligner).bind(response_format={"type": "json_object"})
    for answer in (model.invoke("q"), _sum(model.stream("q"))):
        assert json.loads(answer.text) == upstream.json_answer
        assert answer.response_metadata["aligner"]["reason"] == "structured_output"


# --- agents and graphs --------------------------------------------------------------------------


def test_create_agent_corrects_the_final_answer_and_leaves_tool_turns(
    upstream: Scripted, aligner: AlignerRunnable
):
    agent = create_agent(model=AlignedChatModel(upstream, aligner), tools=[get_weather])
    out = agent.invoke({"messages": [HumanMessage("What is the capital of France?")]})
    kinds = [type(m).__name__ for m in out["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert out["messages"][1].tool_calls and "aligner" not in out["messages"][1].response_metadata
    assert out["messages"][-1].text == FIXED
    assert upstream.calls[0]["tools"][0]["function"]["name"] == "get_weather"


def test_create_agent_streams_corrected_tokens_under_the_model_node(
    upstream: Scripted, aligner: AlignerRunnable
):
    agent = create_agent(model=AlignedChatModel(upstream, aligner), tools=[get_weather])
    parts = list(agent.stream({"messages": [HumanMessage("Capital?")]}, stream_mode="messages"))
    model_text = "".join(m.text for m, meta in parts if meta["langgraph_node"] == "model")
    assert model_text == FIXED  # the tool turn has no text; the raw answer never shows
    assert "Rome. Paris" not in model_text


def test_create_agent_provider_strategy_answer_is_not_rewritten(upstream: Scripted):
    upstream.json_answer = {"city": "Rome", "degrees": 21.5}
    agent = create_agent(
        model=AlignedChatModel(upstream, whole_aligner()), response_format=ProviderStrategy(Weather)
    )
    out = agent.invoke({"messages": [HumanMessage("Weather in Rome?")]})
    assert out["structured_response"] == Weather(city="Rome", degrees=21.5)
    assert upstream.calls[-1]["response_format"]["type"] == "json_schema"


async def test_a_hand_built_graph_streams_corrected_tokens(upstream: Scripted, aligner: AlignerRunnable):
    model = AlignedChatModel(upstream, aligner)

    async def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_edge(START, "model")
    builder.add_edge("model", END)
    graph = builder.compile()
    parts = [p async for p in graph.astream({"messages": [HumanMessage("Capital?")]}, stream_mode="messages")]
    assert len(parts) > 1
    assert "".join(m.text for m, meta in parts if meta["langgraph_node"] == "model") == FIXED
    final = await graph.ainvoke({"messages": [HumanMessage("Capital?")]})
    assert final["messages"][-1].text == FIXED


def test_the_capability_profile_is_the_upstreams(upstream: Scripted):
    upstream.profile = {"structured_output": True, "tool_calling": True}
    assert AlignedChatModel(upstream, whole_aligner()).profile == upstream.profile


# --- failures -----------------------------------------------------------------------------------


def test_a_whole_answer_correction_failing_before_its_first_token_streams_the_original(upstream: Scripted):
    model = AlignedChatModel(upstream, AlignerRunnable(backend=WordStreaming(fail_after=0)))
    total = _sum(model.stream("q"))
    assert total.text == ANSWER
    assert total.response_metadata["aligner"]["status"] == "failed"
    raising = AlignedChatModel(
        upstream, AlignerRunnable(backend=WordStreaming(fail_after=0), on_failure="raise")
    )
    with pytest.raises(AlignerError):
        list(raising.stream("q"))


def test_a_whole_answer_correction_failing_after_its_first_token_raises(upstream: Scripted):
    model = AlignedChatModel(upstream, AlignerRunnable(backend=WordStreaming(fail_after=3)))
    with pytest.raises(AlignerError, match="after it began streaming"):
        list(model.stream("q"))


def test_a_failed_sentence_streams_as_written_and_is_flagged(upstream: Scripted):
    def flaky(question: str, sentence: str, prefix: str) -> str:
        if sentence.startswith("Paris"):
            raise RuntimeError("no")
        return rome_to_paris_sentences(question, sentence, prefix)

    model = AlignedChatModel(
        upstream, AlignerRunnable(backend=CallableBackend(flaky, granularity="sentence"))
    )
    total = _sum(model.stream("q"))
    assert total.text == FIXED  # the failed sentence was right as written
    report = total.response_metadata["aligner"]
    assert report["status"] == "corrected"
    assert [s["status"] for s in report["sentences"]] == ["corrected", "failed", "unchanged"]
    assert report["sentences"][1]["reason"] == "backend_error"


# --- construction -------------------------------------------------------------------------------


def test_unknown_arguments_are_refused_and_call_options_reach_the_upstream(upstream: Scripted):
    with pytest.raises(TypeError, match=r"'aligenr'.*did you mean 'aligner'"):
        AlignedChatModel(upstream=upstream, aligenr=whole_aligner())
    with pytest.raises(TypeError, match=r"transport|timeout"):
        AlignedChatModel(upstream, whole_aligner(), timeout=3)
    with pytest.raises(TypeError, match="BaseChatModel"):
        AlignedChatModel("gpt-4o", whole_aligner())  # type: ignore[arg-type]
    model = AlignedChatModel(upstream, whole_aligner(), temperature=0.2, max_tokens=50, stop=["\n\n"])
    model.invoke("q")
    assert upstream.calls[-1] == {"temperature": 0.2, "max_tokens": 50, "stop": ["\n\n"]}
    params = model._get_ls_params()
    assert params["ls_temperature"] == 0.2 and params["ls_max_tokens"] == 50 and params["ls_stop"] == ["\n\n"]


def _sum(chunks: Iterator[AIMessageChunk]) -> AIMessageChunk:
    total: AIMessageChunk | None = None
    for chunk in chunks:
        total = chunk if total is None else total + chunk
    assert total is not None
    return total
