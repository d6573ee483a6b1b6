"""LangGraph integration: a correction node for hand-built graphs and a final-answer router.

The node corrects the graph's final answer (the last ``AIMessage`` when it has text and no tool
calls) and returns it with the *same id*, so ``add_messages`` replaces it in place: the state keeps
exactly one message per turn. Tool-calling turns are never touched.

Streaming: when the graph is streamed (``stream_mode="messages"``, ``astream_events``), the node
corrects through :class:`~aligner_chain.chat_model.ChatAligner`, a chat-model run whose chunks the
client sees, tagged with the node's name and carrying the original message id. Otherwise it corrects
in one non-streaming call (:meth:`AlignerRunnable.correct_message`, a traced run).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.errors import GraphBubbleUp

from aligner_chain.errors import AlignerError
from aligner_chain.messages import (
    ALIGNER_KEY,
    aligner_metadata,
    last_ai_index,
    message_text,
    skip_reason,
    split_conversation,
    with_metadata,
)
from aligner_chain.prompts import fold_history

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from uuid import UUID

    from aligner_chain.chat_model import ChatAligner
    from aligner_chain.runnable import AlignerRunnable

__all__ = [
    "DEFAULT_ALIGNER_NODE",
    "DEFAULT_TOOLS_NODE",
    "FinalAnswer",
    "FinalAnswerCorrector",
    "OnFailure",
    "SkipPredicate",
    "find_final_answer",
    "is_streaming",
    "make_aligner_node",
    "make_final_answer_router",
    "route_final_answer",
]

logger = logging.getLogger(__name__)

OnFailure = Literal["passthrough", "raise"]
_ON_FAILURE = ("passthrough", "raise")
DEFAULT_TOOLS_NODE = "tools"
DEFAULT_ALIGNER_NODE = "aligner"

SkipPredicate = Callable[[AIMessage], bool]
# Backend reasons that mean "not for the Aligner" rather than "the Aligner broke".
_SKIP_REASONS = frozenset({"too_long"})


# --- which message, which question -------------------------------------------------------------


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


_MISSING = object()


def _needs_correction(message: AIMessage) -> bool:
    """A final answer: text, no tool calls, not already through an Aligner."""
    return skip_reason(message) is None and ALIGNER_KEY not in message.response_metadata


@dataclass(frozen=True)
class FinalAnswer:
    """The final answer to correct and the question (history folded in) it answers."""

    message: AIMessage
    question: str


def find_final_answer(
    messages: Sequence[BaseMessage],
    *,
    history_turns: int = 0,
    skip: SkipPredicate | None = None,
) -> FinalAnswer | None:
    """The last ``AIMessage`` if it is a final answer to correct, with its question.

    ``None`` when there is no AI message, it calls tools, has no text, was already corrected, or
    ``skip(message)`` says so. The question is the last ``HumanMessage`` before the answer; with
    ``history_turns > 0`` the turns before it are folded in (:func:`~aligner_chain.prompts.fold_history`).
    """
    index = last_ai_index(messages)
    if index is None:
        return None
    message = messages[index]
    assert isinstance(message, AIMessage)
    if not _needs_correction(message) or (skip is not None and skip(message)):
        return None
    question, history, _ = split_conversation(messages[: index + 1])
    return FinalAnswer(message, fold_history(question, history, history_turns))


# --- streaming detection -----------------------------------------------------------------------


@runtime_checkable
class _StreamingHandler(Protocol):
    """What LangChain chat models look for to decide to stream (``stream_mode="messages"``,
    ``astream_events``): a callback handler that taps run outputs. Matched structurally, so no
    private class is imported."""

    def tap_output_iter(self, run_id: UUID, output: Iterator[Any]) -> Iterator[Any]: ...

    def tap_output_aiter(self, run_id: UUID, output: AsyncIterator[Any]) -> AsyncIterator[Any]: ...


def is_streaming(config: RunnableConfig | None) -> bool:
    """Whether the current run is being streamed token by token to a client."""
    callbacks = (config or {}).get("callbacks")
    if callbacks is None:
        return False
    handlers = callbacks if isinstance(callbacks, list) else getattr(callbacks, "handlers", [])
    return any(isinstance(h, _StreamingHandler) for h in handlers)


# --- the correction itself ---------------------------------------------------------------------


class FinalAnswerCorrector:
    """Shared engine of the graph node and the agent middleware: picks the final answer out of a
    message list and returns its correction (same id), honouring the skip and failure policies."""

    def __init__(
        self,
        aligner: AlignerRunnable | ChatAligner | None,
        *,
        history_turns: int = 0,
        on_failure: OnFailure | None = None,
        skip: SkipPredicate | None = None,
    ) -> None:
        from aligner_chain.chat_model import ChatAligner
        from aligner_chain.runnable import AlignerRunnable

        if aligner is None:
            aligner = AlignerRunnable()
        if not isinstance(aligner, (AlignerRunnable, ChatAligner)):
            raise TypeError(
                f"aligner must be an AlignerRunnable, a ChatAligner or None (default Aligner), got "
                f"{type(aligner).__name__}"
            )
        if on_failure is not None and on_failure not in _ON_FAILURE:
            raise ValueError(f"on_failure must be one of {_ON_FAILURE} (or None), got {on_failure!r}")
        if not isinstance(history_turns, int) or history_turns < 0:
            raise ValueError(f"history_turns must be an int >= 0, got {history_turns!r}")
        if skip is not None and not callable(skip):
            raise TypeError(f"skip must be a callable (message) -> bool, got {type(skip).__name__}")
        self.aligner = aligner
        # 0 defers to the aligner's own setting (AlignerRunnable(history_turns=...)).
        self.history_turns = history_turns or int(getattr(aligner, "history_turns", 0) or 0)
        self.skip = skip
        inherited = getattr(aligner, "on_failure", "passthrough")
        self.on_failure: OnFailure = on_failure or ("raise" if inherited == "raise" else "passthrough")
        self._chat_only = isinstance(aligner, ChatAligner)  # no non-streaming runnable to call
        self._chat: ChatAligner | None = aligner if isinstance(aligner, ChatAligner) else None

    # selection

    def target(self, messages: Sequence[BaseMessage]) -> FinalAnswer | None:
        return find_final_answer(messages, history_turns=self.history_turns, skip=self.skip)

    # sync

    def correct(self, target: FinalAnswer, config: RunnableConfig | None) -> AIMessage:
        """The corrected final answer (same id), or the original flagged ``"failed"`` (passthrough)."""
        try:
            if self._use_chat_model(target, config):
                result = self._chat_model().invoke(self._chat_input(target), config)
                corrected = self._as_answer(target, result)
            else:
                corrected = self._runnable().correct_message(target.message, target.question, config=config)
        except GraphBubbleUp:  # interrupts and Command-driven control flow belong to the graph
            raise
        except Exception as err:
            return self._failed(target, err, config)
        return self._check(corrected)

    async def acorrect(self, target: FinalAnswer, config: RunnableConfig | None) -> AIMessage:
        """Async twin of :meth:`correct`."""
        try:
            if self._use_chat_model(target, config):
                result = await self._chat_model().ainvoke(self._chat_input(target), config)
                corrected = self._as_answer(target, result)
            else:
                corrected = await self._runnable().acorrect_message(
                    target.message, target.question, config=config
                )
        except GraphBubbleUp:  # interrupts and Command-driven control flow belong to the graph
            raise
        except Exception as err:
            return self._failed(target, err, config)
        return self._check(corrected)

    # helpers

    def _use_chat_model(self, target: FinalAnswer, config: RunnableConfig | None) -> bool:
        if self._chat_only:
            return True
        if not is_streaming(config):
            return False
        # The runnable's own skip predicate answers at once, without a model run to stream.
        own_skip = getattr(self.aligner, "skip", None)
        return not (callable(own_skip) and own_skip(target.message))

    def _runnable(self) -> AlignerRunnable:
        from aligner_chain.runnable import AlignerRunnable

        assert isinstance(self.aligner, AlignerRunnable)
        return self.aligner

    def _chat_model(self) -> ChatAligner:
        if self._chat is None:
            self._chat = _chat_aligner_for(self._runnable())
        return self._chat

    @staticmethod
    def _chat_input(target: FinalAnswer) -> list[BaseMessage]:
        return [HumanMessage(target.question), target.message]

    def _as_answer(self, target: FinalAnswer, result: BaseMessage) -> AIMessage:
        """The chat model's output as the original message with content and metadata replaced."""
        meta = result.response_metadata.get(ALIGNER_KEY)
        if not meta:  # a chat model that does not report: describe the correction ourselves
            original = message_text(target.message)
            model, template = self._describe()
            same = message_text(result) == original
            meta = aligner_metadata(
                "unchanged" if same else "corrected", original=original, model=model, template=template
            )
        corrected = target.message.model_copy(update={"content": result.content})
        return with_metadata(corrected, meta)

    def _describe(self) -> tuple[str, str]:
        """``(model, template)`` names for metadata; never raises."""
        return self.aligner.describe_backend()

    def _check(self, corrected: AIMessage) -> AIMessage:
        meta = corrected.response_metadata.get(ALIGNER_KEY) or {}
        if self.on_failure == "raise" and meta.get("status") == "failed":
            raise AlignerError(f"the Aligner failed: {meta.get('reason') or 'unknown reason'}")
        return corrected

    def _failed(self, target: FinalAnswer, err: Exception, config: RunnableConfig | None) -> AIMessage:
        reason = getattr(err, "reason", None) or "backend_error"
        skipped = reason in _SKIP_REASONS  # e.g. too long for the Aligner: not a failure
        if self.on_failure == "raise" and not skipped:
            if isinstance(err, AlignerError):
                raise err
            raise AlignerError(f"the Aligner failed: {err!r}") from err
        if not skipped:
            logger.warning("Aligner failed, keeping the original answer: %s", err)
        model, template = self._describe()
        meta = aligner_metadata(
            "skipped" if skipped else "failed",
            original=message_text(target.message),
            model=model,
            template=template,
            reason=reason,
            detail=str(getattr(err, "detail", None) or err),
        )
        flagged = with_metadata(target.message, meta)
        if is_streaming(config):
            _push_to_stream(flagged)
        return flagged


def _chat_aligner_for(aligner: AlignerRunnable) -> ChatAligner:
    """A ChatAligner sharing the runnable's backend, for streamed corrections."""
    from aligner_chain.chat_model import ChatAligner

    return ChatAligner(backend=aligner.get_backend())


def _push_to_stream(message: AIMessage) -> None:
    """Emit ``message`` whole on ``stream_mode="messages"`` so a client that already saw part of a
    failed correction can replace it; the state is updated by the node's return value."""
    from langgraph.graph.message import push_message

    with contextlib.suppress(RuntimeError):  # not inside a graph run: nothing to stream to
        push_message(message, state_key=None)


# --- the node ----------------------------------------------------------------------------------


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
        target = corrector.target(_messages_of(state, messages_key))
        if target is None:
            return {}
        return {messages_key: [corrector.correct(target, config)]}

    async def acorrect_final_answer(state: Any, config: RunnableConfig) -> dict[str, Any]:
        target = corrector.target(_messages_of(state, messages_key))
        if target is None:
            return {}
        return {messages_key: [await corrector.acorrect(target, config)]}

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
