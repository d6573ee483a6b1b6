"""Which Aligner by default, and the one place that turns model options into a backend.

Engines are imported on first use, so ``import aligner_chain`` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from aligner_chain.arguments import strict_keywords
from aligner_chain.backends.base import AlignerBackend

__all__ = ["DEFAULT_MODEL", "MODEL_ENV", "build_backend", "check_backend_options", "default_model"]

MODEL_ENV = "ALIGNER_MODEL"
DEFAULT_MODEL = "aligner/aligner-7b-v1.0"
_SERVER_CONCURRENCY = 8


def default_model() -> str:
    """``$ALIGNER_MODEL`` when set, else the released ``aligner/aligner-7b-v1.0``."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def check_backend_options(
    *,
    base_url: str | None,
    adapter: str | None = None,
    tokenizer: Any = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    decoding: Mapping[str, str] | None = None,
) -> None:
    """Options that only make sense for one kind of backend.

    Raises:
        ValueError: ``adapter`` or a decoding mode other than ``"auto"`` (``decoding``:
            ``{"scheduling": ..., "prompt_lookup": ..., "compiled": ...}``) with ``base_url``;
            ``tokenizer``, ``timeout`` or ``max_retries`` without it.
    """
    if base_url and adapter:
        raise ValueError(
            "adapter is for a local model; with base_url load the adapter in the server "
            "(e.g. vLLM --lora-modules NAME=DIR) and pass NAME as model"
        )
    for mode, setting in (decoding or {}).items():
        if base_url and setting != "auto":
            raise ValueError(
                f"{mode}={setting!r} is for a local model; a server (base_url) decodes its own way: "
                f"leave {mode}='auto'"
            )
    if tokenizer is not None and not base_url:
        raise ValueError("tokenizer only applies with base_url (a local model uses its own tokenizer)")
    for name, value in (("timeout", timeout), ("max_retries", max_retries)):
        if value is not None and not base_url:
            raise ValueError(
                f"{name} only applies with base_url (it bounds the calls to a server); a local model "
                "makes none: leave it unset"
            )


@strict_keywords
def build_backend(
    model: str | None = None,
    *,
    adapter: str | None = None,
    template: str | None = None,
    max_new_tokens: int = 1024,
    base_url: str | None = None,
    api_key: str | None = None,
    tokenizer: Any = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    max_batch_size: int | None = None,
    generation_kwargs: Mapping[str, Any] | None = None,
    scheduling: str = "auto",
    prompt_lookup: str = "auto",
    compiled: str = "auto",
) -> AlignerBackend:
    """An :class:`~aligner_chain.backends.openai.OpenAIBackend` when ``base_url`` is given, else a
    local :class:`~aligner_chain.backends.transformers.TransformersBackend`. Nothing is loaded yet.

    ``model`` defaults to :func:`default_model`; ``max_batch_size`` is the rows per ``generate``
    locally (``None``: chosen for the device) and the requests in flight with a server (``None``:
    8); ``tokenizer`` (server only) sends token ids; ``timeout`` and ``max_retries`` (server only)
    default to the backend's own (60 s, 3); ``scheduling``, ``prompt_lookup`` and ``compiled``
    (local only) choose the decoding modes (``"auto"``: by device).
    """
    decoding = {"scheduling": scheduling, "prompt_lookup": prompt_lookup, "compiled": compiled}
    check_backend_options(
        base_url=base_url,
        adapter=adapter,
        tokenizer=tokenizer,
        timeout=timeout,
        max_retries=max_retries,
        decoding=decoding,
    )
    model = model or default_model()
    if base_url:
        from aligner_chain.backends.openai import OpenAIBackend

        limits: dict[str, Any] = {"timeout": timeout, "max_retries": max_retries}
        return OpenAIBackend(
            model,
            base_url=base_url,
            api_key=api_key,
            template=template,
            max_new_tokens=max_new_tokens,
            max_concurrency=max_batch_size or _SERVER_CONCURRENCY,
            tokenizer=tokenizer,
            generation_kwargs=generation_kwargs,
            trust_remote_code=trust_remote_code,
            **{k: v for k, v in limits.items() if v is not None},
        )
    from aligner_chain.backends.transformers import TransformersBackend

    return TransformersBackend(
        model,
        adapter=adapter,
        template=template,
        max_new_tokens=max_new_tokens,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        max_batch_size=max_batch_size,
        generation_kwargs=generation_kwargs,
        revision=revision,
        scheduling=scheduling,
        prompt_lookup=prompt_lookup,
        compiled=compiled,
    )
