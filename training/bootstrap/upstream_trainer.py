"""Train an upstream causal LM on bootstrapped data: SFT on the corrections or DPO on the pairs.

Both go through TRL (``SFTTrainer`` / ``DPOTrainer``) with a PEFT LoRA adapter by default; with
LoRA, DPO's reference model is the same model with its adapter disabled. The output directory is a
model :class:`training.bootstrap.local_upstream.LocalUpstream` loads: merged weights (default) or the adapter,
the tokenizer, and ``upstream_config.json`` recording the prompt format it was trained with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from aligner_chain.backends.devices import accelerator_present, bf16_supported, resolve_dtype
from aligner_chain.backends.model_sources import load_causal_lm, resolve_sources
from aligner_chain.jsonl import iter_jsonl
from training.bootstrap.local_upstream import (
    UpstreamFormat,
    load_upstream_format,
    resolve_upstream_format,
    save_upstream_format,
)

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "UpstreamTrainResult",
    "completion_logprobs",
    "load_upstream_rows",
    "preference_margins",
    "train_upstream",
]

logger = logging.getLogger(__name__)

Method = Literal["sft", "dpo"]

#: (method, "lora" | "full") -> default learning rate.
DEFAULT_LEARNING_RATES: Mapping[tuple[str, str], float] = {
    ("sft", "lora"): 2e-4,
    ("sft", "full"): 2e-5,
    ("dpo", "lora"): 5e-5,
    ("dpo", "full"): 1e-6,
}
_FILES = {"sft": "sft.jsonl", "dpo": "preferences.jsonl"}
_COLUMNS = {"sft": ("prompt", "completion"), "dpo": ("prompt", "chosen", "rejected")}


@dataclass
class UpstreamTrainResult:
    """What one upstream training run did; ``metrics`` holds the trainer's last logged values."""

    output_dir: str
    method: str
    rows: int
    lora: bool
    merged: bool
    learning_rate: float
    global_step: int = 0
    train_loss: float | None = None
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


def load_upstream_rows(
    data: str | Path | Sequence[Mapping[str, Any]], method: Method
) -> list[dict[str, str]]:
    """Rows for ``method``: a directory written by ``collect_preferences`` (its ``sft.jsonl`` or
    ``preferences.jsonl``), one such JSONL file, or the rows themselves.

    Raises:
        ValueError: a missing file, a row without the method's columns, or no rows.
    """
    if method not in _FILES:
        raise ValueError(f"method must be 'sft' or 'dpo', got {method!r}")
    columns = _COLUMNS[method]
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir():
            path = path / _FILES[method]
        if not path.is_file():
            raise ValueError(f"training data {path} not found; run collect_preferences (bootstrap) first")
        numbered: list[tuple[int, Any]] = list(iter_jsonl(path, objects_only=False))
        source, where = str(path), "line"
    else:
        numbered, source, where = list(enumerate(data)), "rows", "row"
    rows: list[dict[str, str]] = []
    for i, record in numbered:
        if not isinstance(record, Mapping) or not all(isinstance(record.get(c), str) for c in columns):
            found = sorted(record) if isinstance(record, Mapping) else type(record).__name__
            raise ValueError(
                f"{source}: {where} {i} needs string columns {list(columns)} for {method}; found {found}"
            )
        rows.append({c: record[c] for c in columns})
    if not rows:
        raise ValueError(
            f"{source}: no rows to train on (every correction was unchanged, failed or skipped?)"
        )
    return rows


def _load_model(model: str, *, bf16: bool, trust_remote_code: bool) -> Any:
    """The model to train or score: ``model``'s weights, an adapter directory merged into its base."""
    sources = resolve_sources(model, None, None)
    dtype = resolve_dtype("bfloat16" if bf16 else "float32", "cpu")
    return load_causal_lm(sources, dtype=dtype, trust_remote_code=trust_remote_code)


