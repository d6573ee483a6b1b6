#!/usr/bin/env python
"""Benchmark offline correction: ``aligner-chain correct`` in one process against the same command
on Ray Data with 1 and N replicas, on the same rows and the same model.

Each engine runs the real command (``aligner_chain.cli.main``) on one JSONL file; the script checks
that every engine wrote the same bytes, and reports wall time (model loads and actor start-up
included, as a user waits for them) and rows/s. Ray is started once before the Ray runs (its
start-up is reported on its own), so the Ray rows are what a job costs on a running cluster.

    python benchmarks/bench_offline.py                                  # tiny model, CPU
    python benchmarks/bench_offline.py --model aligner/aligner-7b-v1.0 --device cuda \\
        --replicas 1,2,4 --gpus-per-replica 1 --rows 2000 --max-new-tokens 256

Without ``--model`` a tiny random Llama is built on the synthetic task's corpus (nothing is
downloaded). The JSON report (machine, settings, figures) goes to ``--output``, by default under
``benchmarks/out/``, which git ignores.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.report import DEFAULT_OUTPUT_DIR, load_average, machine_info, write_report  # noqa: E402

__all__ = ["main", "parse_args", "run_benchmark"]


def _counts(text: str) -> list[int]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected a list of integers >= 1 such as 1,2, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="the Aligner (hub id or directory); default: a tiny random Llama built here"
    )
    parser.add_argument(
        "--hidden-size", type=int, default=64, help="hidden size of the built model (default 64)"
    )
    parser.add_argument("--layers", type=int, default=2, help="layers of the built model (default 2)")
    parser.add_argument("--device", default="cpu", help="device of every engine's model (default cpu)")
    parser.add_argument("--dtype", default="auto", help="model dtype (default auto)")
    parser.add_argument("--rows", type=int, default=256, help="rows to correct (default 256)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="correction length cap (default 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per generate (default 8)")
    parser.add_argument("--replicas", type=_counts, default=[1, 2], help="Ray replica counts (default 1,2)")
    parser.add_argument(
        "--gpus-per-replica", type=float, default=0.0, help="GPUs per Ray replica (default 0)"
    )
    parser.add_argument(
        "--cpus-per-replica",
        type=float,
        default=1.0,
        help="CPUs per Ray replica (default 1; each replica's torch then uses that many threads)",
    )
    parser.add_argument(
        "--ray-address", help="an existing Ray cluster (default: a local instance started here)"
    )
    parser.add_argument(
        "--output", help=f"the JSON report (default: {DEFAULT_OUTPUT_DIR}/offline-<machine>-<time>.json)"
    )
    return parser.parse_args(argv)


def _rows(count: int) -> list[dict[str, Any]]:
    from training.demo.synthetic import make_synthetic_task

    pairs = make_synthetic_task().held_out
    return [
        {"id": i, "question": pairs[i % len(pairs)].question, "answer": pairs[i % len(pairs)].answer}
        for i in range(count)
    ]


def _build_tiny(directory: Path, hidden_size: int, layers: int) -> Path:
    from training.demo.synthetic import make_synthetic_task
    from training.demo.tiny_model import build_tiny_model

    heads = max(1, hidden_size // 16)
    return build_tiny_model(
        directory, make_synthetic_task().corpus(), hidden_size=hidden_size, num_layers=layers, num_heads=heads
    )


def _run_correct(argv: list[str]) -> tuple[float, int, str]:
    """Run ``aligner-chain correct``; (wall seconds, exit status, its summary line)."""
    from aligner_chain.cli import main as cli

    err = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stderr(err):
        status = cli(["correct", *argv])
    seconds = time.perf_counter() - started
    summary = [line for line in err.getvalue().splitlines() if "wrote" in line]
    return seconds, status, summary[-1] if summary else err.getvalue()[-500:]


def run_benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import ray

    machine = machine_info()  # the load average before the runs
    model = args.model or str(_build_tiny(work / "tiny-model", args.hidden_size, args.layers))
    source = work / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in _rows(args.rows)), encoding="utf-8")
    common = ["--model", model, "--device", args.device, "--dtype", args.dtype, "--no-progress"]
    common += ["--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size)]
    runs: list[dict[str, Any]] = []
    outputs: dict[str, bytes] = {}

    def record(name: str, argv: list[str], **extra: Any) -> None:
        output = work / f"{name}.jsonl"
        seconds, status, summary = _run_correct(
            [str(source), "-o", str(output), "--overwrite", *common, *argv]
        )
        outputs[name] = output.read_bytes() if output.exists() else b""
        runs.append(
            {
                "engine": name,
                **extra,
                "seconds": round(seconds, 2),
                "rows_per_s": round(args.rows / seconds, 2),
                "exit_status": status,
                "summary": summary,
            }
        )
        print(f"{name}: {seconds:.1f} s, {args.rows / seconds:.1f} rows/s ({summary})", file=sys.stderr)

    import torch

    default_threads = torch.get_num_threads()
    record("one-process", [], torch_threads=default_threads)
    if default_threads != 1:  # what each Ray replica with 1 CPU runs with (Ray sets OMP_NUM_THREADS)
        torch.set_num_threads(1)
        try:
            record("one-process-1-thread", [], torch_threads=1)
        finally:
            torch.set_num_threads(default_threads)
    started = time.perf_counter()
    started_here = not ray.is_initialized()  # a running instance (a test's, a cluster's) is used as it is
    if started_here and args.ray_address:
        ray.init(address=args.ray_address, logging_level=logging.ERROR)
    elif started_here:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        cpus = max(os.cpu_count() or 1, int(max(args.replicas) * args.cpus_per_replica) + 1)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    ray_start = time.perf_counter() - started
    try:
        for replicas in args.replicas:
            layout = ["--engine", "ray", "--replicas", str(replicas)]
            layout += ["--cpus-per-replica", str(args.cpus_per_replica)]
            layout += ["--gpus-per-replica", str(args.gpus_per_replica)]
            record(f"ray-{replicas}", layout, replicas=replicas)
        resources = ray.cluster_resources()
    finally:
        if started_here:
            ray.shutdown()
    reference = outputs["one-process"]
    return {
        "benchmark": "offline correction rows/s: one process vs Ray Data replicas",
        "note": "wall time includes model loads (and, for Ray, actor start-up) but not Ray's own start-up",
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            "model": args.model
            or f"random Llama (hidden {args.hidden_size}, {args.layers} layers), built here",
            "device": args.device,
            "dtype": args.dtype,
            "rows": args.rows,
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "cpus_per_replica": args.cpus_per_replica,
            "gpus_per_replica": args.gpus_per_replica,
            "ray_address": args.ray_address,
            "ray_resources": resources,
            "workload": "synthetic task held-out (question, flawed answer) pairs, cycled; greedy",
        },
        "ray_start_s": round(ray_start, 2),
        "load_average_after": load_average(),
        "runs": runs,
        "same_output_as_one_process": {name: data == reference for name, data in outputs.items()},
    }


def _table(report: dict[str, Any]) -> str:
    base = report["runs"][0]["rows_per_s"]
    lines = [
        f"rows: {report['settings']['rows']}, max_new_tokens: {report['settings']['max_new_tokens']}, "
        f"batch size: {report['settings']['batch_size']}, device: {report['settings']['device']}; "
        f"Ray start-up (not included below): {report['ray_start_s']} s",
        "",
        "| engine | wall time (s) | rows/s | vs one process | same output |",
        "|---|---:|---:|---:|---|",
    ]
    for run in report["runs"]:
        same = report["same_output_as_one_process"][run["engine"]]
        lines.append(
            f"| {run['engine']} | {run['seconds']} | {run['rows_per_s']} | "
            f"{run['rows_per_s'] / base:.2f}x | {'yes' if same else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="bench-offline-") as tmp:
        report = run_benchmark(args, Path(tmp))
    print(_table(report))
    output = write_report(report, Path(args.output) if args.output else None, "offline", started)
    print(f"report: {output}")
    return 0 if all(report["same_output_as_one_process"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
