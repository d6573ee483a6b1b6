"""LangGraph integration: a correction node for hand-built graphs and a final-answer router.

The node picks the graph's final answer (the last ``AIMessage`` when it has text, calls no tools
and was not corrected yet) and hands the conversation up to it to an
:class:`~aligner_chain.runnable.AlignerRunnable`, which owns history folding, skip rules and the
failure policy. The correction keeps the answer's *id*, so ``add_messages`` replaces it in place:
the state keeps exactly one message per turn. Tool-calling turns are never touched.

Streaming: when the graph is streamed (``stream_mode="messages"``, ``astream_events``), the
correction is a :class:`~aligner_chain.chat_model.ChatAligner` run whose chunks the client sees,
tagged with the node's name and carrying the original message id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda

from aligner_chain.arguments import strict_keywords
from aligner_chain.messages import ALIGNER_KEY, last_ai_index, skip_reason
from aligner_chain.options import OnFailure, SkipPredicate
from aligner_chain.streaming import is_streaming

if TYPE_CHECKING:
    from aligner_chain.chat_model import ChatAligner
    from aligner_chain.runnable import AlignerRunnable

__all__ = [
    "DEFAULT_ALIGNER_NODE",
    "DEFAULT_TOOLS_NODE",
    "FinalAnswerCorrector",
    "final_answer_index",
    "make_aligner_node",
    "make_final_answer_router",
    "route_final_answer",
]

DEFAULT_TOOLS_NODE = "tools"
DEFAULT_ALIGNER_NODE = "aligner"
_ON_FAILURE = ("passthrough", "raise")
_MISSING = object()


def _messages_of(state: Any, messages_key: str) -> list[BaseMessage]:
    """The message list of a graph state (dict, pydantic model or dataclass) or a plain list."""
    if isinstance(state, list):
        return state
    if isinstance(state, Mapping):
        found = state.get(messages_key, _MISSING)
    else:
        found = getattr(state, messages_key, _MISSING)
    if found is _MISSING:
        keys = list(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            f"graph state has no {messages_key!r} key (found {keys}); pass messages_key= the name of "
            "the state field holding the conversation"
        )
    if not isinstance(found, Sequence):
        raise TypeError(f"state[{messages_key!r}] must be a list of messages, got {type(found).__name__}")
    return list(found)


def final_answer_index(messages: Sequence[BaseMessage], skip: SkipPredicate | None = None) -> int | None:
    """Where the final answer to correct is: the last ``AIMessage`` when it has text, calls no
    tools, was not through an Aligner yet and ``skip(message)`` is not true; else ``None``."""
    index = last_ai_index(messages)
    if index is None:
        return None
    message = messages[index]
    if not isinstance(message, AIMessage) or skip_reason(message) is not None:
        return None
    if ALIGNER_KEY in message.response_metadata or (skip is not None and skip(message)):
        return None
    return index


def _as_runnable(
    aligner: AlignerRunnable | ChatAligner | None, *, history_turns: int, on_failure: OnFailure | None
) -> AlignerRunnable:
    """The runnable that corrects: ``aligner`` itself (a ``ChatAligner`` lends its backend and
    options), with the node's ``history_turns``/``on_failure`` when they are set."""
    from aligner_chain.chat_model import ChatAligner
    from aligner_chain.runnable import AlignerRunnable

    if aligner is None:
        aligner = AlignerRunnable()
    if isinstance(aligner, ChatAligner):
        aligner = AlignerRunnable(
            backend=aligner.get_backend(), history_turns=aligner.history_turns, skip=aligner.skip
        )
    if not isinstance(aligner, AlignerRunnable):
        raise TypeError(
            f"aligner must be an AlignerRunnable, a ChatAligner or None (default Aligner), got "
            f"{type(aligner).__name__}"
        )
    changes: dict[str, Any] = {}
    if history_turns:
        changes["history_turns"] = history_turns
    if on_failure is not None:
        changes["on_failure"] = on_failure
    return aligner.with_options(**changes) if changes else aligner


class FinalAnswerCorrector:
    """What the graph node and the agent middleware share: which message is the final answer
    (:meth:`target`), and the runnable that corrects it (:meth:`correct`)."""

    def __init__(
        self,
        aligner: AlignerRunnable | ChatAligner | None,
        *,
        history_turns: int = 0,
        on_failure: OnFailure | None = None,
        skip: SkipPredicate | None = None,
    ) -> None:
        if on_failure is not None and on_failure not in _ON_FAILURE:
            raise ValueError(f"on_failure must be one of {_ON_FAILURE} (or None), got {on_failure!r}")
        if not isinstance(history_turns, int) or history_turns < 0:
            raise ValueError(f"history_turns must be an int >= 0, got {history_turns!r}")
        if skip is not None and not callable(skip):
            raise TypeError(f"skip must be a callable (message) -> bool, got {type(skip).__name__}")
        self.aligner = _as_runnable(aligner, history_turns=history_turns, on_failure=on_failure)
        self.skip = skip

    def target(self, messages: Sequence[BaseMessage]) -> list[BaseMessage] | None:
        """The conversation up to and including the final answer, or ``None`` (nothing to do)."""
        index = final_answer_index(messages, self.skip)
        return None if index is None else list(messages[: index + 1])

    def correct(self, conversation: list[BaseMessage], config: RunnableConfig | None) -> AIMessage:
        """The corrected final answer (same id), or the original flagged as the runnable's policy says."""
        return _shown(self.aligner.correct_final_answer(conversation, config), config)

    async def acorrect(self, conversation: list[BaseMessage], config: RunnableConfig | None) -> AIMessage:
        """Async twin of :meth:`correct`."""
        return _shown(await self.aligner.acorrect_final_answer(conversation, config), config)


