"""``aligner-chain train``: fine-tune an Aligner (identity warm-up, then the residual corrections)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aligner_chain.cli import quiet_progress

__all__ = ["HELP", "RECIPES_DIR", "add_arguments", "load_recipe", "resolve_recipe", "run"]

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"

HELP = """Train an Aligner on question/answer/correction rows.

Stage 1 ("warmup") trains on identity rows (correction = answer, a share set by --identity-fraction)
so the model learns to copy; stage 2 ("residual") continues from those weights on the corrections.
Loss on the correction tokens (+ EOS) only. LoRA by default, --full for full fine-tuning. The output
directory holds the LoRA adapter (its base model recorded) or, with --full or --merge, a full model,
plus the tokenizer and aligner_config.json (the template), so inference loads it directly:
AlignerRunnable(model=OUTPUT_DIR) or `aligner-chain correct --model OUTPUT_DIR`.

--granularity sentence trains a sentence-level Aligner (Stream Aligner style: question, corrected
answer so far, next sentence -> that sentence's revision, empty to drop it), used by AlignerRunnable,
with_aligner and AlignedChatModel to correct each sentence while the upstream streams. Its rows come
from the same question/answer/correction data, the answer's sentences aligned with the correction's
(kept, rewritten, dropped, inserted: training/aligner/sentences.py), or from explicit question,
prefix, sentence and revision columns; the warm-up copies sentences.

--config takes a YAML recipe (a file, or the name of one shipped in training/aligner/recipes: paper-full,
lora-2b, lora-7b, tiny-cpu); flags given on the command line override the recipe's values.
Several GPUs: run the same command under `accelerate launch` (configs in training/aligner/accelerate/).

examples:
  aligner-chain train --data train.jsonl --base-model google/gemma-2b --output-dir runs/aligner-2b
  aligner-chain train --config lora-7b --data aligner-20k.jsonl --output-dir runs/aligner-7b --merge
  accelerate launch --config_file training/aligner/accelerate/deepspeed-zero3.yaml -m aligner_chain.cli \\
      train --config paper-full --data train.jsonl --base-model meta-llama/Llama-2-7b-hf \\
      --output-dir runs/aligner-7b-full
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``train`` flags (every default is ``None``: "not given, use the recipe")."""
    io = parser.add_argument_group("data, model and output")
    io.add_argument(
        "--data",
        help="training rows: .jsonl, .json (a list), .csv, a datasets save_to_disk directory or a hub "
        "dataset id, with question, answer and correction columns (with --granularity sentence also: "
        "question, prefix, sentence and revision)",
    )
    io.add_argument(
        "--column-map",
        metavar="FIELD=COLUMN,...",
        help="other column names, e.g. question=prompt,answer=response,correction=revision (sentence rows: "
        "prefix=..., sentence=..., revision=...)",
    )
    io.add_argument("--split", help="split of a hub dataset or saved DatasetDict (default: train)")
    io.add_argument("--base-model", help="base causal LM to fine-tune: hub id or local directory")
    io.add_argument(
        "--output-dir",
        help="where the Aligner is written (safetensors and JSON only); resume checkpoints go beside it, "
        "in OUTPUT_DIR.checkpoints/",
    )
    io.add_argument(
        "--template",
        help="prompt template name (aligner-v1, aligner-general, stream-aligner, ...) or a string with "
        "{question} and {answer} ({question}, {prefix} and {sentence} at sentence level); saved with the "
        "model and used at inference (default: aligner-v1, or stream-aligner with --granularity sentence)",
    )
    io.add_argument(
        "--granularity",
        choices=["answer", "sentence"],
        help="what the Aligner corrects: whole answers, or one sentence after the corrected answer so far "
        "(saved in aligner_config.json; default: answer)",
    )
    io.add_argument(
        "--config",
        metavar="RECIPE",
        help="YAML recipe: a path or a shipped name (paper-full, lora-2b, lora-7b, tiny-cpu); its keys "
        "are the settings of training.aligner.config.TrainConfig",
    )
    stages = parser.add_argument_group("warm-up and schedule")
    stages.add_argument(
        "--identity-fraction",
        type=_share_or_count,
        help="warm-up size: a share of the rows with a decimal point (0.1) or a row count (500); 0 skips "
        "the warm-up stage (default: 0.1)",
    )
    stages.add_argument("--epochs", type=float, help="epochs per stage (default: 3)")
    stages.add_argument(
        "--max-steps", type=int, help="cap on optimizer steps per stage; -1 runs the epochs (default: -1)"
    )
    stages.add_argument(
        "--learning-rate", type=float, help="peak learning rate (default: 2e-4 with LoRA, 2e-5 with --full)"
    )
    stages.add_argument(
        "--lr-scheduler",
        dest="lr_scheduler_type",
        help="linear, cosine, cosine_with_restarts, polynomial, constant or constant_with_warmup "
        "(default: cosine)",
    )
    stages.add_argument(
        "--warmup-ratio", type=float, help="share of the steps with a rising learning rate (default: 0.03)"
    )
    stages.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: 0)")
    stages.add_argument("--batch-size", type=int, help="rows per device per step (default: 8)")
    stages.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        help="steps summed per optimizer update; global batch = batch size x this x GPUs (default: 1)",
    )
    stages.add_argument(
        "--max-length",
        type=int,
        help="longest prompt + correction in tokens; longer rows are dropped and counted (default: 2048)",
    )
    stages.add_argument(
        "--seed", type=int, help="seed for the warm-up sample, data order and init (default: 42)"
    )
    method = parser.add_argument_group("method")
    kind = method.add_mutually_exclusive_group()
    kind.add_argument("--lora-r", type=int, help="LoRA rank (default: 16; LoRA is the default method)")
    kind.add_argument(
        "--full", action="store_true", default=None, help="full fine-tuning of every weight instead of LoRA"
    )
    method.add_argument("--lora-alpha", type=int, help="LoRA alpha (default: 32)")
    method.add_argument("--lora-dropout", type=float, help="LoRA dropout (default: 0.05)")
    method.add_argument(
        "--lora-target-modules",
        type=_modules,
        help="comma-separated module names to adapt, or all-linear (default: all-linear)",
    )
    method.add_argument(
        "--qlora", action="store_true", default=None, help="LoRA on a 4-bit base (needs bitsandbytes + CUDA)"
    )
    method.add_argument(
        "--merge",
        action="store_true",
        default=None,
        help="fold the LoRA adapter into the base and save a full model (standalone, no PEFT at inference)",
    )
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue the run in --output-dir from its last checkpoint (a finished warm-up is not redone); "
        "refused when the data, base model, method, template, warm-up share or seed differ",
    )
    precision = runtime.add_mutually_exclusive_group()
    precision.add_argument(
        "--bf16", action="store_true", default=None, help="bf16 mixed precision (default: on where supported)"
    )
    precision.add_argument(
        "--no-bf16", dest="bf16", action="store_false", default=None, help="train in float32"
    )
    runtime.add_argument(
        "--dtype", help="dtype the base is loaded in: auto, float32, bfloat16, float16 (default: auto)"
    )
    runtime.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        default=None,
        help="recompute activations to save GPU memory",
    )
    runtime.add_argument("--logging-steps", type=int, help="log the loss every N steps (default: 10)")
    runtime.add_argument("--save-steps", type=int, help="checkpoint every N steps (default: 500)")
    runtime.add_argument("--save-total-limit", type=int, help="checkpoints kept per stage (default: 2)")
    runtime.add_argument(
        "--report-to", help="experiment tracker: none, tensorboard, wandb, ... (default: none)"
    )
    runtime.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="run code shipped with the base model (off by default)",
    )
    runtime.add_argument(
        "--no-progress",
        dest="disable_tqdm",
        action="store_true",
        default=None,
        help="no progress bars at all (training, loading, saving, data preparation)",
    )


def _share_or_count(text: str) -> float | int:
    """``0.1`` -> a share (float), ``500`` -> a row count (int)."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a share such as 0.1 or a row count such as 500, got {text!r}"
        ) from None


