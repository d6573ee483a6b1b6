"""AlignerRunnable and with_aligner with LangChain's fake chat models and a weight-free backend."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

import aligner_chain
from aligner_chain import AlignerError, AlignerRunnable, CallableBackend, CorrectionFailed, with_aligner
from aligner_chain.backends import CorrectionRequest, CorrectionResult

QUESTION = "How do I boil an egg?"
DRAFT = "Put it in water. Wait a bit."
USAGE: UsageMetadata = {"input_tokens": 7, "output_tokens": 9, "total_tokens": 16}
CALL = {"name": "search", "args": {"q": "eggs"}, "id": "call-1"}
IMAGE: dict[str, Any] = {"type": "image_url", "image_url": {"url": "https://example.com/egg.png"}}


def fix(question: str, answer: str) -> str:
    return f"{answer.upper()} [for: {question}]"


class Recording(CallableBackend):
    """CallableBackend that also records the requests of each call (sync and async)."""

    def __init__(self, fn: Any = fix) -> None:
        super().__init__(fn)
        self.requests: list[list[CorrectionRequest]] = []
        self.entry: list[str] = []

    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        self.entry.append("correct")
        self.requests.append(list(requests))
        return super().correct(requests)

    async def acorrect(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        self.entry.append("acorrect")
        self.requests.append(list(requests))
        return super().correct(requests)

    @property
    def questions(self) -> list[str]:
        return [r.question for batch in self.requests for r in batch]


class Scripted(Recording):
    """Answers per request from a fixed result (for skipped / failed results)."""

    def __init__(self, result: CorrectionResult) -> None:
        super().__init__()
        self.result = result

    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        self.requests.append(list(requests))
        return [self.result for _ in requests]

    async def acorrect(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        return self.correct(requests)


class Broken(Recording):
    """A backend whose whole batch fails (e.g. the model cannot be loaded)."""

    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        self.requests.append(list(requests))
        raise OSError("could not load the Aligner weights")

    async def acorrect(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        return self.correct(requests)


def aligner(backend: Recording | None = None, **kwargs: Any) -> AlignerRunnable:
    return AlignerRunnable(backend=backend or Recording(), **kwargs)


def draft(**kwargs: Any) -> AIMessage:
    return AIMessage(DRAFT, id="ai-1", **kwargs)


def meta_of(message: BaseMessage) -> dict[str, Any]:
    meta = message.response_metadata["aligner"]
    json.dumps(meta)  # always JSON-safe
    return dict(meta)


def total(chunks: list[Any]) -> Any:
    out = chunks[0]
    for chunk in chunks[1:]:
        out = out + chunk
    return out


class Events(BaseCallbackHandler):
    """Records chain starts (name, tags) and errors."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, list[str]]] = []
        self.errors: list[BaseException] = []

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self.starts.append((kwargs.get("name") or "", list(kwargs.get("tags") or [])))

    def on_chain_error(self, error: BaseException, **kwargs: Any) -> None:
        self.errors.append(error)


# --- the answer message ------------------------------------------------------------------------


def test_message_in_message_out_with_every_field_kept() -> None:
    backend = Recording()
    original = draft(
        name="chef",
        usage_metadata=USAGE,
        response_metadata={"model_name": "upstream-1", "finish_reason": "stop"},
        additional_kwargs={"refusal": None},
    )
    out = aligner(backend).invoke({"question": QUESTION, "answer": original})
    assert type(out) is AIMessage
    assert out.content == fix(QUESTION, DRAFT)
    assert (out.id, out.name, out.usage_metadata, out.additional_kwargs) == (
        "ai-1",
        "chef",
        USAGE,
        {"refusal": None},
    )
    assert out.response_metadata["model_name"] == "upstream-1"
    assert out.response_metadata["finish_reason"] == "stop"
    assert meta_of(out) == {
        "status": "corrected",
        "original": DRAFT,
        "model": "callable",
        "template": "none",
    }
    assert original.content == DRAFT and "aligner" not in original.response_metadata  # not mutated
    assert backend.requests == [[CorrectionRequest(QUESTION, DRAFT)]]


