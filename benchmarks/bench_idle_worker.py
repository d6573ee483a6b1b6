#!/usr/bin/env python
"""What an idle local backend costs the rest of the process: a user's own torch work (matmuls in
the main thread, torch's default thread pool) timed alone and next to an Aligner that has just
served a call.

Contenders, each timed in the same fresh process (medians of ``--reps``):

* ``alone``: no backend;
* ``thread_that_decoded_idles``: a thread that ran ``generate`` with the default pool and then
  waits for work, as the backend's worker did before it owned its pool (its idle OpenMP team stays
  alive, so the process holds more OpenMP threads than cores);
* ``ours_right_after_a_call``: ``TransformersBackend`` just after ``invoke`` returned (its worker
  still alive);
* ``ours_idle``: the same backend once its worker has gone idle (on CPU it exits soon, releasing its
  team);
* ``ours_continuous_idle``: a backend with ``scheduling="continuous"`` a second after a call (the
  continuous-batching manager's thread lives as long as the model).

Both decode the same answer (``--answer-words``, long enough that the prompt's matmuls use the
thread pool). The model is a random Llama built on the fly (nothing is downloaded). The JSON
(``benchmarks/out/`` unless ``--output``) holds the machine, the load average and every setting::

    python benchmarks/bench_idle_worker.py                  # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.report import load_average, machine_info, write_report  # noqa: E402

__all__ = ["main", "parse_args"]

SCHEMA_VERSION = 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_idle_worker.py",
        description="The cost of an idle local Aligner to torch work elsewhere in the process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--size", type=int, default=256, help="side of the user's square matmuls")
    parser.add_argument("--matmuls", type=int, default=300, help="matmuls per repetition (short ops)")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions (the median is kept)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the built Aligner")
    parser.add_argument(
        "--answer-words", type=int, default=150, help="words of the answer each call corrects"
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default benchmarks/out/...)")
    args = parser.parse_args(argv)
    for name in ("size", "matmuls", "reps", "hidden", "answer_words"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def _time_user_work(size: int, matmuls: int, reps: int) -> dict[str, float]:
    """The user's work: ``matmuls`` products of ``size`` x ``size`` matrices in this thread."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        for _ in range(matmuls):
            a @ b
        times.append(time.perf_counter() - started)
    return {"median_ms": round(1000 * statistics.median(times), 2), "min_ms": round(1000 * min(times), 2)}


def _build_model(directory: Path, hidden: int) -> Path:
    from training.demo.synthetic import make_synthetic_task
    from training.demo.tiny_model import build_tiny_model

    corpus = make_synthetic_task(n_train=200, n_held_out=20).corpus(template="aligner-v1")
    return Path(build_tiny_model(directory / "model", corpus, hidden_size=hidden, num_layers=2))


def _thread_that_decoded(model_dir: Path, answer: str) -> tuple[threading.Thread, threading.Event]:
    """A thread that runs ``generate`` once with the default pool, then waits (the old worker)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = AutoTokenizer.from_pretrained(model_dir)(answer, return_tensors="pt")["input_ids"]
    release, done = threading.Event(), threading.Event()

    def worker() -> None:
        with torch.inference_mode():
            model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
        done.set()
        release.wait()

    thread = threading.Thread(target=worker, name="idle-decoder")
    thread.start()
    done.wait()
    return thread, release


def run(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    from aligner_chain.backends.transformers import TransformersBackend
    from aligner_chain.runnable import AlignerRunnable

    def timed(name: str, extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        figures = {"contender": name, **_time_user_work(args.size, args.matmuls, args.reps)}
        figures["threads_alive"] = threading.active_count()
        return {**figures, **(extra() if extra else {})}

    answer = " ".join(["The answer keeps a few words."] * max(1, args.answer_words // 6))
    rows = [timed("alone")]
    thread, release = _thread_that_decoded(model_dir, answer)
    rows.append(timed("thread_that_decoded_idles"))
    release.set()
    thread.join()

    backend = TransformersBackend(model_dir, device="cpu", dtype="float32", max_new_tokens=8)
    runnable = AlignerRunnable(backend=backend)
    runnable.invoke({"question": "What does the answer keep?", "answer": answer})
    rows.append(timed("ours_right_after_a_call", lambda: {"worker_alive": _alive(backend)}))
    deadline = time.monotonic() + 10.0
    while _alive(backend) and time.monotonic() < deadline:
        time.sleep(0.05)
    rows.append(timed("ours_idle", lambda: {"worker_alive": _alive(backend)}))
    backend.close()

    continuous = TransformersBackend(
        model_dir, device="cpu", dtype="float32", max_new_tokens=8, scheduling="continuous"
    )
    AlignerRunnable(backend=continuous).invoke({"question": "What does the answer keep?", "answer": answer})
    time.sleep(1.0)
    rows.append(timed("ours_continuous_idle"))
    continuous.close()
    alone = rows[0]["median_ms"]
    for row in rows:
        row["x_alone"] = round(row["median_ms"] / alone, 3)
    return {"contenders": rows}


def _alive(backend: Any) -> bool:
    thread = backend.engine.worker_thread
    return bool(thread is not None and thread.is_alive())


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"A user's {report['settings']['matmuls']} matmuls of {report['settings']['size']}^2 in the "
        f"main thread, torch's default pool ({report['settings']['torch_threads']} threads)",
        f"machine: {machine['cpu_model']} ({machine['cpu_cores_usable']} cores), load "
        f"{machine['load_average']} -> {machine['load_average_after']}",
        "",
        "| next to | median ms | x alone | threads alive |",
        "|---|---:|---:|---:|",
    ]
    for row in report["results"]["contenders"]:
        lines.append(
            f"| {row['contender']} | {row['median_ms']} | {row['x_alone']} | {row['threads_alive']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    logging.getLogger("aligner_chain").setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    started = dt.datetime.now(dt.timezone.utc)
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="aligner-idle-") as tmp:
        results = run(args, _build_model(Path(tmp), args.hidden))
    machine["load_average_after"] = load_average()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["torch_threads"] = torch.get_num_threads()
    report = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "bench_idle_worker",
        "started_utc": started.isoformat(timespec="seconds"),
        "command": ["benchmarks/bench_idle_worker.py", *(sys.argv[1:] if argv is None else argv)],
        "machine": machine,
        "settings": settings,
        "results": results,
    }
    print(markdown(report))
    print(f"\nWrote {write_report(report, args.output, 'bench_idle_worker', started)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
