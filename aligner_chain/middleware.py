"""AlignerMiddleware: correct the final answer of a ``langchain.agents.create_agent`` agent.

Needs the ``agents`` extra (``pip install "aligner-chain[agents]"``), which installs ``langchain``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from langchain.agents.middleware import AgentMiddleware, AgentState
except ImportError as err:  # pragma: no cover - exercised by a test that hides langchain
    raise ImportError(
        'AlignerMiddleware needs langchain (the "agents" extra): pip install "aligner-chain[agents]"'
    ) from err

from langgraph.config import get_config
from langgraph.runtime import Runtime

from aligner_chain.arguments import strict_keywords
from aligner_chain.graph import FinalAnswerCorrector
from aligner_chain.options import OnFailure, SkipPredicate

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

    from aligner_chain.chat_model import ChatAligner
    from aligner_chain.runnable import AlignerRunnable

__all__ = ["AlignerMiddleware"]


class AlignerMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Correct the agent's final answer with an Aligner, after the model call.

    Runs as an ``after_model`` hook (sync and async): when the model's reply is a final answer
    (text, no tool calls, no structured response) it is replaced in place (same id) by its
    correction, with ``response_metadata["aligner"]`` (status, original, model, template). Tool-calling
    turns are returned untouched, so routing, human-in-the-loop review and tool execution are
    unchanged. When the agent is streamed (``stream_mode="messages"``, ``astream_events``), the
    correction streams as a ``ChatAligner`` run under the ``"<name>.after_model"`` node.

    Args:
        aligner: an :class:`~aligner_chain.runnable.AlignerRunnable`, a
            :class:`~aligner_chain.chat_model.ChatAligner`, or ``None`` for ``AlignerRunnable()``.
        on_failure: ``"passthrough"`` keeps the original answer, flagged ``status="failed"``;
            ``"raise"`` raises :class:`~aligner_chain.errors.AlignerError`; ``None`` (default)
            follows the aligner's own ``on_failure`` (itself ``"passthrough"`` by default).
        skip: ``skip(message) -> bool``; ``True`` leaves that answer alone.
        history_turns: earlier messages folded into the question the Aligner sees; 0 (default)
            uses the aligner's own ``history_turns``.
        name: the middleware name (graph nodes are ``"<name>.after_model"``); default the class name.

    Example:
        ```python
        from langchain.agents import create_agent
        from aligner_chain import AlignerRunnable
        from aligner_chain.middleware import AlignerMiddleware

        agent = create_agent(
            "openai:gpt-4.1-mini",
            tools=[...],
            middleware=[AlignerMiddleware(AlignerRunnable("aligner/aligner-7b-v1.0"))],
        )
        ```
    """

    @strict_keywords
    def __init__(
        self,
        aligner: AlignerRunnable | ChatAligner | None = None,
        *,
        on_failure: OnFailure | None = None,
        skip: SkipPredicate | None = None,
        history_turns: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty str or None, got {name!r}")
        self._corrector = FinalAnswerCorrector(
            aligner, history_turns=history_turns, on_failure=on_failure, skip=skip
        )
        self._name = name
        self.tools = []

    @property
    def name(self) -> str:
        """The middleware name; its hook node is ``f"{name}.after_model"``."""
        return self._name or type(self).__name__

    @property
    def aligner(self) -> AlignerRunnable:
        """The runnable this middleware corrects with (a ``ChatAligner`` given is served through one)."""
        return self._corrector.aligner

    def after_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Replace the model's final answer by its correction (same id); tool turns: no update."""
        target = self._target(state)
        if target is None:
            return None
        return {"messages": [self._corrector.correct(target, _current_config())]}

    async def aafter_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async twin of :meth:`after_model`."""
        target = self._target(state)
        if target is None:
            return None
        return {"messages": [await self._corrector.acorrect(target, _current_config())]}

    def _target(self, state: AgentState[Any]) -> Any:
        # A structured response was parsed from this turn: its text is data, not prose to rewrite.
        if state.get("structured_response") is not None:
            return None
        return self._corrector.target(state["messages"])


def _current_config() -> RunnableConfig | None:
    try:
        return get_config()
    except RuntimeError:  # called outside a graph run (e.g. directly in a test)
        return None
