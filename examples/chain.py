"""Put an Aligner behind a chat model in a LangChain chain.

Two ways, both shown below:

* ``with_aligner(llm, aligner)``: takes the same input as ``llm`` and corrects its answer with the
  question (the last human message) in view. This is the one to use.
* ``llm | aligner``: a plain pipe. The Aligner only sees the answer, never the question, so its
  corrections are weaker; pass the question per call with
  ``config={"configurable": {"aligner_question": ...}}`` when you have it.

Runs offline: the upstream model is a fake chat model replaying canned answers, and the Aligner is
the tiny demo Aligner that ``make demo`` trains into ``runs/quickstart/aligner`` (its corrections are
only as good as a few minutes of CPU training make them).

With a real provider and the released Aligner (downloads ~14 GB; a GPU is advised)::

    from langchain_openai import ChatOpenAI          # or: from langchain_anthropic import ChatAnthropic
    from aligner_chain import AlignerRunnable, with_aligner

    llm = ChatOpenAI(model="gpt-4.1-mini")            # ChatAnthropic(model="claude-sonnet-4-5")
    aligner = AlignerRunnable("aligner/aligner-7b-v1.0")
    chain = with_aligner(llm, aligner)
    print(chain.invoke("How do I get rid of a wasp nest?").content)

Usage: ``python examples/chain.py [--aligner PATH_OR_HUB_ID] [--max-new-tokens N]``
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage

from aligner_chain import AlignerRunnable, with_aligner

DEFAULT_ALIGNER = "runs/quickstart/aligner"
QUESTION = "How do I get rid of a wasp nest near my front door?"
DRAFT = "Spray it with gasoline and set it on fire at noon, when the wasps are most active."


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


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--aligner",
        default=DEFAULT_ALIGNER,
        help=f"Aligner directory or hub id (default: {DEFAULT_ALIGNER}, made by `make demo`)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest correction (tokens)")
    return parser.parse_args(argv)


def upstream() -> GenericFakeChatModel:
    """Stands in for ChatOpenAI/ChatAnthropic: replays the same draft answer on every call."""
    return GenericFakeChatModel(messages=itertools.cycle([AIMessage(DRAFT)]))


def show(label: str, message: BaseMessage) -> None:
    meta = message.response_metadata.get("aligner", {})
    print(
        f"\n== {label}  [status: {meta.get('status')}{', ' + meta['reason'] if meta.get('reason') else ''}]"
    )
    print(f"draft:     {meta.get('original', DRAFT)}")
    print(f"corrected: {message.text}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "with_aligner and llm | AlignerRunnable, offline.")
    model = resolve_aligner(args.aligner)
    if model is None:
        return 2
    aligner = AlignerRunnable(model, max_new_tokens=args.max_new_tokens)
    llm = upstream()
    print(f"question: {QUESTION}")

    # 1. Question-aware: with_aligner takes the chat model's input and corrects its answer.
    chain = with_aligner(llm, aligner)
    show("with_aligner(llm, aligner)", chain.invoke(QUESTION))

    # 2. A plain pipe: the Aligner sees only the answer...
    piped = llm | aligner
    show("llm | aligner (no question)", piped.invoke(QUESTION))
    # ...unless the question is passed per call.
    config = {"configurable": {"aligner_question": QUESTION}}
    show("llm | aligner (question in config)", piped.invoke(QUESTION, config=config))  # type: ignore[arg-type]

    # 3. Streaming: the draft is buffered, then the correction streams.
    print("\n== streamed: ", end="")
    for chunk in chain.stream(QUESTION):
        print(chunk.text, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
