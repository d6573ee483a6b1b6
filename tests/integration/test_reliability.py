"""Every failure visible: faults of a real local server, bad input through every front end, and
hundreds of concurrent callers.

The outcomes here are the ones README's "What happens when" table states; ``test_readme_table``
keeps the two the same.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.schemas import Run

from aligner_chain import AlignerRunnable, CallableBackend, ChatAligner, make_aligner_node
from aligner_chain.backends import CorrectionRequest, CorrectionResult, OpenAIBackend, TransformersBackend
from aligner_chain.errors import AlignerError, CorrectionFailed
from aligner_chain.middleware import AlignerMiddleware
from tests.integration.completions_server import CompletionsServer

README = Path(__file__).resolve().parents[2] / "README.md"
QUESTION = "Is it safe to mix bleach and ammonia?"
ANSWER = "Yes, go ahead."
FIXED = "No: it makes toxic chloramine gas."
TIMEOUT = 1.0  # the deadline of each attempt in the fault tests

# -- faults of a remote server ---------------------------------------------------------------------

# name -> (server settings, status, reason, pattern of the detail, most seconds a call may take)
FAULTS: dict[str, tuple[dict[str, Any], str, str | None, str, float]] = {
    "hang": ({"fault": "hang"}, "failed", "backend_error", "timed out|deadline", 2 * TIMEOUT + 1.5),
    "slow drip": ({"fault": "drip"}, "failed", "backend_error", "deadline", 2 * TIMEOUT + 1.5),
    "5xx": ({"fail_first": 100, "fail_status": 503}, "failed", "server_error", "after 2 attempts", 1.5),
    "429 with Retry-After": (
        {"fail_first": 1, "fail_status": 429, "retry_after": 0.3},
        "corrected",
        None,
        "",
        2.0,
    ),
    "malformed body": ({"fault": "malformed"}, "failed", "backend_error", "unreadable", 1.5),
    "dropped connection": ({"fault": "drop"}, "failed", "backend_error", "RemoteProtocolError", 1.5),
    "length-capped": ({"force_length": True}, "failed", "truncated", "max_new_tokens", 1.5),
}


def _fix(prompt: Any) -> str:
    return " " + FIXED


def _served(server: CompletionsServer, **kwargs: Any) -> AlignerRunnable:
    backend = OpenAIBackend(
        "aligner",
        base_url=server.base_url,
        timeout=TIMEOUT,
        max_retries=1,
        retry_backoff=0.01,
        max_backoff=1.0,
        **kwargs,
    )
    return AlignerRunnable(backend=backend)


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_server_fault_is_a_flagged_fall_back_within_a_time_bound(name: str) -> None:
    settings, status, reason, detail, most_seconds = FAULTS[name]
    with CompletionsServer(rule=_fix, **settings) as server:
        runnable = _served(server)
        start = time.monotonic()
        out = runnable.invoke({"question": QUESTION, "answer": AIMessage(ANSWER)})
        elapsed = time.monotonic() - start
    meta = out.response_metadata["aligner"]
    assert (meta["status"], meta.get("reason")) == (status, reason), meta
    assert out.text == (FIXED if status == "corrected" else ANSWER)
    assert re.search(detail, meta.get("detail", "")), meta
    assert elapsed < most_seconds, f"{name}: {elapsed:.2f} s"
    if name == "429 with Retry-After":
        assert elapsed >= 0.3, "the server's Retry-After was honoured"


def test_a_context_error_is_retried_with_the_room_left_when_the_answer_fits() -> None:
    prompt_chars = len(_served_prompt())
    with CompletionsServer(rule=_fix, context_limit=prompt_chars + 60) as server:
        out = _served(server, max_new_tokens=1000).invoke({"question": QUESTION, "answer": AIMessage(ANSWER)})
        budgets = [p["max_tokens"] for p in server.payloads]
    assert out.response_metadata["aligner"]["status"] == "corrected" and out.text == FIXED
    assert budgets == [1000, 60], "sent again with exactly the room the server said was left"
    with CompletionsServer(rule=_fix, context_limit=prompt_chars + 3) as server:
        out = _served(server, max_new_tokens=1000).invoke({"question": QUESTION, "answer": AIMessage(ANSWER)})
        assert len(server.payloads) == 1, "no room for an answer this long: not sent again"
    meta = out.response_metadata["aligner"]
    assert (meta["status"], meta["reason"]) == ("skipped", "too_long") and out.text == ANSWER


def _served_prompt() -> str:
    from aligner_chain.prompts import format_prompt

    return format_prompt(QUESTION, ANSWER)


class _Runs(BaseTracer):
    """Keeps every finished run, as any tracer would."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []

    def _persist_run(self, run: Run) -> None:
        self.runs.append(run)