def _to_trl_rows(rows: list[dict[str, str]], method: Method, fmt: UpstreamFormat) -> list[dict[str, Any]]:
    if method == "sft":
        return [fmt.sft_row(r["prompt"], r["completion"]) for r in rows]
    return [fmt.preference_row(r["prompt"], r["chosen"], r["rejected"]) for r in rows]


def train_upstream(
    method: Method,
    model: str | Path,
    data: str | Path | Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    *,
    lora: bool = True,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    lora_target_modules: str | list[str] = "all-linear",
    merge: bool = True,
    epochs: float = 1.0,
    max_steps: int = -1,
    learning_rate: float | None = None,
    batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    max_length: int = 1024,
    beta: float = 0.1,
    seed: int = 0,
    bf16: bool | None = None,
    gradient_checkpointing: bool = False,
    use_chat_template: bool | None = None,
    prompt_template: str | None = None,
    logging_steps: int = 10,
    disable_tqdm: bool = False,
    trust_remote_code: bool = False,
    extra_training_args: Mapping[str, Any] | None = None,
) -> UpstreamTrainResult:
    """Train ``model`` (a causal-LM directory or hub id) with ``method`` on ``data``.

    Args:
        method: ``"sft"`` (prompt -> correction) or ``"dpo"`` (chosen = correction, rejected =
            original).
        data: a ``collect_preferences`` output directory, a JSONL file, or rows.
        lora: train a LoRA adapter (default) instead of all weights; ``merge`` folds it into the
            saved model so the next round loads plain weights.
        learning_rate: ``None`` picks :data:`DEFAULT_LEARNING_RATES` for the method and mode.
        use_chat_template / prompt_template: the prompt format when ``model`` has no
            ``upstream_config.json`` (``None``: the chat template if the tokenizer has one, else the
            plain ``"Question: {question}\\nAnswer:"``).

    Returns:
        An :class:`UpstreamTrainResult`; ``output_dir`` then holds the model, its tokenizer and
        ``upstream_config.json``.
    """
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed

    if method not in _FILES:
        raise ValueError(f"method must be 'sft' or 'dpo', got {method!r}")
    if batch_size < 1 or gradient_accumulation_steps < 1:
        raise ValueError("batch_size and gradient_accumulation_steps must be >= 1")
    model_id = str(model)
    out = Path(output_dir)
    rows = load_upstream_rows(data, method)
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    fmt = load_upstream_format(model_id) if Path(model_id).is_dir() else None
    if fmt is None:
        fmt = resolve_upstream_format(tokenizer, use_chat_template, prompt_template)
    lr = (
        learning_rate
        if learning_rate is not None
        else DEFAULT_LEARNING_RATES[(method, "lora" if lora else "full")]
    )
    use_bf16 = bf16_supported() if bf16 is None else bf16
    dataset = Dataset.from_list(_to_trl_rows(rows, method, fmt))
    common: dict[str, Any] = {
        "output_dir": str(out / "checkpoints"),
        "num_train_epochs": epochs,
        "max_steps": max_steps,
        "learning_rate": lr,
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "max_length": max_length,
        "seed": seed,
        "data_seed": seed,
        "bf16": use_bf16,
        "dataloader_pin_memory": accelerator_present(),
        "activation_checkpointing": gradient_checkpointing,
        "logging_steps": logging_steps,
        "logging_first_step": True,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": disable_tqdm,
        "dataset_num_proc": None,
        **dict(extra_training_args or {}),
    }
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=lora_target_modules,
            task_type="CAUSAL_LM",
        )
    net = _load_model(model_id, bf16=use_bf16, trust_remote_code=trust_remote_code)
    trainer: Any
    if method == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(
            model=net,
            args=SFTConfig(**common, completion_only_loss=True),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    else:
        from trl import DPOConfig, DPOTrainer

        ref_model = None
        if not lora:  # full fine-tuning: a frozen copy of the starting weights is the reference
            ref_model = _load_model(model_id, bf16=use_bf16, trust_remote_code=trust_remote_code)
        trainer = DPOTrainer(
            model=net,
            ref_model=ref_model,
            args=DPOConfig(**common, beta=beta),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    logger.info("training the upstream (%s, %s) on %d rows", method, "LoRA" if lora else "full", len(rows))
    start = time.perf_counter()
    output = trainer.train()
    seconds = round(time.perf_counter() - start, 2)
    result = UpstreamTrainResult(
        output_dir=str(out),
        method=method,
        rows=len(rows),
        lora=lora,
        merged=lora and merge,
        learning_rate=lr,
        global_step=int(trainer.state.global_step),
        train_loss=float(output.training_loss),
        seconds=seconds,
        metrics=_last_metrics(trainer.state.log_history),
    )
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        if lora and merge:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(str(out), safe_serialization=True)
        else:
            trainer.save_model(str(out))
        tokenizer.save_pretrained(str(out))
        save_upstream_format(out, fmt, base_model=model_id, training=asdict(result))
    trainer.accelerator.wait_for_everyone()
    return result


def _last_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last value of every numeric metric in the trainer's log history."""
    metrics: dict[str, float] = {}
    for entry in history:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[key] = float(value)
    return metrics


def _completion_ids(
    tokenizer: Any, fmt: UpstreamFormat, question: str, completion: str
) -> tuple[list[int], int]:
    """Token ids of prompt + completion (as TRL tokenizes them) and where the completion starts."""
    if fmt.kind == "chat":
        user = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": completion}], tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(fmt.render(question))["input_ids"]
        full_ids = [*tokenizer(fmt.render(question) + " " + completion)["input_ids"], tokenizer.eos_token_id]
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    return list(full_ids), start


def _scoring_model(
    model: str | Path | Any, tokenizer: Any, prompt_format: UpstreamFormat | None
) -> tuple[Any, Any, UpstreamFormat]:
    from transformers import AutoTokenizer

    if isinstance(model, (str, Path)):
        model_id = str(model)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_id)
        prompt_format = prompt_format or (load_upstream_format(model_id) if Path(model_id).is_dir() else None)
        model = _load_model(model_id, bf16=False, trust_remote_code=False)
    if tokenizer is None:
        raise ValueError("pass tokenizer= together with a loaded model")
    return model, tokenizer, prompt_format or resolve_upstream_format(tokenizer)


def completion_logprobs(
    model: str | Path | Any,
    pairs: Sequence[tuple[str, str]],
    *,
    tokenizer: Any = None,
    prompt_format: UpstreamFormat | None = None,
    batch_size: int = 8,
) -> list[float]:
    """Summed log-probability of each ``(question, completion)`` under an upstream model (its
    prompt format, completion + EOS), e.g. to compare a model before and after a round."""
    import torch

    model, tokenizer, fmt = _scoring_model(model, tokenizer, prompt_format)
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores: list[float] = []
    for offset in range(0, len(pairs), batch_size):
        encoded = [_completion_ids(tokenizer, fmt, q, c) for q, c in pairs[offset : offset + batch_size]]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (ids, _) in enumerate(encoded):  # right padding: positions stay as in training
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        token_logp = logp.gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        for row, (ids, start) in enumerate(encoded):
            scores.append(float(token_logp[row, max(start, 1) - 1 : len(ids) - 1].sum()))
    return scores


def preference_margins(
    model: str | Path | Any, rows: Sequence[Mapping[str, str]], **kwargs: Any
) -> list[float]:
    """``log p(chosen) - log p(rejected)`` per preference row (``prompt``, ``chosen``,
    ``rejected``) under an upstream model; see :func:`completion_logprobs` for ``kwargs``."""
    net, tokenizer, fmt = _scoring_model(
        model, kwargs.pop("tokenizer", None), kwargs.pop("prompt_format", None)
    )
    kwargs.update(tokenizer=tokenizer, prompt_format=fmt)
    chosen = completion_logprobs(net, [(r["prompt"], r["chosen"]) for r in rows], **kwargs)
    rejected = completion_logprobs(net, [(r["prompt"], r["rejected"]) for r in rows], **kwargs)
    return [c - r for c, r in zip(chosen, rejected, strict=True)]
