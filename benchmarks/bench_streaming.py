#!/usr/bin/env python
"""Benchmark streamed corrections: time to the first corrected token and total time, whole-answer
vs sentence-level Aligners, while the upstream streams its answer at a fixed rate.

An upstream that writes a held-out multi-sentence answer of the synthetic task
(``training/demo/synthetic.py`` ``make_multi_sentence_task``) at ``--rate`` tokens per second, token
``i`` due at ``i / rate`` seconds after the call whether or not it has been read (a server writing on
its own), is corrected four ways, side by side, on the same Aligner hardware:

* ``with_aligner`` + whole-answer Aligner: what a user picks today (the corrected answer comes out
  once the upstream is done and the correction is complete);
* ``AlignedChatModel`` + whole-answer Aligner: the correction streams token by token once the
  upstream is done;
* ``AlignedChatModel`` + sentence-level Aligner: each sentence is corrected and streamed as soon as
  the upstream has written it;
* ``with_aligner`` + sentence-level Aligner: the same sentence loop through the runnable.

Both Aligners are tiny models trained here through ``aligner-chain train`` on the same task (one
whole-answer, one ``--granularity sentence``), unless ``--whole-model``/``--sentence-model`` name
trained ones. Every output is checked against the task's correction (exact match), so a fast but
wrong mode shows. It prints a Markdown table and writes JSON with the machine and the settings.

    python benchmarks/bench_streaming.py                    # CPU, tiny Aligners trained first
    python benchmarks/bench_streaming.py --whole-model runs/w --sentence-model runs/s --device cuda
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(REPO_ROOT))

from langchain_core.callbacks import CallbackManagerForLLMRun  # noqa: E402
from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult  # noqa: E402

from benchmarks.report import DEFAULT_OUTPUT_DIR, machine_info, percentile, write_report  # noqa: E402

__all__ = ["TimedUpstream", "main", "parse_args", "run_benchmark"]

SCHEMA_VERSION = 1
MODES = (
    ("with_aligner, whole-answer Aligner (today)", "chain", "answer"),
    ("AlignedChatModel, whole-answer Aligner", "model", "answer"),
    ("AlignedChatModel, sentence-level Aligner", "model", "sentence"),
    ("with_aligner, sentence-level Aligner", "chain", "sentence"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--whole-model", help="a trained whole-answer Aligner (default: train one)")
    parser.add_argument("--sentence-model", help="a trained sentence-level Aligner (default: train one)")
    parser.add_argument("--work-dir", help="where the tiny Aligners are trained (default: a temporary dir)")
    parser.add_argument("--rate", type=float, default=30.0, help="upstream tokens per second (default: 30)")
    parser.add_argument("--sentences", type=int, default=8, help="sentences per answer (default: 8)")
    parser.add_argument("--answers", type=int, default=5, help="held-out answers streamed (default: 5)")
    parser.add_argument("--runs", type=int, default=2, help="timed streams per answer and mode (default: 2)")
    parser.add_argument("--train-answers", type=int, default=200, help="training answers (default: 200)")
    parser.add_argument("--epochs", type=float, default=8, help="training epochs per stage (default: 8)")
    parser.add_argument("--device", default="auto", help="Aligner device (default: auto)")
    parser.add_argument("--dtype", default="float32", help="Aligner dtype (default: float32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, the tiny model)")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="longest correction (default: 160)")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"JSON file (default: {DEFAULT_OUTPUT_DIR}/streaming-<machine>-<time>.json)",
    )
    args = parser.parse_args(argv)
    for name in ("rate",):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0")
    for name in ("sentences", "answers", "runs", "train_answers", "threads", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


class TimedUpstream(BaseChatModel):
    """A chat model that writes scripted answers at ``rate`` pieces per second: piece ``i`` is due
    ``i / rate`` seconds after the call, read or not (like a server streaming on its own)."""

    answers: dict[str, list[str]]
    """question -> the answer's pieces (tokens)."""
    rate: float

    @property
    def _llm_type(self) -> str:
        return "timed-upstream"

    def _pieces(self, messages: list[BaseMessage]) -> list[str]:
        return self.answers[str(messages[-1].text)]

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        pieces = self._pieces(messages)
        time.sleep(len(pieces) / self.rate)
        return ChatResult(generations=[ChatGeneration(message=AIMessage("".join(pieces)))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        start = time.perf_counter()
        pieces = self._pieces(messages)
        for i, piece in enumerate(pieces):
            due = start + (i + 1) / self.rate
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            last = i == len(pieces) - 1
            yield ChatGenerationChunk(
                message=AIMessageChunk(content=piece, chunk_position="last" if last else None)
            )


def _sentences(text: str) -> int:
    from aligner_chain.segmentation import segment

    return sum(u.is_prose for u in segment(text))


def _token_pieces(tokenizer: Any, text: str) -> list[str]:
    """``text`` cut where its tokens are (each piece what one more token adds)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces, previous = [], ""
    for i in range(len(ids)):
        decoded = tokenizer.decode(ids[: i + 1])
        pieces.append(decoded[len(previous) :])
        previous = decoded
    assert "".join(pieces) == text, "the tokenizer does not round-trip this answer"
    return pieces


def train_aligners(args: argparse.Namespace, work: Path, task: Any) -> tuple[Path, Path, dict[str, float]]:
    """Both tiny Aligners trained through ``aligner-chain train`` on the task (seconds each)."""
    from aligner_chain.cli import main as cli
    from training.demo.synthetic import write_jsonl
    from training.demo.tiny_model import build_tiny_model

    data = write_jsonl(task.train, work / "train.jsonl")
    corpus = task.corpus(template="aligner-v1") + task.corpus(template="stream-aligner")
    base = build_tiny_model(work / "base", corpus)
    seconds = {}
    paths = []
    for granularity in ("answer", "sentence"):
        out = work / f"aligner-{granularity}"
        start = time.perf_counter()
        command = ["train", "--config", "tiny-cpu", "--granularity", granularity, "--data", str(data)]
        command += ["--base-model", str(base), "--output-dir", str(out), "--epochs", str(args.epochs)]
        command += ["--max-length", "512"]  # the tiny model's context: long answers are not dropped
        if cli([*command, "--no-progress"]) != 0:
            raise SystemExit(f"training the {granularity} Aligner failed")
        seconds[granularity] = round(time.perf_counter() - start, 1)
        paths.append(out)
    return paths[0], paths[1], seconds


def _stream_once(runnable: Any, question: str) -> tuple[float | None, float, str, str | None]:
    """``(first token s, total s, text, error)``: a correction that fails mid-stream is recorded."""
    from aligner_chain import AlignerError

    start = time.perf_counter()
    first: float | None = None
    text = ""
    try:
        for chunk in runnable.stream(question):
            piece = chunk if isinstance(chunk, str) else chunk.text
            if piece and first is None:
                first = time.perf_counter() - start
            text += piece
    except AlignerError as err:
        return first, time.perf_counter() - start, text, str(err)
    return first, time.perf_counter() - start, text, None


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    from aligner_chain import AlignedChatModel, AlignerRunnable, with_aligner
    from training.demo.synthetic import make_multi_sentence_task

    torch.set_num_threads(args.threads)
    low = max(1, args.sentences - 2)
    task = make_multi_sentence_task(
        n_train=args.train_answers, n_held_out=60, sentences=(low, args.sentences), seed=0
    )
    held_out = [r for r in task.held_out if _sentences(r.correction) == args.sentences][: args.answers]
    if not held_out:
        raise SystemExit(f"no held-out answer has {args.sentences} sentences; lower --sentences")
    training: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work_dir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        whole_dir, sentence_dir = args.whole_model, args.sentence_model
        if whole_dir is None or sentence_dir is None:
            trained_whole, trained_sentence, training = train_aligners(args, work, task)
            whole_dir = whole_dir or str(trained_whole)
            sentence_dir = sentence_dir or str(trained_sentence)
        options = {"device": args.device, "dtype": args.dtype, "max_new_tokens": args.max_new_tokens}
        aligners = {
            "answer": AlignerRunnable(str(whole_dir), **options),
            "sentence": AlignerRunnable(str(sentence_dir), **options),
        }
        tokenizer = AutoTokenizer.from_pretrained(str(sentence_dir))
        upstream = TimedUpstream(
            answers={r.question: _token_pieces(tokenizer, r.answer) for r in held_out}, rate=args.rate
        )
        runnables = {
            name: (
                AlignedChatModel(upstream, aligners[kind])
                if how == "model"
                else with_aligner(upstream, aligners[kind])
            )
            for name, how, kind in MODES
        }
        for runnable in runnables.values():  # warm-up: load and run each path once, untimed
            _stream_once(runnable, held_out[0].question)
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in runnables}
        for _ in range(args.runs):
            for row in held_out:
                for name, runnable in runnables.items():  # interleaved: same conditions for each mode
                    first, total, text, error = _stream_once(runnable, row.question)
                    rows[name].append(
                        {
                            "first_token_s": first,
                            "total_s": total,
                            "exact": error is None and text.strip() == row.correction,
                            "error": error,
                            "upstream_s": len(upstream.answers[row.question]) / args.rate,
                        }
                    )
    summary = {name: _summary(samples) for name, samples in rows.items()}
    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "output"},
            "output": str(args.output) if args.output else None,
            "whole_model": str(whole_dir),
            "sentence_model": str(sentence_dir),
            "answers_streamed": len(held_out),
            "upstream_tokens": [len(upstream.answers[r.question]) for r in held_out],
            "training_seconds": training,
        },
        "summary": summary,
        "ratios": _ratios(summary),
        "samples": rows,
    }


def _summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    firsts = [s["first_token_s"] for s in samples if s["first_token_s"] is not None]
    totals = [s["total_s"] for s in samples]
    return {
        "first_token_p50_s": round(statistics.median(firsts), 3) if firsts else None,
        "first_token_p95_s": round(percentile(firsts, 95), 3) if firsts else None,
        "total_p50_s": round(statistics.median(totals), 3),
        "total_p95_s": round(percentile(totals, 95), 3),
        "upstream_p50_s": round(statistics.median(s["upstream_s"] for s in samples), 3),
        "exact_match": round(sum(s["exact"] for s in samples) / len(samples), 3),
        "errors": sum(s["error"] is not None for s in samples),
    }


def _ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    whole = summary[MODES[1][0]]
    sentence = summary[MODES[2][0]]
    today = summary[MODES[0][0]]

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    return {
        "first_token_whole_over_sentence": ratio(whole["first_token_p50_s"], sentence["first_token_p50_s"]),
        "first_token_today_over_sentence": ratio(today["first_token_p50_s"], sentence["first_token_p50_s"]),
        "total_sentence_over_whole": ratio(sentence["total_p50_s"], whole["total_p50_s"]),
    }


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"Upstream: {s['sentences']}-sentence answers at {s['rate']:g} tokens/s "
        f"({statistics.median(s['upstream_tokens'])} tokens, median); {s['answers_streamed']} answers x "
        f"{s['runs']} runs; Aligners on {s['device']} ({s['dtype']}, {s['threads']} thread(s)).",
        "",
        "| mode | first corrected token p50 (s) | p95 | total p50 (s) | p95 | upstream alone (s) "
        "| exact match |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["summary"].items():
        lines.append(
            f"| {name} | {row['first_token_p50_s']} | {row['first_token_p95_s']} | {row['total_p50_s']} | "
            f"{row['total_p95_s']} | {row['upstream_p50_s']} | {row['exact_match']:.0%} |"
        )
    r = report["ratios"]
    lines += [
        "",
        f"First corrected token: {r['first_token_whole_over_sentence']}x sooner at sentence level than the "
        f"whole-answer AlignedChatModel ({r['first_token_today_over_sentence']}x sooner than with_aligner "
        f"today); total time sentence / whole: {r['total_sentence_over_whole']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    report = run_benchmark(args)
    print(render(report))
    output = write_report(report, args.output, "streaming", started)
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
