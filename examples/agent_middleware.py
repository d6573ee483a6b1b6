"""A LangChain v1 agent (``create_agent``) whose final answer is corrected by ``AlignerMiddleware``.

The middleware runs after each model call: tool-calling turns pass untouched (so tools, routing and
human-in-the-loop review work as before); the final answer is replaced in place by its correction,
with ``response_metadata["aligner"]`` (status, original answer, model). It composes with other
middleware; here ``ModelRetryMiddleware`` retries a flaky upstream call first.

Needs the ``agents`` extra: ``pip install "aligner-chain[agents]"``.

Runs offline: the upstream model is a fake chat model replaying a tool call then a wrong final
answer, and the Aligner is the tiny demo Aligner that ``make demo`` trains into
``runs/quickstart/aligner``. The offline script stays inside what that Aligner learned (the synthetic
task of ``training/demo/synthetic.py``, in its exact phrasings): the agent looks up how many hours are in
a day, then answers "There are 12 hours in a day.", which the Aligner corrects to 24.

With a real provider and the released Aligner::

    from langchain.agents import create_agent
    from aligner_chain import AlignerRunnable
    from aligner_chain.middleware import AlignerMiddleware

    agent = create_agent(
        "openai:gpt-4.1-mini",                     # or "anthropic:claude-sonnet-4-5", or a chat model
        tools=[lookup_unit],
        middleware=[AlignerMiddleware(AlignerRunnable("aligner/aligner-7b-v1.0"))],
    )

Usage: ``python examples/agent_middleware.py [--aligner PATH_OR_HUB_ID] [--max-new-tokens N]``
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from langchain.agents import create_agent
from langchain.agents.middleware import ModelRetryMiddleware
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool

from aligner_chain import AlignerRunnable
from aligner_chain.middleware import AlignerMiddleware

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import ReplayChatModel, parse_args, replay, resolve_aligner, show

QUESTION = "How many hours in a day are there?"
UNITS = {"hours in a day": 24, "minutes in an hour": 60, "days in a week": 7}


@tool
def lookup_unit(unit: str) -> str:
    """How many of a unit make up the next one, e.g. ``lookup_unit("hours in a day")``."""
    if unit not in UNITS:
        return f"Unknown unit {unit!r}; known: {', '.join(UNITS)}."
    return f"There are {UNITS[unit]} {unit}."


def scripted_model() -> ReplayChatModel:
    """A tool call, then a final answer that gets the tool's result wrong."""
    call = {"name": "lookup_unit", "args": {"unit": "hours in a day"}, "id": "call-1"}
    return replay([AIMessage("", tool_calls=[call]), AIMessage("There are 12 hours in a day.")])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "create_agent with AlignerMiddleware, offline.")
    model_path = resolve_aligner(args.aligner)
    if model_path is None:
        return 2

    aligner = AlignerRunnable(model_path, max_new_tokens=args.max_new_tokens)
    agent = create_agent(
        scripted_model(),
        tools=[lookup_unit],
        middleware=[ModelRetryMiddleware(max_retries=2), AlignerMiddleware(aligner)],
    )
    result = agent.invoke({"messages": [HumanMessage(QUESTION)]})

    for message in result["messages"]:
        if isinstance(message, AIMessage) and message.tool_calls:
            print(f"[{message.type}] calls {[c['name'] for c in message.tool_calls]} (untouched)")
        else:
            print(f"[{message.type}] {message.text}")
    show("final answer", result["messages"][-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
