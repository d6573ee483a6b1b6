#!/usr/bin/env python
"""Decoding speed side by side, in one run: what a user would otherwise write against the local
backend in each of its modes, on the real length mix of Aligner corrections and on answers kept
verbatim.

Contenders (greedy, identical outputs checked against the workload's known answer):

* ``model_card_loop``: one ``model.generate`` per row, as model cards show;
* ``pipeline``: langchain-huggingface's ``HuggingFacePipeline`` at its best batch size
  (``pip install --no-deps langchain-huggingface``: its declared ``huggingface-hub<2`` clashes with
  transformers 5.25, which works with it; skipped when absent);
* ``raw_generate``: left-padded batched ``model.generate`` at its best batch size (the reference);
* ours, per mode (``defaults``: the automatic choice; ``continuous``: continuous batching), through
  ``AlignerRunnable``: ``batch`` (one call), 16 and 64 concurrent callers (threads calling ``invoke``
  until the rows run out), and 16 concurrent token streams (``ChatAligner.stream``);
* batch 1 (one request at a time): ours with prompt lookup off and on ``auto``, on the copy-heavy
  set (answers kept verbatim) and on the real set (answers rewritten: lookup backs off).

Workload: questions and answers from ``../shared/data/alpacaeval_aligner2b_claude3opus.jsonl``
(relative to the repository root), each correction as long as the real one (its tokens times
``--length-scale``). The model is a random Llama built on the fly whose layers add nothing and whose
head walks a chain of words (``training/demo/copy_model.py``): a token costs what it costs in a
random Llama of that size, a row ends with EOS exactly at its real length, and an answer written
along the chain is copied verbatim (the copy-heavy set).

Rounds are interleaved (every contender once per round, in a rotated order) and the medians kept:
the machine is shared. The JSON (``benchmarks/out/`` unless ``--output``) holds the machine, load
average, every setting, every round and the goals::

    python benchmarks/bench_decoding.py                 # ~27 min on 2 cores
    python benchmarks/bench_decoding.py --rows 8 --copy-rows 4 --lone-rows 2 --rounds 1 --quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.report import load_average, machine_info, percentile, write_report  # noqa: E402

__all__ = ["TEMPLATE", "Row", "Workload", "build_workload", "main", "parse_args"]

SCHEMA_VERSION = 1
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "alpacaeval_aligner2b_claude3opus.jsonl"
TEMPLATE = (
    "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more "
    "helpful and harmless: {question} | {answer}"
)
"""aligner-v1 without its closing ``ASSISTANT:``: the chain model's output follows the answer's
last word."""


# -- arguments ------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    try:
        values = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_decoding.py",
        description="Decoding speed of the local backend's modes against the usual alternatives.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="the real Aligner corrections (JSONL)"
    )
    parser.add_argument("--rows", type=int, default=64, help="rows of the real-length workload")
    parser.add_argument("--copy-rows", type=int, default=16, help="rows of the copy-heavy set (batch 1)")
    parser.add_argument("--lone-rows", type=int, default=16, help="real rows decoded one at a time")
    parser.add_argument(
        "--length-scale", type=float, default=0.25, help="correction length = real length x this"
    )
    parser.add_argument("--max-new-tokens", type=int, default=512, help="every contender's token budget")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    parser.add_argument("--batch-sizes", type=_ints, default=[8, 16, 32, 64], help="swept for raw/pipeline")
    parser.add_argument("--callers", type=_ints, default=[16, 64], help="concurrent callers")
    parser.add_argument("--stream-callers", type=int, default=16, help="concurrent token streams")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the built model")
    parser.add_argument("--layers", type=int, default=4, help="layers of the built model")
    parser.add_argument("--vocab", type=int, default=8192, help="tokenizer vocabulary (trained on the data)")
    parser.add_argument("--context", type=int, default=4096, help="the model's context")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16, ...")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, for every contender")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tiny model and vocabulary (smoke runs)")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default benchmarks/out/...)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.vocab = 32, 1, 2048
    return args


# -- workload -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One request: the answer ends so that the model writes ``expected`` (``tokens`` ids with EOS)."""

    question: str
    answer: str
    prompt: str
    ids: tuple[int, ...]
    expected: str
    tokens: int


