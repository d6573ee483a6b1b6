"""Named Aligner prompt templates: the one contract shared by training and inference.

A template is a string with exactly the fields ``{question}`` and ``{answer}``. It must end on a
token boundary (no trailing whitespace): the Aligner's completion starts with a space.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "DEFAULT_TEMPLATE",
    "TEMPLATES",
    "AlignerTemplate",
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
    }
)
DEFAULT_TEMPLATE = "aligner-v1"
_FIELDS = ("question", "answer")


@dataclass(frozen=True)
class AlignerTemplate:
    """A resolved template: ``name`` is the registered name, or ``"custom"`` for a user string."""

    name: str
    text: str

    def format(self, question: str, answer: str) -> str:
        """Render the prompt. Field values are inserted verbatim, never re-parsed."""
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
            "template string containing {question} and {answer}"
        )
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as err:
        raise ValueError(f"template is not a valid format string: {err}") from err
    missing = [f for f in _FIELDS if f not in fields]
    if missing:
        raise ValueError(
            f"template is missing {', '.join('{' + f + '}' for f in missing)}; a custom template "
            "must contain both {question} and {answer}"
        )
    extra = sorted(fields - set(_FIELDS))
    if extra:
        raise ValueError(
            f"template has unknown field(s) {extra}; only {{question}} and {{answer}} are allowed "
            "(write literal braces as {{ and }})"
        )
    if template != template.rstrip():
        raise ValueError(
            "template ends with whitespace; end it on a token boundary such as 'ASSISTANT:' "
            "(the completion starts with the space)"
        )
    return AlignerTemplate("custom", template)


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


def format_prompt(question: str, answer: str, template: str | AlignerTemplate = DEFAULT_TEMPLATE) -> str:
    """Render the Aligner prompt for one question/answer pair (fold history into ``question`` first
    with :func:`fold_history`).

    >>> format_prompt("Q", "A")
    'BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and harmless: Q | A ASSISTANT:'
    """  # noqa: E501
    return get_template(template).format(question, answer)


def format_completion(correction: str) -> str:
    """The training target after the prompt: a space, then the correction (EOS is added as an id)."""
    return " " + correction


def parse_correction(generated: str) -> str:
    """The correction from the generated text: the leading space and trailing whitespace removed."""
    return generated.strip()