def test_a_str_answer_that_fails_is_logged_and_flagged_on_the_traced_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracer = _Runs()
    with CompletionsServer(rule=_fix, force_length=True) as server, caplog.at_level(logging.WARNING):
        out = _served(server).invoke(ANSWER, {"callbacks": [tracer]})
    assert out == ANSWER  # a str in, the original str back ...
    assert "truncated" in caplog.text  # ... with a warning ...
    (run,) = [r for r in tracer.runs if r.name == "AlignerRunnable"]
    assert {"aligner:failed", "aligner:truncated"} <= set(run.tags or [])  # ... and on the traced run
    assert run.metadata["aligner_status"] == "failed" and run.metadata["aligner_reason"] == "truncated"


def test_skips_are_on_the_traced_run_and_too_long_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    tracer = _Runs()
    backend = _Scripted(CorrectionResult.skipped("too_long", "prompt exceeds the context"))
    with caplog.at_level(logging.INFO, logger="aligner_chain.runnable"):
        assert AlignerRunnable(backend=backend).invoke(ANSWER, {"callbacks": [tracer]}) == ANSWER
        AlignerRunnable(backend=backend).invoke("   ", {"callbacks": [tracer]})
    too_long = [r for r in caplog.records if "too_long" in r.getMessage()]
    assert [r.levelno for r in too_long] == [logging.WARNING]
    assert not [r for r in caplog.records if "(empty)" in r.getMessage()], "an empty answer is not news"
    tags = [set(r.tags or []) for r in tracer.runs if r.name == "AlignerRunnable"]
    assert {"aligner:skipped", "aligner:too_long"} <= tags[0] and {
        "aligner:skipped",
        "aligner:empty",
    } <= tags[1]


# -- bad input through every front end --------------------------------------------------------------


class _Scripted(CallableBackend):
    """Answers every request with one fixed result."""

    def __init__(self, result: CorrectionResult) -> None:
        super().__init__(lambda q, a: a)
        self.result = result
        self.seen: list[CorrectionRequest] = []

    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        self.seen.extend(requests)
        return [self.result for _ in requests]


def _boom(question: str, answer: str) -> str:
    raise RuntimeError("the Aligner is down")


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
CALL = {"name": "search", "args": {"q": "x"}, "id": "call-1"}
# name -> (answer, backend, outcome: status and reason)
CASES: dict[str, tuple[AIMessage, Any, tuple[str, str | None]]] = {
    "a correction": (
        AIMessage(ANSWER, id="a"),
        lambda: CallableBackend(lambda q, a: FIXED),
        ("corrected", None),
    ),
    "the same text back": (
        AIMessage(ANSWER, id="a"),
        lambda: CallableBackend(lambda q, a: f" {a}\n"),
        ("unchanged", None),
    ),
    "an empty answer": (
        AIMessage("  ", id="a"),
        lambda: CallableBackend(lambda q, a: FIXED),
        ("skipped", "empty"),
    ),
    "a tool-calling turn": (
        AIMessage("", id="a", tool_calls=[CALL]),
        lambda: CallableBackend(lambda q, a: FIXED),
        ("skipped", "tool_calls"),
    ),
    "an image without text": (
        AIMessage(content=[IMAGE], id="a"),
        lambda: CallableBackend(lambda q, a: FIXED),
        ("skipped", "no_text_block"),
    ),
    "too long for the Aligner": (
        AIMessage(ANSWER, id="a"),
        lambda: _Scripted(CorrectionResult.skipped("too_long", "4096 > 2048")),
        ("skipped", "too_long"),
    ),
    "an empty correction": (
        AIMessage(ANSWER, id="a"),
        lambda: CallableBackend(lambda q, a: "  "),
        ("failed", "empty_correction"),
    ),
    "a truncated correction": (
        AIMessage(ANSWER, id="a"),
        lambda: _Scripted(CorrectionResult.failed("truncated", "no EOS")),
        ("failed", "truncated"),
    ),
    "the Aligner down": (
        AIMessage(ANSWER, id="a"),
        lambda: CallableBackend(_boom),
        ("failed", "backend_error"),
    ),
}
SELECTED_OUT = {"empty", "tool_calls", "no_text_block"}  # the graph node and middleware leave these alone


@pytest.mark.parametrize("name", list(CASES))
def test_runnable_returns_the_answer_flagged(name: str) -> None:
    answer, backend, (status, reason) = CASES[name]
    out = AlignerRunnable(backend=backend()).invoke({"question": QUESTION, "answer": answer})
    meta = out.response_metadata["aligner"]
    assert (meta["status"], meta.get("reason")) == (status, reason)
    assert out.id == "a" and out.content == (FIXED if status == "corrected" else answer.content)
    if status == "failed":
        with pytest.raises(AlignerError):
            AlignerRunnable(backend=backend(), on_failure="raise").invoke(
                {"question": QUESTION, "answer": answer}
            )


@pytest.mark.parametrize("name", list(CASES))
def test_chat_model_answers_or_raises_with_status_and_reason(name: str) -> None:
    answer, backend, (status, reason) = CASES[name]
    chat = ChatAligner(backend=backend())
    if status in ("corrected", "unchanged"):
        assert chat.invoke([HumanMessage(QUESTION), answer]).response_metadata["aligner"]["status"] == status
        return
    with pytest.raises(CorrectionFailed) as info:
        chat.invoke([HumanMessage(QUESTION), answer])
    assert (info.value.status, info.value.reason) == (status, reason)


