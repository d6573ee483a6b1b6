"""Put an Aligner behind a chat model in a LangChain chain.

Two ways, both shown below:

* ``with_aligner(llm, aligner)``: takes the same input as ``llm`` and corrects its answer with the
  question (the last human message) in view. This is the one to use.
* ``llm | aligner``: a plain pipe. The Aligner only sees the answer, never the question, so its
  corrections are weaker; pass the question per call with
  ``config={"configurable": {"aligner_question": ...}}`` when you have it.

Runs offline: the upstream model is a fake chat model replaying a wrong draft, and the Aligner is
the tiny demo Aligner that ``make demo`` trains into ``runs/quickstart/aligner``. The offline script
stays inside what that Aligner learned (the synthetic task of ``training/demo/synthetic.py``: capitals,
small sums, unit facts, in its exact phrasings), so the correction you see is a real one:
"The capital of Peru is Ottawa." becomes "The capital of Peru is Lima.".

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

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

from langchain_core.messages import AIMessage

from aligner_chain import AlignerRunnable, with_aligner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import parse_args, replay, resolve_aligner, show

QUESTION = "What is the capital of Peru?"
DRAFT = "The capital of Peru is Ottawa."  # the upstream model's wrong draft, replayed on every call


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "with_aligner and llm | AlignerRunnable, offline.")
    model = resolve_aligner(args.aligner)
    if model is None:
        return 2
    aligner = AlignerRunnable(model, max_new_tokens=args.max_new_tokens)
    # Stands in for ChatOpenAI/ChatAnthropic: the same draft answer on every call.
    llm = replay(itertools.repeat(AIMessage(DRAFT)))
    print(f"question: {QUESTION}")

    # 1. Question-aware: with_aligner takes the chat model's input and corrects its answer.
    chain = with_aligner(llm, aligner)
    show("with_aligner(llm, aligner)", chain.invoke(QUESTION))

    # 2. A plain pipe: the Aligner sees only the answer. The demo Aligner learned to fix a value from
    # the question; blind, it can only guess, and its guess is shown as it is.
    piped = llm | aligner
    show("llm | aligner (no question)", piped.invoke(QUESTION))
    print("(a blind guess: without the question no Aligner can know the right capital; use with_aligner)")
    # With the question passed per call, the pipe corrects like with_aligner.
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
