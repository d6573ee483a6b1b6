#!/usr/bin/env python
"""The decoding figures only a GPU can give, in one short run (``benchmarks/gpu_check.sh`` runs it
after the gpu-marked tests):

* continuous batching against static batches, both through ``AlignerRunnable`` with 32 concurrent
  callers, on the real length mix of Aligner corrections (and raw batched ``generate`` of 32 for
  reference);
* batch-1 latency per generated token, for the backend's defaults (the compiled path on CUDA), the
  backend with compiled decoding off, and a plain ``model.generate``, each as a ratio to the
  bandwidth floor: the weights' bytes over the measured device-to-device copy bandwidth (also over
  the nominal HBM bandwidth when the GPU is known).

The model is a random Llama of about a billion parameters (hidden 2048 x 24 layers, bf16) built on
the device in seconds whose head walks a chain of words (``training/demo/copy_model.py``), so every
row ends with EOS exactly at its length. Lengths come from the real corrections
(``../shared/data/...`` when present, else ``benchmarks/data/alpacaeval_lengths.json``, the same
rows' token counts); prompts are chain words of the real prompt length, so no text is needed.

``--tiny`` runs every step on CPU with a tiny model in seconds (the script's own test).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_decoding import (  # noqa: E402
    DEFAULT_DATA,
    TEMPLATE,
    Row,
    callers,
    model_card_loop,
    one_at_a_time,
    raw_generate,
)
from benchmarks.report import load_average, machine_info, percentile, write_report  # noqa: E402

__all__ = ["NOMINAL_BANDWIDTH", "main", "parse_args", "write_lengths"]

LENGTHS = REPO_ROOT / "benchmarks" / "data" / "alpacaeval_lengths.json"
NOMINAL_BANDWIDTH = {"H200": 4.8e12, "H100 80GB HBM3": 3.35e12, "H100": 3.35e12, "A100": 2.0e12}
"""Bytes/s of HBM by GPU name (substring match), from the vendors' data sheets."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny model, few rows: a smoke run")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="real corrections (else the lengths file)"
    )
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--rows", type=int, default=96, help="rows served by the concurrent callers")
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--length-scale", type=float, default=0.5, help="correction length = real x this")
    parser.add_argument("--lone-tokens", type=int, default=256, help="tokens per batch-1 request")
    parser.add_argument("--lone-rows", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--write-lengths", action="store_true", help="(re)write the lengths file from --data")
    args = parser.parse_args(argv)
    args.device, args.dtype = ("cpu", "float32") if args.tiny else ("cuda", "bfloat16")
    if args.tiny:
        args.hidden, args.layers, args.vocab = 64, 2, 2048
        args.rows, args.callers, args.lone_tokens, args.lone_rows, args.rounds = 8, 4, 16, 2, 1
        args.length_scale = min(args.length_scale, 0.05)
    return args


def write_lengths(data: Path, output: Path = LENGTHS, vocab: int = 8192) -> Path:
    """Token counts (prompt, correction) of every real row, with the benchmark's tokenizer."""
    from aligner_chain.prompts import format_completion
    from aligner_chain.tokenization import encode_prompt, encode_text
    from training.demo.tiny_model import build_tiny_tokenizer

    records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    tokenizer = build_tiny_tokenizer(
        [f"{r['question']}\n{r['answer']}\n{r['correction']}" for r in records], vocab_size=vocab
    )
    rows = [
        [
            len(encode_prompt(tokenizer, TEMPLATE.format(question=r["question"], answer=r["answer"]))),
            len(encode_text(tokenizer, format_completion(r["correction"]))),
        ]
        for r in records
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    note = f"[prompt tokens, correction tokens] of {data.name}, byte-level BPE of {vocab} trained on it"
    output.write_text(json.dumps({"note": note, "rows": rows}) + "\n")
    return output


def _lengths(args: argparse.Namespace) -> list[tuple[int, int]]:
    if args.data.is_file() and (args.write_lengths or not LENGTHS.is_file()):
        write_lengths(args.data)
    return [(int(p), int(c)) for p, c in json.loads(LENGTHS.read_text())["rows"]]


def _corpus(seed: int) -> list[str]:
    """Text to train the tokenizer on: pseudo-words, so thousands of whole-word tokens exist."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(6000)]
    return [" ".join(rng.choice(words) for _ in range(200)) for _ in range(400)]


def build(args: argparse.Namespace, directory: Path) -> tuple[Any, list[Row], list[Row]]:
    from transformers import AutoTokenizer

    from aligner_chain.tokenization import encode_prompt
    from training.demo.copy_model import build_copy_model

    model = build_copy_model(
        directory / "model",
        _corpus(0),
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=max(1, args.hidden // 128),
        max_position_embeddings=4096,
        device=args.device,
        dtype=args.dtype,
    )
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    rng = random.Random(1)
    lengths = _lengths(args)
    rng.shuffle(lengths)
    longest = min(model.longest, 1500)
    base = len(encode_prompt(tokenizer, TEMPLATE.format(question="", answer="")))

    def row(prompt_tokens: int, length: int) -> Row:
        words = [rng.choice(model.texts) for _ in range(max(0, prompt_tokens - base - 1))]
        answer = "".join(words) + model.marker(length)
        prompt = TEMPLATE.format(question="", answer=answer)
        expected = "".join(model.texts[model.longest - length + 1 :]).strip()
        return Row("", answer, prompt, tuple(encode_prompt(tokenizer, prompt)), expected, length + 1)

    mix = [
        row(min(p, 2000), max(1, min(longest, round(c * args.length_scale)))) for p, c in lengths[: args.rows]
    ]
    lone = [row(400 if not args.tiny else 40, args.lone_tokens) for _ in range(args.lone_rows)]
    return model, mix, lone


def bandwidth(device: str) -> dict[str, Any]:
    """Device-to-device copy bandwidth (read + write) and the nominal HBM figure when known."""
    import torch

    if not device.startswith("cuda"):
        return {"measured_bytes_per_s": None, "nominal_bytes_per_s": None, "gpu": None}
    name = torch.cuda.get_device_name()
    source = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        target.copy_(source)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    nominal = next((v for k, v in NOMINAL_BANDWIDTH.items() if k in name), None)
    return {
        "gpu": name,
        "measured_bytes_per_s": 2 * source.numel() / min(times),
        "nominal_bytes_per_s": nominal,
    }


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from aligner_chain.backends.transformers import TransformersBackend
    from aligner_chain.runnable import AlignerRunnable

    model_info, mix, lone = build(args, directory)
    budget = max(r.tokens for r in [*mix, *lone]) + 8
    small = {"num_blocks": 512, "page_size": 32, "max_batch_tokens": 512} if args.tiny else None

    def backend(**options: Any) -> TransformersBackend:
        b = TransformersBackend(
            model_info.path,
            template=TEMPLATE,
            max_new_tokens=budget,
            device=args.device,
            dtype=args.dtype,
            **options,
        )
        t0 = time.perf_counter()
        b.load()
        load_times[id(b)] = time.perf_counter() - t0
        return b

    load_times: dict[int, float] = {}
    static = backend(scheduling="static", compiled="off", prompt_lookup="off")
    continuous = backend(scheduling="continuous", compiled="off", continuous_batching_config=small)
    defaults = backend(continuous_batching_config=small)
    eager = backend(scheduling="static", compiled="off", prompt_lookup="off")
    raw = AutoModelForCausalLM.from_pretrained(model_info.path, dtype=getattr(torch, args.dtype)).to(
        args.device
    )
    raw.eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in raw.parameters())
    tokenizer = static.engine.tokenizer

    figures: dict[str, list[float]] = {}
    outputs_ok: dict[str, bool] = {}
    for _ in range(args.rounds):
        for name, fn in (
            ("static_callers", lambda: callers(AlignerRunnable(backend=static), mix, args.callers)),
            ("continuous_callers", lambda: callers(AlignerRunnable(backend=continuous), mix, args.callers)),
            ("raw_generate", lambda: raw_generate(raw, tokenizer, mix, budget, args.device, args.callers)),
        ):
            result = fn()
            figures.setdefault(name, []).append(result.tokens / result.wall_s)
            outputs_ok[name] = outputs_ok.get(name, True) and result.outputs == [r.expected for r in mix]
    throughput = {k: round(statistics.median(v), 1) for k, v in figures.items()}

    per_token: dict[str, float] = {}
    for name, fn in (
        ("backend_defaults", lambda: one_at_a_time(AlignerRunnable(backend=defaults), lone)),
        ("backend_compiled_off", lambda: one_at_a_time(AlignerRunnable(backend=eager), lone)),
        ("model_generate", lambda: model_card_loop(raw, tokenizer, lone, budget, args.device)),
    ):
        fn()  # warm
        result = fn()
        per_token[name] = statistics.median(result.latencies) / args.lone_tokens
        outputs_ok[name] = result.outputs == [r.expected for r in lone]
    bw = bandwidth(args.device)
    floor = weight_bytes / bw["measured_bytes_per_s"] if bw["measured_bytes_per_s"] else None
    nominal_floor = weight_bytes / bw["nominal_bytes_per_s"] if bw["nominal_bytes_per_s"] else None
    latency = {
        name: {
            "ms_per_token": round(1000 * value, 3),
            "x_floor_measured": round(value / floor, 2) if floor else None,
            "x_floor_nominal": round(value / nominal_floor, 2) if nominal_floor else None,
        }
        for name, value in per_token.items()
    }
    plans = {
        name: list(b.decoding_plan.notes) if b.decoding_plan else None
        for name, b in (("static", static), ("continuous", continuous), ("defaults", defaults))
    }
    for b in (static, continuous, defaults, eager):
        b.close()
    lengths = [r.tokens - 1 for r in mix]
    return {
        "model": {"parameters": sum(p.numel() for p in raw.parameters()), "weight_bytes": weight_bytes},
        "workload": {
            "rows": len(mix),
            "callers": args.callers,
            "correction_tokens_p10_p50_p90": [round(percentile(lengths, q)) for q in (10, 50, 90)],
            "prompt_tokens_p50": round(percentile([len(r.ids) for r in mix], 50)),
            "lone_tokens": args.lone_tokens,
        },
        "load_s": {
            "static": load_times[id(static)],
            "continuous": load_times[id(continuous)],
            "defaults_with_warm_up": load_times[id(defaults)],
        },
        "throughput_tokens_per_s": throughput,
        "continuous_over_static": round(throughput["continuous_callers"] / throughput["static_callers"], 3),
        "batch1_latency": latency,
        "bandwidth": bw,
        "floor_ms_per_token": {
            "measured": round(1000 * floor, 4) if floor else None,
            "nominal": round(1000 * nominal_floor, 4) if nominal_floor else None,
        },
        "identical_outputs": outputs_ok,
        "plans": plans,
        "goals": [
            {
                "goal": "continuous >= 1.5x static at 32 concurrent",
                "value": round(throughput["continuous_callers"] / throughput["static_callers"], 3),
                "met": throughput["continuous_callers"] >= 1.5 * throughput["static_callers"],
            },
            {
                "goal": "batch-1 per-token latency within 1.5x the bandwidth floor (defaults)",
                "value": latency["backend_defaults"]["x_floor_measured"],
                "met": bool(floor and per_token["backend_defaults"] <= 1.5 * floor),
            },
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import logging

    from transformers.utils import logging as hf_logging

    logging.getLogger("aligner_chain").setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("gpu_check.py needs a CUDA device (use --tiny for the CPU smoke run)")
    started = dt.datetime.now(dt.timezone.utc)
    machine = machine_info()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aligner-gpu-check-") as tmp:
        results = run(args, Path(tmp))
    machine["load_average_after"] = load_average()
    report = {
        "benchmark": "gpu_check",
        "started_utc": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "command": ["benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)],
        "machine": machine,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
    }
    print(
        json.dumps(
            {
                k: results[k]
                for k in ("throughput_tokens_per_s", "continuous_over_static", "batch1_latency", "goals")
            },
            indent=2,
        )
    )
    print(f"Wrote {write_report(report, args.output, 'gpu_check', started)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
