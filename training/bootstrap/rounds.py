"""Bootstrapping an upstream model from its own Aligner-corrected answers, round after round.

Round k: the upstream (round k-1's trained model, or the starting model) answers round k's
prompts, the Aligner corrects them (:func:`collect_preferences`), and the upstream is trained on the
result (SFT on the corrections or DPO on the pairs, :func:`train_upstream`). Each round lives in
``OUTPUT_DIR/round-k/`` with its data, its model (``model/``) and a ``manifest.json`` (inputs,
outputs, counts, metrics, timings). A finished round is skipped on a restart, and an unfinished one
continues where it stopped.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from aligner_chain.offline.ray_options import RayOptions
from training.bootstrap.collect import (
    PREFERENCES_FILE,
    SFT_FILE,
    PromptSource,
    answer_text,
    as_aligner,
    collect_preferences,
    iter_done,
    load_prompts,
)
from training.common.resumable import stable_key

__all__ = [
    "MANIFEST_FILE",
    "answer_text",
    "collect_preferences",
    "load_prompts",
    "read_manifest",
    "run_bootstrap",
    "split_prompts",
]

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"


def split_prompts(questions: Sequence[str], rounds: int, *, seed: int = 0) -> list[list[str]]:
    """``rounds`` disjoint, near-equal shares of ``questions`` (a seeded shuffle)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    shuffled = list(questions)
    random.Random(seed).shuffle(shuffled)
    return [shuffled[i::rounds] for i in range(rounds)]


def read_manifest(round_dir: str | Path) -> dict[str, Any] | None:
    """A round's ``manifest.json``, or ``None`` when it has none yet."""
    path = Path(round_dir) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_manifest(round_dir: Path, manifest: Mapping[str, Any]) -> None:
    tmp = round_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n")
    tmp.replace(round_dir / MANIFEST_FILE)


