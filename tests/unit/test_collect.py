"""Preference collection: an upstream chat model answers, an Aligner corrects, TRL rows are written.

The upstream is a scripted chat model (its answer is a function of the question, so concurrency
cannot reorder anything) that records every call; the Aligner is a weight-free stand-in following
the ``AlignerRunnable`` output contract (``response_metadata["aligner"]``).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableLambda
from pydantic import Field, PrivateAttr

from training.bootstrap.collect import (
    ANSWERS_FILE,
    DONE_FILE,
    PREFERENCES_FILE,
    SFT_FILE,
    SUMMARY_FILE,
    collect_preferences,
    load_prompts,
)


class ScriptedUpstream(BaseChatModel):
    """Answers ``question`` with ``answers[question]`` (default ``"WRONG: <question>"``).

    ``transient_failures`` times per question it first raises ``TimeoutError``; after
    ``fatal_after`` successful answers every call raises ``RuntimeError`` (a non-transient error,
    e.g. an exhausted quota). Records calls per question and the peak number in flight.
    """

    answers: dict[str, str] = Field(default_factory=dict)
    transient_failures: int = 0
    always_transient: tuple[str, ...] = ()
    fatal_after: int | None = None
    delay: float = 0.0
    _calls: list[str] = PrivateAttr(default_factory=list)
    _answered: list[str] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _in_flight: int = PrivateAttr(default=0)
    _peak: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "scripted-upstream"

    @property
    def calls(self) -> list[str]:
        return self._calls

    @property
    def answered(self) -> list[str]:
        return self._answered

    @property
    def peak(self) -> int:
        return self._peak

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        question = str(messages[-1].text)
        with self._lock:
            self._calls.append(question)
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
            attempt = self._calls.count(question)
            failing = self.fatal_after is not None and len(self._answered) >= self.fatal_after
            if not failing and attempt > self.transient_failures and question not in self.always_transient:
                self._answered.append(question)
        try:
            time.sleep(self.delay)
            if failing:
                raise RuntimeError("quota exhausted")
            if attempt <= self.transient_failures or question in self.always_transient:
                raise TimeoutError(f"timed out on {question!r}")
            text = self.answers.get(question, f"WRONG: {question}")
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])
        finally:
            with self._lock:
                self._in_flight -= 1


def _rule(question: str, answer: str) -> tuple[str, str, str | None]:
    """The stand-in Aligner's rule: (status, text, reason)."""
    if "BROKEN" in answer:
        return "failed", answer, "backend_error"
    if "TOOL" in answer:
        return "skipped", answer, "tool_calls"
    if "FINE" in answer:
        return "unchanged", answer, None
    return "corrected", answer.replace("WRONG", "RIGHT"), None


class StandInAligner:
    """A plain Runnable with AlignerRunnable's output contract; counts what it corrected."""

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.seen: list[str] = []
        self.interrupt_after = interrupt_after
        self.runnable = RunnableLambda(self._correct)

    def _correct(self, value: dict[str, Any]) -> AIMessage:
        question, message = value["question"], value["answer"]
        if self.interrupt_after is not None and len(self.seen) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.seen.append(question)
        status, text, reason = _rule(question, str(message.text))
        meta: dict[str, Any] = {"status": status, "original": message.text, "model": "rule"}
        if reason:
            meta["reason"] = reason
        return message.model_copy(update={"content": text, "response_metadata": {"aligner": meta}})


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


QUESTIONS = [f"question {i}" for i in range(10)]


