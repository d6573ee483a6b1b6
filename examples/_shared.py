"""Helpers shared by the offline examples: the command line, the Aligner path and a replaying chat model.

Not an example itself. Each example puts this folder on ``sys.path`` and imports it, so it works both
as ``python examples/<name>.py`` from the repository root and when loaded by file path.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk

from aligner_chain.cli import quiet_progress

__all__ = ["DEFAULT_ALIGNER", "ReplayChatModel", "parse_args", "replay", "resolve_aligner", "show"]

DEFAULT_ALIGNER = "runs/quickstart/aligner"


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """``--aligner`` (directory or hub id) and ``--max-new-tokens``, common to every example."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--aligner",
        default=DEFAULT_ALIGNER,
        help=f"Aligner directory or hub id (default: {DEFAULT_ALIGNER}, made by `make demo`)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest correction (tokens)")
    quiet_progress()  # no loading bars between the printed examples
    return parser.parse_args(argv)


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


class ReplayChatModel(GenericFakeChatModel):
    """Stands in for a provider chat model: replays scripted replies, tool calls included.

    ``bind_tools`` is accepted (and ignored) so agents can bind their tools, and streaming yields
    each reply whole, with its tool calls as tool-call chunks.
    """

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
        if not isinstance(reply, AIMessage):
            raise TypeError(f"ReplayChatModel replies must be AIMessage, got {type(reply).__name__}")
        calls = [
            tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
            for i, c in enumerate(reply.tool_calls)
        ]
        chunk = AIMessageChunk(
            content=reply.content, id=reply.id, tool_call_chunks=calls, chunk_position="last"
        )
        yield ChatGenerationChunk(message=chunk)


def replay(replies: Iterable[AIMessage]) -> ReplayChatModel:
    """A :class:`ReplayChatModel` answering with ``replies`` in order (pass an endless iterator to repeat)."""
    return ReplayChatModel(messages=iter(replies))


def show(label: str, message: BaseMessage) -> None:
    """Print a corrected message: the Aligner's status, the draft it was given and its correction."""
    meta = message.response_metadata.get("aligner", {})
    reason = f", {meta['reason']}" if meta.get("reason") else ""
    print(f"\n== {label}  [status: {meta.get('status')}{reason}]")
    print(f"draft:     {meta.get('original')}")
    print(f"corrected: {message.text}")