def test_str_in_str_out_and_chunk_in_message_out() -> None:
    assert aligner().invoke("plain answer") == fix("", "plain answer")
    out = aligner().invoke(AIMessageChunk(content="chunky", id="c1", usage_metadata=USAGE))
    assert type(out) is AIMessage
    assert (out.content, out.id, out.usage_metadata) == (fix("", "chunky"), "c1", USAGE)


def test_question_from_config_or_dict_else_empty() -> None:
    backend = Recording()
    runnable = aligner(backend)
    runnable.invoke(draft(), {"configurable": {"aligner_question": "from config"}})
    runnable.invoke(
        {"question": "from dict", "answer": draft()}, {"configurable": {"aligner_question": "no"}}
    )
    runnable.invoke({"question": HumanMessage("a message"), "answer": DRAFT})
    runnable.invoke(draft())
    assert backend.questions == ["from config", "from dict", "a message", ""]


def test_history_turns_fold_the_dict_history() -> None:
    backend = Recording()
    history = [
        HumanMessage("I am vegan."),
        AIMessage("Noted."),
        HumanMessage("Ignored turn"),
        AIMessage("ok"),
    ]
    aligner(backend, history_turns=2).invoke({"question": QUESTION, "answer": DRAFT, "history": history[:2]})
    aligner(backend).invoke({"question": QUESTION, "answer": DRAFT, "history": history})
    folded, plain = backend.questions
    assert "I am vegan." in folded and "Noted." in folded and QUESTION in folded
    assert plain == QUESTION  # history_turns=0: the question alone


def test_unchanged_when_the_aligner_keeps_the_answer() -> None:
    out = aligner(Recording(lambda q, a: "  " + a + "\n")).invoke(draft())
    assert out.content == DRAFT
    assert meta_of(out)["status"] == "unchanged"


def test_list_content_keeps_non_text_blocks() -> None:
    content: list[Any] = [{"type": "text", "text": "Boil "}, IMAGE, {"type": "text", "text": "it."}]
    backend = Recording(lambda q, a: "Boil it for 8 minutes.")
    out = aligner(backend).invoke(AIMessage(content=content, id="m"))
    assert out.content == [{"type": "text", "text": "Boil it for 8 minutes."}, IMAGE]
    assert backend.requests[0][0].answer == "Boil it."
    assert meta_of(out)["original"] == "Boil it."


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (AIMessage("Let me search.", id="t", tool_calls=[CALL]), "tool_calls"),
        (
            AIMessage(
                "x", id="t", invalid_tool_calls=[{"name": "s", "args": "{", "id": "1", "error": "json"}]
            ),
            "invalid_tool_calls",
        ),
        (AIMessage("   ", id="t"), "empty"),
        (AIMessage(content=[IMAGE], id="t"), "no_text_block"),
        (AIMessage("the secret recipe", id="t"), "skip_predicate"),
    ],
)
def test_skipped_untouched(message: AIMessage, reason: str) -> None:
    backend = Recording()
    out = aligner(backend, skip=lambda m: "secret" in m.text).invoke(message)
    assert out.content == message.content
    assert out.tool_calls == message.tool_calls
    assert out.invalid_tool_calls == message.invalid_tool_calls
    assert out.id == "t"
    meta = meta_of(out)
    assert (meta["status"], meta["reason"], meta["original"]) == ("skipped", reason, message.text)
    assert backend.requests == []  # never sent to the Aligner


def test_streamed_tool_call_chunks_are_skipped() -> None:
    chunk = AIMessageChunk(
        content="", tool_call_chunks=[{"name": "s", "args": '{"q": 1}', "id": "c", "index": 0}]
    )
    out = aligner().invoke(chunk)
    assert meta_of(out)["status"] == "skipped"
    assert out.tool_calls == [{"name": "s", "args": {"q": 1}, "id": "c", "type": "tool_call"}]
    stripped = chunk.model_copy(update={"tool_calls": []})  # only the raw chunks left
    assert meta_of(aligner().invoke(stripped))["reason"] == "tool_call_chunks"


def test_empty_str_answer_is_skipped() -> None:
    backend = Recording()
    assert aligner(backend).invoke("  ") == "  "
    assert backend.requests == []


