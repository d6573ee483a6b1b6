"""``aligner-chain correct``: correct the answers in a JSONL file (or stdin) with an Aligner.

The row functions (:func:`parse_row`, :func:`output_row`) are importable for scripts that read and
write the same format. Heavy libraries load only inside :func:`run`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from aligner_chain.backends.base import CorrectionRequest, CorrectionResult, classify
from aligner_chain.backends.factory import DEFAULT_MODEL, MODEL_ENV, build_backend
from aligner_chain.jsonl import JsonlWriter, MalformedLine, iter_jsonl

if TYPE_CHECKING:
    from aligner_chain.backends.base import AlignerBackend

__all__ = [
    "HELP",
    "OUTPUT_STATUSES",
    "add_arguments",
    "make_backend",
    "output_row",
    "parse_row",
    "run",
]

logger = logging.getLogger(__name__)

OUTPUT_STATUSES = ("corrected", "unchanged", "skipped", "failed")

HELP = """Correct the answers in a JSONL file with an Aligner.

Reads rows {"question": ..., "answer": ...} from FILE (or stdin) and writes each row back, other keys
kept, with "correction" (null unless corrected or unchanged), "status" (corrected, unchanged, skipped
or failed), "reason" (why skipped or failed, else null) and, when there is one, "detail". A malformed
row is reported on stderr with its line number and skipped; the run goes on. A summary with the counts
ends the run on stderr.

