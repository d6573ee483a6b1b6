"""``aligner-chain bootstrap``: train an upstream model on its own Aligner-corrected answers."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from aligner_chain.cli import quiet_progress
from aligner_chain.offline.ray_options import RAY_EXTRA_HINT, add_ray_arguments, ray_options_from_args

__all__ = ["HELP", "add_arguments", "run"]

HELP = """Bootstrap an upstream causal LM from its Aligner-corrected answers, round after round.

Each round: the upstream answers the round's prompts, the Aligner corrects them, the corrected
answers become preference pairs (preferences.jsonl: prompt, chosen = correction, rejected =
original) and SFT rows (sft.jsonl), and the upstream is trained on them (--method sft or dpo, LoRA by
default; DPO's reference is the model with its adapter disabled). Round k's model answers round
k+1's prompts. Output: OUTPUT_DIR/round-K/ (data, model/, manifest.json) and bootstrap.json.
Interrupted runs continue where they stopped when run again with the same --output-dir.

example:
  aligner-chain bootstrap --prompts prompts.jsonl --upstream Qwen/Qwen2.5-0.5B-Instruct \\
      --aligner aligner/aligner-7b-v1.0 --output-dir boot --method sft --rounds 2
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``bootstrap`` flags."""
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--prompts", required=True, help="JSONL, CSV, JSON or datasets directory with questions")
    io.add_argument(
        "--question-column", default="question", help="column of the question (default: question)"
    )
    io.add_argument("--upstream", required=True, help="causal LM to bootstrap: hub id or local directory")
    io.add_argument(
        "--aligner",
        required=True,
        help="Aligner: hub id or local directory (model or adapter); with --aligner-base-url, the name "
        "the server serves it under",
    )
    io.add_argument(
        "--aligner-base-url",
        help="correct through an OpenAI-compatible completions server serving the Aligner (vLLM, "
        "SGLang, transformers serve), e.g. http://localhost:8000/v1; API key from $ALIGNER_API_KEY",
    )
    io.add_argument("--output-dir", required=True, help="where the rounds go (re-run to resume)")
    rounds = parser.add_argument_group("rounds")
    rounds.add_argument(
        "--method", choices=("sft", "dpo"), default="sft", help="SFT on corrections or DPO on pairs"
    )
    rounds.add_argument("--rounds", type=int, default=1, help="number of rounds (default: 1)")
    rounds.add_argument(
        "--prompts-per-round",
        choices=("split", "same"),
        default="split",
        help="split: each round gets its own share of the prompts; same: every round answers all",
    )
    rounds.add_argument(
        "--eval-fraction",
        type=float,
        default=0.0,
        help="share of each round's pairs held out; the manifest reports their log-prob margin before/after",
    )
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-concurrency", type=int, default=8, help="upstream calls in flight (default: 8)")
    gen.add_argument("--retries", type=int, default=3, help="retries on transient errors (default: 3)")
    gen.add_argument(
        "--max-new-tokens", type=int, default=256, help="upstream answer length cap (default: 256)"
    )
    gen.add_argument(
        "--aligner-max-new-tokens",
        type=int,
        default=1024,
        help="Aligner correction length cap (default: 1024)",
    )
    gen.add_argument("--device", default="auto", help="device for the Aligner (default: auto)")
    add_ray_arguments(
        parser.add_argument_group("Ray Data (the correction step on a cluster)"), what="the correction step"
    )
    train = parser.add_argument_group("training")
    train.add_argument("--full", action="store_true", help="train all weights instead of a LoRA adapter")
    train.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default: 16)")
    train.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default: 32)")
    train.add_argument("--epochs", type=float, default=1.0, help="epochs per round (default: 1)")
    train.add_argument(
        "--max-steps", type=int, default=-1, help="cap on optimizer steps per round (-1: epochs)"
    )
    train.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="default: 2e-4 SFT/LoRA, 2e-5 SFT/full, 5e-5 DPO/LoRA, 1e-6 DPO/full",
    )
    train.add_argument("--batch-size", type=int, default=8, help="per-device batch size (default: 8)")
    train.add_argument("--gradient-accumulation-steps", type=int, default=1, help="(default: 1)")
    train.add_argument("--max-length", type=int, default=1024, help="max tokens per example (default: 1024)")
    train.add_argument("--beta", type=float, default=0.1, help="DPO beta (default: 0.1)")
    train.add_argument("--seed", type=int, default=0, help="seed for splits and training (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    """Run the rounds; 0 on success, 1 when the Aligner cannot be had, 2 on bad arguments or data."""
    from aligner_chain.offline.corrections import AlignerUnavailable

    try:
        return _run(args)  # a ValueError: exit status 2
    except AlignerUnavailable as err:
        print(
            f"aligner-chain bootstrap: error: {err}; fix it and run again (finished work is kept)",
            file=sys.stderr,
        )
        return 1
    except ModuleNotFoundError as err:
        if args.engine != "ray" or err.name not in ("ray", "pyarrow"):
            raise
        print(f"aligner-chain bootstrap: error: {RAY_EXTRA_HINT}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.no_progress:
        quiet_progress()
    from aligner_chain.runnable import AlignerRunnable
    from training.bootstrap.rounds import run_bootstrap

    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    ray = ray_options_from_args(args, batch_size=None)
    aligner = AlignerRunnable(
        model=args.aligner,
        base_url=args.aligner_base_url,
        max_new_tokens=args.aligner_max_new_tokens,
        device=args.device,
    )
    train_options: dict[str, Any] = {
        "lora": not args.full,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "max_length": args.max_length,
        "beta": args.beta,
        "disable_tqdm": args.no_progress,
    }
    summary = run_bootstrap(
        args.prompts,
        args.upstream,
        aligner,
        args.output_dir,
        rounds=args.rounds,
        method=args.method,
        prompts_per_round=args.prompts_per_round,
        eval_fraction=args.eval_fraction,
        question_column=args.question_column,
        max_concurrency=args.max_concurrency,
        retries=args.retries,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        progress=not args.no_progress,
        train_options=train_options,
        ray=ray,
    )
    print("| round | prompts | written | unchanged | failed | skipped | upstream errors | train loss |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in summary["rounds"]:
        c, loss = m.get("counts", {}), m.get("metrics", {}).get("training", {}).get("train_loss")
        print(
            f"| {m['round']} | {m['inputs']['n_prompts']} | {c.get('written')} | {c.get('unchanged')} | "
            f"{c.get('failed')} | {c.get('skipped')} | {c.get('upstream_errors')} | "
            f"{'n/a' if loss is None else f'{loss:.4f}'} |"
        )
    print(f"final model: {summary['final_model']}")
    return 0
