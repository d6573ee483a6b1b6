"""``aligner_config.json``: what a trained Aligner directory records about itself.

Training writes it next to the weights (or the adapter); inference reads it so that the template a
model was trained with is the one it is served with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aligner_chain.prompts import AlignerTemplate, get_template

__all__ = ["ALIGNER_CONFIG_NAME", "AlignerConfig", "load_aligner_config", "save_aligner_config"]

ALIGNER_CONFIG_NAME = "aligner_config.json"


@dataclass(frozen=True)
class AlignerConfig:
    """``template``: a registered name or a template string; ``base_model``: what it was trained
    from; ``extra``: free-form training facts (recipe, stages, seed)."""

    template: str
    base_model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_template(self) -> AlignerTemplate:
        return get_template(self.template)


def save_aligner_config(directory: str | Path, config: AlignerConfig) -> Path:
    """Write ``aligner_config.json`` into ``directory`` (created if needed)."""
    get_template(config.template)  # never save a template inference would refuse
    path = Path(directory) / ALIGNER_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(config), indent=2, ensure_ascii=False) + "\n")
    return path


def load_aligner_config(directory: str | Path) -> AlignerConfig | None:
    """Read ``aligner_config.json`` from a local directory; ``None`` when there is none."""
    path = Path(directory) / ALIGNER_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return AlignerConfig(
            template=data["template"],
            base_model=data.get("base_model"),
            extra=dict(data.get("extra") or {}),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is not a valid {ALIGNER_CONFIG_NAME} ({err}); it needs a 'template' field"
        ) from err