Examples:
  aligner-chain correct answers.jsonl --output corrected.jsonl
  cat answers.jsonl | aligner-chain correct --model ./my-aligner > corrected.jsonl
  aligner-chain correct answers.jsonl --base-url http://localhost:8000/v1 --model aligner
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the flags of ``aligner-chain correct``."""
    parser.add_argument(
        "input",
        nargs="?",
        default="-",
        metavar="FILE",
        help='JSONL rows with "question" and "answer" strings; "-" or nothing reads stdin',
    )
    parser.add_argument(
        "-o", "--output", default="-", help='where to write the JSONL results (default "-": stdout)'
    )
    parser.add_argument(
        "--model",
        help="the Aligner: a hub id or a local directory (a trained output directory, full model or "
        f"LoRA adapter); with --base-url, the model name the server serves. Default: ${MODEL_ENV}, "
        f"else {DEFAULT_MODEL}",
    )
    parser.add_argument(
        "--adapter", help="a PEFT adapter (directory or hub id) to load on top of --model (local only)"
    )
    parser.add_argument(
        "--template",
        help="prompt template: a name (aligner-v1, aligner-general, aligner-2b, empathy) or a string "
        "with {question} and {answer}. Default: the template saved with the model, else aligner-v1",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=8,
        help="rows per backend call: one batched generate locally, concurrent requests with "
        "--base-url (default 8)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=1024,
        help="longest correction in tokens; a longer one fails as 'truncated' (default 1024)",
    )
    parser.add_argument(
        "--base-url",
        help="use an OpenAI-compatible completions server (vLLM, SGLang, llama.cpp, TGI) at this URL, "
        "e.g. http://localhost:8000/v1, instead of loading the model here; the API key is read from "
        "$ALIGNER_API_KEY",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        help="with --base-url: a total deadline per request attempt in seconds, connect to last byte "
        "(default 60); worst case per row: (max retries + 1) x timeout plus backoff",
    )
    parser.add_argument(
        "--max-retries",
        type=_non_negative_int,
        help="with --base-url: retries of transient errors (timeouts, 429, 5xx...) per row (default 3)",
    )
    parser.add_argument(
        "--tokenizer",
        help="with --base-url: the Aligner's tokenizer (hub id or directory); prompts are then sent as "
        "token ids so text such as '</s>' in an answer never becomes a control token",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="local model device: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="local model dtype; auto is bfloat16 on CUDA, float32 elsewhere (default auto)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow model code from the hub repository to run (off by default; only for models you trust)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )


def parse_row(value: Any) -> CorrectionRequest:
    """The request in one parsed JSONL value.

    Raises:
        ValueError: not an object, or ``question``/``answer`` missing or not strings.
    """
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    problems = []
    for key in ("question", "answer"):
        if key not in value:
            problems.append(f'"{key}" is missing')
        elif not isinstance(value[key], str):
            problems.append(f'"{key}" must be a string, got {type(value[key]).__name__}')
    if problems:
        raise ValueError("; ".join(problems))
    return CorrectionRequest(value["question"], value["answer"])


def output_row(row: dict[str, Any], result: CorrectionResult) -> dict[str, Any]:
    """The input row with ``correction``, ``status``, ``reason`` (and ``detail``) set from ``result``."""
    out = dict(row)
    outcome = classify(str(row.get("answer", "")), result)
    kept = outcome.status in ("corrected", "unchanged")
    out.update(
        correction=result.text if kept else None,
        status=outcome.status,
        reason=None if kept else outcome.reason,
    )
    out.pop("detail", None)
    if outcome.detail:
        out["detail"] = outcome.detail
    return out


def make_backend(args: argparse.Namespace) -> AlignerBackend:
    """The backend the flags ask for (nothing is loaded yet: backends load on first use).

    Raises:
        ValueError: flags that do not go together (``--adapter`` with ``--base-url``, ...).
    """
    return build_backend(
        args.model,
        adapter=args.adapter,
        template=args.template,
        max_new_tokens=args.max_new_tokens,
        base_url=args.base_url,
        tokenizer=args.tokenizer,
        timeout=args.timeout,
        max_retries=args.max_retries,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        max_batch_size=args.batch_size,
    )


def _batches(
    lines: Iterator[tuple[int, Any]], size: int, report: Callable[[int, str], None]
) -> Iterator[list[tuple[dict[str, Any], CorrectionRequest]]]:
    batch: list[tuple[dict[str, Any], CorrectionRequest]] = []
    for line_number, value in lines:
        try:
            request = parse_row(value)
        except ValueError as err:
            report(line_number, str(err))
            continue
        batch.append((value, request))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _count_rows(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None


def run(args: argparse.Namespace) -> int:
    """Correct every row; exit status 0 when the run completes (see the summary for failures)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    reading_stdin = args.input == "-"
    if not reading_stdin and not Path(args.input).is_file():
        print(f"aligner-chain correct: input file not found: {args.input}", file=sys.stderr)
        return 1
    if args.output != "-" and not reading_stdin and Path(args.output).resolve() == Path(args.input).resolve():
        print("aligner-chain correct: --output must differ from the input file", file=sys.stderr)
        return 1
    try:
        backend = make_backend(args)
    except ValueError as err:
        print(f"aligner-chain correct: {err}", file=sys.stderr)
        return 2
    show = sys.stderr.isatty() if args.progress is None else args.progress
    if not show:
        from aligner_chain.cli import quiet_progress

        quiet_progress()
    bar = tqdm(
        total=None if reading_stdin else _count_rows(args.input),
        unit="row",
        desc="correcting",
        file=sys.stderr,
        disable=not show,
        dynamic_ncols=True,
    )
    counts: Counter[str] = Counter()

    def report(line_number: int, error: str) -> None:
        counts["malformed"] += 1
        bar.update(1)
        message = f"aligner-chain correct: {source_name}, line {line_number}: {error}; row skipped"
        tqdm.write(message, file=sys.stderr)

    def report_line(bad: MalformedLine) -> None:
        report(bad.line_number, bad.error)

    source_name = "<stdin>" if reading_stdin else args.input
    source: IO[str] | str = sys.stdin if reading_stdin else args.input
    output: IO[str] | str = sys.stdout if args.output == "-" else args.output
    with JsonlWriter(output, append=False) as writer, logging_redirect_tqdm() if show else nullcontext():
        for batch in _batches(iter_jsonl(source, on_malformed=report_line), args.batch_size, report):
            results = _correct(backend, [request for _, request in batch])
            rows = [output_row(row, result) for (row, _), result in zip(batch, results, strict=True)]
            writer.write_many(rows)
            counts.update(row["status"] for row in rows)
            bar.update(len(rows))
    bar.close()
    _summarise(counts)
    return 0


def _correct(backend: AlignerBackend, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
    try:
        results = backend.correct(requests)
    except Exception as err:  # the whole batch failed (e.g. the model could not be loaded)
        logger.warning("a batch of %d rows failed: %s: %s", len(requests), type(err).__name__, err)
        detail = f"{type(err).__name__}: {err}"
        return [CorrectionResult.failed("backend_error", detail) for _ in requests]
    if len(results) != len(requests):
        detail = f"the backend returned {len(results)} results for {len(requests)} rows"
        return [CorrectionResult.failed("backend_error", detail) for _ in requests]
    return results


def _summarise(counts: Counter[str]) -> None:
    total = sum(counts[status] for status in OUTPUT_STATUSES)
    parts = ", ".join(f"{counts[status]} {status}" for status in OUTPUT_STATUSES)
    malformed = counts["malformed"]
    print(
        f"aligner-chain correct: wrote {total} row(s) ({parts}); skipped {malformed} malformed row(s)",
        file=sys.stderr,
    )
