"""Sentence-level correction: the loop's rules, and the runnable and ``with_aligner`` running it."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata

from aligner_chain import AlignerError, AlignerRunnable, with_aligner
from aligner_chain.backends import CallableBackend, CorrectionResult
from aligner_chain.backends.base import AlignerBackend, CorrectionRequest, classify
from aligner_chain.sentence_loop import SentenceLoop, correct_in_rounds

ANSWER = "The capital of Peru is Rome. 2 plus 3 is 5. I am not sure."
FIXED = "The capital of Peru is Lima. 2 plus 3 is 5."


def revise(question: str, sentence: str, prefix: str) -> str:
    """A rule Aligner: fixes Peru's capital, drops hedging, keeps the rest."""
    if sentence == "I am not sure.":
        return ""
    return sentence.replace("Peru is Rome", "Peru is Lima")


def run(loop: SentenceLoop, text: str, backend: AlignerBackend) -> str:
    out = [loop.correct(backend, unit) for unit in loop.feed(text) + loop.flush()]
    return "".join(out) + loop.finish()


class Prefixes(CallableBackend):
    """Records each request's prefix."""

    def __init__(self, fn: Any = revise) -> None:
        super().__init__(fn, granularity="sentence")
        self.requests: list[CorrectionRequest] = []

    def correct(self, requests: Any) -> list[CorrectionResult]:
        self.requests.extend(requests)
        return super().correct(requests)


def test_each_sentence_is_corrected_after_the_corrected_prefix() -> None:
    backend = Prefixes()
    loop = SentenceLoop("Capital of Peru? 2 plus 3?")
    assert run(loop, ANSWER, backend) == FIXED
    assert [(r.prefix, r.answer) for r in backend.requests] == [
        ("", "The capital of Peru is Rome."),
        ("The capital of Peru is Lima.", "2 plus 3 is 5."),
        ("The capital of Peru is Lima. 2 plus 3 is 5.", "I am not sure."),
    ]
    assert {r.question for r in backend.requests} == {"Capital of Peru? 2 plus 3?"}
    outcome = loop.outcome()
    assert outcome.status == "corrected" and outcome.text == FIXED
    assert outcome.extra["sentences"] == [
        {
            "sentence": "The capital of Peru is Rome.",
            "status": "corrected",
            "revision": "The capital of Peru is Lima.",
        },
        {"sentence": "2 plus 3 is 5.", "status": "unchanged"},
        {"sentence": "I am not sure.", "status": "corrected", "revision": ""},
    ]


def test_markdown_keeps_its_markers_code_passes_and_dropped_lines_vanish() -> None:
    text = (
        "# Peru is Rome\n"
        "- The capital of Peru is Rome. I am not sure.\n"
        "- I am not sure.\n"
        "```\nPeru is Rome. I am not sure.\n```\n"
        "| a | Peru is Rome |\n|---|---|\n"
        "\n1. I am not sure. 2 plus 3 is 5.\n"
    )
    fixed = run(SentenceLoop("q"), text, Prefixes())
    assert fixed == (
        "# Peru is Lima\n"
        "- The capital of Peru is Lima.\n"
        "```\nPeru is Rome. I am not sure.\n```\n"
        "| a | Peru is Rome |\n|---|---|\n"
        "\n1. 2 plus 3 is 5.\n"
    )


def test_a_failed_or_skipped_sentence_stays_as_written_and_is_flagged() -> None:
    def flaky(question: str, sentence: str, prefix: str) -> str:
        if sentence.startswith("2"):
            raise RuntimeError("broken")
        return revise(question, sentence, prefix)

    loop = SentenceLoop("q")
    assert (
        run(loop, ANSWER, CallableBackend(flaky, granularity="sentence"))
        == "The capital of Peru is Lima. 2 plus 3 is 5."
    )
    statuses = [(s["status"], s.get("reason")) for s in loop.outcome().extra["sentences"]]
    assert statuses == [("corrected", None), ("failed", "backend_error"), ("corrected", None)]
    with pytest.raises(AlignerError, match="failed on a sentence: backend_error"):
        run(SentenceLoop("q", on_failure="raise"), ANSWER, CallableBackend(flaky, granularity="sentence"))


def test_a_failure_alone_fails_the_answer_and_dropping_every_sentence_keeps_the_original() -> None:
    broken = SentenceLoop("q")
    run(broken, "Fine. Also fine.", CallableBackend(lambda q, s, p: 1 / 0, granularity="sentence"))
    assert broken.outcome().status == "failed" and broken.outcome().text == "Fine. Also fine."
    dropped = SentenceLoop("q")
    assert run(dropped, "I am not sure.", Prefixes()) == ""
    outcome = dropped.outcome()
    assert (outcome.status, outcome.reason, outcome.text) == ("failed", "empty_correction", "I am not sure.")


