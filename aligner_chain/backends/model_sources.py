"""Where a local model comes from and how it is loaded: a model directory or hub id, a PEFT adapter
on it (recognised by ``adapter_config.json``), the tokenizer, and the template saved at training time
(``aligner_config.json``). Inference (the Aligner, the bootstrap upstream) and training load causal
LMs through :func:`load_causal_lm`: safetensors only, ``trust_remote_code`` as given."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligner_chain.aligner_config import ALIGNER_CONFIG_NAME, load_aligner_config
from aligner_chain.backends.availability import check_source, is_hub_id, local_files_only
from aligner_chain.errors import AlignerError
from aligner_chain.prompts import DEFAULT_TEMPLATE, AlignerTemplate, get_template

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ModelSources",
    "is_adapter_dir",
    "load_adapter",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_sources",
    "template_from_config",
]

ADAPTER_CONFIG_NAME = "adapter_config.json"


@dataclass(frozen=True)
class ModelSources:
    """Where the base model, the adapter (if any) and the tokenizer come from."""

    base: str
    adapter: str | None
    tokenizer: str


def is_adapter_dir(source: str | Path) -> bool:
    """Whether ``source`` is a local directory holding a PEFT adapter (``adapter_config.json``)."""
    return (Path(source) / ADAPTER_CONFIG_NAME).is_file()


def template_from_config(model: str, adapter: str | None, revision: str | None) -> AlignerTemplate:
    """The template recorded in ``aligner_config.json`` (adapter first, then model), else the default."""
    for source in (adapter, model):
        if source is None:
            continue
        directory = _config_dir(source, ALIGNER_CONFIG_NAME, revision)
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
    is fetched into the cache); ``None`` when there is no such file.

    Raises:
        AlignerError: ``source`` is a hub id, not cached, and the hub cannot be reached.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path if (path / filename).is_file() else None
    if not is_hub_id(source):
        return None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(source, filename, revision=revision)
    if isinstance(cached, str):
        return Path(cached).parent
    check_source(source, revision=revision)  # not cached: fail at once when the hub is out of reach
    if local_files_only(source):
        return None  # the model is cached without this file
    try:
        return Path(hf_hub_download(source, filename, revision=revision)).parent
    except Exception:  # no such file in the repository: treated as absent
        return None


def _adapter_base_model(adapter_dir: Path) -> str:
    recorded = json.loads((adapter_dir / ADAPTER_CONFIG_NAME).read_text()).get("base_model_name_or_path")
    aligner_config = load_aligner_config(adapter_dir)
    fallback = aligner_config.base_model if aligner_config is not None else None
    if recorded and (Path(recorded).exists() or is_hub_id(recorded) or not fallback):
        return str(recorded)
    if fallback:
        return fallback
    raise AlignerError(
        f"the adapter in {adapter_dir} records no base model (base_model_name_or_path in "
        f"{ADAPTER_CONFIG_NAME}); pass the base model as model= and the adapter as adapter="
    )


def _tokenizer_source(adapter_dir: Path, adapter: str, base: str) -> str:
    has_tokenizer = any(
        (adapter_dir / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json")
    )
    return adapter if has_tokenizer and Path(adapter).is_dir() else base


def load_adapter(model: Any, adapter: str, revision: str | None, *, merge: bool = True) -> Any:
    """``model`` with the PEFT ``adapter`` on it, merged into the weights when it can be."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(
        model, adapter, revision=revision, is_trainable=False, local_files_only=local_files_only(adapter)
    )
    if not merge:
        return peft_model
    try:
        return peft_model.merge_and_unload()  # plain weights: faster generate, same results
    except Exception:  # adapter types that cannot merge are served unmerged
        return peft_model


def load_tokenizer(sources: ModelSources, *, revision: str | None, trust_remote_code: bool) -> Any:
    """The tokenizer of ``sources`` (``revision`` applies when it comes from the model itself)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        sources.tokenizer, revision=revision, trust_remote_code=trust_remote_code
    )


def load_causal_lm(
    sources: ModelSources,
    *,
    dtype: Any,
    device: str | None = None,
    trust_remote_code: bool = False,
    base_revision: str | None = None,
    adapter_revision: str | None = None,
    merge: bool = True,
) -> Any:
    """``AutoModelForCausalLM`` for ``sources`` (safetensors only) with its adapter applied (merged
    into the weights when possible, unless ``merge=False``), on ``device`` when given, in eval mode."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "revision": base_revision,
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,
        "local_files_only": local_files_only(sources.base),
    }
    if device is not None and device != "cpu":
        kwargs["device_map"] = {"": device}
    model: Any = AutoModelForCausalLM.from_pretrained(sources.base, **kwargs)
    if sources.adapter is not None:
        model = load_adapter(model, sources.adapter, adapter_revision, merge=merge)
    if device is not None:
        model.to(device)
    model.eval()
    return model