def _held_out(
    rows: list[dict[str, str]], fraction: float
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Split preference rows into (train, held out) by a stable hash of the prompt."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    ranked = sorted(rows, key=lambda r: stable_key(r["prompt"]))
    n_eval = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    held = {id(r) for r in ranked[:n_eval]}
    return [r for r in rows if id(r) not in held], [r for r in rows if id(r) in held]


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def run_bootstrap(
    prompts: PromptSource,
    upstream_model: str | Path,
    aligner: Any,
    output_dir: str | Path,
    *,
    rounds: int = 1,
    method: Literal["sft", "dpo"] = "sft",
    prompts_per_round: Literal["split", "same"] = "split",
    eval_fraction: float = 0.0,
    question_column: str = "question",
    max_concurrency: int = 8,
    retries: int = 3,
    max_new_tokens: int = 256,
    upstream_batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    train_options: Mapping[str, Any] | None = None,
    ray: RayOptions | None = None,
) -> dict[str, Any]:
    """Run ``rounds`` bootstrap rounds starting from the causal LM ``upstream_model``.

    Args:
        prompts: strings, rows or a path (see :func:`load_prompts`).
        upstream_model: a local directory or hub id; each round's trained model answers the next
            round's prompts through :class:`training.bootstrap.local_upstream.LocalUpstream`.
        aligner: an ``AlignerRunnable`` or a model path.
        method: ``"sft"`` on the corrections or ``"dpo"`` on the pairs.
        prompts_per_round: ``"split"`` gives each round its own disjoint share of the prompts;
            ``"same"`` has every round answer all of them.
        eval_fraction: a share of each round's pairs held out of training; the manifest reports the
            mean log-probability margin (chosen - rejected) on them before and after the round.
        train_options: keyword options for :func:`training.bootstrap.upstream_trainer.train_upstream`
            (``lora``, ``epochs``, ``learning_rate``, ``batch_size``, ``max_steps``, ...).
        ray: run each round's correction step on Ray Data (see :func:`collect_preferences`).

    Returns:
        ``{"rounds": [manifest, ...], "final_model": path}``; also written to
        ``OUTPUT_DIR/bootstrap.json``.
    """
    from training.bootstrap.local_upstream import LocalUpstream
    from training.bootstrap.upstream_trainer import load_upstream_rows, preference_margins, train_upstream

    if method not in ("sft", "dpo"):
        raise ValueError(f"method must be 'sft' or 'dpo', got {method!r}")
    if prompts_per_round not in ("split", "same"):
        raise ValueError(f"prompts_per_round must be 'split' or 'same', got {prompts_per_round!r}")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    questions = load_prompts(prompts, question_column=question_column)
    described = _describe(aligner)
    aligner = as_aligner(aligner)  # a model path is loaded once for every round
    shares = (
        split_prompts(questions, rounds, seed=seed) if prompts_per_round == "split" else [questions] * rounds
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    current = str(upstream_model)
    manifests: list[dict[str, Any]] = []
    options = dict(train_options or {})
    for k, share in enumerate(shares, start=1):
        round_dir = out / f"round-{k}"
        model_dir = round_dir / "model"
        previous = read_manifest(round_dir)
        if previous and previous.get("status") == "complete" and model_dir.is_dir():
            logger.info("round %d already complete; its model answers the next round", k)
            manifests.append(previous)
            current = str(model_dir)
            continue
        round_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        manifest: dict[str, Any] = {
            "round": k,
            "status": "running",
            "inputs": {
                "upstream": current,
                "aligner": described,
                "prompts": str(prompts)
                if isinstance(prompts, (str, Path))
                else f"{len(questions)} in memory",
                "n_prompts": len(share),
                "method": method,
                "train_options": options,
                "eval_fraction": eval_fraction,
                "seed": seed,
            },
        }
        _write_manifest(round_dir, manifest)
        upstream = LocalUpstream(
            model=current, max_new_tokens=max_new_tokens, max_batch_size=upstream_batch_size
        )
        counts = collect_preferences(
            share,
            upstream,
            aligner,
            round_dir,
            max_concurrency=max_concurrency,
            retries=retries,
            progress=progress,
            ray=ray,
        )
        collect_s = time.perf_counter() - started
        del upstream
        _free_memory()
        train_rows, held = _held_out(load_upstream_rows(round_dir, "dpo"), eval_fraction)
        data: Any = (
            train_rows
            if method == "dpo"
            else [{"prompt": r["prompt"], "completion": r["chosen"]} for r in train_rows]
        )
        metrics: dict[str, Any] = {}
        if held:
            metrics["held_out_pairs"] = len(held)
            metrics["margin_before"] = _mean(preference_margins(current, held))
        train_start = time.perf_counter()
        result = train_upstream(method, current, data, model_dir, seed=seed, **options)
        train_s = time.perf_counter() - train_start
        _free_memory()
        if held:
            metrics["margin_after"] = _mean(preference_margins(model_dir, held))
        metrics["training"] = {
            "train_loss": result.train_loss,
            "global_step": result.global_step,
            **result.metrics,
        }
        manifest.update(
            status="complete",
            outputs={
                "preferences": str(round_dir / PREFERENCES_FILE),
                "sft": str(round_dir / SFT_FILE),
                "model": str(model_dir),
            },
            counts=_round_counts(round_dir, counts),
            metrics=metrics,
            timings={
                "collect_s": round(collect_s, 2),
                "train_s": round(train_s, 2),
                "total_s": round(time.perf_counter() - started, 2),
            },
        )
        _write_manifest(round_dir, manifest)
        manifests.append(manifest)
        current = str(model_dir)
    summary = {"rounds": manifests, "final_model": current}
    (out / "bootstrap.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _round_counts(round_dir: Path, last_run: Mapping[str, Any]) -> dict[str, Any]:
    """The round's counts: outcomes over every run (from the done-log, so a resumed round still
    adds up to its prompts), the other figures (``done_before``, ``answers_reused``, ...) of the
    last run."""
    totals = Counter(str(r.get("status")) for r in iter_done(round_dir))
    counts = {k: v for k, v in last_run.items() if k not in ("output_dir", "seconds")}
    counts.update({status: totals[status] for status in ("written", "unchanged", "failed", "skipped")})
    return counts


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _describe(aligner: Any) -> str:
    if isinstance(aligner, (str, Path)):
        return str(aligner)
    for attr in ("model", "backend"):
        value = getattr(aligner, attr, None)
        if value is not None:
            return str(getattr(value, "model_name", value))
    return type(aligner).__name__