def test_a_backend_that_raises_is_not_called_again_for_the_same_answer() -> None:
    calls = []

    class Down(CallableBackend):
        def correct(self, requests: Any) -> list[CorrectionResult]:
            calls.append(len(requests))
            raise ConnectionError("down")

    loop = SentenceLoop("q")
    assert run(loop, ANSWER, Down(revise, granularity="sentence")) == ANSWER
    assert calls == [1]
    assert {s["reason"] for s in loop.outcome().extra["sentences"]} == {"backend_error"}


def test_rounds_send_the_kth_sentence_of_every_answer_together() -> None:
    backend = Prefixes()
    answers = [ANSWER, "The capital of Peru is Rome.", "```\ncode only\n```"]
    outcomes = correct_in_rounds(backend, [SentenceLoop("q") for _ in answers], answers)
    assert backend.calls == [2, 1, 1]
    assert [o.text for o in outcomes] == [FIXED, "The capital of Peru is Lima.", "```\ncode only\n```"]  # type: ignore[union-attr]


def test_classify_at_sentence_level_drops_on_an_empty_revision() -> None:
    assert classify("A.", CorrectionResult.ok(""), granularity="sentence").text == ""
    assert classify("A.", CorrectionResult.ok("")).status == "failed"


# --- the runnable and with_aligner --------------------------------------------------------------


def sentence_aligner(**options: Any) -> AlignerRunnable:
    return AlignerRunnable(backend=CallableBackend(revise, granularity="sentence"), **options)


def test_the_runnable_corrects_whole_answers_and_batches_in_rounds() -> None:
    aligner = sentence_aligner()
    assert aligner.invoke({"question": "q", "answer": ANSWER}) == FIXED
    message = aligner.invoke(AIMessage(ANSWER, id="a1"))
    assert message.text == FIXED and message.id == "a1"
    assert message.response_metadata["aligner"]["granularity"] == "sentence"
    backend = aligner.get_backend()
    backend.calls.clear()  # type: ignore[attr-defined]
    assert aligner.batch([ANSWER, ANSWER]) == [FIXED, FIXED]
    assert backend.calls == [2, 2, 2]  # type: ignore[attr-defined]


def test_transform_streams_each_sentence_as_it_completes() -> None:
    usage = UsageMetadata(input_tokens=3, output_tokens=9, total_tokens=12)
    words = ANSWER.split(" ")
    chunks = [AIMessageChunk(content=w if i == 0 else " " + w, id="up-1") for i, w in enumerate(words)]
    chunks[-1] = chunks[-1].model_copy(
        update={"usage_metadata": usage, "response_metadata": {"model_name": "m"}}
    )
    seen: list[str] = []

    def source():
        for chunk in chunks:
            seen.append(chunk.text)
            yield chunk

    out = []
    for piece in sentence_aligner().transform(source()):
        out.append((piece.text, len(seen)))
    texts = [t for t, _ in out]
    assert texts == ["The capital of Peru is Lima.", " 2 plus 3 is 5.", ""]
    assert out[0][1] < len(words)  # the first sentence came out before the answer was complete
    last = out[-1]
    total = pieces_sum([p for p in sentence_aligner().transform(iter(chunks))])
    assert total.text == FIXED and total.usage_metadata == usage and total.id == "up-1"
    assert total.response_metadata["model_name"] == "m"
    assert total.response_metadata["aligner"]["original"] == ANSWER
    assert last[0] == ""


async def test_atransform_and_str_streams() -> None:
    async def source():
        for piece in ["The capital of Peru", " is Rome. 2", " plus 3 is 5."]:
            yield piece

    out = [p async for p in sentence_aligner().atransform(source())]
    assert out == ["The capital of Peru is Lima.", " 2 plus 3 is 5."]


def test_with_aligner_streams_sentences_while_the_upstream_writes() -> None:
    seen: list[str] = []

    def check(question: str, sentence: str, prefix: str) -> str:
        seen.append(question)
        return revise(question, sentence, prefix)

    upstream = GenericFakeChatModel(messages=itertools.cycle([AIMessage(ANSWER)]))
    chain = with_aligner(upstream, AlignerRunnable(backend=CallableBackend(check, granularity="sentence")))
    pieces = [p.text for p in chain.stream("What is the capital of Peru?")]
    assert pieces[:2] == ["The capital of Peru is Lima.", " 2 plus 3 is 5."]
    assert "".join(pieces) == FIXED
    assert set(seen) == {"What is the capital of Peru?"}
    assert chain.invoke("What is the capital of Peru?").text == FIXED


