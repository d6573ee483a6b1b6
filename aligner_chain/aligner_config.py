"""``aligner_config.json``: what a trained Aligner directory records about itself.

Training writes it next to the weights (or the adapter); inference reads it so that the template a
model was trained with is the one it is served with, and so that a sentence-level Aligner is run
sentence by sentence (``granularity``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aligner_chain.prompts import GRANULARITIES, AlignerTemplate, Granularity, get_template

__all__ = ["ALIGNER_CONFIG_NAME", "AlignerConfig", "load_aligner_config", "save_aligner_config"]

ALIGNER_CONFIG_NAME = "aligner_config.json"


@dataclass(frozen=True)
class AlignerConfig:
    """``template``: a registered name or a template string; ``base_model``: what it was trained
    from; ``extra``: free-form training facts (recipe, stages, seed); ``granularity``: what the model
    corrects, ``"answer"`` or ``"sentence"`` (``None``: the template's kind, which it must match)."""

    template: str
    base_model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    granularity: Granularity | None = None

    def __post_init__(self) -> None:
        if self.granularity is not None and self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {self.granularity!r}")

    def resolved_template(self) -> AlignerTemplate:
        """The template, checked against ``granularity``.

        Raises:
            ValueError: the template is invalid, or of the other kind than ``granularity``.
        """
        template = get_template(self.template)
        if self.granularity is not None and template.granularity != self.granularity:
            raise ValueError(
                f"{ALIGNER_CONFIG_NAME}: granularity {self.granularity!r} does not match template "
                f"{template.to_json()!r}, which corrects at {template.granularity!r} level; fix one of the "
                "two fields"
            )
        return template

    def resolved_granularity(self) -> Granularity:
        return self.resolved_template().granularity


def save_aligner_config(directory: str | Path, config: AlignerConfig) -> Path:
    """Write ``aligner_config.json`` into ``directory`` (created if needed), ``granularity`` filled
    in from the template when not given."""
    granularity = config.resolved_granularity()  # never save a template inference would refuse
    path = Path(directory) / ALIGNER_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**asdict(config), "granularity": granularity}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def load_aligner_config(directory: str | Path) -> AlignerConfig | None:
    """Read ``aligner_config.json`` from a local directory; ``None`` when there is none.

    Raises:
        ValueError: not JSON, no ``template`` field, or a ``granularity`` its template contradicts.
    """
    path = Path(directory) / ALIGNER_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        config = AlignerConfig(
            template=data["template"],
            base_model=data.get("base_model"),
            extra=dict(data.get("extra") or {}),
            granularity=data.get("granularity"),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is not a valid {ALIGNER_CONFIG_NAME} ({err}); it needs a 'template' field"
        ) from err
    config.resolved_template()
    return config
