#!/usr/bin/env python
"""Benchmark the local Aligner: ``TransformersBackend`` alone and behind ``AlignerRunnable``/``ChatAligner``.

Measures, on one machine and one model:

* load time (tokenizer + weights) and the first call (warm-up);
* per batch size: throughput (requests/s, generated tokens/s) and latency (p50/p95) of one batched
  ``correct`` call;
* dynamic batching: N concurrent async callers (one request each) against the same N awaited one
  after another;
* streaming: time to the first text delta through ``TransformersBackend.stream`` and
  ``ChatAligner.stream``;
* the ``AlignerRunnable`` overhead over the raw backend (same batch, and per call with a
  weight-free backend).

It prints Markdown tables and writes a JSON file with the machine (CPU, cores, RAM, GPU, library
versions) and the settings next to every figure. Without ``--model`` it builds a tiny random Llama
on the synthetic task's corpus in a temporary directory (nothing is downloaded)::

    python benchmarks/bench_backend.py                       # tiny model, CPU or the GPU if any
    python benchmarks/bench_backend.py --model aligner/aligner-7b-v1.0 --device cuda --dtype bf16

Run ``--help`` for every flag; benchmarks/README.md explains each column.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(REPO_ROOT))

if TYPE_CHECKING:
    from aligner_chain.backends.base import CorrectionRequest, CorrectionResult
    from aligner_chain.backends.transformers import TransformersBackend

from benchmarks.report import load_average, machine_info, percentile, write_report  # noqa: E402

__all__ = ["main", "parse_args", "run_benchmark"]

SCHEMA_VERSION = 1


# -- arguments ------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _batch_sizes(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("--batch-sizes needs a comma-separated list such as 1,4,16")
    sizes = [_positive_int(p) for p in parts]
    return sorted(set(sizes))


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring and benchmarks/README.md)."""
    parser = argparse.ArgumentParser(
        prog="bench_backend.py",
        description="Benchmark TransformersBackend, AlignerRunnable and ChatAligner streaming.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        metavar="PATH_OR_HUB_ID",
        default=None,
        help="hub id or local directory of the Aligner; default: build a tiny random Llama on the "
        "synthetic task's corpus into a temporary directory",
    )
    parser.add_argument("--adapter", default=None, help="a PEFT adapter (directory or hub id) on --model")
    parser.add_argument("--device", default="auto", help="auto, cpu, mps, cuda or cuda:N")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bf16, fp16"
    )
    parser.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default=[1, 4, 16],
        help="comma-separated batch sizes for the batched-call measurement",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=64,
        help="the longest correction (random models rarely stop early, so most rows run to it)",
    )
    parser.add_argument(
        "--requests",
        metavar="N",
        type=_positive_int,
        default=16,
        help="requests per batch-size measurement and concurrent callers in the dynamic-batching test",
    )
    parser.add_argument(
        "--min-calls",
        type=_positive_int,
        default=5,
        help="at least this many batched calls per batch size, so p50/p95 rest on several calls",
    )
    parser.add_argument(
        "--stream-runs", type=_positive_int, default=3, help="streams timed per streaming API"
    )
    parser.add_argument(
        "--overhead-repeats",
        type=_positive_int,
        default=5,
        help="interleaved raw-backend and AlignerRunnable batches timed for the overhead figure",
    )
    parser.add_argument(
        "--overhead-calls",
        type=_positive_int,
        default=200,
        help="invokes timed with a weight-free backend to measure AlignerRunnable's own cost",
    )
    parser.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=None,
        help="the backend's max_batch_size; default: the largest of --batch-sizes",
    )
    parser.add_argument(
        "--tiny-hidden-size", type=_positive_int, default=64, help="hidden size of the built tiny model"
    )
    parser.add_argument("--tiny-layers", type=_positive_int, default=2, help="layers of the built tiny model")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads (torch.set_num_threads); default: 1 for the built tiny model on CPU (too "
        "small to gain from more, and spin-waiting threads collapse on a busy machine), else torch's choice",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="passed to from_pretrained")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON file to write; default: benchmarks/out/bench_backend-<machine>-<UTC time>.json "
        "(git-ignored; reference runs are kept in benchmarks/results/)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the library's warnings and info logs")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default: ``sys.argv[1:]``)."""
    return build_parser().parse_args(argv)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 else None


def _latency(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": _ms(percentile(values, 50)),
        "p95_ms": _ms(percentile(values, 95)),
        "mean_ms": _ms(statistics.fmean(values)),
        "min_ms": _ms(min(values)),
        "max_ms": _ms(max(values)),
    }


# -- workload -------------------------------------------------------------------------------------


def _requests(count: int) -> list[CorrectionRequest]:
    """``count`` (question, flawed answer) pairs from the synthetic task's held-out split, cycled."""
    from aligner_chain.backends.base import CorrectionRequest
    from training.demo.synthetic import make_synthetic_task

    rows = make_synthetic_task().held_out
    return [CorrectionRequest(rows[i % len(rows)].question, rows[i % len(rows)].answer) for i in range(count)]


