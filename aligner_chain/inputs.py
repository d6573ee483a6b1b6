"""What :class:`~aligner_chain.runnable.AlignerRunnable` accepts: an ``AIMessage`` (or chunk), a
``str``, or ``{"question", "answer", "history"?}``; the question from the dict, else from
``config={"configurable": {"aligner_question": ...}}``. Each input becomes an :class:`Item`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig

from aligner_chain.correction import Draft, make_draft
from aligner_chain.messages import message_text, normalize_history
from aligner_chain.options import AlignerOptions

__all__ = ["QUESTION_CONFIG_KEY", "Item", "parse_input"]

QUESTION_CONFIG_KEY = "aligner_question"
"""``config={"configurable": {"aligner_question": ...}}`` gives the question for one call."""

_DICT_KEYS = ("question", "answer", "history")


@dataclass(frozen=True)
class Item:
    """One input on its way through the Aligner (a ``str`` answer comes back as a ``str``) and the
    traced run it belongs to."""

    kind: Literal["message", "str"]
    draft: Draft
    run: Any = None


def parse_input(input: Any, config: RunnableConfig | None, options: AlignerOptions, run: Any = None) -> Item:
    """The item for one input of :class:`~aligner_chain.runnable.AlignerRunnable`.

    Raises:
        ValueError: a dict without ``answer`` or with other keys.
        TypeError: an answer that is not an ``AIMessage`` or a str, or a question of another type.
    """
    question: Any = None
    history: Any = None
    if isinstance(input, Mapping):
        unknown = sorted(str(k) for k in input if k not in _DICT_KEYS)
        if unknown or "answer" not in input:
            raise ValueError(
                f"AlignerRunnable input dict must have an 'answer' key (and optionally 'question' and "
                f"'history'); got keys {sorted(map(str, input))}"
            )
        answer, question, history = input["answer"], input.get("question"), input.get("history")
    else:
        answer = input
    if question is None:
        question = ((config or {}).get("configurable") or {}).get(QUESTION_CONFIG_KEY)
    if isinstance(question, BaseMessage):
        question = message_text(question)
    if question is not None and not isinstance(question, str):
        raise TypeError(f"question must be a str or a message, got {type(question).__name__}")
    pairs = normalize_history(history)
    if isinstance(answer, str):
        return Item("str", make_draft(AIMessage(content=answer), question or "", pairs, options), run)
    if isinstance(answer, AIMessage):
        return Item("message", make_draft(answer, question or "", pairs, options), run)
    if isinstance(answer, BaseMessage):
        raise TypeError(
            f"the answer must be an AIMessage (or a str), got {type(answer).__name__}; put "
            "AlignerRunnable after a chat model, or pass {'question': ..., 'answer': ...}"
        )
    raise TypeError(
        f"AlignerRunnable takes an AIMessage, a str or a dict with 'answer', got {type(answer).__name__}"
    )