def _modules(text: str) -> str | list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    return names[0] if names == ["all-linear"] else names


def _column_map(text: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in text.split(","):
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise ValueError(
                f"--column-map item {item!r} is not FIELD=COLUMN; e.g. question=prompt,correction=revision"
            )
        mapping[field.strip()] = column.strip()
    return mapping


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe file: an existing path, or the name of a recipe shipped in ``training/aligner/recipes``."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = RECIPES_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if "/" not in name_or_path and shipped.is_file():
        return shipped
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise ValueError(f"--config {name_or_path}: no such file, and not a shipped recipe (one of {names})")


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """The settings of a YAML recipe, checked against ``TrainConfig``'s fields.

    Raises:
        ValueError: unreadable YAML, not a mapping, or a key that is not a ``TrainConfig`` field
            (the message names the key and the file).
    """
    import yaml

    from training.aligner.config import TrainConfig

    path = resolve_recipe(name_or_path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"recipe {path}: cannot read it as YAML ({err})") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"recipe {path}: must be a mapping of settings, got {type(loaded).__name__}")
    known = set(TrainConfig.field_names())
    settings: dict[str, Any] = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ValueError(
                f"recipe {path}: unknown key {key!r}; valid keys are the TrainConfig fields: {sorted(known)}"
            )
        settings[name] = value
    return settings


