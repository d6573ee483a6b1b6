"""``TrainConfig``: every setting of an Aligner training run, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from aligner_chain.prompts import GRANULARITIES, AlignerTemplate, Granularity, default_template, get_template

__all__ = ["DEFAULT_LR_FULL", "DEFAULT_LR_LORA", "TrainConfig"]

DEFAULT_LR_LORA = 2e-4
DEFAULT_LR_FULL = 2e-5
_SCHEDULERS = {"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"}


@dataclass
class TrainConfig:
    """Settings of one training run (see ``aligner-chain train --help`` for each flag).

    ``identity_fraction`` is a float share of the rows or an int row count for the warm-up stage;
    ``0`` skips it. ``learning_rate=None`` picks 2e-4 for LoRA and 2e-5 for full fine-tuning.
    ``bf16=None`` turns bf16 on when a CUDA device supports it. ``max_steps`` caps each stage
    (``-1``: run the epochs). ``granularity="sentence"`` trains a sentence-level Aligner (rows built
    by :mod:`training.aligner.sentences`); ``template=None`` is the granularity's default template
    (``aligner-v1``, or ``stream-aligner`` at sentence level).
    """

    data: str
    base_model: str
    output_dir: str
    template: str | None = None
    granularity: Granularity = "answer"
    identity_fraction: float | int = 0.1
    columns: dict[str, str] | None = None
    split: str = "train"
    epochs: float = 3.0
    learning_rate: float | None = None
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 2048
    max_steps: int = -1
    full: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] = "all-linear"
    qlora: bool = False
    merge: bool = False
    resume: bool = False
    seed: int = 42
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    dtype: str = "auto"
    trust_remote_code: bool = False
    report_to: str = "none"
    disable_tqdm: bool = False
    extra_training_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @property
    def method(self) -> str:
        """``"full"``, ``"qlora"`` or ``"lora"``."""
        return "full" if self.full else ("qlora" if self.qlora else "lora")

    @property
    def resolved_template(self) -> AlignerTemplate:
        """The template: as given, else the granularity's default."""
        return get_template(self.template or default_template(self.granularity))

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LR_FULL if self.full else DEFAULT_LR_LORA

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and how to fix it."""
        for name in ("data", "base_model", "output_dir"):
            value = getattr(self, name)
            if not isinstance(value, (str, Path)) or not str(value):
                raise ValueError(f"{name} is required (a non-empty path or id), got {value!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {self.granularity!r}")
        template = self.resolved_template
        if template.granularity != self.granularity:
            kind = "whole answers" if template.granularity == "answer" else "one sentence at a time"
            raise ValueError(
                f"template {template.to_json()!r} corrects {kind} but granularity is {self.granularity!r}; "
                "pass a template of that kind (stream-aligner at sentence level, aligner-v1 for whole "
                "answers) or leave the template out"
            )
        positive = {
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_length": self.max_length,
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "logging_steps": self.logging_steps,
            "save_steps": self.save_steps,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.epochs, (int, float)) or self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (no cap) or a positive integer, got {self.max_steps!r}")
        if self.lr_scheduler_type not in _SCHEDULERS:
            raise ValueError(
                f"lr_scheduler_type must be one of {sorted(_SCHEDULERS)}, got {self.lr_scheduler_type!r}"
            )
        if isinstance(self.identity_fraction, bool) or not isinstance(self.identity_fraction, (int, float)):
            raise ValueError(
                f"identity_fraction must be a float share in [0, 1] or an int row count, got "
                f"{self.identity_fraction!r}"
            )
        if isinstance(self.identity_fraction, float) and not 0.0 <= self.identity_fraction <= 1.0:
            raise ValueError(f"identity_fraction share must be in [0, 1], got {self.identity_fraction!r}")
        if isinstance(self.identity_fraction, int) and self.identity_fraction < 0:
            raise ValueError(f"identity_fraction row count must be >= 0, got {self.identity_fraction!r}")
        if self.full and self.qlora:
            raise ValueError("full and qlora exclude each other: QLoRA trains LoRA adapters on a 4-bit base")
        if self.save_total_limit is not None and self.save_total_limit <= 0:
            raise ValueError(
                f"save_total_limit must be a positive integer or None, got {self.save_total_limit!r}"
            )
        if self.columns is not None and not isinstance(self.columns, dict):
            raise ValueError(
                f"columns must be a mapping such as {{'correction': 'revision'}}, got {self.columns!r}"
            )