@dataclass
class Workload:
    model_dir: Path
    tokenizer: Any
    real: list[Row]
    copy: list[Row]
    lone: list[Row]
    stats: dict[str, Any] = field(default_factory=dict)


def build_workload(args: argparse.Namespace, directory: Path) -> Workload:
    """Build the chain model on the data's text and the three row sets."""
    from transformers import AutoTokenizer

    from aligner_chain.prompts import format_completion
    from aligner_chain.tokenization import encode_prompt, encode_text
    from training.demo.copy_model import build_copy_model

    if not args.data.is_file():
        raise SystemExit(f"--data {args.data} is not a file: the benchmark needs the real corrections")
    records = [
        json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    corpus = [f"{r['question']}\n{r['answer']}\n{r['correction']}" for r in records]
    copy_model = build_copy_model(
        directory / "model",
        corpus,
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=max(1, args.hidden // 64),
        max_position_embeddings=args.context,
        seed=args.seed,
        device=args.device if args.device != "auto" else "cpu",
        dtype=args.dtype,
    )
    tokenizer = AutoTokenizer.from_pretrained(copy_model.path)
    rng = random.Random(args.seed)
    rng.shuffle(records)
    longest = min(copy_model.longest, args.max_new_tokens - 1)

    def length_of(record: dict[str, Any]) -> int:
        real = len(encode_text(tokenizer, format_completion(record["correction"])))
        return max(1, min(longest, round(real * args.length_scale)))

    def row(question: str, answer: str, expected_words: list[str]) -> Row:
        prompt = TEMPLATE.format(question=question, answer=answer)
        expected = "".join(expected_words).strip()
        return Row(
            question,
            answer,
            prompt,
            tuple(encode_prompt(tokenizer, prompt)),
            expected,
            len(expected_words) + 1,
        )

    def chain_after(length: int) -> list[str]:
        start = copy_model.longest - length
        return list(copy_model.texts[start + 1 :])

    real = []
    for record in records[: args.rows]:
        n = length_of(record)
        real.append(row(record["question"], record["answer"] + copy_model.marker(n), chain_after(n)))
    copies = []
    for record in records[args.rows : args.rows + args.copy_rows]:
        n = length_of(record)
        copies.append(row(record["question"], copy_model.chain_text(n), chain_after(n)))
    lone = real[: args.lone_rows]
    prompts = [len(r.ids) for r in real]
    lengths = [r.tokens - 1 for r in real]
    stats = {
        "model_parameters": _parameters(copy_model.path),
        "chain_words": len(copy_model.words),
        "prompt_tokens_p10_p50_p90": [round(percentile(prompts, q)) for q in (10, 50, 90)],
        "correction_tokens_p10_p50_p90": [round(percentile(lengths, q)) for q in (10, 50, 90)],
        "correction_tokens_total": sum(lengths),
        "copy_tokens_total": sum(r.tokens - 1 for r in copies),
    }
    return Workload(copy_model.path, tokenizer, real, copies, lone, stats)


def _parameters(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in path.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += _product(handle.get_slice(key).get_shape())
    return total


def _product(shape: Sequence[int]) -> int:
    out = 1
    for dim in shape:
        out *= int(dim)
    return out


# -- one timed run --------------------------------------------------------------------------------


@dataclass
class Run:
    """One contender in one round: wall time, per-request latency and time to first token, outputs."""

    wall_s: float
    outputs: list[str]
    latencies: list[float]
    ttfts: list[float]
    tokens: int
    batch_size: int | None = None


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.start


def model_card_loop(model: Any, tokenizer: Any, rows: list[Row], budget: int, device: str) -> Run:
    import torch

    timer, outputs, latencies = Timer(), [], []
    for row in rows:
        ids = torch.tensor([row.ids], device=device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=False
            )
        outputs.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
        latencies.append(timer.now())
    return Run(timer.now(), outputs, latencies, latencies, sum(r.tokens for r in rows))


def raw_generate(model: Any, tokenizer: Any, rows: list[Row], budget: int, device: str, size: int) -> Run:
    import torch

    timer, outputs, latencies = Timer(), [], []
    pad = tokenizer.pad_token_id
    for start in range(0, len(rows), size):
        batch = rows[start : start + size]
        width = max(len(r.ids) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(batch):
            ids[i, width - len(r.ids) :] = torch.tensor(r.ids)
            mask[i, width - len(r.ids) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=budget,
                do_sample=False,
            )
        for row_out in out[:, width:]:
            outputs.append(tokenizer.decode(row_out, skip_special_tokens=True).strip())
        latencies += [timer.now()] * len(batch)
    return Run(timer.now(), outputs, latencies, latencies, sum(r.tokens for r in rows), size)


def pipeline_run(llm: Any, rows: list[Row], budget: int, size: int) -> Run:
    llm.batch_size = size
    timer = Timer()
    result = llm.generate(
        [r.prompt for r in rows],
        pipeline_kwargs={"max_new_tokens": budget, "do_sample": False, "return_full_text": False},
    )
    wall = timer.now()
    outputs = [g[0].text.strip() for g in result.generations]
    return Run(wall, outputs, [wall] * len(rows), [wall] * len(rows), sum(r.tokens for r in rows), size)


def runnable_batch(runnable: Any, rows: list[Row]) -> Run:
    timer = Timer()
    outputs = runnable.batch([{"question": r.question, "answer": r.answer} for r in rows])
    wall = timer.now()
    return Run(wall, [str(o).strip() for o in outputs], [wall] * len(rows), [wall] * len(rows), _tokens(rows))


def _concurrently(rows: list[Row], count: int, serve: Callable[[Row], tuple[str, float]]) -> Run:
    """``count`` threads taking the next row until the rows run out; ``serve`` returns a row's text
    and its time to first token."""
    timer, outputs = Timer(), [""] * len(rows)
    latencies, ttfts = [0.0] * len(rows), [0.0] * len(rows)
    order = itertools.count()
    lock = threading.Lock()

    def caller() -> None:
        while True:
            with lock:
                i = next(order)
            if i >= len(rows):
                return
            started = time.perf_counter()
            text, first = serve(rows[i])
            latencies[i] = time.perf_counter() - started
            ttfts[i] = min(first, latencies[i])
            outputs[i] = text.strip()

    with ThreadPoolExecutor(count) as pool:
        for future in [pool.submit(caller) for _ in range(count)]:
            future.result()
    return Run(timer.now(), outputs, latencies, ttfts, _tokens(rows))


def callers(runnable: Any, rows: list[Row], count: int) -> Run:
    """``count`` threads calling ``invoke`` one row at a time until the rows run out."""

    def serve(row: Row) -> tuple[str, float]:
        return str(runnable.invoke({"question": row.question, "answer": row.answer})), float("inf")

    return _concurrently(rows, count, serve)


def streams(chat: Any, rows: list[Row], count: int) -> Run:
    """``count`` threads each streaming rows token by token through ``ChatAligner.stream``."""
    from langchain_core.messages import AIMessage, HumanMessage

    def serve(row: Row) -> tuple[str, float]:
        started, first, text = time.perf_counter(), float("inf"), ""
        for chunk in chat.stream([HumanMessage(row.question), AIMessage(row.answer)]):
            if chunk.content and first == float("inf"):
                first = time.perf_counter() - started
            text += str(chunk.content)
        return text, first

    return _concurrently(rows, count, serve)


def one_at_a_time(runnable: Any, rows: list[Row]) -> Run:
    timer, outputs, latencies = Timer(), [], []
    for row in rows:
        started = time.perf_counter()
        outputs.append(str(runnable.invoke({"question": row.question, "answer": row.answer})).strip())
        latencies.append(time.perf_counter() - started)
    return Run(timer.now(), outputs, latencies, latencies, _tokens(rows))


def _tokens(rows: list[Row]) -> int:
    return sum(r.tokens for r in rows)


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    group: str  # "real" (compared with raw_generate), "copy" or "lone" (batch 1)
    run: Callable[[], Run]
    rows: list[Row]
    settings: dict[str, Any] = field(default_factory=dict)


def _figures(runs: list[Run], rows: list[Row]) -> dict[str, Any]:
    walls = [r.wall_s for r in runs]
    wall = statistics.median(walls)
    last = runs[-1]
    expected = [r.expected for r in rows]
    return {
        "rounds_wall_s": [round(w, 4) for w in walls],
        "wall_s": round(wall, 4),
        "requests_per_s": round(len(rows) / wall, 3),
        "tokens_per_s": round(last.tokens / wall, 1),
        "latency_p50_ms": round(1000 * percentile(last.latencies, 50), 1),
        "latency_p95_ms": round(1000 * percentile(last.latencies, 95), 1),
        "ttft_p50_ms": round(1000 * percentile(last.ttfts, 50), 1),
        "ttft_p95_ms": round(1000 * percentile(last.ttfts, 95), 1),
        "identical_outputs": all(r.outputs == expected for r in runs),
        "mismatches": sum(o != e for o, e in zip(last.outputs, expected, strict=True)),
        "batch_size": last.batch_size,
    }


def run_benchmark(args: argparse.Namespace, workload: Workload) -> dict[str, Any]:
    """Calibrate the baselines' batch sizes, then time every contender in interleaved rounds."""
    import torch
    from transformers import AutoModelForCausalLM

    from aligner_chain.chat_model import ChatAligner
    from aligner_chain.runnable import AlignerRunnable

    device, budget = args.device, args.max_new_tokens
    model = AutoModelForCausalLM.from_pretrained(workload.model_dir, dtype=getattr(torch, args.dtype)).to(
        device
    )
    model.eval()
    tokenizer = workload.tokenizer
    real, copy, lone = workload.real, workload.copy, workload.lone

    llm = _pipeline(model, tokenizer, device)
    sweep: dict[str, Any] = {"raw_generate": {}, "pipeline": {}}
    for size in args.batch_sizes:  # calibration, one untimed warm-up each
        sweep["raw_generate"][size] = _figures(
            [raw_generate(model, tokenizer, real, budget, device, size)], real
        )
        if llm is not None:
            sweep["pipeline"][size] = _figures([pipeline_run(llm, real, budget, size)], real)
    best_raw = max(sweep["raw_generate"], key=lambda s: sweep["raw_generate"][s]["tokens_per_s"])
    best_pipe = max(sweep["pipeline"], key=lambda s: sweep["pipeline"][s]["tokens_per_s"]) if llm else None

    def backend(**options: Any) -> Any:
        from aligner_chain.backends.transformers import TransformersBackend

        b = TransformersBackend(
            workload.model_dir,
            template=TEMPLATE,
            max_new_tokens=budget,
            device=device,
            dtype=args.dtype,
            **options,
        )
        b.load()
        return b

    cpu_bounds = {"num_blocks": 4096, "page_size": 32, "max_batch_tokens": 512} if device == "cpu" else None
    backends = {
        "defaults": backend(),
        "continuous": backend(scheduling="continuous", continuous_batching_config=cpu_bounds),
        "copy_plain": backend(prompt_lookup="off"),
        "copy_defaults": backend(),
        "lone_plain": backend(prompt_lookup="off"),
        "lone_defaults": backend(),
    }
    runnables = {name: AlignerRunnable(backend=b) for name, b in backends.items()}
    chats = {name: ChatAligner(backend=backends[name]) for name in ("defaults", "continuous")}
    for name, runnable in runnables.items():  # warm-up (first calls allocate) on the backend's own set
        first = copy[0] if name.startswith("copy") else real[0]
        runnable.invoke({"question": first.question, "answer": first.answer})

    contenders = [
        Contender(
            "model_card_loop", "real", lambda: model_card_loop(model, tokenizer, real, budget, device), real
        ),
        Contender(
            "raw_generate",
            "real",
            lambda: raw_generate(model, tokenizer, real, budget, device, best_raw),
            real,
            {"batch_size": best_raw},
        ),
    ]
    if llm is not None and best_pipe is not None:
        contenders.append(
            Contender(
                "pipeline",
                "real",
                lambda: pipeline_run(llm, real, budget, best_pipe),
                real,
                {"batch_size": best_pipe},
            )
        )
    for mode in ("defaults", "continuous"):
        runnable, chat = runnables[mode], chats[mode]
        contenders.append(
            Contender(f"ours_{mode}_batch", "real", _bind(runnable_batch, runnable, real), real)
        )
        for count in args.callers:
            contenders.append(
                Contender(f"ours_{mode}_callers_{count}", "real", _bind(callers, runnable, real, count), real)
            )
        contenders.append(
            Contender(
                f"ours_{mode}_streams_{args.stream_callers}",
                "real",
                _bind(streams, chat, real, args.stream_callers),
                real,
            )
        )
    contenders += [
        Contender(
            "copy_model_card_loop",
            "copy",
            lambda: model_card_loop(model, tokenizer, copy, budget, device),
            copy,
        ),
        Contender("copy_ours_lookup_off", "copy", _bind(one_at_a_time, runnables["copy_plain"], copy), copy),
        Contender("copy_ours_defaults", "copy", _bind(one_at_a_time, runnables["copy_defaults"], copy), copy),
        Contender("lone_ours_lookup_off", "lone", _bind(one_at_a_time, runnables["lone_plain"], lone), lone),
        Contender("lone_ours_defaults", "lone", _bind(one_at_a_time, runnables["lone_defaults"], lone), lone),
    ]
    runs: dict[str, list[Run]] = {c.name: [] for c in contenders}
    loads = []
    for round_index in range(args.rounds):
        shift = round_index % len(contenders)
        loads.append(load_average())
        for contender in contenders[shift:] + contenders[:shift]:
            runs[contender.name].append(contender.run())
    results = {c.name: {"group": c.group, **c.settings, **_figures(runs[c.name], c.rows)} for c in contenders}
    reference = results["raw_generate"]["tokens_per_s"]
    for figures in results.values():
        if figures["group"] == "real":
            figures["x_raw_generate"] = round(figures["tokens_per_s"] / reference, 3)
    modes = {
        name: {
            "plan": list(b.decoding_plan.notes) if b.decoding_plan else None,
            "max_batch_size": b.max_batch_size,
            "rows_per_path": dict(b.engine.modes),
            "lookup_tokens_per_forward": b.engine.lookup.tokens_per_forward if b.engine.lookup else None,
        }
        for name, b in backends.items()
    }
    for b in backends.values():
        b.close()
    return {
        "calibration": {k: {str(s): f for s, f in v.items()} for k, v in sweep.items()},
        "contenders": results,
        "backends": modes,
        "load_average_per_round": loads,
        "goals": _goals(results),
    }


def _bind(fn: Callable[..., Run], *args: Any) -> Callable[[], Run]:
    return lambda: fn(*args)


def _pipeline(model: Any, tokenizer: Any, device: str) -> Any:
    try:
        from langchain_huggingface import HuggingFacePipeline
    except ImportError:
        return None
    from transformers import pipeline

    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device=model.device)
    return HuggingFacePipeline(pipeline=generator)


def _goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    def ratio(a: str, b: str) -> float | None:
        if a not in results or b not in results:
            return None
        return round(results[a]["tokens_per_s"] / results[b]["tokens_per_s"], 3)

    goals = []
    for name in [n for n in results if n.startswith("ours_defaults_") and "streams" not in n]:
        value = ratio(name, "raw_generate")
        goals.append(
            {"goal": f"{name} >= 0.95x raw_generate", "value": value, "met": bool(value and value >= 0.95)}
        )
    value = ratio("ours_defaults_batch", "pipeline")
    goals.append(
        {"goal": "ours_defaults_batch >= 1.0x pipeline", "value": value, "met": bool(value and value >= 1.0)}
    )
    value = ratio("copy_ours_defaults", "copy_ours_lookup_off")
    identical = (
        results["copy_ours_defaults"]["identical_outputs"]
        and results["copy_ours_lookup_off"]["identical_outputs"]
    )
    goals.append(
        {
            "goal": "copy-aware >= 2x tokens/s at batch 1 on the copy-heavy set, identical outputs",
            "value": value,
            "met": bool(value and value >= 2.0 and identical),
        }
    )
    value = ratio("lone_ours_defaults", "lone_ours_lookup_off")
    goals.append(
        {
            "goal": "auto lookup never much slower where answers are rewritten (>= 0.9x)",
            "value": value,
            "met": bool(value and value >= 0.9),
        }
    )
    return goals


# -- output ---------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    lines = [
        f"Decoding benchmark: {report['settings']['workload']}",
        f"machine: {report['machine']['cpu_model']} ({report['machine']['cpu_cores_usable']} cores), "
        f"GPU {report['machine']['gpu_name']}, load {report['machine']['load_average']} -> "
        f"{report['machine']['load_average_after']}",
        "",
        "| contender | req/s | tokens/s | p50 ms | p95 ms | TTFT p50 ms | x raw generate | outputs |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, f in r["contenders"].items():
        size = f" (batch {f['batch_size']})" if f.get("batch_size") else ""
        lines.append(
            f"| {name}{size} | {f['requests_per_s']} | {f['tokens_per_s']} | {f['latency_p50_ms']} | "
            f"{f['latency_p95_ms']} | {f['ttft_p50_ms']} | {f.get('x_raw_generate', '')} | "
            f"{'identical' if f['identical_outputs'] else str(f['mismatches']) + ' differ'} |"
        )
    lines += ["", "| goal | value | met |", "|---|---:|---|"]
    lines += [f"| {g['goal']} | {g['value']} | {'yes' if g['met'] else 'no'} |" for g in r["goals"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("aligner_chain").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    import torch

    torch.set_num_threads(args.threads)
    torch.get_num_threads()  # the main thread's pool is sized before any worker starts
    started = dt.datetime.now(dt.timezone.utc)
    machine = machine_info()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aligner-decoding-") as tmp:
        workload = build_workload(args, Path(tmp))
        results = run_benchmark(args, workload)
    machine["load_average_after"] = load_average()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["workload"] = (
        f"{len(workload.real)} real rows (corrections x{args.length_scale} of their real length), "
        f"{len(workload.copy)} copy-heavy rows, {len(workload.lone)} rows one at a time; chain Llama "
        f"hidden {args.hidden} x {args.layers} layers, vocab {args.vocab}, {args.dtype} on {args.device}, "
        f"{args.threads} torch thread(s), greedy"
    )
    report = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "bench_decoding",
        "started_utc": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "command": ["benchmarks/bench_decoding.py", *(sys.argv[1:] if argv is None else argv)],
        "machine": machine,
        "settings": settings,
        "workload": workload.stats,
        "results": results,
    }
    print(markdown(report))
    print(f"\nWrote {write_report(report, args.output, 'bench_decoding', started)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