def test_writes_trl_rows_and_counts_what_it_leaves_out(tmp_path: Path) -> None:
    answers = {
        "q unchanged": "FINE as it is",
        "q failed": "BROKEN beyond repair",
        "q skipped": "TOOL call",
        "q empty answer": "",
    }
    upstream = ScriptedUpstream(answers=answers)
    prompts = ["q1", "q2", "q unchanged", "q failed", "q skipped", "q empty answer", "", "q1"]
    summary = collect_preferences(prompts, upstream, StandInAligner().runnable, tmp_path, progress=False)

    assert _read(tmp_path / PREFERENCES_FILE) == [
        {"prompt": "q1", "chosen": "RIGHT: q1", "rejected": "WRONG: q1"},
        {"prompt": "q2", "chosen": "RIGHT: q2", "rejected": "WRONG: q2"},
    ]
    assert _read(tmp_path / SFT_FILE) == [
        {"prompt": "q1", "completion": "RIGHT: q1"},
        {"prompt": "q2", "completion": "RIGHT: q2"},
    ]
    assert {k: summary[k] for k in ("written", "unchanged", "failed", "skipped", "duplicates")} == {
        "written": 2,
        "unchanged": 1,
        "failed": 1,
        "skipped": 3,  # the Aligner's skip, the empty answer, the empty prompt
        "duplicates": 1,
    }
    assert summary["total"] == 8 and summary["rows"] == 2 and summary["upstream_errors"] == 0
    assert sorted(upstream.calls) == sorted(set(prompts) - {""})  # empty prompt never sent, q1 once
    done = {r["question"]: r for r in _read(tmp_path / DONE_FILE)}
    assert done["q failed"]["reason"] == "backend_error"
    assert done["q skipped"]["reason"] == "tool_calls"
    assert done["q empty answer"]["reason"] == "empty_answer"
    assert done[""]["reason"] == "empty_prompt"
    saved = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert saved["all_runs"] == {"failed": 1, "skipped": 3, "unchanged": 1, "written": 2}


def test_correction_equal_to_the_answer_counts_as_unchanged(tmp_path: Path) -> None:
    def echo(value: dict[str, Any]) -> AIMessage:
        meta = {"aligner": {"status": "corrected"}}
        return AIMessage(content="  " + str(value["answer"].text) + "\n", response_metadata=meta)

    summary = collect_preferences(["q"], ScriptedUpstream(), RunnableLambda(echo), tmp_path, progress=False)
    assert summary["unchanged"] == 1 and summary["written"] == 0
    assert (tmp_path / PREFERENCES_FILE).read_text() == ""


def test_a_string_returning_aligner_and_upstream_work_too(tmp_path: Path) -> None:
    upstream = RunnableLambda(lambda q: f"WRONG: {q}")
    aligner = RunnableLambda(lambda v: str(v["answer"].text).replace("WRONG", "RIGHT"))
    summary = collect_preferences(["a", "b"], upstream, aligner, tmp_path, progress=False)
    assert summary["written"] == 2
    assert _read(tmp_path / SFT_FILE)[0] == {"prompt": "a", "completion": "RIGHT: a"}


def test_any_langchain_chat_model_is_an_upstream(tmp_path: Path) -> None:
    upstream = GenericFakeChatModel(messages=iter([AIMessage("WRONG one"), AIMessage("WRONG two")]))
    summary = collect_preferences(
        ["first", "second"], upstream, StandInAligner().runnable, tmp_path, max_concurrency=1, progress=False
    )
    assert summary["written"] == 2
    assert [r["rejected"] for r in _read(tmp_path / PREFERENCES_FILE)] == ["WRONG one", "WRONG two"]


def test_make_input_shapes_what_the_upstream_gets(tmp_path: Path) -> None:
    seen: list[Any] = []

    def upstream(value: Any) -> str:
        seen.append(value)
        return "WRONG"

    collect_preferences(
        ["q"],
        RunnableLambda(upstream),
        StandInAligner().runnable,
        tmp_path,
        make_input=lambda q: {"messages": [("user", q)]},
        progress=False,
    )
    assert seen == [{"messages": [("user", "q")]}]


def test_an_upstream_returning_something_else_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="StrOutputParser"):
        collect_preferences(
            ["q"], RunnableLambda(lambda q: 42), StandInAligner().runnable, tmp_path, progress=False
        )


