"""One answer's way through the Aligner, shared by every front end (runnable, chat models, graph).

:func:`make_draft` owns the input rules: the question with earlier turns folded in
(``history_turns``) and why an answer is not sent at all (tool calls, no text, the ``skip``
predicate). :func:`answer_after` owns the output: the answer message with its text replaced when
corrected and ``response_metadata["aligner"]`` describing what happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import AIMessage, BaseMessage

from aligner_chain.backends.base import CorrectionRequest, CorrectionResult, Outcome, classify
from aligner_chain.errors import CorrectionFailed
from aligner_chain.messages import (
    HistoryPair,
    aligner_metadata,
    as_ai_message,
    message_text,
    replace_text,
    skip_reason,
    with_metadata,
)
from aligner_chain.options import AlignerOptions
from aligner_chain.prompts import fold_history

__all__ = ["Draft", "answer_after", "make_draft", "outcome_of", "outcome_of_chat", "outcome_of_error"]


@dataclass(frozen=True)
class Draft:
    """An answer to correct: the message, the question it answers (history folded in), and the
    reason it is not sent to the Aligner (``None`` when it is)."""

    message: AIMessage
    question: str
    skip: str | None = None

    @property
    def text(self) -> str:
        return message_text(self.message)

    def request(self) -> CorrectionRequest:
        return CorrectionRequest(question=self.question, answer=self.text)


def make_draft(
    answer: AIMessage, question: str, history: Sequence[HistoryPair], options: AlignerOptions
) -> Draft:
    """The draft for ``answer`` under ``options`` (``history_turns``, ``skip``)."""
    reason = skip_reason(answer)
    message = as_ai_message(answer)
    if reason is None and options.skip is not None and options.skip(message):
        reason = "skip_predicate"
    return Draft(message, fold_history(question, history, options.history_turns), reason)


def answer_after(draft: Draft, outcome: Outcome, *, model: str, template: str) -> AIMessage:
    """The draft's message after the Aligner: the same message (id, tool calls, usage, name and
    metadata kept) with its text replaced when ``corrected`` and the ``aligner`` report attached."""
    meta = aligner_metadata(
        outcome.status,
        original=draft.text,
        model=model,
        template=template,
        reason=outcome.reason,
        detail=outcome.detail,
        **outcome.extra,
    )
    message = replace_text(draft.message, outcome.text) if outcome.status == "corrected" else draft.message
    return with_metadata(message, meta)


def outcome_of(draft: Draft, result: CorrectionResult | Outcome) -> Outcome:
    """What a backend result means for the draft (an outcome passes as it is)."""
    return result if isinstance(result, Outcome) else classify(draft.text, result)


def outcome_of_error(draft: Draft, err: Exception) -> Outcome:
    """The outcome of a correction that raised: its own status and reason, else a failure."""
    if isinstance(err, CorrectionFailed):
        return Outcome(err.status, draft.text, err.reason, err.detail)
    return Outcome("failed", draft.text, getattr(err, "reason", None) or "backend_error", repr(err))


def outcome_of_chat(draft: Draft, result: BaseMessage) -> Outcome:
    """The outcome reported by a :class:`ChatAligner` run (its metadata says corrected or unchanged)."""
    status = result.response_metadata.get("aligner", {}).get("status")
    if status == "corrected":
        return Outcome("corrected", message_text(result))
    return Outcome("unchanged", draft.text)