def test_too_long_is_a_skip_even_with_raise() -> None:
    backend = Scripted(CorrectionResult.skipped("too_long", "prompt exceeds the context"))
    out = aligner(backend, on_failure="raise").invoke(draft())
    assert out.content == DRAFT
    assert meta_of(out)["status"] == "skipped" and meta_of(out)["reason"] == "too_long"


# --- failure policies ---------------------------------------------------------------------------


def test_passthrough_keeps_the_original_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    backend = Scripted(CorrectionResult.failed("truncated", "no EOS within max_new_tokens"))
    with caplog.at_level(logging.WARNING, logger="aligner_chain.runnable"):
        out = aligner(backend).invoke(draft(usage_metadata=USAGE))
    assert (out.content, out.id, out.usage_metadata) == (DRAFT, "ai-1", USAGE)
    meta = meta_of(out)
    assert (meta["status"], meta["reason"], meta["original"]) == ("failed", "truncated", DRAFT)
    assert "truncated" in caplog.text
    assert aligner(backend).invoke(DRAFT) == DRAFT


def test_raise_chains_the_cause() -> None:
    backend = Scripted(CorrectionResult.failed("truncated", "no EOS"))
    with pytest.raises(AlignerError, match="truncated") as info:
        aligner(backend, on_failure="raise").invoke(draft())
    assert isinstance(info.value.__cause__, CorrectionFailed)
    assert info.value.__cause__.reason == "truncated"


def test_whole_backend_failure_both_policies() -> None:
    out = aligner(Broken()).invoke(draft())
    assert out.content == DRAFT
    assert meta_of(out)["status"] == "failed" and meta_of(out)["reason"] == "backend_error"
    assert "could not load" in meta_of(out)["detail"]
    with pytest.raises(AlignerError) as info:
        aligner(Broken(), on_failure="raise").invoke(draft())
    assert isinstance(info.value.__cause__, OSError)


def test_per_request_exception_and_empty_correction_fail() -> None:
    def picky(question: str, answer: str) -> str:
        if "boom" in answer:
            raise RuntimeError("out of memory")
        return "   "

    outs = aligner(Recording(picky)).batch([AIMessage("boom"), AIMessage("fine")])
    assert [meta_of(o)["reason"] for o in outs] == ["backend_error", "empty_correction"]
    assert [o.content for o in outs] == ["boom", "fine"]


# --- batch --------------------------------------------------------------------------------------


def test_batch_is_one_backend_call_in_order() -> None:
    backend = Recording()
    inputs: list[Any] = [
        "first",
        AIMessage("", tool_calls=[CALL]),  # skipped: not sent
        {"question": "q3", "answer": AIMessage("third", id="3")},
        AIMessage("fourth", id="4"),
        "fifth",
    ]
    configs: list[Any] = [{"configurable": {"aligner_question": f"cfg{i}"}} for i in range(5)]
    outs = aligner(backend).batch(inputs, configs)
    assert backend.calls == [4]
    assert backend.questions == ["cfg0", "q3", "cfg3", "cfg4"]
    assert outs[0] == fix("cfg0", "first")
    assert meta_of(outs[1])["status"] == "skipped"
    assert (outs[2].id, outs[2].content) == ("3", fix("q3", "third"))
    assert (outs[3].id, outs[3].content) == ("4", fix("cfg3", "fourth"))
    assert outs[4] == fix("cfg4", "fifth")


def test_batch_return_exceptions() -> None:
    def fn(question: str, answer: str) -> str:
        if answer == "bad":
            raise RuntimeError("nope")
        return answer + "!"

    backend = Recording(fn)
    runnable = aligner(backend, on_failure="raise")
    outs = runnable.batch(["ok", 42, "bad", "ok2"], return_exceptions=True)
    assert outs[0] == "ok!" and outs[3] == "ok2!"
    assert isinstance(outs[1], TypeError) and "AlignerRunnable takes" in str(outs[1])
    assert isinstance(outs[2], AlignerError)
    assert backend.calls == [3]
    with pytest.raises(TypeError):
        runnable.batch(["ok", 42])
    assert runnable.batch([]) == []