def test_crash_mid_run_then_resume_loses_nothing_and_pays_nothing_twice(tmp_path: Path) -> None:
    crashing = ScriptedUpstream(fatal_after=4)
    with pytest.raises(RuntimeError, match="quota exhausted"):
        collect_preferences(
            QUESTIONS, crashing, StandInAligner().runnable, tmp_path, max_concurrency=2, progress=False
        )
    paid = set(crashing.answered)
    assert len(paid) == 4
    assert {r["question"] for r in _read(tmp_path / ANSWERS_FILE)} == paid  # every paid answer kept

    healthy = ScriptedUpstream()
    aligner = StandInAligner()
    summary = collect_preferences(
        QUESTIONS, healthy, aligner.runnable, tmp_path, max_concurrency=2, progress=False
    )
    assert not paid & set(healthy.calls)  # answers already paid for are reused
    assert sorted(healthy.calls) == sorted(set(QUESTIONS) - paid)
    assert summary["answers_reused"] == 4 and summary["done_before"] == 0
    rows = _read(tmp_path / PREFERENCES_FILE)
    assert sorted(r["prompt"] for r in rows) == sorted(QUESTIONS)  # no loss, no duplicates
    assert len(_read(tmp_path / SFT_FILE)) == len(QUESTIONS)

    again = ScriptedUpstream()
    summary = collect_preferences(QUESTIONS, again, aligner.runnable, tmp_path, progress=False)
    assert again.calls == [] and summary["done_before"] == len(QUESTIONS) and summary["written"] == 0
    assert len(_read(tmp_path / PREFERENCES_FILE)) == len(QUESTIONS)


def test_keyboard_interrupt_between_batches_then_resume(tmp_path: Path) -> None:
    first = ScriptedUpstream()
    with pytest.raises(KeyboardInterrupt):
        collect_preferences(
            QUESTIONS,
            first,
            StandInAligner(interrupt_after=3).runnable,
            tmp_path,
            chunk_size=3,
            max_concurrency=1,
            progress=False,
        )
    done = _read(tmp_path / DONE_FILE)
    assert len(done) == 3 and len(_read(tmp_path / PREFERENCES_FILE)) == 3
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())["last_run"]
    assert summary["written"] == 3  # the summary is written on the way out

    second = ScriptedUpstream()
    aligner = StandInAligner()
    summary = collect_preferences(QUESTIONS, second, aligner.runnable, tmp_path, chunk_size=3, progress=False)
    assert not set(first.calls) & set(second.calls)  # the interrupted chunk's answers are reused
    assert summary["done_before"] == 3 and summary["written"] == 7 and summary["answers_reused"] == 3
    assert sorted(aligner.seen) == sorted(set(QUESTIONS) - {r["question"] for r in done})
    assert sorted(r["prompt"] for r in _read(tmp_path / PREFERENCES_FILE)) == sorted(QUESTIONS)


def test_outputs_torn_by_a_crash_are_rebuilt_from_the_done_log(tmp_path: Path) -> None:
    collect_preferences(
        QUESTIONS[:4], ScriptedUpstream(), StandInAligner().runnable, tmp_path, progress=False
    )
    prefs = tmp_path / PREFERENCES_FILE
    lines = prefs.read_text().splitlines(keepends=True)
    prefs.write_text("".join(lines[:2]) + lines[2][:15])  # crash between the done-log and the data
    summary = collect_preferences(
        QUESTIONS[:4], ScriptedUpstream(), StandInAligner().runnable, tmp_path, progress=False
    )
    assert summary["rows"] == 4
    assert prefs.read_text() == "".join(lines)
    assert len(_read(tmp_path / SFT_FILE)) == 4


def test_transient_errors_are_retried_with_bounded_concurrency(tmp_path: Path) -> None:
    upstream = ScriptedUpstream(transient_failures=2, delay=0.02)
    summary = collect_preferences(
        QUESTIONS,
        upstream,
        StandInAligner().runnable,
        tmp_path,
        max_concurrency=3,
        retries=3,
        retry_wait=0.001,
        progress=False,
    )
    assert summary["written"] == len(QUESTIONS) and summary["upstream_errors"] == 0
    assert len(upstream.calls) == 3 * len(QUESTIONS)  # two timeouts, then the answer
    assert upstream.peak == 3


def test_prompts_still_failing_after_retries_are_counted_and_tried_next_run(tmp_path: Path) -> None:
    flaky = ScriptedUpstream(always_transient=("question 3",))
    summary = collect_preferences(
        QUESTIONS, flaky, StandInAligner().runnable, tmp_path, retries=2, retry_wait=0.001, progress=False
    )
    assert summary["upstream_errors"] == 1 and summary["written"] == 9
    assert flaky.calls.count("question 3") == 3
    healthy = ScriptedUpstream()
    summary = collect_preferences(QUESTIONS, healthy, StandInAligner().runnable, tmp_path, progress=False)
    assert healthy.calls == ["question 3"] and summary["written"] == 1 and summary["rows"] == 10


