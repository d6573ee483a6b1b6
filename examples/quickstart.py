"""The whole loop, offline, on a laptop CPU (README: how long it takes): data, base model, Aligner,
corrected chain.

1. Write a small correction dataset (``training.demo.synthetic``): questions about capitals, sums and
   units, flawed answers that state a wrong value, and corrections that only the question fixes.
2. Build a tiny base model and tokenizer from scratch (``training.demo.tiny_model``): nothing is downloaded.
3. Train an Aligner on it with ``aligner-chain train`` (the ``tiny-cpu`` recipe: identity warm-up,
   then the residual corrections) into ``runs/quickstart/aligner``.
4. Run an upstream chat model that replays flawed answers to questions the Aligner never saw paired
   with those answers, pipe it through the Aligner with ``with_aligner``, and print each question,
   the original, the correction and the held-out accuracy.

With a real provider and a real Aligner, step 4 is the same two lines::

    chain = with_aligner(ChatOpenAI(model="gpt-4.1-mini"), AlignerRunnable("aligner/aligner-7b-v1.0"))
    chain.invoke("How do I get rid of a wasp nest?")

Usage: ``python examples/quickstart.py [--output-dir runs/quickstart] [--reuse] [--show 8]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from aligner_chain import AlignerRunnable, with_aligner
from aligner_chain.cli import main as aligner_chain_cli
from aligner_chain.cli import quiet_progress
from training.aligner.data import CorrectionRow
from training.aligner.run_state import checkpoints_dir
from training.demo.synthetic import make_synthetic_task, write_jsonl
from training.demo.tiny_model import build_tiny_model


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a tiny Aligner offline and correct a chain with it.")
    parser.add_argument(
        "--output-dir", type=Path, default=Path("runs/quickstart"), help="where data, base and Aligner go"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="skip training when OUTPUT_DIR/aligner already holds an Aligner"
    )
    parser.add_argument("--show", type=int, default=8, help="held-out examples to print in full")
    parser.add_argument("--epochs", type=float, default=None, help="override the tiny-cpu recipe's epochs")
    return parser.parse_args(argv)


def train(out: Path, task_rows: list[CorrectionRow], corpus: list[str], epochs: float | None) -> Path:
    """Write the data, build the tiny base and train the Aligner through the CLI; return its directory."""
    data = write_jsonl(task_rows, out / "train.jsonl")
    base = build_tiny_model(out / "base", corpus)
    aligner_dir = out / "aligner"
    for previous in (aligner_dir, checkpoints_dir(aligner_dir)):  # a new demo run starts afresh
        shutil.rmtree(previous, ignore_errors=True)
    command = ["train", "--config", "tiny-cpu", "--data", str(data), "--base-model", str(base)]
    command += ["--output-dir", str(aligner_dir), "--no-progress"]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    print("$ aligner-chain " + " ".join(command), flush=True)
    if aligner_chain_cli(command) != 0:
        raise SystemExit("training failed; see the error above")
    return aligner_dir


def upstream(answers: list[str]) -> GenericFakeChatModel:
    """Stands in for ChatOpenAI/ChatAnthropic: replays the given (flawed) answers in order."""
    return GenericFakeChatModel(messages=iter([AIMessage(a) for a in answers]))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_progress()
    started = time.perf_counter()
    task = make_synthetic_task()
    print(f"1. data: {len(task.train)} training rows, {len(task.held_out)} held-out rows")
    aligner_dir = args.output_dir / "aligner"
    if args.reuse and (aligner_dir / "aligner_config.json").is_file():
        print(f"2-3. reusing the Aligner in {aligner_dir}")
    else:
        print("2-3. building a tiny base model and training an Aligner on it")
        aligner_dir = train(args.output_dir, task.train, task.corpus(template="aligner-v1"), args.epochs)
    trained = time.perf_counter()

    held_out = task.held_out
    aligner = AlignerRunnable(str(aligner_dir), max_new_tokens=48)
    chain = with_aligner(upstream([row.answer for row in held_out]), aligner)
    print(f"\n4. upstream answers to {len(held_out)} held-out questions, corrected with with_aligner:")
    right = 0
    statuses: dict[str, int] = {}
    for index, row in enumerate(held_out):
        message = chain.invoke(row.question)
        meta = message.response_metadata["aligner"]
        statuses[meta["status"]] = statuses.get(meta["status"], 0) + 1
        ok = message.text.strip() == row.correction.strip()
        right += ok
        if index < args.show:
            print(f"\nquestion:   {row.question}")
            print(f"original:   {meta['original']}")
            reason = f", {meta['reason']}" if "reason" in meta else ""
            print(f"corrected:  {message.text}   [{meta['status']}{reason}]")
            print(f"expected:   {row.correction}   {'ok' if ok else 'MISS'}")
    flawed = sum(row.answer != row.correction for row in held_out)
    print(
        f"\nheld-out exact match: {right}/{len(held_out)} = {right / len(held_out):.0%} "
        f"({flawed} of the originals were wrong; statuses {dict(sorted(statuses.items()))})"
    )
    print(
        f"time: training {trained - started:.0f} s, correcting {time.perf_counter() - trained:.0f} s; "
        f"the Aligner is in {aligner_dir}; try `python examples/chain.py`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
