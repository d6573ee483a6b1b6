"""Whether a model can be had, said at once and clearly.

* A local directory is checked for what loading needs: ``config.json`` (or a PEFT adapter's
  ``adapter_config.json``) and readable safetensors weights; a missing path, a file, a pickle-only or
  a corrupt checkpoint is named with the fix.
* A hub id is looked up in the local Hugging Face cache; when it is not there, the hub is probed once
  (one request, a few seconds at most, the answer remembered for a while) instead of letting a
  download retry for a minute and more.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from aligner_chain.errors import AlignerError

__all__ = [
    "check_local_model",
    "check_source",
    "hub_unreachable",
    "is_cached",
    "is_hub_id",
    "local_files_only",
]

_PROBE_TIMEOUT_S = 5.0
_REMEMBER_S = 30.0
_WEIGHTS_INDEX = "model.safetensors.index.json"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")

_probe_lock = threading.Lock()
_probe: tuple[float, str, str | None] | None = None  # (when, endpoint, why unreachable)


def is_hub_id(source: str) -> bool:
    """Whether ``source`` names a hub repository (``org/name`` or ``name``) rather than a path."""
    if not source or Path(source).expanduser().exists():
        return False
    return not (source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source)


def check_source(source: str, *, field: str = "model", revision: str | None = None) -> None:
    """Raise :class:`AlignerError` (naming ``field``) unless ``source`` can be loaded from here."""
    if is_hub_id(source):
        if is_cached(source, revision):
            return
        why = hub_unreachable()
        if why is not None:
            also = " (or set $ALIGNER_MODEL)" if field == "model" else ""
            raise AlignerError(
                f"{field}={source!r} is neither a local directory nor in the local Hugging Face cache, and "
                f"the hub cannot be reached ({why}); pass {field}= a local model directory{also}, or "
                "connect to the hub and try again"
            )
        return
    check_local_model(Path(source).expanduser(), field=field)


def check_local_model(path: Path, *, field: str = "model") -> None:
    """Raise :class:`AlignerError` unless ``path`` is a directory holding a model or adapter that
    loads: its config, and safetensors weights whose headers read."""
    if not path.exists():
        raise AlignerError(
            f"{field}={str(path)!r} does not exist; pass an existing model directory or a hub id such as "
            "aligner/aligner-7b-v1.0"
        )
    if not path.is_dir():
        raise AlignerError(f"{field}={str(path)!r} is a file; pass the directory that holds it")
    adapter = (path / "adapter_config.json").is_file()
    config = "adapter_config.json" if adapter else "config.json"
    weights = sorted(path.glob("adapter_model*.safetensors" if adapter else "*.safetensors"))
    found = {config: (path / config).is_file(), "*.safetensors": bool(weights)}
    missing = [name for name, ok in found.items() if not ok]
    if missing:
        pickles = [name for name in _PICKLE_WEIGHTS if (path / name).is_file()]
        hint = (
            f"; it holds {', '.join(pickles)} (pickle), which is not loaded: save the model with "
            "safe_serialization=True"
            if pickles and "*.safetensors" in missing
            else ""
        )
        raise AlignerError(f"{field}={str(path)!r} holds no model: missing {', '.join(missing)}{hint}")
    for file in weights:
        _check_safetensors(file, field)


def _check_safetensors(file: Path, field: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # the library raises its own SafetensorError and OSErrors
        raise AlignerError(
            f"{field}: {file} is not a readable safetensors file ({type(err).__name__}: {err}); "
            "it may be cut short or corrupt: copy or save it again"
        ) from err


def is_cached(repo_id: str, revision: str | None = None) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id``'s config (a model or an adapter)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "adapter_config.json"):
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str):
            return True
    return False


def hub_unreachable() -> str | None:
    """``None`` when the Hugging Face hub answers, else why not (offline mode, no route, a timeout).
    One request at most every 30 s: the answer is remembered."""
    global _probe
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    with _probe_lock:
        now = time.monotonic()
        if _probe is not None and _probe[1] == endpoint and now - _probe[0] < _REMEMBER_S:
            return _probe[2]
        why = _ask(endpoint)
        _probe = (now, endpoint, why)
        return why


def _ask(endpoint: str) -> str | None:
    import httpx

    try:
        httpx.head(f"{endpoint.rstrip('/')}/api/models", timeout=_PROBE_TIMEOUT_S)
    except httpx.HTTPError as err:
        return f"{type(err).__name__} reaching {endpoint}: {err}"
    return None


def local_files_only(source: str) -> bool:
    """Load ``source`` from the cache alone: a hub id while the hub cannot be reached (checked by
    :func:`check_source` to be cached), so loading does not retry the network file by file."""
    return is_hub_id(source) and hub_unreachable() is not None