def test_a_tool_call_arriving_mid_stream_passes_the_rest_through() -> None:
    first = AIMessageChunk(content="The capital of Peru is Rome. Let me ", id="t")
    second = AIMessageChunk(content="check.", id="t")
    call = AIMessageChunk(
        content="", id="t", tool_call_chunks=[{"name": "f", "args": "{}", "id": "c", "index": 0}]
    )
    total = pieces_sum(list(sentence_aligner().transform(iter([first, second, call]))))
    assert total.text == "The capital of Peru is Lima. Let me check."
    assert total.tool_calls[0]["name"] == "f"
    report = total.response_metadata["aligner"]
    assert report["status"] == "corrected" and report["passed_through"] == "tool_calls"


def test_the_skip_predicate_is_asked_before_each_sentence() -> None:
    aligner = sentence_aligner(skip=lambda m: "5" in m.text)
    chunks = [
        AIMessageChunk(content="The capital of Peru is Rome. 2 plus"),
        AIMessageChunk(content=" 3 is 5. Peru is Rome."),
    ]
    total = pieces_sum(list(aligner.transform(iter(chunks))))
    assert total.text == "The capital of Peru is Lima. 2 plus 3 is 5. Peru is Rome."
    assert total.response_metadata["aligner"]["passed_through"] == "skip_predicate"


def test_the_question_may_arrive_after_the_first_sentences() -> None:
    backend = Prefixes()
    chunks = [{"answer": "The capital of Peru is Rome. 2 plus"}, {"question": "Peru?", "history": []}]
    out = list(AlignerRunnable(backend=backend).transform(iter(chunks)))
    assert "".join(out) == "The capital of Peru is Lima. 2 plus"
    assert [r.question for r in backend.requests] == ["Peru?", "Peru?"]


def pieces_sum(pieces: list[Any]) -> Any:
    total = pieces[0]
    for piece in pieces[1:]:
        total = total + piece
    return total


def test_chat_aligner_corrects_sentence_by_sentence_and_streams_each_sentence() -> None:
    from langchain_core.messages import HumanMessage

    from aligner_chain import ChatAligner

    backend = Prefixes()
    chat = ChatAligner(backend=backend)
    conversation = [HumanMessage("Capital of Peru? 2 plus 3?"), AIMessage(ANSWER, id="a")]
    message = chat.invoke(conversation)
    assert message.text == FIXED and message.id == "a"
    meta = message.response_metadata["aligner"]
    assert meta["status"] == "corrected" and meta["granularity"] == "sentence" and len(meta["sentences"]) == 3
    assert [r.prefix for r in backend.requests] == ["", "The capital of Peru is Lima.", FIXED]
    chunks = list(chat.stream(conversation))
    texts = [c.text for c in chunks if c.text]
    assert len(texts) >= 2 and "".join(texts) == FIXED, "one chunk per corrected sentence"
    assert chunks[-1].response_metadata["aligner"]["status"] == "corrected"


async def test_chat_aligner_sentence_level_async_and_failure() -> None:
    from langchain_core.messages import HumanMessage

    from aligner_chain import ChatAligner, CorrectionFailed

    conversation = [HumanMessage("q"), AIMessage(ANSWER, id="a")]
    assert (await ChatAligner(backend=Prefixes()).ainvoke(conversation)).text == FIXED
    assert "".join([c.text async for c in ChatAligner(backend=Prefixes()).astream(conversation)]) == FIXED
    broken = ChatAligner(backend=CallableBackend(lambda q, s, p: 1 / 0, granularity="sentence"))
    with pytest.raises(CorrectionFailed) as info:
        broken.invoke(conversation)
    assert (info.value.status, info.value.reason) == ("failed", "backend_error")


def test_offline_rows_are_corrected_sentence_by_sentence() -> None:
    from aligner_chain.offline.corrections import correct_requests

    requests = [
        CorrectionRequest("q", ANSWER),
        CorrectionRequest("q", "2 plus 3 is 5."),
        CorrectionRequest("q", " "),
    ]
    results = correct_requests(Prefixes(), requests)
    assert [(r.status, r.text, r.reason) for r in results] == [
        ("ok", FIXED, None),
        ("ok", "2 plus 3 is 5.", None),
        ("skipped", None, "empty"),
    ]
    down = correct_requests(CallableBackend(lambda q, s, p: 1 / 0, granularity="sentence"), requests[:1])
    assert (down[0].status, down[0].reason) == ("failed", "backend_error")