async def test_abatch_is_one_async_backend_call() -> None:
    backend = Recording()
    outs = await aligner(backend).abatch(["a", "b", 3], return_exceptions=True)
    assert outs[:2] == [fix("", "a"), fix("", "b")] and isinstance(outs[2], TypeError)
    assert backend.entry == ["acorrect"] and backend.calls == [2]
    with pytest.raises(AlignerError):
        await aligner(Broken(), on_failure="raise").abatch(["a"])


# --- tracing and async --------------------------------------------------------------------------


def test_every_call_is_a_traced_run() -> None:
    events = Events()
    runnable = aligner()
    runnable.invoke("x", {"callbacks": [events], "tags": ["t1"], "run_name": "fixer"})
    runnable.batch(["a", "b"], {"callbacks": [events]})
    list(runnable.stream("s", {"callbacks": [events]}))
    assert events.starts == [("fixer", ["t1"])] + [("AlignerRunnable", [])] * 3
    with pytest.raises(AlignerError):
        aligner(Broken(), on_failure="raise").invoke("x", {"callbacks": [events]})
    assert len(events.errors) == 1


async def test_async_twins() -> None:
    backend = Recording()
    runnable = aligner(backend)
    out = await runnable.ainvoke({"question": QUESTION, "answer": draft()})
    assert out.content == fix(QUESTION, DRAFT)
    message = await runnable.acorrect_message(draft(), QUESTION, [HumanMessage("hi")])
    assert message.id == "ai-1" and meta_of(message)["status"] == "corrected"
    chunks = [c async for c in runnable.astream(draft())]
    assert total(chunks).content == fix("", DRAFT)
    assert backend.entry == ["acorrect", "acorrect", "acorrect"]
    with pytest.raises(AlignerError):
        await aligner(Broken(), on_failure="raise").ainvoke("x")


def test_correct_message_for_graph_code() -> None:
    backend = Recording()
    out = aligner(backend, history_turns=1).correct_message(
        draft(), QUESTION, [("user", "I like runny yolks")]
    )
    assert isinstance(out, AIMessage) and out.id == "ai-1"
    assert "runny" in backend.questions[0]


# --- streaming ----------------------------------------------------------------------------------


def fake_llm(*texts: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(t) for t in texts]))


def test_stream_after_a_chat_model_buffers_then_emits_with_metadata_once() -> None:
    backend = Recording()
    chain = fake_llm(DRAFT) | aligner(backend)
    chunks = list(chain.stream(QUESTION, {"configurable": {"aligner_question": QUESTION}}))
    assert len(chunks) > 1 and all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id  # the upstream message's id
    assert sum("aligner" in c.response_metadata for c in chunks) == 1
    merged = total(chunks)
    assert merged.content == fix(QUESTION, DRAFT)
    assert meta_of(merged) == {
        "status": "corrected",
        "original": DRAFT,
        "model": "callable",
        "template": "none",
    }
    assert backend.requests == [[CorrectionRequest(QUESTION, DRAFT)]]  # the whole upstream answer, once


def test_stream_keeps_usage_and_tool_calls_once() -> None:
    chunks = list(aligner().stream(draft(usage_metadata=USAGE)))
    assert total(chunks).usage_metadata == USAGE
    tool_turn = AIMessage("Searching.", id="t", tool_calls=[CALL], usage_metadata=USAGE)
    chunks = list(aligner().stream(tool_turn))
    merged = total(chunks)
    assert merged.tool_calls == tool_turn.tool_calls and merged.usage_metadata == USAGE
    assert meta_of(merged)["status"] == "skipped" and merged.content == "Searching."


def test_stream_list_content_and_str_chains() -> None:
    content: list[Any] = [{"type": "text", "text": "draft"}, IMAGE]
    chunks = list(aligner(Recording(lambda q, a: "fixed")).stream(AIMessage(content=content, id="x")))
    assert total(chunks).content == [{"type": "text", "text": "fixed"}, IMAGE]
    pieces = list((fake_llm(DRAFT) | StrOutputParser() | aligner()).stream("q"))
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == fix("", DRAFT)


