"""Where a local Aligner comes from: a model directory or hub id, a PEFT adapter on it, the tokenizer
and the template saved at training time (``aligner_config.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligner_chain.aligner_config import load_aligner_config
from aligner_chain.errors import AlignerError
from aligner_chain.prompts import DEFAULT_TEMPLATE, AlignerTemplate, get_template

__all__ = ["ADAPTER_CONFIG_NAME", "ModelSources", "load_adapter", "resolve_sources", "template_from_config"]

ADAPTER_CONFIG_NAME = "adapter_config.json"


@dataclass(frozen=True)
class ModelSources:
    """Where the base model, the adapter (if any) and the tokenizer come from."""

    base: str
    adapter: str | None
    tokenizer: str


def template_from_config(model: str, adapter: str | None, revision: str | None) -> AlignerTemplate:
    """The template recorded in ``aligner_config.json`` (adapter first, then model), else the default."""
    for source in (adapter, model):
        if source is None:
            continue
        directory = _config_dir(source, "aligner_config.json", revision)
        config = load_aligner_config(directory) if directory is not None else None
        if config is not None:
            return config.resolved_template()
    return get_template(DEFAULT_TEMPLATE)


def resolve_sources(model: str, adapter: str | None, revision: str | None) -> ModelSources:
    """The base, adapter and tokenizer to load for ``model`` (which may itself be an adapter) and
    ``adapter``.

    Raises:
        ValueError: ``model`` is an adapter and ``adapter`` is given too.
        AlignerError: ``adapter`` is not a PEFT adapter, or an adapter records no base model.
    """
    model_adapter_dir = _config_dir(model, ADAPTER_CONFIG_NAME, revision)
    if adapter is not None:
        if model_adapter_dir is not None:
            raise ValueError(
                f"model={model!r} is itself a PEFT adapter; pass its base model as model= together "
                "with adapter=, or pass the adapter alone as model="
            )
        adapter_dir = _config_dir(adapter, ADAPTER_CONFIG_NAME, None)
        if adapter_dir is None:
            raise AlignerError(
                f"adapter={adapter!r} holds no {ADAPTER_CONFIG_NAME}; it is not a PEFT adapter"
            )
        return ModelSources(
            base=model, adapter=adapter, tokenizer=_tokenizer_source(adapter_dir, adapter, model)
        )
    if model_adapter_dir is None:
        return ModelSources(base=model, adapter=None, tokenizer=model)
    base = _adapter_base_model(model_adapter_dir)
    return ModelSources(base=base, adapter=model, tokenizer=_tokenizer_source(model_adapter_dir, model, base))


def _config_dir(source: str, filename: str, revision: str | None) -> Path | None:
    """The local directory holding ``filename`` for ``source`` (a directory, or a hub repo whose file
    is downloaded into the cache); ``None`` when there is no such file."""
    path = Path(source)
    if path.is_dir():
        return path if (path / filename).is_file() else None
    if path.exists() or source.count("/") > 1 or not source:
        return None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, filename, revision=revision)).parent
    except Exception:  # not on the hub, no such file, or offline: treated as absent
        return None


def _adapter_base_model(adapter_dir: Path) -> str:
    recorded = json.loads((adapter_dir / ADAPTER_CONFIG_NAME).read_text()).get("base_model_name_or_path")
    aligner_config = load_aligner_config(adapter_dir)
    fallback = aligner_config.base_model if aligner_config is not None else None
    if recorded and (Path(recorded).exists() or not _looks_local(recorded) or not fallback):
        return str(recorded)
    if fallback:
        return fallback
    raise AlignerError(
        f"the adapter in {adapter_dir} records no base model (base_model_name_or_path in "
        f"{ADAPTER_CONFIG_NAME}); pass the base model as model= and the adapter as adapter="
    )


def _looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def _tokenizer_source(adapter_dir: Path, adapter: str, base: str) -> str:
    has_tokenizer = any(
        (adapter_dir / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json")
    )
    return adapter if has_tokenizer and Path(adapter).is_dir() else base


def load_adapter(model: Any, adapter: str, revision: str | None) -> Any:
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, adapter, revision=revision, is_trainable=False)
    try:
        return peft_model.merge_and_unload()  # plain weights: faster generate, same results
    except Exception:  # adapter types that cannot merge are served unmerged
        return peft_model
