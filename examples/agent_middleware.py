"""A LangChain v1 agent (``create_agent``) whose final answer is corrected by ``AlignerMiddleware``.

The middleware runs after each model call: tool-calling turns pass untouched (so tools, routing and
human-in-the-loop review work as before); the final answer is replaced in place by its correction,
with ``response_metadata["aligner"]`` (status, original answer, model). It composes with other
middleware; here ``ModelRetryMiddleware`` retries a flaky upstream call first.

Needs the ``agents`` extra: ``pip install "aligner-chain[agents]"``.

Runs offline: the upstream model is a fake chat model replaying a tool call then a final answer, and
the Aligner is the tiny demo Aligner that ``make demo`` trains into ``runs/quickstart/aligner``.

With a real provider and the released Aligner::

    from langchain.agents import create_agent
    from aligner_chain import AlignerRunnable
    from aligner_chain.middleware import AlignerMiddleware

    agent = create_agent(
        "openai:gpt-4.1-mini",                     # or "anthropic:claude-sonnet-4-5", or a chat model
        tools=[get_weather],
        middleware=[AlignerMiddleware(AlignerRunnable("aligner/aligner-7b-v1.0"))],
    )

Usage: ``python examples/agent_middleware.py [--aligner PATH_OR_HUB_ID] [--max-new-tokens N]``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import ModelRetryMiddleware
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool

from aligner_chain import AlignerRunnable
from aligner_chain.middleware import AlignerMiddleware

DEFAULT_ALIGNER = "runs/quickstart/aligner"
QUESTION = "My toddler swallowed a button battery. What should I do?"


@tool
def find_poison_center(country: str) -> str:
    """The poison control phone number for a country."""
    return f"{country} poison control: 1-800-222-1222 (24/7)."


class ReplayChatModel(GenericFakeChatModel):
    """Stands in for a provider chat model: replays scripted replies, tool calls included."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ReplayChatModel:
        return self

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._generate(messages, stop=stop, **kwargs).generations[0].message
        assert isinstance(reply, AIMessage)
        calls = [
            tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
            for i, c in enumerate(reply.tool_calls)
        ]
        chunk = AIMessageChunk(
            content=reply.content, id=reply.id, tool_call_chunks=calls, chunk_position="last"
        )
        yield ChatGenerationChunk(message=chunk)


def scripted_model() -> ReplayChatModel:
    call = {"name": "find_poison_center", "args": {"country": "US"}, "id": "call-1"}
    return ReplayChatModel(
        messages=iter(
            [
                AIMessage("", tool_calls=[call]),
                AIMessage("Give them some milk and wait to see if they get a tummy ache."),
            ]
        )
    )


def resolve_aligner(value: str) -> str | None:
    """A local Aligner directory or a hub id (``org/name``); ``None`` (after saying why) otherwise."""
    if Path(value).is_dir():
        return value
    if value != DEFAULT_ALIGNER and re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", value):
        return value  # a hub id: downloaded by transformers on first use
    print(
        f"No Aligner at {value!r}. Train the tiny demo Aligner with `make demo` (it is saved to "
        f"{DEFAULT_ALIGNER}), or pass --aligner a local Aligner directory or a hub id such as "
        "aligner/aligner-7b-v1.0.",
        file=sys.stderr,
    )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="create_agent with AlignerMiddleware, offline.")
    parser.add_argument("--aligner", default=DEFAULT_ALIGNER, help="Aligner directory or hub id")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest correction (tokens)")
    args = parser.parse_args(argv)
    model_path = resolve_aligner(args.aligner)
    if model_path is None:
        return 2

    aligner = AlignerRunnable(model_path, max_new_tokens=args.max_new_tokens)
    agent = create_agent(
        scripted_model(),
        tools=[find_poison_center],
        middleware=[ModelRetryMiddleware(max_retries=2), AlignerMiddleware(aligner)],
    )
    result = agent.invoke({"messages": [HumanMessage(QUESTION)]})

    for message in result["messages"]:
        if isinstance(message, AIMessage) and message.tool_calls:
            print(f"[{message.type}] calls {[c['name'] for c in message.tool_calls]} (untouched)")
        else:
            print(f"[{message.type}] {message.text}")
    meta = result["messages"][-1].response_metadata.get("aligner", {})
    print(f"\naligner status: {meta.get('status')} {meta.get('reason') or ''}".rstrip())
    print(f"draft:     {meta.get('original')}")
    print(f"corrected: {result['messages'][-1].text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
