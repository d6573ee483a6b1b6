"""A sentence-level Aligner trained through `aligner-chain train --granularity sentence`, used by
the runnable, ``with_aligner`` and ``AlignedChatModel``: held-out answers corrected sentence by
sentence, each sentence streamed while the upstream still writes."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from aligner_chain import AlignedChatModel, AlignerRunnable, with_aligner
from training.demo.synthetic import HEDGE, make_multi_sentence_task

QUESTION = "Capital of Peru? 2 plus 3? How many days in a week?"
ANSWER = f"The capital of Peru is Rome. 2 plus 3 is 5. {HEDGE} There are 9 days in a week."
FIXED = "The capital of Peru is Lima. 2 plus 3 is 5. There are 7 days in a week."


@pytest.fixture(scope="module")
def aligner(trained_sentence_aligner_dir: Path) -> AlignerRunnable:
    return AlignerRunnable(
        str(trained_sentence_aligner_dir), device="cpu", dtype="float32", max_new_tokens=48
    )


@pytest.mark.slow
def test_the_cli_saves_a_sentence_level_aligner(trained_sentence_aligner_dir: Path) -> None:
    config = json.loads((trained_sentence_aligner_dir / "aligner_config.json").read_text())
    assert (config["granularity"], config["template"]) == ("sentence", "stream-aligner")
    counts = config["extra"]["sentence_rows"]
    assert counts["rewritten"] > 0 and counts["dropped"] > 0 and counts["kept"] > counts["rewritten"]


@pytest.mark.slow
def test_held_out_answers_are_corrected_exactly(aligner: AlignerRunnable) -> None:
    held_out = make_multi_sentence_task().held_out
    fixed = aligner.batch([{"question": r.question, "answer": r.answer} for r in held_out])
    exact = sum(out == r.correction for out, r in zip(fixed, held_out, strict=True)) / len(held_out)
    assert exact >= 0.9, exact
    changed = sum(r.answer != r.correction for r in held_out) / len(held_out)
    assert changed > 0.5  # most held-out answers needed a fix: copying would not pass


class _Writing(BaseChatModel):
    """Streams ``ANSWER`` word by word; after the second sentence it waits until the client has
    received a corrected sentence (fails after 10 s otherwise)."""

    received: Any

    @property
    def _llm_type(self) -> str:
        return "writing"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(ANSWER))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for i, word in enumerate(ANSWER.split(" ")):
            if word == "I":  # the hedge: two sentences are complete by now
                assert self.received.wait(10), "no corrected sentence came out while the upstream wrote"
            yield ChatGenerationChunk(message=AIMessageChunk(content=word if i == 0 else " " + word))


@pytest.mark.slow
def test_aligned_chat_model_streams_corrected_sentences_while_the_upstream_writes(
    aligner: AlignerRunnable,
) -> None:
    received = threading.Event()
    model = AlignedChatModel(_Writing(received=received), aligner)
    pieces = []
    for chunk in model.stream(QUESTION):
        if chunk.text:
            pieces.append(chunk.text)
            received.set()
    assert "".join(pieces) == FIXED
    assert pieces[0] == "The capital of Peru is Lima."
    final = model.invoke(QUESTION)
    assert final.text == FIXED
    statuses = [s["status"] for s in final.response_metadata["aligner"]["sentences"]]
    assert statuses == ["corrected", "unchanged", "corrected", "corrected"]


@pytest.mark.slow
async def test_with_aligner_and_the_runnable_stream_the_same_correction(aligner: AlignerRunnable) -> None:
    chain = with_aligner(GenericFakeChatModel(messages=itertools.cycle([AIMessage(ANSWER)])), aligner)
    pieces = [chunk.text async for chunk in chain.astream(QUESTION)]
    assert len([p for p in pieces if p]) >= 3 and "".join(pieces) == FIXED
    assert aligner.invoke({"question": QUESTION, "answer": ANSWER}) == FIXED
