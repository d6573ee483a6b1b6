"""Named Aligner prompt templates: the one contract shared by training and inference.

A template comes in one of two kinds, told apart by its fields:

* whole-answer (``granularity="answer"``): exactly ``{question}`` and ``{answer}``; the Aligner
  rewrites the whole answer;
* sentence-level (``granularity="sentence"``): exactly ``{question}``, ``{prefix}`` and ``{sentence}``;
  the Aligner reads the corrected answer so far and the upstream's next sentence and writes that
  sentence's revision (empty to drop it), as in Stream Aligner.

It must end on a token boundary (no trailing whitespace): the Aligner's completion starts with a space.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = [
    "DEFAULT_SENTENCE_TEMPLATE",
    "DEFAULT_TEMPLATE",
    "GRANULARITIES",
    "TEMPLATES",
    "AlignerTemplate",
    "Granularity",
    "default_template",
    "fold_history",
    "format_completion",
    "format_prompt",
    "get_template",
    "parse_correction",
]

_V1_TASK = "Edit the following Question-Answer pair to make it more {goal}: {{question}} | {{answer}}"

TEMPLATES: Mapping[str, str] = MappingProxyType(
    {
        # The released aligner/aligner-7b-v1.0 was trained with this one.
        "aligner-v1": "BEGINNING OF CONVERSATION: USER: "
        + _V1_TASK.format(goal="helpful and harmless")
        + " ASSISTANT:",
        # The authors' later general-purpose template.
        "aligner-general": "BEGINNING OF CONVERSATION: USER: ##Question: {question}\n"
        "##Answer: {answer}\n##Correction:  ASSISTANT:",
        # The Aligner-2B AlpacaEval submission.
        "aligner-2b": "##Question: {question} ##Answer: {answer} ##Revision:",
        "empathy": "BEGINNING OF CONVERSATION: USER: "
        + _V1_TASK.format(goal="empathic and helpful")
        + " ASSISTANT:",
        # Sentence level: Stream Aligner's published format (AAAI 2025).
        "stream-aligner": "##Question: {question} | ##Answer_Prefix: {prefix} | "
        "##Answer_Last_Sentence: {sentence} | ##Your_Revision:",
    }
)
DEFAULT_TEMPLATE = "aligner-v1"
DEFAULT_SENTENCE_TEMPLATE = "stream-aligner"

Granularity = Literal["answer", "sentence"]
"""What an Aligner corrects: a whole answer, or one sentence after the corrected prefix."""
GRANULARITIES: tuple[Granularity, ...] = ("answer", "sentence")
_FIELDS: Mapping[Granularity, frozenset[str]] = MappingProxyType(
    {"answer": frozenset({"question", "answer"}), "sentence": frozenset({"question", "prefix", "sentence"})}
)


@dataclass(frozen=True)
class AlignerTemplate:
    """A resolved template: ``name`` is the registered name, or ``"custom"`` for a user string."""

    name: str
    text: str

    @property
    def granularity(self) -> Granularity:
        """``"sentence"`` for a template with ``{prefix}`` and ``{sentence}``, else ``"answer"``."""
        return _granularity(_fields(self.text))

    def format(self, question: str, answer: str, prefix: str | None = None) -> str:
        """Render the prompt. Field values are inserted verbatim, never re-parsed.

        A whole-answer template takes the answer; a sentence-level template takes the sentence as
        ``answer`` and the corrected text before it as ``prefix`` (``""`` for the first sentence).

        Raises:
            ValueError: a ``prefix`` for a whole-answer template, or none for a sentence-level one
                (a whole answer reaches a sentence-level Aligner through the sentence loop).
        """
        if self.granularity == "sentence":
            if prefix is None:
                raise ValueError(
                    f"template {self.to_json()!r} corrects one sentence after the corrected prefix, so a "
                    "request needs a prefix; send whole answers through AlignerRunnable, with_aligner or "
                    "AlignedChatModel, which correct them sentence by sentence"
                )
            return self.text.format(question=question, prefix=prefix, sentence=answer)
        if prefix is not None:
            raise ValueError(
                f"template {self.to_json()!r} corrects whole answers; a request with a prefix needs a "
                "sentence-level template such as 'stream-aligner'"
            )
        return self.text.format(question=question, answer=answer)

    def to_json(self) -> str:
        """What is saved with a trained model: the name when registered, else the text itself."""
        return self.name if self.name != "custom" else self.text


def get_template(template: str | AlignerTemplate = DEFAULT_TEMPLATE) -> AlignerTemplate:
    """Resolve a registered name or a custom template string, validating it.

    Raises:
        ValueError: unknown name, a custom string missing ``{question}`` or ``{answer}``, other
            fields, or trailing whitespace.
    """
    if isinstance(template, AlignerTemplate):
        return template
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    if template in TEMPLATES:
        return AlignerTemplate(template, TEMPLATES[template])
    if "{" not in template:
        known = ", ".join(sorted(TEMPLATES))
        raise ValueError(
            f"template {template!r} is not a registered name ({known}); pass one of them or a "
            "template string containing {question} and {answer} (or {question}, {prefix} and {sentence})"
        )
    try:
        fields = _fields(template)
    except ValueError as err:
        raise ValueError(f"template is not a valid format string: {err}") from err
    kind = _granularity(fields)
    missing = sorted(_FIELDS[kind] - fields)
    if missing:
        raise ValueError(
            f"template is missing {', '.join('{' + f + '}' for f in missing)}; a custom template must "
            "contain {question} and {answer} (whole answers) or {question}, {prefix} and {sentence} "
            "(sentence level)"
        )
    extra = sorted(fields - _FIELDS[kind])
    if extra:
        allowed = ", ".join("{" + f + "}" for f in sorted(_FIELDS[kind]))
        what = "sentence-level" if kind == "sentence" else "whole-answer"
        raise ValueError(
            f"template has unknown field(s) {extra}; a {what} template takes only {allowed} "
            "(write literal braces as {{ and }})"
        )
    if template != template.rstrip():
        raise ValueError(
            "template ends with whitespace; end it on a token boundary such as 'ASSISTANT:' "
            "(the completion starts with the space)"
        )
    return AlignerTemplate("custom", template)


def _fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}


def _granularity(fields: set[str]) -> Granularity:
    return "sentence" if fields & {"prefix", "sentence"} else "answer"


def fold_history(question: str, history: Sequence[tuple[str, str]], history_turns: int) -> str:
    """Fold the last ``history_turns`` earlier messages into the question.

    ``history`` holds ``(role, text)`` pairs, oldest first, role ``"user"`` or ``"assistant"``.
    With ``history_turns=0`` (the default everywhere) the question is returned unchanged.
    """
    if history_turns < 0:
        raise ValueError(f"history_turns must be >= 0, got {history_turns}")
    turns = list(history)[-history_turns:] if history_turns else []
    if not turns:
        return question
    lines = [f"{'User' if role == 'user' else 'Assistant'}: {text}" for role, text in turns]
    return "Conversation so far:\n" + "\n".join(lines) + f"\nCurrent question: {question}"


def default_template(granularity: Granularity = "answer") -> str:
    """The registered template used when none is given: ``"aligner-v1"`` for whole answers,
    ``"stream-aligner"`` at sentence level."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {granularity!r}")
    return DEFAULT_SENTENCE_TEMPLATE if granularity == "sentence" else DEFAULT_TEMPLATE


def format_prompt(
    question: str,
    answer: str,
    template: str | AlignerTemplate = DEFAULT_TEMPLATE,
    *,
    prefix: str | None = None,
) -> str:
    """Render the Aligner prompt for one question/answer pair (fold history into ``question`` first
    with :func:`fold_history`); for a sentence-level template ``answer`` is the sentence and
    ``prefix`` the corrected answer before it.

    >>> format_prompt("Q", "A")
    'BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and harmless: Q | A ASSISTANT:'
    """  # noqa: E501
    return get_template(template).format(question, answer, prefix)


def format_completion(correction: str) -> str:
    """The training target after the prompt: a space, then the correction (EOS is added as an id)."""
    return " " + correction


def parse_correction(generated: str) -> str:
    """The correction from the generated text: the leading space and trailing whitespace removed."""
    return generated.strip()