def build_config(args: argparse.Namespace) -> Any:
    """The ``TrainConfig`` for ``args``: recipe values, then every flag the user gave on top."""
    from training.aligner.config import TrainConfig

    settings: dict[str, Any] = load_recipe(args.config) if args.config else {}
    known = set(TrainConfig.field_names())
    given = {k: v for k, v in vars(args).items() if k in known and v is not None}
    if args.column_map is not None:
        given["columns"] = _column_map(args.column_map)
    if given.get("lora_r") is not None:
        given.setdefault("full", False)  # --lora-r on a full-fine-tuning recipe means LoRA
    settings.update(given)
    missing = [
        f"--{n.replace('_', '-')}" for n in ("data", "base_model", "output_dir") if not settings.get(n)
    ]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (give it as a flag or in the --config recipe)")
    try:
        return TrainConfig(**settings)
    except TypeError as err:  # a recipe value of the wrong kind, e.g. a list for epochs
        raise ValueError(f"invalid setting: {err}") from err


def run(args: argparse.Namespace) -> int:
    """Train; 0 on success, 2 on bad arguments, recipe, data or base model."""
    config = build_config(args)  # a ValueError: exit status 2
    if config.disable_tqdm:
        quiet_progress()
    from aligner_chain.errors import AlignerError
    from training.aligner.trainer import train_aligner

    try:
        result = train_aligner(config)
    except (ImportError, AlignerError) as err:  # the base model cannot be had, --qlora without bnb
        raise ValueError(str(err)) from err
    for stage in result.stages:
        loss = "-" if stage.train_loss is None else f"{stage.train_loss:.4f}"
        note = f" ({stage.skipped})" if stage.skipped else ""
        resumed = f", resumed from {stage.resumed_from}" if stage.resumed_from else ""
        print(f"{stage.name}: {stage.rows} rows, {stage.global_step} steps, loss {loss}{resumed}{note}")
    kind = "full model" if config.full or config.merge else f"LoRA adapter on {config.base_model}"
    print(f"saved the Aligner ({kind}) to {result.output_dir}")
    print(f'use it: AlignerRunnable(model="{result.output_dir}")')
    return 0
