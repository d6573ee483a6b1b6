"""The model options shared by :class:`AlignerRunnable` and :class:`ChatAligner`, and the one place
that turns them into a backend (lazily: nothing loads until the first correction)."""

from __future__ import annotations

import os
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from aligner_chain.backends.base import AlignerBackend
from aligner_chain.prompts import get_template

__all__ = ["DEFAULT_MODEL", "MODEL_ENV", "AlignerOptions", "build_backend", "default_model"]

MODEL_ENV = "ALIGNER_MODEL"
DEFAULT_MODEL = "aligner/aligner-7b-v1.0"


def default_model() -> str:
    """``$ALIGNER_MODEL`` when set, else the released ``aligner/aligner-7b-v1.0``."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def build_backend(
    model: str,
    *,
    adapter: str | None = None,
    template: str | None = None,
    max_new_tokens: int = 1024,
    base_url: str | None = None,
    api_key: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    max_batch_size: int = 8,
    generation_kwargs: dict[str, Any] | None = None,
) -> AlignerBackend:
    """``OpenAIBackend`` when ``base_url`` is given, else a local ``TransformersBackend``.

    Engines are imported here, on first use, so ``import aligner_chain`` stays light.
    """
    if base_url:
        if adapter:
            raise ValueError(
                "adapter is for a local model; with base_url load the adapter in the server "
                "(e.g. vLLM --lora-modules NAME=DIR) and pass NAME as model"
            )
        from aligner_chain.backends.openai import OpenAIBackend

        return OpenAIBackend(
            model,
            base_url=base_url,
            api_key=api_key,
            template=template,
            max_new_tokens=max_new_tokens,
            max_concurrency=max_batch_size,
            generation_kwargs=generation_kwargs,
            trust_remote_code=trust_remote_code,
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
    )


class AlignerOptions(BaseModel):
    """Which Aligner to use and how to run it (mixed into the runnable and the chat model)."""

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
    base_url: str | None = None
    """An OpenAI-compatible completions server (vLLM, SGLang, ...) serving the Aligner."""
    api_key: str | None = Field(default=None, repr=False, exclude=True)
    """Bearer token for ``base_url`` (default ``$ALIGNER_API_KEY``)."""
    device: str = "auto"
    """``"auto"`` (CUDA, then MPS, then CPU), or a torch device string."""
    dtype: str = "auto"
    """``"auto"`` (bf16 on CUDA, fp32 on CPU) or a torch dtype name."""
    trust_remote_code: bool = False
    revision: str | None = None
    max_batch_size: int = Field(default=8, gt=0)
    """Requests per generate call (local) or in flight at once (server)."""
    generation_kwargs: dict[str, Any] | None = None
    """Extra generation settings (e.g. sampling) passed to the backend."""

    _backend: AlignerBackend | None = PrivateAttr(default=None)
    _backend_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

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

    @model_validator(mode="after")
    def _adapter_needs_local(self) -> AlignerOptions:
        if self.base_url and self.adapter and self.backend is None:
            raise ValueError(
                "adapter is for a local model; with base_url load the adapter in the server "
                "(e.g. vLLM --lora-modules NAME=DIR) and pass NAME as model"
            )
        return self

    def get_backend(self) -> AlignerBackend:
        """The backend: ``backend`` when given, else built once from the model options (the model
        itself loads on the first correction)."""
        if self.backend is not None:
            return self.backend
        with self._backend_lock:
            if self._backend is None:
                self._backend = build_backend(
                    self.model or default_model(),
                    adapter=self.adapter,
                    template=self.template,
                    max_new_tokens=self.max_new_tokens,
                    base_url=self.base_url,
                    api_key=self.api_key,
                    device=self.device,
                    dtype=self.dtype,
                    trust_remote_code=self.trust_remote_code,
                    revision=self.revision,
                    max_batch_size=self.max_batch_size,
                    generation_kwargs=self.generation_kwargs,
                )
            return self._backend

    def describe_backend(self) -> tuple[str, str]:
        """``(model, template)`` names for metadata; never raises (falls back to the options)."""
        try:
            backend = self.get_backend()
            return str(backend.model_name), str(backend.template_name)
        except Exception:  # metadata only: never hide the real failure
            return str(self.model or "unknown"), str(self.template or "default")