def test_stream_failure_policies() -> None:
    chunks = list((fake_llm(DRAFT) | aligner(Broken())).stream("q"))
    assert total(chunks).content == DRAFT and meta_of(total(chunks))["status"] == "failed"
    with pytest.raises(AlignerError):
        list((fake_llm(DRAFT) | aligner(Broken(), on_failure="raise")).stream("q"))


async def test_astream_events_show_the_aligner_run() -> None:
    chain = fake_llm(DRAFT) | aligner()
    events = [e async for e in chain.astream_events(QUESTION, version="v2")]
    mine = [e for e in events if e["name"] == "AlignerRunnable"]
    assert mine[0]["event"] == "on_chain_start" and mine[-1]["event"] == "on_chain_end"
    streamed = [e["data"]["chunk"] for e in mine if e["event"] == "on_chain_stream"]
    assert total(streamed).content == fix("", DRAFT)
    assert meta_of(mine[-1]["data"]["output"])["status"] == "corrected"


# --- with_aligner -------------------------------------------------------------------------------


def test_with_aligner_sees_the_question_for_each_input_form() -> None:
    backend = Recording()
    llm = FakeMessagesListChatModel(responses=[AIMessage(DRAFT, id="up")] * 10)
    chain = with_aligner(llm, aligner(backend))
    prompt = ChatPromptTemplate.from_messages([("system", "You cook."), ("human", "Recipe for {dish}?")])
    outs = [
        chain.invoke(QUESTION),
        chain.invoke(
            [SystemMessage("sys"), HumanMessage("older"), AIMessage("old answer"), HumanMessage(QUESTION)]
        ),
        chain.invoke([("human", QUESTION)]),
        chain.invoke(prompt.invoke({"dish": "eggs"})),
        with_aligner(prompt | llm, aligner(backend)).invoke({"dish": "pancakes"}),
        with_aligner(RunnableLambda(itemgetter("messages")) | llm, aligner(backend)).invoke(
            {"messages": [HumanMessage("from messages key")]}
        ),
    ]
    assert backend.questions == [
        QUESTION,
        QUESTION,
        QUESTION,
        "Recipe for eggs?",
        "Recipe for pancakes?",
        "from messages key",
    ]
    assert all(o.id == "up" and meta_of(o)["status"] == "corrected" for o in outs)


def test_with_aligner_history_turns() -> None:
    backend = Recording()
    llm = FakeMessagesListChatModel(responses=[AIMessage(DRAFT)])
    with_aligner(llm, aligner(backend, history_turns=2)).invoke(
        [HumanMessage("I am vegan."), AIMessage("Noted."), HumanMessage(QUESTION)]
    )
    (question,) = backend.questions
    assert "I am vegan." in question and "Noted." in question and question.endswith(QUESTION)


def test_with_aligner_stream_batch_and_trace() -> None:
    backend = Recording()
    llm = GenericFakeChatModel(messages=iter([AIMessage("one two three")] * 4))
    chain = with_aligner(llm, aligner(backend))
    events = Events()
    chunks = list(chain.stream("Count?", {"callbacks": [events]}))
    assert total(chunks).content == fix("Count?", "one two three")
    assert sum("aligner" in c.response_metadata for c in chunks) == 1
    names = [name for name, _ in events.starts]
    assert names[0] == "GenericFakeChatModelWithAligner" and "AlignerRunnable" in names
    outs = chain.batch(["q1", "q2", "q3"])
    assert [o.content for o in outs] == [fix(q, "one two three") for q in ("q1", "q2", "q3")]
    assert backend.calls == [1, 3]  # the stream, then one call for the whole batch


async def test_with_aligner_async() -> None:
    backend = Recording()
    llm = GenericFakeChatModel(messages=iter([AIMessage("one two")] * 3))
    chain = with_aligner(llm | StrOutputParser(), aligner(backend))
    assert await chain.ainvoke("Q1") == fix("Q1", "one two")
    assert "".join([c async for c in chain.astream("Q2")]) == fix("Q2", "one two")
    assert await chain.abatch(["Q3"]) == [fix("Q3", "one two")]
    assert backend.entry == ["acorrect"] * 3


