"""``aligner-chain correct``: correct the answers in a JSONL file (or stdin) with an Aligner.

The flags, the usage checks and the exit statuses; the job itself (rows planned against a resumable
output, an engine, the counts) is :class:`aligner_chain.offline.job.CorrectJob`. Heavy libraries
load only inside :func:`run`.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from aligner_chain.backends.factory import DEFAULT_MODEL, MODEL_ENV, check_backend_options
from aligner_chain.offline.job import CorrectJob
from aligner_chain.offline.output import OutputConflict, ResumableOutput
from aligner_chain.offline.ray_options import RAY_EXTRA_HINT, add_ray_arguments, ray_options_from_args
from aligner_chain.offline.rows import OutputFields, output_row, parse_row

__all__ = ["HELP", "add_arguments", "backend_options", "output_row", "parse_row", "run"]

PREFIX = "aligner-chain correct"

HELP = """Correct the answers in a JSONL file with an Aligner.

Reads rows {"question": ..., "answer": ...} from FILE (or stdin) and writes each row back, in input
order, other keys kept, with "correction" (null unless corrected or unchanged), "status" (corrected,
unchanged, skipped or failed), "reason" (why skipped or failed, else null) and, when there is one,
"detail". An empty answer is skipped (reason "empty"). A malformed row, or one that already has a
result field, is reported on stderr with its line number and left out. A summary with the counts and
rows/s ends the run on stderr. Exit status: 0 when every row was handled, 1 when a row failed or was
left out or the Aligner could not be loaded or reached, 2 for usage errors.

An existing --output is never overwritten silently: --resume continues it (finished rows are kept
byte for byte, failed rows are tried again), --overwrite replaces it.

Examples:
  aligner-chain correct answers.jsonl --output corrected.jsonl
  cat answers.jsonl | aligner-chain correct --model ./my-aligner > corrected.jsonl
  aligner-chain correct answers.jsonl -o out.jsonl --base-url http://localhost:8000/v1 --model aligner \\
      --concurrency 64 --resume
  aligner-chain correct answers.jsonl -o out.jsonl --model ./my-aligner --engine ray --replicas 4 \\
      --gpus-per-replica 1
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
    parser.add_argument("-o", "--output", default="-", help='JSONL results (default "-": stdout)')
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into --output: its finished rows are kept, failed rows are "
        "tried again, the rest is added",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument(
        "--output-prefix",
        default="",
        metavar="PREFIX",
        help="write the results as PREFIXcorrection, PREFIXstatus, PREFIXreason, PREFIXdetail "
        "(for input rows that already use those names)",
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
        default=None,
        help="rows per batched generate of a local model (default: chosen for the device and its "
        "free memory), or per Ray replica call (default 8)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=None,
        help="with --base-url: requests in flight at once, kept full across rows (default 8); with a "
        "local model: batches queued for it (default 1)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=1024,
        help="longest correction in tokens; a longer one fails as 'truncated' (default 1024)",
    )
    parser.add_argument(
        "--base-url",
        help="use an OpenAI-compatible completions server (vLLM, SGLang, llama.cpp, TGI, transformers "
        "serve) at this URL, e.g. http://localhost:8000/v1, instead of loading the model here; the API "
        "key is read from $ALIGNER_API_KEY",
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
        "token ids so text such as '</s>' in an answer never becomes a control token (vLLM, SGLang)",
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
        help="show a progress bar with rows/s on stderr (default: when stderr is a terminal)",
    )
    add_ray_arguments(parser.add_argument_group("Ray Data (offline jobs on a cluster)"), what="correction")


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`~aligner_chain.backends.factory.build_backend` options the flags ask for.

    Raises:
        ValueError: flags that do not go together (``--adapter`` with ``--base-url``, ...).
    """
    check_backend_options(
        base_url=args.base_url,
        adapter=args.adapter,
        tokenizer=args.tokenizer,
        timeout=args.timeout,
        max_retries=args.max_retries,
    )
    remote_here = bool(args.base_url) and args.engine == "local"
    in_flight = (args.concurrency or 8) if remote_here else args.batch_size
    return {
        "model": args.model,
        "adapter": args.adapter,
        "template": args.template,
        "max_new_tokens": args.max_new_tokens,
        "base_url": args.base_url,
        "tokenizer": args.tokenizer,
        "timeout": args.timeout,
        "max_retries": args.max_retries,
        "device": args.device,
        "dtype": args.dtype,
        "trust_remote_code": args.trust_remote_code,
        "max_batch_size": in_flight,
    }


def run(args: argparse.Namespace) -> int:
    """Correct every row; 0 when every row was handled, 1 when one failed or was left out or the
    Aligner could not be had, 2 for usage errors."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from aligner_chain.offline.corrections import AlignerUnavailable

    problem = _usage_problem(args)
    if problem:
        print(f"{PREFIX}: {problem}", file=sys.stderr)
        return 1 if problem.startswith("input file not found") else 2
    try:
        options = backend_options(args)
        ray_options = ray_options_from_args(args, batch_size=args.batch_size)
        fields = OutputFields.with_prefix(args.output_prefix)
        output = ResumableOutput(
            sys.stdout if args.output == "-" else args.output,
            fields=fields,
            resume=args.resume,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as err:  # OutputConflict is a ValueError
        print(f"{PREFIX}: {err}", file=sys.stderr)
        return 2
    show = sys.stderr.isatty() if args.progress is None else args.progress
    if not show:
        from aligner_chain.cli import quiet_progress

        quiet_progress()
    total = None if args.input == "-" else _count_rows(args.input)
    bar = tqdm(
        total=total, unit=" rows", desc="correcting", file=sys.stderr, disable=not show, dynamic_ncols=True
    )
    job = CorrectJob(sys.stdin if args.input == "-" else args.input, output, bar, prefix=PREFIX)
    try:
        with logging_redirect_tqdm() if show else nullcontext():
            if ray_options is None:
                remote = bool(args.base_url)
                concurrency = args.concurrency or (8 if remote else 1)
                job.run_here(options, concurrency=concurrency, chunk_size=1 if remote else args.batch_size)
            else:
                job.run_on_ray(options, ray_options)
            job.finish()
    except AlignerUnavailable as err:
        print(f"{PREFIX}: {err}; fix it and run again with --resume", file=sys.stderr)
        return 1
    except OutputConflict as err:
        print(f"{PREFIX}: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if ray_options is None or err.name not in ("ray", "pyarrow"):
            raise
        print(f"{PREFIX}: {RAY_EXTRA_HINT}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as err:  # a Ray layout that cannot run, rows lost by Ray
        print(f"{PREFIX}: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    finally:
        output.close()
        bar.close()
    message, status = job.summary()
    print(message, file=sys.stderr)
    return status


def _usage_problem(args: argparse.Namespace) -> str | None:
    if args.input != "-" and not Path(args.input).is_file():
        return f"input file not found: {args.input}"
    if args.output != "-" and args.input != "-" and Path(args.output).resolve() == Path(args.input).resolve():
        return "--output must differ from the input file"
    if args.resume and args.output == "-":
        return "--resume needs --output FILE (the rows already there are what it continues)"
    if args.resume and args.overwrite:
        return "--resume and --overwrite exclude each other"
    if args.concurrency is not None and args.engine == "ray":
        return "--concurrency applies to --engine local; on Ray each replica has --batch-size rows in flight"
    return None


def _count_rows(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None