def _build_tiny(directory: Path, hidden_size: int, layers: int) -> Path:
    from training.demo.synthetic import make_synthetic_task
    from training.demo.tiny_model import build_tiny_model

    heads = 4 if hidden_size % 4 == 0 else 1
    return build_tiny_model(
        directory, make_synthetic_task().corpus(), hidden_size=hidden_size, num_layers=layers, num_heads=heads
    )


class TokenCounter:
    """Counts the tokens ``generate`` produced per row (up to and including the first EOS).

    It wraps the loaded model's ``generate`` on the instance, so the backend runs unchanged.
    """

    def __init__(self, model: Any, eos_ids: set[int]) -> None:
        self.total = 0
        self.rows = 0
        self.eos_rows = 0
        self._eos = eos_ids
        original = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            width = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
            for row in output[:, width:].tolist():
                end = next((i for i, token in enumerate(row) if token in self._eos), None)
                self.total += len(row) if end is None else end + 1
                self.rows += 1
                self.eos_rows += end is not None
            return output

        model.generate = generate

    def snapshot(self) -> tuple[int, int, int]:
        return self.total, self.rows, self.eos_rows


def _eos_ids(backend: TransformersBackend) -> set[int]:
    model = backend.loaded_model
    value = model.generation_config.eos_token_id
    ids = set(value) if isinstance(value, (list, tuple)) else {value} if value is not None else set()
    return {int(i) for i in ids}


