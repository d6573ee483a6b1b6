"""Sentence-level correction: one answer corrected sentence by sentence, as its text arrives.

A :class:`SentenceLoop` owns the rules every front end shares (the runnable, ``with_aligner``,
``AlignedChatModel``, and the training rows built from question/answer/correction data):

* what is sent: each prose unit of :mod:`aligner_chain.segmentation` (a sentence, a list item's
  sentence, a heading) as ``CorrectionRequest(question, sentence, prefix)``, where ``prefix`` is the
  corrected answer so far; code blocks, tables, rules and blank lines pass through as written;
* what comes back: :func:`~aligner_chain.backends.base.classify` at sentence level (an empty revision
  drops the sentence); a skipped or failed sentence stays as written and is flagged
  (``on_failure="raise"`` raises instead); a revision keeps the unit's marker and indentation. A
  unit's trailing whitespace is held back until more text follows, so a dropped sentence leaves no
  stray space or empty list item behind (:meth:`SentenceLoop.finish` gives what is left at the end);
* the answer's outcome: ``corrected`` when the text changed, else ``failed``/``skipped`` when a sentence
  was, else ``unchanged``; an answer whose every sentence was dropped fails (``"empty_correction"``)
  and keeps the original. The outcome's ``extra`` lists each sentence (``sentence``, ``status``,
  ``revision`` when corrected, ``reason``/``detail`` when skipped or failed).

:func:`correct_in_rounds` corrects whole answers: round ``k`` sends the ``k``-th sentence of every
answer in one backend call (a sentence needs the corrected prefix before it, so one answer's
sentences go one after another).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from langgraph.errors import GraphBubbleUp

from aligner_chain.backends.base import (
    AlignerBackend,
    CorrectionRequest,
    CorrectionResult,
    Outcome,
    classify,
)
from aligner_chain.errors import AlignerError
from aligner_chain.options import OnFailure
from aligner_chain.segmentation import StreamSegmenter, Unit

__all__ = ["SentenceLoop", "acorrect_in_rounds", "correct_in_rounds"]

logger = logging.getLogger(__name__)


class SentenceLoop:
    """One answer on its way through a sentence-level Aligner.

    Feed the upstream's text with :meth:`feed` (and :meth:`flush` at the end) to get the completed
    units; correct each with :meth:`correct` / :meth:`acorrect` (or :meth:`request` then
    :meth:`settle`), in order; each returns the unit's text in the corrected answer, to stream at once.
    :meth:`outcome` is the answer's outcome once every unit is settled.
    """

    def __init__(
        self,
        question: str,
        *,
        on_failure: OnFailure = "passthrough",
        model: str = "the Aligner",
        language: str = "en",
    ) -> None:
        self.question = question
        self.on_failure = on_failure
        self.model = model
        self._segmenter = StreamSegmenter(language)
        self._fed: list[str] = []
        self._out: list[str] = []
        self._pending = ""  # whitespace after the last output, held until more text follows
        self._last_dropped = False
        self._finished = False
        self._broken: CorrectionResult | None = None  # the backend call raised: no more calls
        self.sentences: list[dict[str, Any]] = []

    # -- text in ----------------------------------------------------------------------------------

    def feed(self, text: str) -> list[Unit]:
        """More of the answer; the units it completes."""
        self._fed.append(text)
        return self._segmenter.feed(text)

    def flush(self) -> list[Unit]:
        """The end of the answer; the units still open."""
        return self._segmenter.flush()

    @property
    def original(self) -> str:
        """Everything fed so far."""
        return "".join(self._fed)

    @property
    def text(self) -> str:
        """The corrected answer so far (what was returned for every settled unit)."""
        return "".join(self._out)

    def release_whitespace(self) -> str:
        """The whitespace held back after the last output (to emit before text that bypasses the
        loop)."""
        pending, self._pending = self._pending, ""
        self._out.append(pending)
        return pending

    def finish(self) -> str:
        """The end of the corrected answer: the held whitespace, unless the last sentence was
        dropped. Once; later calls return ``""``."""
        if self._finished:
            return ""
        self._finished = True
        tail = "" if self._last_dropped else self._pending
        self._pending = ""
        self._out.append(tail)
        return tail

    @property
    def prefix(self) -> str:
        """What the Aligner sees before the next sentence: the corrected answer so far, stripped."""
        return self.text.strip()

    # -- one unit ---------------------------------------------------------------------------------

    def request(self, unit: Unit) -> CorrectionRequest | None:
        """The request for a prose unit; ``None`` for a unit that passes through (code, table...)."""
        if not unit.is_prose:
            return None
        return CorrectionRequest(question=self.question, answer=unit.body, prefix=self.prefix)

    def settle(self, unit: Unit, result: CorrectionResult | None) -> str:
        """Record the unit's outcome (``result=None``: it passed through) and return its output.

        Raises:
            AlignerError: the sentence failed and ``on_failure="raise"``.
        """
        if result is None:
            return self._place(unit, None)
        outcome = classify(unit.body, result, granularity="sentence")
        record: dict[str, Any] = {"sentence": unit.body, "status": outcome.status}
        if outcome.status == "corrected":
            record["revision"] = outcome.text
        if outcome.reason:
            record["reason"] = outcome.reason
        if outcome.detail:
            record["detail"] = outcome.detail
        self.sentences.append(record)
        if outcome.status == "failed":
            detail = f" ({outcome.detail})" if outcome.detail else ""
            if self.on_failure == "raise":
                message = f"the Aligner ({self.model}) failed on a sentence: {outcome.reason}{detail}"
                raise AlignerError(message) from outcome.error()
            logger.warning(
                "Aligner %s failed on a sentence (%s), keeping it as written%s",
                self.model,
                outcome.reason,
                detail,
            )
        return self._place(unit, outcome.text if outcome.status == "corrected" else None)

    def _place(self, unit: Unit, revision: str | None) -> str:
        """What to emit now for ``unit`` (``revision=None``: as written): the held whitespace and the
        unit's text; the unit's own trailing whitespace is held. A dropped sentence leaves its line's
        marker when more of the line follows, its newline when it ended a line that began before it,
        and nothing when it was the whole line."""
        out = ""
        if revision == "":
            self._last_dropped = True
            newline = "\n" in unit.trail
            if unit.line_start and not newline and unit.lead.strip():
                out, self._pending = self._pending + unit.lead, ""
            elif not unit.line_start and newline:
                self._pending = "\n"
        else:
            text = unit.text if revision is None else unit.lead + revision + unit.trail
            body = text.rstrip()
            if not body:  # a blank line: held with the rest of the whitespace
                self._pending += text
            else:
                out, self._pending = self._pending + body, text[len(body) :]
                self._last_dropped = False
        self._out.append(out)
        return out

    def correct(self, backend: AlignerBackend, unit: Unit) -> str:
        """Correct one unit now (a backend call for a prose unit) and return its output. Once a
        backend call has raised, later sentences fail with the same error without a call."""
        request = self.request(unit)
        if request is None:
            return self.settle(unit, None)
        if self._broken is None:
            try:
                results = backend.correct([request])
            except GraphBubbleUp:
                raise
            except Exception as err:
                self.break_off(err)
            else:
                return self.settle(unit, _single(results))
        assert self._broken is not None
        return self.settle(unit, self._broken)

    async def acorrect(self, backend: AlignerBackend, unit: Unit) -> str:
        """Async twin of :meth:`correct`."""
        request = self.request(unit)
        if request is None:
            return self.settle(unit, None)
        if self._broken is None:
            try:
                results = await backend.acorrect([request])
            except GraphBubbleUp:
                raise
            except Exception as err:
                self.break_off(err)
            else:
                return self.settle(unit, _single(results))
        assert self._broken is not None
        return self.settle(unit, self._broken)

    @property
    def broken(self) -> CorrectionResult | None:
        """The failed result every later sentence gets once a backend call has raised."""
        return self._broken

    def break_off(self, err: BaseException) -> None:
        """The backend raised: this sentence and every later one fail with ``backend_error``."""
        self._broken = CorrectionResult.failed("backend_error", f"{type(err).__name__}: {err}")

    # -- the answer -------------------------------------------------------------------------------

    def outcome(self) -> Outcome:
        """The answer's outcome (after :meth:`finish`); ``text`` is the corrected answer (the
        original when it failed)."""
        self.finish()
        original = self.original
        overall = classify(original, CorrectionResult.ok(self.text))
        if overall.status == "unchanged":
            for status in ("failed", "skipped"):
                first = next((s for s in self.sentences if s["status"] == status), None)
                if first is not None:
                    overall = Outcome(status, original, first.get("reason"), first.get("detail"))
                    break
        extra = {"granularity": "sentence", "sentences": list(self.sentences)}
        return Outcome(overall.status, overall.text, overall.reason, overall.detail, extra)


def _single(results: Sequence[CorrectionResult]) -> CorrectionResult:
    if len(results) != 1:
        return CorrectionResult.failed("backend_error", f"the backend returned {len(results)} results for 1")
    return results[0]


# -- whole answers, in rounds -----------------------------------------------------------------------


class _Answer:
    """An answer corrected in rounds: its units, and the next one waiting for the backend."""

    def __init__(self, loop: SentenceLoop, text: str) -> None:
        self.loop = loop
        self.units = deque(loop.feed(text) + loop.flush())
        self.error: Exception | None = None
        self.waiting: tuple[Unit, CorrectionRequest] | None = None

    def advance(self) -> CorrectionRequest | None:
        """Settle the units that need no backend call; the request of the next prose unit, if any."""
        while self.units and self.error is None:
            unit = self.units.popleft()
            request = self.loop.request(unit)
            if request is not None and self.loop.broken is None:
                self.waiting = (unit, request)
                return request
            self._settle(unit, None if request is None else self.loop.broken)
        return None

    def settle(self, result: CorrectionResult) -> None:
        assert self.waiting is not None
        unit, self.waiting = self.waiting[0], None
        self._settle(unit, result)

    def _settle(self, unit: Unit, result: CorrectionResult | None) -> None:
        try:
            self.loop.settle(unit, result)
        except AlignerError as err:  # on_failure="raise": this answer only
            self.error = err

    def result(self) -> Outcome | Exception:
        return self.error if self.error is not None else self.loop.outcome()


def _rounds_start(loops: Sequence[SentenceLoop], texts: Sequence[str]) -> list[_Answer]:
    if len(loops) != len(texts):
        raise ValueError(f"{len(loops)} loops for {len(texts)} answers")
    return [_Answer(loop, text) for loop, text in zip(loops, texts, strict=True)]


def _round(answers: list[_Answer]) -> list[tuple[_Answer, CorrectionRequest]]:
    return [(a, r) for a in answers if (r := a.advance()) is not None]


def _settle_round(pending: list[tuple[_Answer, CorrectionRequest]], results: Any) -> None:
    if isinstance(results, Exception):
        for answer, _ in pending:
            answer.loop.break_off(results)
        results = [answer.loop.broken for answer, _ in pending]
    elif len(results) != len(pending):
        detail = f"the backend returned {len(results)} results for {len(pending)} requests"
        results = [CorrectionResult.failed("backend_error", detail)] * len(pending)
    for (answer, _), result in zip(pending, results, strict=True):
        answer.settle(result)


def correct_in_rounds(
    backend: AlignerBackend, loops: Sequence[SentenceLoop], texts: Sequence[str]
) -> list[Outcome | Exception]:
    """Correct whole answers (``texts[i]`` with ``loops[i]``): one backend call per round, each
    round the next sentence of every answer. An ``AlignerError`` (``on_failure="raise"``) is that
    answer's result; the others go on."""
    answers = _rounds_start(loops, texts)
    while pending := _round(answers):
        try:
            results: Any = backend.correct([r for _, r in pending])
        except GraphBubbleUp:
            raise
        except Exception as err:  # the whole call failed: these answers' sentences fail from here
            results = err
        _settle_round(pending, results)
    return [a.result() for a in answers]


async def acorrect_in_rounds(
    backend: AlignerBackend, loops: Sequence[SentenceLoop], texts: Sequence[str]
) -> list[Outcome | Exception]:
    """Async twin of :func:`correct_in_rounds`."""
    answers = _rounds_start(loops, texts)
    while pending := _round(answers):
        try:
            results: Any = await backend.acorrect([r for _, r in pending])
        except GraphBubbleUp:
            raise
        except Exception as err:
            results = err
        _settle_round(pending, results)
    return [a.result() for a in answers]