@pytest.mark.parametrize("name", list(CASES))
def test_graph_node_and_middleware(name: str) -> None:
    answer, backend, (status, reason) = CASES[name]
    messages: list[BaseMessage] = [HumanMessage(QUESTION), answer]
    node = make_aligner_node(AlignerRunnable(backend=backend()))
    hook = AlignerMiddleware(AlignerRunnable(backend=backend()))
    update = node.invoke({"messages": messages})
    after = hook.after_model({"messages": messages}, None)  # type: ignore[arg-type]
    if reason in SELECTED_OUT:
        assert update == {} and after is None  # not a final answer: left alone, no state update
        return
    for out in (update["messages"][0], after["messages"][0] if after else None):
        assert out is not None and out.id == "a"
        meta = out.response_metadata["aligner"]
        assert (meta["status"], meta.get("reason")) == (status, reason)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: AlignerRunnable(backend=CallableBackend(str.upper)).invoke(HumanMessage("hi")),
            TypeError,
            "AIMessage",
        ),
        (
            lambda: AlignerRunnable(backend=CallableBackend(str.upper)).invoke({"question": "q"}),
            ValueError,
            "'answer'",
        ),
        (
            lambda: AlignerRunnable(backend=CallableBackend(str.upper)).invoke(
                {"answer": "a", "question": 3}
            ),
            TypeError,
            "question",
        ),
        (
            lambda: ChatAligner(backend=CallableBackend(str.upper)).invoke([HumanMessage("q")]),
            ValueError,
            "AIMessage",
        ),
        (
            lambda: make_aligner_node(AlignerRunnable(backend=CallableBackend(str.upper))).invoke(
                {"chat": []}
            ),
            ValueError,
            "messages_key",
        ),
        (lambda: AlignerRunnable("m", on_faliure="raise"), TypeError, "did you mean 'on_failure'"),
        (lambda: AlignerRunnable("m", max_new_token=64), TypeError, "did you mean 'max_new_tokens'"),
        (lambda: ChatAligner("m", timout=3), TypeError, "did you mean 'timeout'"),
        (lambda: AlignerRunnable("m", timeout=3), ValueError, "timeout only applies with base_url"),
        (lambda: TransformersBackend("m", max_batch=4), TypeError, "did you mean 'max_batch_size'"),
        (
            lambda: OpenAIBackend("m", base_url="http://localhost:1", retries=2),
            TypeError,
            "did you mean 'max_retries'",
        ),
        (lambda: CallableBackend(str.upper, nmae="x"), TypeError, "did you mean 'name'"),
        (lambda: make_aligner_node(on_falure="raise"), TypeError, "did you mean 'on_failure'"),
        (lambda: AlignerMiddleware(skipp=None), TypeError, "did you mean 'skip'"),
    ],
)
def test_bad_input_is_a_clear_error_naming_the_field(call: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call()


# -- hundreds of concurrent callers -----------------------------------------------------------------


@pytest.mark.slow
def test_hundreds_of_concurrent_callers_get_their_own_one_at_a_time_result(tiny_model_dir: Path) -> None:
    runnable = AlignerRunnable(
        str(tiny_model_dir),
        device="cpu",
        max_new_tokens=4,
        max_batch_size=16,
        generation_kwargs={"forced_eos_token_id": 1},
    )
    inputs = [
        {"question": f"Question {i}?", "answer": f"Answer number {i} {'x' * (i % 7)}."} for i in range(240)
    ]
    alone = [runnable.invoke(item) for item in inputs]
    assert len(set(alone)) > 20, "distinct inputs give distinct corrections"
    in_threads = inputs[::2]
    in_asyncio = inputs[1::2]

    async def gathered() -> list[Any]:
        return list(await asyncio.gather(*(runnable.ainvoke(item) for item in in_asyncio)))

    with ThreadPoolExecutor(48) as pool:
        threaded = pool.map(runnable.invoke, in_threads)  # while asyncio callers run too
        from_asyncio = asyncio.run(gathered())
        from_threads = list(threaded)
    assert from_threads == alone[::2]
    assert from_asyncio == alone[1::2]
    backend = runnable.get_backend()
    assert isinstance(backend, TransformersBackend) and max(backend.batch_sizes) > 1, "callers were batched"


# -- the README table ---------------------------------------------------------------------------------


def test_readme_table_states_these_outcomes() -> None:
    """README's "What happens when" rows name an input or fault and the outcome these tests check."""
    text = README.read_text()
    section = text[text.index("### What happens when") :]
    rows = dict(re.findall(r"^\| ([^|]+?) \| `([a-z_]+(?:/[a-z_]+)?)` \|", section, flags=re.M))
    expected = {name: _outcome(status, reason) for name, (_, status, reason, _, _) in FAULTS.items()}
    expected |= {name: _outcome(status, reason) for name, (_, _, (status, reason)) in CASES.items()}
    assert {name: rows.get(name) for name in expected} == expected


def _outcome(status: str, reason: str | None) -> str:
    return f"{status}/{reason}" if reason else status