def _statuses(results: Sequence[CorrectionResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        key = r.status if r.reason is None else f"{r.status}:{r.reason}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _merge(into: dict[str, int], more: dict[str, int]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0) + value


# -- measurements ---------------------------------------------------------------------------------


def measure_batches(
    backend: TransformersBackend, counter: TokenCounter, batch_size: int, n_requests: int, min_calls: int = 1
) -> dict[str, Any]:
    """``max(min_calls, ceil(n_requests / batch_size))`` calls of ``batch_size`` requests, one
    ``correct`` each."""
    calls = max(min_calls, math.ceil(n_requests / batch_size))
    requests = _requests(batch_size)
    t0 = time.perf_counter()
    backend.correct(requests)  # warm-up, untimed: a new batch shape can cost seconds once on a GPU
    warmup = time.perf_counter() - t0
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    tokens0, _, eos0 = counter.snapshot()
    started = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        results = backend.correct(requests)
        latencies.append(time.perf_counter() - t0)
        _merge(statuses, _statuses(results))
    total = time.perf_counter() - started
    tokens1, _, eos1 = counter.snapshot()
    done = calls * batch_size
    return {
        "settings": {"batch_size": batch_size, "calls": calls, "requests": done},
        "total_s": round(total, 4),
        "requests_per_s": _rate(done, total),
        "generated_tokens": tokens1 - tokens0,
        "generated_tokens_per_s": _rate(tokens1 - tokens0, total),
        "rows_ending_in_eos": eos1 - eos0,
        "latency": _latency(latencies),
        "latencies_ms": [_ms(x) for x in latencies],
        "warmup_call_ms": _ms(warmup),
        "statuses": statuses,
    }


def measure_concurrency(
    backend: TransformersBackend, counter: TokenCounter, n_callers: int
) -> dict[str, Any]:
    """``n_callers`` coroutines each awaiting ``acorrect([one])`` at once, against one after another."""
    requests = _requests(n_callers)

    async def sequential() -> list[float]:
        out = []
        for request in requests:
            t0 = time.perf_counter()
            await backend.acorrect([request])
            out.append(time.perf_counter() - t0)
        return out

    async def concurrent() -> list[float]:
        async def one(request: CorrectionRequest) -> float:
            t0 = time.perf_counter()
            await backend.acorrect([request])
            return time.perf_counter() - t0

        return list(await asyncio.gather(*(one(r) for r in requests)))

    figures: dict[str, Any] = {}
    for name, run in (("sequential", sequential), ("concurrent", concurrent)):
        batches0 = len(backend.batch_sizes)
        tokens0, _, _ = counter.snapshot()
        t0 = time.perf_counter()
        latencies = asyncio.run(run())
        total = time.perf_counter() - t0
        batches = backend.batch_sizes[batches0:]
        figures[name] = {
            "total_s": round(total, 4),
            "requests_per_s": _rate(n_callers, total),
            "generated_tokens_per_s": _rate(counter.snapshot()[0] - tokens0, total),
            "latency": _latency(latencies),
            "generate_calls": len(batches),
            "batch_sizes_formed": batches,
        }
    seq, conc = figures["sequential"]["total_s"], figures["concurrent"]["total_s"]
    return {
        "settings": {
            "callers": n_callers,
            "requests_per_caller": 1,
            "max_batch_size": backend.max_batch_size,
        },
        **figures,
        "speedup": round(seq / conc, 3) if conc > 0 else None,
    }


def _time_stream(chunks: Callable[[], Iterator[Any]], text_of: Callable[[Any], str]) -> dict[str, Any]:
    from aligner_chain.errors import AlignerError

    t0 = time.perf_counter()
    first: float | None = None
    deltas = 0
    outcome = "ok"
    try:
        for chunk in chunks():
            if text_of(chunk):
                deltas += 1
                if first is None:
                    first = time.perf_counter() - t0
    except AlignerError as err:  # e.g. "truncated" after the deltas: the timing still counts
        outcome = f"failed:{getattr(err, 'reason', type(err).__name__)}"
    return {"ttft_s": first, "total_s": time.perf_counter() - t0, "deltas": deltas, "outcome": outcome}


def _summarise_streams(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ttfts = [r["ttft_s"] for r in runs if r["ttft_s"] is not None]
    totals = [r["total_s"] for r in runs]
    outcomes: dict[str, int] = {}
    for r in runs:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {
        "ttft": _latency(ttfts) if ttfts else None,
        "total": _latency(totals),
        "mean_deltas": round(statistics.fmean(r["deltas"] for r in runs), 2),
        "streams_without_text": len(runs) - len(ttfts),
        "outcomes": outcomes,
    }


def measure_streaming(backend: TransformersBackend, runs: int) -> dict[str, Any]:
    """Time to first delta through the backend's ``stream`` and through ``ChatAligner.stream``."""
    from langchain_core.messages import AIMessage, HumanMessage

    from aligner_chain.chat_model import ChatAligner

    requests = _requests(runs)
    chat = ChatAligner(backend=backend)

    def via_backend(request: CorrectionRequest) -> Iterator[str]:
        return backend.stream(request)

    def via_chat(request: CorrectionRequest) -> Iterator[Any]:
        return chat.stream([HumanMessage(request.question), AIMessage(request.answer)])

    def chunk_text(chunk: Any) -> str:
        return str(chunk.content)

    _time_stream(partial(via_backend, requests[0]), str)  # warm-up, untimed
    _time_stream(partial(via_chat, requests[0]), chunk_text)
    raw = [_time_stream(partial(via_backend, r), str) for r in requests]
    chat_runs = [_time_stream(partial(via_chat, r), chunk_text) for r in requests]
    return {
        "settings": {"streams": runs, "batch_size": 1},
        "backend_stream": _summarise_streams(raw),
        "chat_aligner_stream": _summarise_streams(chat_runs),
    }


def measure_overhead(
    backend: TransformersBackend, counter: TokenCounter, batch_size: int, repeats: int, calls: int
) -> dict[str, Any]:
    """``AlignerRunnable.batch`` against ``backend.correct`` on the same batch, and the runnable's own
    cost per ``invoke`` with a weight-free backend."""
    from aligner_chain.backends.callable import CallableBackend
    from aligner_chain.runnable import AlignerRunnable

    requests = _requests(batch_size)
    inputs = [{"question": r.question, "answer": r.answer} for r in requests]
    runnable = AlignerRunnable(backend=backend)
    runnable.batch(inputs)  # warm-up, untimed
    raw: list[float] = []
    wrapped: list[float] = []
    raw_tokens = wrapped_tokens = 0
    for i in range(repeats):  # interleaved, alternating which goes first, so drift hits both alike
        for which in ("raw", "wrapped") if i % 2 == 0 else ("wrapped", "raw"):
            tokens0 = counter.snapshot()[0]
            t0 = time.perf_counter()
            if which == "raw":
                backend.correct(requests)
                raw.append(time.perf_counter() - t0)
                raw_tokens += counter.snapshot()[0] - tokens0
            else:
                runnable.batch(inputs)
                wrapped.append(time.perf_counter() - t0)
                wrapped_tokens += counter.snapshot()[0] - tokens0
    raw_p50, wrapped_p50 = percentile(raw, 50), percentile(wrapped, 50)

    free = CallableBackend(lambda question, answer: answer.upper(), name="weight-free")
    light = AlignerRunnable(backend=free)
    item = inputs[0]
    light.invoke(item)  # first-call imports and pydantic set-up
    t0 = time.perf_counter()
    for _ in range(calls):
        free.correct([requests[0]])
    direct = (time.perf_counter() - t0) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        light.invoke(item)
    invoked = (time.perf_counter() - t0) / calls
    return {
        "settings": {"batch_size": batch_size, "repeats": repeats, "weight_free_calls": calls},
        "raw_backend_batch": _latency(raw),
        "runnable_batch": _latency(wrapped),
        "overhead_ms_per_batch_p50": _ms(wrapped_p50 - raw_p50),
        "overhead_pct_p50": round(100 * (wrapped_p50 - raw_p50) / raw_p50, 2) if raw_p50 > 0 else None,
        "overhead_ms_per_batch_min": _ms(min(wrapped) - min(raw)),
        "same_work": raw_tokens == wrapped_tokens,
        "generated_tokens": {"raw_backend": raw_tokens, "runnable": wrapped_tokens},
        "weight_free_backend_call_ms": _ms(direct),
        "weight_free_runnable_invoke_ms": _ms(invoked),
        "runnable_own_cost_ms_per_invoke": _ms(invoked - direct),
    }


# -- the run --------------------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace, model_dir: str | None = None) -> dict[str, Any]:
    """Every measurement for ``args``; ``model_dir`` overrides ``args.model`` (the built tiny model)."""
    from aligner_chain.backends.transformers import TransformersBackend

    model = model_dir or args.model
    max_batch = args.max_batch_size or max(args.batch_sizes)
    backend = TransformersBackend(
        model,
        adapter=args.adapter,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        max_batch_size=max_batch,
    )
    with backend:
        t0 = time.perf_counter()
        backend.load()
        load_s = time.perf_counter() - t0
        counter = TokenCounter(backend.loaded_model, _eos_ids(backend))
        warm = _requests(1)
        t0 = time.perf_counter()
        backend.correct(warm)
        first_call_s = time.perf_counter() - t0
        params = sum(p.numel() for p in backend.loaded_model.parameters())
        loaded = {
            "load_s": round(load_s, 4),
            "first_call_s": round(first_call_s, 4),
            "resolved_device": backend.resolved_device,
            "resolved_dtype": str(backend.resolved_dtype).removeprefix("torch."),
            "parameters": params,
            "context_length": backend.context_length,
            "template": backend.template_name,
        }
        batches = [
            measure_batches(backend, counter, b, args.requests, args.min_calls) for b in args.batch_sizes
        ]
        concurrency = measure_concurrency(backend, counter, args.requests)
        streaming = measure_streaming(backend, args.stream_runs)
        overhead = measure_overhead(backend, counter, max_batch, args.overhead_repeats, args.overhead_calls)
        _, rows, eos_rows = counter.snapshot()
    return {
        "load": loaded,
        "batched_calls": batches,
        "dynamic_batching": concurrency,
        "streaming": streaming,
        "runnable_overhead": overhead,
        "rows_generated": rows,
        "rows_ending_in_eos": eos_rows,
    }


def settings_of(args: argparse.Namespace, model_label: str) -> dict[str, Any]:
    """The run-wide settings recorded next to the figures."""
    return {
        "model": model_label,
        "adapter": args.adapter,
        "device": args.device,
        "dtype": args.dtype,
        "batch_sizes": args.batch_sizes,
        "max_batch_size": args.max_batch_size or max(args.batch_sizes),
        "max_new_tokens": args.max_new_tokens,
        "requests": args.requests,
        "min_calls": args.min_calls,
        "stream_runs": args.stream_runs,
        "overhead_repeats": args.overhead_repeats,
        "overhead_calls": args.overhead_calls,
        "threads": args.threads,
        "decoding": "greedy",
        "workload": "synthetic task held-out (question, flawed answer) pairs",
    }


def _attach_settings(report: dict[str, Any]) -> None:
    """Copy the run-wide settings into every figure's own ``settings``."""
    common = {k: report["settings"][k] for k in ("model", "device", "dtype", "max_new_tokens")}
    common["resolved_device"] = report["results"]["load"]["resolved_device"]
    common["resolved_dtype"] = report["results"]["load"]["resolved_dtype"]
    results = report["results"]
    results["load"]["settings"] = dict(common)
    for figure in [
        *results["batched_calls"],
        results["dynamic_batching"],
        results["streaming"],
        results["runnable_overhead"],
    ]:
        figure["settings"] = {**common, **figure["settings"]}


# -- output ---------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    m, s, r = report["machine"], report["settings"], report["results"]
    gpu = m["gpu_name"] or "none"
    lines = [
        f"Machine: {m['cpu_model']}, {m['cpu_cores_usable']} cores, {m['ram_gib']} GiB RAM, GPU: {gpu}; "
        f"torch {m['versions']['torch']}, transformers {m['versions']['transformers']}",
        f"Model: {s['model']} ({r['load']['parameters']:,} parameters) on {r['load']['resolved_device']} "
        f"({r['load']['resolved_dtype']}); greedy, max_new_tokens={s['max_new_tokens']}, "
        f"max_batch_size={s['max_batch_size']}, requests={s['requests']}",
        "",
        f"Load: {_fmt(r['load']['load_s'] * 1000)} ms; first call (warm-up): "
        f"{_fmt(r['load']['first_call_s'] * 1000)} ms",
        "",
        "| batch size | calls | requests/s | generated tokens/s | p50 latency (ms) | p95 latency (ms) "
        "| statuses |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for b in r["batched_calls"]:
        st = b["settings"]
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(b["statuses"].items()))
        lines.append(
            f"| {st['batch_size']} | {st['calls']} | {_fmt(b['requests_per_s'])} | "
            f"{_fmt(b['generated_tokens_per_s'])} | {_fmt(b['latency']['p50_ms'])} | "
            f"{_fmt(b['latency']['p95_ms'])} | {statuses} |"
        )
    d = r["dynamic_batching"]
    lines += [
        "",
        f"Dynamic batching: {d['settings']['callers']} async callers, one request each "
        f"(max_batch_size={d['settings']['max_batch_size']})",
        "",
        "| mode | total (ms) | requests/s | generated tokens/s | p50 latency (ms) | p95 latency (ms) | "
        "generate calls |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("sequential", "concurrent"):
        f = d[mode]
        lines.append(
            f"| {mode} | {_fmt(f['total_s'] * 1000)} | {_fmt(f['requests_per_s'])} | "
            f"{_fmt(f['generated_tokens_per_s'])} | {_fmt(f['latency']['p50_ms'])} | "
            f"{_fmt(f['latency']['p95_ms'])} | {f['generate_calls']} |"
        )
    lines.append(f"\nConcurrent speed-up over sequential: {_fmt(d['speedup'], 2)}x")
    st = r["streaming"]
    lines += [
        "",
        f"Streaming ({st['settings']['streams']} streams each)",
        "",
        "| API | TTFT p50 (ms) | TTFT p95 (ms) | full stream p50 (ms) | deltas per stream |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in (
        ("backend_stream", "TransformersBackend.stream"),
        ("chat_aligner_stream", "ChatAligner.stream"),
    ):
        f = st[name]
        ttft = f["ttft"] or {}
        lines.append(
            f"| {label} | {_fmt(ttft.get('p50_ms'))} | {_fmt(ttft.get('p95_ms'))} | "
            f"{_fmt(f['total']['p50_ms'])} | {_fmt(f['mean_deltas'])} |"
        )
    o = r["runnable_overhead"]
    lines += [
        "",
        f"AlignerRunnable overhead (batch of {o['settings']['batch_size']}, "
        f"{o['settings']['repeats']} repeats; weight-free: {o['settings']['weight_free_calls']} invokes)",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| raw backend.correct p50 (ms) | {_fmt(o['raw_backend_batch']['p50_ms'])} |",
        f"| AlignerRunnable.batch p50 (ms) | {_fmt(o['runnable_batch']['p50_ms'])} |",
        f"| overhead per batch p50 (ms) | {_fmt(o['overhead_ms_per_batch_p50'], 2)} |",
        f"| overhead per batch p50 (%) | {_fmt(o['overhead_pct_p50'], 2)} |",
        f"| overhead per batch, fastest of each (ms) | {_fmt(o['overhead_ms_per_batch_min'], 2)} |",
        f"| runnable's own cost per invoke, weight-free backend (ms) | "
        f"{_fmt(o['runnable_own_cost_ms_per_invoke'], 3)} |",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables and write the JSON report; returns the exit status."""
    args = parse_args(argv)
    if not args.verbose:  # failed corrections (random weights rarely stop) log a warning each
        logging.getLogger("aligner_chain").setLevel(logging.ERROR)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if args.threads is None and args.model is None:
        from aligner_chain.backends.devices import resolve_device

        if resolve_device(args.device) == "cpu":
            args.threads = 1
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    started = dt.datetime.now(dt.timezone.utc)
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="aligner-bench-") as tmp:
        model_dir: str | None = None
        label = args.model
        if args.model is None:
            model_dir = str(_build_tiny(Path(tmp) / "tiny", args.tiny_hidden_size, args.tiny_layers))
            label = f"tiny-random-llama (hidden {args.tiny_hidden_size}, {args.tiny_layers} layers, built)"
        t0 = time.perf_counter()
        results = run_benchmark(args, model_dir)
        elapsed = time.perf_counter() - t0
    machine["load_average_after"] = load_average()
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "bench_backend",
        "started_utc": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 2),
        "command": ["benchmarks/bench_backend.py", *(sys.argv[1:] if argv is None else argv)],
        "machine": machine,
        "settings": settings_of(args, label),
        "results": results,
    }
    _attach_settings(report)
    print(markdown(report))
    print(f"\nWrote {write_report(report, args.output, 'bench_backend', started)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
