"""``AlignerOptions``: which Aligner to use and how to run it, shared by :class:`AlignerRunnable`,
:class:`ChatAligner` and the chat models built on them; the backend is built from them once, lazily
(:func:`~aligner_chain.backends.factory.build_backend`), and nothing loads until the first correction.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Literal

from langchain_core.messages import AIMessage
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from aligner_chain.arguments import check_keywords
from aligner_chain.backends.base import AlignerBackend
from aligner_chain.backends.factory import build_backend, check_backend_options, default_model
from aligner_chain.prompts import get_template

__all__ = ["AlignerOptions", "OnFailure", "SkipPredicate"]

OnFailure = Literal["passthrough", "raise"]
"""``"passthrough"``: keep the original answer, flagged ``failed``; ``"raise"``: raise ``AlignerError``."""
SkipPredicate = Callable[[AIMessage], bool]


class AlignerOptions(BaseModel):
    """Which Aligner to use and how to run it (mixed into the runnable and the chat models)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str | None = Field(default=None, validate_default=True)
    """Hub id or local directory (a full model or a PEFT adapter directory); default
    ``$ALIGNER_MODEL``, else ``"aligner/aligner-7b-v1.0"``. With ``base_url``: the served name."""
    adapter: str | None = None
    """A PEFT adapter (hub id or directory) loaded on top of ``model``."""
    backend: AlignerBackend | None = Field(default=None, exclude=True)
    """A ready backend (e.g. ``CallableBackend``); when set, the model options below are unused."""
    template: str | None = None
    """Template name or string; ``None``: the model's saved ``aligner_config.json`` template, else
    ``"aligner-v1"``."""
    max_new_tokens: int = Field(default=1024, gt=0)
    """Longest correction; one cut off at this length fails with reason ``"truncated"``."""
    history_turns: int = Field(default=0, ge=0)
    """Earlier turns folded into the question (0: the question alone)."""
    skip: Any = Field(default=None, exclude=True)
    """``skip(message) -> bool``; ``True`` leaves that answer untouched (status ``"skipped"``)."""
    base_url: str | None = None
    """An OpenAI-compatible completions server (vLLM, SGLang, ...) serving the Aligner."""
    api_key: str | None = Field(default=None, repr=False, exclude=True)
    """Bearer token for ``base_url`` (default ``$ALIGNER_API_KEY``)."""
    timeout: float | None = Field(default=None, gt=0)
    """With ``base_url``: a total deadline per attempt in seconds, connect to last byte (default 60)."""
    max_retries: int | None = Field(default=None, ge=0)
    """With ``base_url``: retries of transient errors per request (default 3). Worst case per call:
    ``(max_retries + 1) * timeout`` plus the backoff between attempts (at most 8 s each)."""
    device: str = "auto"
    """``"auto"`` (CUDA, then MPS, then CPU), or a torch device string."""
    dtype: str = "auto"
    """``"auto"`` (bf16 on CUDA, fp32 on CPU) or a torch dtype name."""
    trust_remote_code: bool = False
    revision: str | None = None
    max_batch_size: int | None = Field(default=None, gt=0)
    """Rows per static batch (local; ``None``: chosen for the device at load) or requests in flight
    at once (server; ``None``: 8)."""
    scheduling: Literal["auto", "static", "continuous"] = "auto"
    """Local: ``"auto"`` (continuous batching on CUDA, static batches elsewhere), ``"static"`` or
    ``"continuous"``."""
    prompt_lookup: Literal["auto", "on", "off"] = "auto"
    """Local: copy-aware drafts for rows decoded alone; ``"auto"`` backs off while they rarely pay."""
    compiled: Literal["auto", "on", "off"] = "auto"
    """Local: static KV cache + ``torch.compile`` for rows decoded alone (``"auto"``: on CUDA)."""
    generation_kwargs: dict[str, Any] | None = None
    """Extra generation settings (e.g. sampling) passed to the backend."""

    _backend: AlignerBackend | None = PrivateAttr(default=None)
    _backend_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, model: str | os.PathLike[str] | None = None, /, **kwargs: Any) -> None:
        fields = type(self).model_fields
        aliases = [f.alias for f in fields.values() if f.alias]
        check_keywords(type(self).__name__, kwargs, [*fields, *aliases])
        if model is not None:
            if "model" in kwargs:
                raise TypeError("model given twice (positionally and as model=)")
            kwargs["model"] = model
        super().__init__(**kwargs)

    @field_validator("model", mode="before")
    @classmethod
    def _default_model(cls, value: Any) -> Any:
        if value is None:
            return default_model()
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value

    @field_validator("adapter", mode="before")
    @classmethod
    def _adapter_path(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("template")
    @classmethod
    def _valid_template(cls, value: str | None) -> str | None:
        if value is not None:
            get_template(value)  # ValueError naming the problem
        return value

    @field_validator("skip")
    @classmethod
    def _callable_skip(cls, value: Any) -> Any:
        if value is not None and not callable(value):
            raise TypeError(f"skip must be a callable (message) -> bool, got {type(value).__name__}")
        return value

    @model_validator(mode="after")
    def _backend_kind_options(self) -> AlignerOptions:
        if self.backend is None:
            check_backend_options(
                base_url=self.base_url,
                adapter=self.adapter,
                timeout=self.timeout,
                max_retries=self.max_retries,
                decoding=self._decoding(),
            )
        return self

    def _decoding(self) -> dict[str, str]:
        return {"scheduling": self.scheduling, "prompt_lookup": self.prompt_lookup, "compiled": self.compiled}

    def get_backend(self) -> AlignerBackend:
        """The backend: ``backend`` when given, else built once from the model options (the model
        itself loads on the first correction)."""
        if self.backend is not None:
            return self.backend
        with self._backend_lock:
            if self._backend is None:
                self._backend = build_backend(
                    self.model,
                    adapter=self.adapter,
                    template=self.template,
                    max_new_tokens=self.max_new_tokens,
                    base_url=self.base_url,
                    api_key=self.api_key,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                    device=self.device,
                    dtype=self.dtype,
                    trust_remote_code=self.trust_remote_code,
                    revision=self.revision,
                    max_batch_size=self.max_batch_size,
                    generation_kwargs=self.generation_kwargs,
                    **self._decoding(),
                )
            return self._backend

    def describe_backend(self) -> tuple[str, str]:
        """``(model, template)`` names for metadata; never raises (falls back to the options)."""
        try:
            backend = self.get_backend()
            return str(backend.model_name), str(backend.template_name)
        except Exception:  # metadata only: never hide the real failure
            return str(self.model or "unknown"), str(self.template or "default")