def test_with_aligner_rejects_what_it_cannot_read() -> None:
    chain = with_aligner(RunnableLambda(lambda x: AIMessage("a")), aligner())
    with pytest.raises(TypeError, match="question"):
        chain.invoke(42)
    with pytest.raises(TypeError, match="upstream"):
        with_aligner("not a runnable", aligner())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aligner"):
        with_aligner(fake_llm(), "x")  # type: ignore[arg-type]


# --- options --------------------------------------------------------------------------------------


def test_model_default_positional_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALIGNER_MODEL", raising=False)
    assert AlignerRunnable().model == "aligner/aligner-7b-v1.0"
    monkeypatch.setenv("ALIGNER_MODEL", "/models/my-aligner")
    assert AlignerRunnable().model == "/models/my-aligner"
    assert AlignerRunnable("org/other").model == "org/other"
    assert AlignerRunnable(model="org/kw").model == "org/kw"
    with pytest.raises(TypeError, match="twice"):
        AlignerRunnable("a", model="b")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"history_turns": -1}, "history_turns"),
        ({"on_failure": "ignore"}, "on_failure"),
        ({"template": "no-such-template"}, "template"),
        ({"template": "missing {question} only"}, "answer"),
        ({"base_url": "http://127.0.0.1:1/v1", "adapter": "lora"}, "adapter"),
    ],
)
def test_invalid_options_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AlignerRunnable("m", **kwargs)


def test_skip_must_be_callable_and_bad_inputs_explain() -> None:
    with pytest.raises(TypeError, match="skip"):
        AlignerRunnable("m", skip="yes")
    with pytest.raises(ValueError, match="'answer'"):
        aligner().invoke({"question": "q"})
    with pytest.raises(ValueError, match="'answer'"):
        aligner().invoke({"answer": "a", "extra": 1})
    with pytest.raises(TypeError, match="AIMessage"):
        aligner().invoke(HumanMessage("not an answer"))


def test_server_backend_is_built_lazily_without_loading() -> None:
    runnable = AlignerRunnable("served-aligner", base_url="http://127.0.0.1:1/v1", template="aligner-general")
    backend = runnable.get_backend()
    assert type(backend).__name__ == "OpenAIBackend"
    assert backend is runnable.get_backend()  # built once
    assert (backend.model_name, backend.template_name) == ("served-aligner", "aligner-general")


def test_public_names_resolve() -> None:
    for name in ("AlignerRunnable", "with_aligner", "ChatAligner", "AlignerError", "CallableBackend"):
        assert getattr(aligner_chain, name) is not None
    assert aligner_chain.AlignerRunnable is AlignerRunnable


def test_inference_path_imports_no_training_code() -> None:
    code = """
import sys
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
import aligner_chain
backend = aligner_chain.CallableBackend(lambda q, a: a + "!")
llm = GenericFakeChatModel(messages=iter([AIMessage("x")] * 3))
aligner = aligner_chain.AlignerRunnable(backend=backend)
(llm | aligner).invoke("q")
aligner_chain.with_aligner(llm, aligner).invoke("q")
aligner_chain.ChatAligner(backend=backend).invoke([("human", "q"), ("ai", "a")])
heavy = {"training", "trl", "datasets", "langchain", "torch", "transformers", "peft", "accelerate", "ray"}
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_local_and_remote_correction_never_import_ray() -> None:
    code = """
import sys
from aligner_chain import AlignerRunnable, CallableBackend, CorrectionRequest
from aligner_chain.backends.factory import build_backend
from aligner_chain.correct_command import run
from aligner_chain.offline.engine import correct_in_order
build_backend("some/model", device="cpu")
build_backend("served", base_url="http://127.0.0.1:9/v1")
AlignerRunnable(backend=CallableBackend(lambda q, a: a)).invoke("answer")
list(correct_in_order(CallableBackend(lambda q, a: a), ["x"], lambda a: CorrectionRequest("q", a)))
print(sorted(m for m in sys.modules if m.split(".")[0] in {"ray", "pyarrow", "pandas"}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
