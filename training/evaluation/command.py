"""``aligner-chain eval``: win rates of corrected over original answers, per dimension."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from aligner_chain.cli import quiet_progress

__all__ = ["HELP", "add_arguments", "run"]

HELP = """Judge corrected against original answers and report wins, ties, losses and omega.

Each row of --data holds a question, the original answer and the corrected one. The judge is either
an OpenAI-compatible chat endpoint (--judge-base-url, --judge-model), which sees every pair in both
orders per dimension (MT-Bench pairwise prompts; a verdict that flips with the order is a tie), or a
sequence-classification reward model (--reward-model) that scores both answers.
omega = (wins - losses) / (wins + ties + losses). Writes report.json, report.md and report.png.

example:
  aligner-chain eval --data pairs.jsonl --original-column answer --corrected-column correction \\
      --judge-base-url http://localhost:8000/v1 --judge-model Qwen/Qwen2.5-72B-Instruct \\
      --dimensions helpful,harmless --output-dir eval-out
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``eval`` flags."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, help="JSONL, CSV, JSON or datasets directory with the rows")
    data.add_argument(
        "--question-column", default="question", help="column of the question (default: question)"
    )
    data.add_argument("--original-column", default="original", help="column of the original answer")
    data.add_argument("--corrected-column", default="corrected", help="column of the corrected answer")
    data.add_argument("--limit", type=int, default=None, help="judge only the first N rows")
    judge = parser.add_argument_group("judge (one of)")
    judge.add_argument("--judge-base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    judge.add_argument("--judge-model", help="model name sent to --judge-base-url")
    judge.add_argument(
        "--judge-api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the judge's API key (default: OPENAI_API_KEY; unset: none)",
    )
    judge.add_argument("--judge-temperature", type=float, default=0.0, help="judge temperature (default: 0)")
    judge.add_argument(
        "--judge-max-tokens", type=int, default=1024, help="longest judge reply in tokens (default: 1024)"
    )
    judge.add_argument("--reward-model", help="directory or hub id of a sequence-classification reward model")
    judge.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="reward difference within which a pair is a tie (default: 0)",
    )
    options = parser.add_argument_group("options")
    options.add_argument(
        "--dimensions",
        default="helpful,harmless",
        help="comma-separated judge dimensions: helpful, harmless, honest, empathy, or your own with "
        "--judge-prompts (default: helpful,harmless)",
    )
    options.add_argument(
        "--judge-prompts", help="JSON file mapping a dimension to its judge system prompt (overrides/adds)"
    )
    options.add_argument("--output-dir", required=True, help="where the reports and the judge cache go")
    options.add_argument("--max-concurrency", type=int, default=8, help="judge calls in flight (default: 8)")
    options.add_argument("--retries", type=int, default=3, help="retries on transient errors (default: 3)")
    options.add_argument("--no-cache", action="store_true", help="do not reuse or write judge_cache.jsonl")
    options.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; 0 on success (bad arguments or data: ``ValueError``, exit status 2)."""
    if args.no_progress:
        quiet_progress()
    from training.evaluation.win_rates import (
        judge_win_rates,
        load_eval_rows,
        markdown_table,
        reward_model_win_rates,
        write_reports,
    )

    if bool(args.judge_base_url) == bool(args.reward_model):
        raise ValueError("pass exactly one judge: --judge-base-url (with --judge-model) or --reward-model")
    columns = {
        "question": args.question_column,
        "original": args.original_column,
        "corrected": args.corrected_column,
    }
    rows = load_eval_rows(args.data, columns=columns)
    if args.limit is not None:
        rows = rows[: args.limit]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, object] = {"data": args.data, "rows": len(rows)}
    if args.reward_model:
        results = reward_model_win_rates(rows, args.reward_model, margin=args.margin)
        meta.update(judge=args.reward_model, margin=args.margin)
        title = "Corrected vs original (reward model)"
    else:
        from pydantic import SecretStr

        from training.evaluation.chat_client import OpenAICompatibleChat

        if not args.judge_model:
            raise ValueError("--judge-base-url needs --judge-model (the model name the endpoint serves)")
        key = os.environ.get(args.judge_api_key_env) if args.judge_api_key_env else None
        judge = OpenAICompatibleChat(
            base_url=args.judge_base_url,
            model=args.judge_model,
            api_key=SecretStr(key) if key else None,
            temperature=args.judge_temperature,
            max_tokens=args.judge_max_tokens,
        )
        prompts = None
        if args.judge_prompts:
            try:
                prompts = json.loads(Path(args.judge_prompts).read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"--judge-prompts {args.judge_prompts}: {err}") from err
            if not isinstance(prompts, dict):
                raise ValueError("--judge-prompts must hold a JSON object {dimension: system prompt}")
        dimensions = [d.strip() for d in args.dimensions.split(",") if d.strip()]
        results = judge_win_rates(
            rows,
            judge,
            dimensions,
            prompts=prompts,
            max_concurrency=args.max_concurrency,
            retries=args.retries,
            cache_path=None if args.no_cache else out / "judge_cache.jsonl",
            progress=not args.no_progress,
        )
        meta.update(judge=args.judge_model, judge_base_url=args.judge_base_url, dimensions=dimensions)
        title = f"Corrected vs original (judge: {args.judge_model})"
    paths = write_reports(results, out, title=title, meta=meta)
    print(markdown_table(results, title=title))
    print(f"reports: {paths['json']}, {paths['markdown']}, {paths['chart']}")
    return 0