def _shown(message: AIMessage, config: RunnableConfig | None) -> AIMessage:
    """Emit a failed correction's original whole on ``stream_mode="messages"``, so a client that
    already saw part of the correction can replace it (the state is updated by the return value)."""
    if is_streaming(config) and message.response_metadata.get(ALIGNER_KEY, {}).get("status") == "failed":
        from langgraph.graph.message import push_message

        with contextlib.suppress(RuntimeError):  # not inside a graph run: nothing to stream to
            push_message(message, state_key=None)
    return message


# --- the node ----------------------------------------------------------------------------------


@strict_keywords
def make_aligner_node(
    aligner: AlignerRunnable | ChatAligner | None = None,
    *,
    messages_key: str = "messages",
    history_turns: int = 0,
    on_failure: OnFailure | None = None,
    skip: SkipPredicate | None = None,
    name: str = DEFAULT_ALIGNER_NODE,
) -> RunnableLambda[Any, dict[str, Any]]:
    """A LangGraph node that corrects the final answer in ``state[messages_key]``.

    Args:
        aligner: an :class:`~aligner_chain.runnable.AlignerRunnable` (its model, template and
            policies are used), a :class:`~aligner_chain.chat_model.ChatAligner`, or ``None`` for
            ``AlignerRunnable()`` (the ``ALIGNER_MODEL`` environment variable or the default model).
        messages_key: the state field holding the conversation (reduced with ``add_messages``).
        history_turns: earlier messages folded into the question; 0 (default) uses the aligner's
            own ``history_turns`` (itself 0 by default: the last human message only).
        on_failure: ``"raise"`` raises :class:`~aligner_chain.errors.AlignerError` when a correction
            fails; ``"passthrough"`` keeps the original answer flagged ``status="failed"``; ``None``
            (default) follows the aligner's own ``on_failure``.
        skip: ``skip(message) -> bool``; ``True`` leaves that answer alone (no state update).
        name: the node's name (``builder.add_node(node)`` uses it).

    Returns:
        A runnable node with sync and async paths. It returns ``{}`` (no update) unless the last AI
        message is a final answer with text; else ``{messages_key: [corrected]}`` where
        ``corrected`` has the original's id, so ``add_messages`` replaces it in place. Interrupts
        (``GraphBubbleUp``) raised inside the correction or ``skip`` propagate untouched.
    """
    if not isinstance(messages_key, str) or not messages_key:
        raise ValueError(f"messages_key must be a non-empty str, got {messages_key!r}")
    corrector = FinalAnswerCorrector(aligner, history_turns=history_turns, on_failure=on_failure, skip=skip)

    def correct_final_answer(state: Any, config: RunnableConfig) -> dict[str, Any]:
        conversation = corrector.target(_messages_of(state, messages_key))
        if conversation is None:
            return {}
        return {messages_key: [corrector.correct(conversation, config)]}

    async def acorrect_final_answer(state: Any, config: RunnableConfig) -> dict[str, Any]:
        conversation = corrector.target(_messages_of(state, messages_key))
        if conversation is None:
            return {}
        return {messages_key: [await corrector.acorrect(conversation, config)]}

    return RunnableLambda(correct_final_answer, afunc=acorrect_final_answer, name=name)


# --- routing -----------------------------------------------------------------------------------


def make_final_answer_router(
    *,
    tools: str = DEFAULT_TOOLS_NODE,
    aligner: str = DEFAULT_ALIGNER_NODE,
    messages_key: str = "messages",
) -> Callable[[Any], str]:
    """A router for ``add_conditional_edges``: the node name ``tools`` when the last message is an
    ``AIMessage`` with tool calls, else ``aligner`` (a final answer, or anything else)."""

    def route(state: Any) -> str:
        messages = _messages_of(state, messages_key)
        last = messages[-1] if messages else None
        if isinstance(last, AIMessage) and last.tool_calls:  # like tools_condition
            return tools
        return aligner

    route.__name__ = "route_final_answer"
    return route


_default_router = make_final_answer_router()


def route_final_answer(state: Any) -> str:
    """Route a model node's output: ``"tools"`` for a tool-calling turn, ``"aligner"`` otherwise.

    Use with ``builder.add_conditional_edges("model", route_final_answer, ["tools", "aligner"])``;
    for other node names or state keys see :func:`make_final_answer_router`.
    """
    return _default_router(state)
