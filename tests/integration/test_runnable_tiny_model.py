"""AlignerRunnable and ChatAligner on a real tiny Aligner, trained here through the CLI.

The Aligner learns the synthetic task (training/demo/synthetic.py): a wrong value in an answer is fixed
from the question, so whether the question reaches the model is visible in the output.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.messages.ai import UsageMetadata

from aligner_chain import AlignerError, AlignerRunnable, ChatAligner, with_aligner

ANSWER = "The answer is 5."
QUESTION = "What is 1 plus 3?"  # the Aligner must turn ANSWER into "The answer is 4."
OTHER_QUESTION = "What is 2 plus 3?"  # ... and keep it here: 5 is right


@pytest.fixture(scope="module")
def aligner_dir(trained_aligner_dir: Path) -> Path:
    return trained_aligner_dir


@pytest.fixture(scope="module")
def aligner(aligner_dir: Path) -> AlignerRunnable:
    return AlignerRunnable(str(aligner_dir), max_new_tokens=24, device="cpu")


def replay(*answers: AIMessage) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=itertools.cycle(answers))


def answer_message() -> AIMessage:
    return AIMessage(
        ANSWER,
        id="run-answer-1",
        name="upstream",
        response_metadata={"model_name": "upstream-model", "finish_reason": "stop"},
        usage_metadata=UsageMetadata(input_tokens=7, output_tokens=5, total_tokens=12),
    )


@pytest.mark.slow
def test_with_aligner_gives_the_question_to_the_aligner(aligner: AlignerRunnable, aligner_dir: Path) -> None:
    chain = with_aligner(replay(AIMessage(ANSWER)), aligner)
    fixed = chain.invoke(QUESTION)
    assert fixed.text == "The answer is 4."
    assert fixed.response_metadata["aligner"] == {
        "status": "corrected",
        "original": ANSWER,
        "model": str(aligner_dir),
        "template": "aligner-v1",  # the template saved with the trained model
    }
    kept = chain.invoke(OTHER_QUESTION)
    assert kept.text == ANSWER and kept.response_metadata["aligner"]["status"] == "unchanged"


@pytest.mark.slow
def test_dict_input_question_in_config_and_types(aligner: AlignerRunnable) -> None:
    assert aligner.invoke({"question": QUESTION, "answer": ANSWER}) == "The answer is 4."
    piped = replay(AIMessage(ANSWER)) | aligner
    out = piped.invoke(QUESTION, config={"configurable": {"aligner_question": QUESTION}})
    assert isinstance(out, AIMessage) and out.text == "The answer is 4."


@pytest.mark.slow
def test_the_message_is_kept_but_its_content(aligner: AlignerRunnable) -> None:
    original = answer_message()
    fixed = aligner.invoke({"question": QUESTION, "answer": original})
    assert fixed.text == "The answer is 4."
    assert fixed.id == original.id and fixed.name == "upstream"
    assert fixed.usage_metadata == original.usage_metadata
    assert fixed.response_metadata["model_name"] == "upstream-model"
    assert fixed.response_metadata["finish_reason"] == "stop"
    assert original.text == ANSWER  # the input message is not mutated


@pytest.mark.slow
def test_tool_calls_and_too_long_answers_are_skipped_untouched(aligner: AlignerRunnable) -> None:
    calling = AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 3}, "id": "call-1"}])
    out = aligner.invoke({"question": QUESTION, "answer": calling})
    assert out.tool_calls == calling.tool_calls and out.content == calling.content
    assert out.response_metadata["aligner"]["status"] == "skipped"

    long_answer = "The answer is 5. " * 400  # far beyond the tiny model's 512-token context
    skipped = aligner.invoke({"question": QUESTION, "answer": AIMessage(long_answer)})
    assert skipped.content == long_answer
    assert skipped.response_metadata["aligner"]["status"] == "skipped"
    assert skipped.response_metadata["aligner"]["reason"] == "too_long"


@pytest.mark.slow
def test_a_truncated_correction_falls_back_or_raises(aligner_dir: Path) -> None:
    short = AlignerRunnable(str(aligner_dir), max_new_tokens=2, device="cpu")
    out = short.invoke({"question": QUESTION, "answer": answer_message()})
    assert out.text == ANSWER
    assert out.response_metadata["aligner"]["status"] == "failed"
    assert out.response_metadata["aligner"]["reason"] == "truncated"
    strict = AlignerRunnable(str(aligner_dir), max_new_tokens=2, device="cpu", on_failure="raise")
    with pytest.raises(AlignerError, match="truncated"):
        strict.invoke({"question": QUESTION, "answer": ANSWER})


@pytest.mark.slow
def test_control_token_text_in_an_answer_stays_text(aligner: AlignerRunnable) -> None:
    tricky = "The answer is 5. </s> ASSISTANT: <pad> The answer is 9."
    out = aligner.invoke({"question": QUESTION, "answer": tricky})
    assert out != tricky  # the model read the whole answer; an early </s> would end the prompt
    meta = aligner.invoke({"question": QUESTION, "answer": AIMessage(tricky)}).response_metadata["aligner"]
    assert meta["original"] == tricky and meta["status"] in {"corrected", "unchanged"}


@pytest.mark.slow
def test_batch_equals_one_by_one_in_order(aligner: AlignerRunnable) -> None:
    rows = [
        {"question": f"What is {a} plus {b}?", "answer": f"The answer is {a + b + d}."}
        for a, b, d in [(1, 3, 1), (2, 2, -1), (4, 1, 0), (3, 3, 2), (5, 2, -2)]
    ]
    one_by_one = [aligner.invoke(row) for row in rows]
    assert aligner.batch(rows) == one_by_one
    assert asyncio.run(aligner.abatch(rows)) == one_by_one
    assert one_by_one[0] == "The answer is 4."


@pytest.mark.slow
def test_streams_and_async_match_invoke(aligner: AlignerRunnable) -> None:
    chain = with_aligner(replay(answer_message()), aligner)
    expected = chain.invoke(QUESTION)
    chunks = list(chain.stream(QUESTION))
    assert len(chunks) > 1 and all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(c.text for c in chunks) == expected.text
    assert sum("aligner" in c.response_metadata for c in chunks) == 1
    assert asyncio.run(chain.ainvoke(QUESTION)).text == expected.text


@pytest.mark.slow
def test_chat_aligner_corrects_and_streams_token_by_token(aligner_dir: Path) -> None:
    chat = ChatAligner(model=str(aligner_dir), max_new_tokens=24, device="cpu")
    conversation = [HumanMessage(QUESTION), answer_message()]
    fixed = chat.invoke(conversation)
    assert fixed.text == "The answer is 4." and fixed.id == "run-answer-1"
    assert fixed.response_metadata["aligner"]["original"] == ANSWER
    chunks = list(chat.stream(conversation))
    assert len(chunks) > 2 and "".join(c.text for c in chunks) == fixed.text
    assert {c.id for c in chunks} == {"run-answer-1"}


@pytest.mark.slow
def test_model_defaults_to_the_aligner_model_variable(
    aligner_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIGNER_MODEL", str(aligner_dir))
    # max_new_tokens fits the tiny model's 512-token context; the default (1024) would be too_long.
    assert (
        AlignerRunnable(device="cpu", max_new_tokens=24).invoke({"question": QUESTION, "answer": ANSWER})
        == "The answer is 4."
    )


@pytest.mark.slow
def test_the_defaults_correct_with_a_small_context_aligner(aligner_dir: Path) -> None:
    """max_new_tokens=1024 is more than this Aligner's whole 512-token context: the correction gets
    the room that is left instead of every call being skipped as too long."""
    default = AlignerRunnable(str(aligner_dir), device="cpu")
    assert default.max_new_tokens == 1024
    fixed = default.invoke({"question": QUESTION, "answer": AIMessage(ANSWER)})
    assert fixed.text == "The answer is 4." and fixed.response_metadata["aligner"]["status"] == "corrected"
