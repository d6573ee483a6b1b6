"""Where corrections are computed: local transformers models, OpenAI-compatible servers, callables."""

from aligner_chain.backends.base import (
    AlignerBackend,
    CorrectionRequest,
    CorrectionResult,
    ResultStatus,
)
from aligner_chain.backends.callable import CallableBackend

__all__ = [
    "AlignerBackend",
    "CallableBackend",
    "CorrectionRequest",
    "CorrectionResult",
    "OpenAIBackend",
    "ResultStatus",
    "TransformersBackend",
]


def __getattr__(name: str) -> object:
    # Heavy engines load on first use so `import aligner_chain` stays light.
    if name == "TransformersBackend":
        from aligner_chain.backends.transformers import TransformersBackend

        return TransformersBackend
    if name == "OpenAIBackend":
        from aligner_chain.backends.openai import OpenAIBackend

        return OpenAIBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