def test_on_upstream_error_skip_counts_non_transient_errors(tmp_path: Path) -> None:
    upstream = ScriptedUpstream(fatal_after=6)
    summary = collect_preferences(
        QUESTIONS,
        upstream,
        StandInAligner().runnable,
        tmp_path,
        max_concurrency=1,
        on_upstream_error="skip",
        progress=False,
    )
    assert summary["written"] == 6 and summary["upstream_errors"] == 4


def test_prompts_from_files_and_rows(tmp_path: Path) -> None:
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"instruction": "a"}\n{"instruction": "b"}\n')
    csv = tmp_path / "p.csv"
    csv.write_text("question,other\nc,1\nd,2\n")
    js = tmp_path / "p.json"
    js.write_text(json.dumps([{"question": "e"}]))
    assert load_prompts(jsonl, question_column="instruction") == ["a", "b"]
    assert load_prompts(str(csv)) == ["c", "d"]
    assert load_prompts(js) == ["e"]
    assert load_prompts([{"question": "f"}, "g"]) == ["f", "g"]
    summary = collect_preferences(
        jsonl,
        ScriptedUpstream(),
        StandInAligner().runnable,
        tmp_path / "out",
        question_column="instruction",
        progress=False,
    )
    assert summary["written"] == 2


def test_a_missing_question_column_names_the_file_and_the_columns_found(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a", "id": 1}\n')
    with pytest.raises(
        ValueError, match=r"prompts\.jsonl.*'question'.*\['id', 'prompt'\].*--question-column"
    ):
        load_prompts(path)
    with pytest.raises(TypeError, match="row 1 must be a str or a mapping"):
        load_prompts(["ok", 3])  # type: ignore[list-item]


def test_bad_options_are_rejected(tmp_path: Path) -> None:
    aligner = StandInAligner().runnable
    with pytest.raises(ValueError, match="chunk_size"):
        collect_preferences(["q"], ScriptedUpstream(), aligner, tmp_path, chunk_size=0)
    with pytest.raises(ValueError, match="on_upstream_error"):
        collect_preferences(["q"], ScriptedUpstream(), aligner, tmp_path, on_upstream_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aligner must be an AlignerRunnable or a model path"):
        collect_preferences(["q"], ScriptedUpstream(), object(), tmp_path)


def test_a_progress_bar_shows_the_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    collect_preferences(QUESTIONS[:3], ScriptedUpstream(), StandInAligner().runnable, tmp_path)
    assert "collect" in capsys.readouterr().err


def test_with_an_aligner_runnable(tmp_path: Path) -> None:
    from aligner_chain.backends.callable import CallableBackend
    from aligner_chain.runnable import AlignerRunnable

    def fix(question: str, answer: str) -> str:
        if "BROKEN" in answer:
            raise RuntimeError("the Aligner server is down")
        return answer if "FINE" in answer else answer.replace("WRONG", "RIGHT")

    backend = CallableBackend(fix)
    answers = {"q fine": "FINE", "q broken": "BROKEN", "q blank": "   "}
    prompts = ["q1", "q2", "q3", "q fine", "q broken", "q blank"]
    summary = collect_preferences(
        prompts,
        ScriptedUpstream(answers=answers),
        AlignerRunnable(backend=backend),
        tmp_path,
        progress=False,
    )
    assert {k: summary[k] for k in ("written", "unchanged", "failed", "skipped")} == {
        "written": 3,
        "unchanged": 1,
        "failed": 1,
        "skipped": 1,
    }
    assert backend.calls == [5]  # one batched backend call for the chunk (the blank answer skipped)
    assert _read(tmp_path / PREFERENCES_FILE)[0] == {
        "prompt": "q1",
        "chosen": "RIGHT: q1",
        "rejected": "WRONG: q1",
    }
    done = {r["question"]: r for r in _read(tmp_path / DONE_FILE)}
    assert done["q broken"]["reason"] == "backend_error"
