"""What a training run keeps to be resumed, and what a resume must match.

Checkpoints (optimizer state, the Trainer's pickled arguments, the warm-up stage's weights) live in
a folder beside the output, ``OUTPUT_DIR.checkpoints/``, never inside it: the output directory is
what gets published, and it holds safetensors and JSON only. ``run.json`` there records a
fingerprint of what the run was started with (the data's rows, the base model, the method and its
LoRA shape, the template, the warm-up share and seed); ``--resume`` with anything else is refused,
naming what differs, instead of "finishing" the old run on new data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

from training.aligner.config import TrainConfig

__all__ = ["FINGERPRINT_NAME", "check_resume", "checkpoints_dir", "run_fingerprint", "save_fingerprint"]

FINGERPRINT_NAME = "run.json"


def checkpoints_dir(output_dir: str | Path) -> Path:
    """The folder beside ``output_dir`` that holds a run's checkpoints."""
    output = Path(output_dir)
    return output.with_name(output.name + ".checkpoints")


def run_fingerprint(
    config: TrainConfig, *, base_model: str, template: str, rows: Sequence[Any]
) -> dict[str, Any]:
    """What a run is: a resume must match every value (epochs, steps and learning rate may change)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(astuple(row), ensure_ascii=False).encode("utf-8") + b"\n")  # a dataclass row
    lora = None if config.full else [config.lora_r, config.lora_alpha, config.lora_target_modules]
    return {
        "data": f"{len(rows)} rows, sha256 {digest.hexdigest()[:16]} ({config.data})",
        "base_model": base_model,
        "method": config.method,
        "lora": lora,
        "template": template,
        "identity_fraction": config.identity_fraction,
        "seed": config.seed,
    }


def save_fingerprint(checkpoints: Path, fingerprint: dict[str, Any]) -> None:
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / FINGERPRINT_NAME).write_text(json.dumps(fingerprint, indent=2, ensure_ascii=False) + "\n")


def check_resume(checkpoints: Path, fingerprint: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming what differs when the run in ``checkpoints`` was started with
    other settings than ``fingerprint``."""
    path = checkpoints / FINGERPRINT_NAME
    if not path.is_file():
        return
    started = json.loads(path.read_text())
    differs = [key for key in fingerprint if _comparable(started.get(key)) != _comparable(fingerprint[key])]
    if differs:
        detail = "; ".join(f"{key}: {started.get(key)!r} then, {fingerprint[key]!r} now" for key in differs)
        raise ValueError(
            f"--resume: the run in {checkpoints} was started with other settings ({detail}); resume it "
            "with the same ones, or train into a new --output-dir"
        )


def _comparable(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples and lists alike, as saved
