"""aligner-chain: a trained Aligner behind any LangChain chat model.

Public names load lazily so ``import aligner_chain`` does not import torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aligner_chain.aligned_chat_model import AlignedChatModel
    from aligner_chain.backends import (
        AlignerBackend,
        CallableBackend,
        CorrectionRequest,
        CorrectionResult,
        OpenAIBackend,
        TransformersBackend,
    )
    from aligner_chain.chains import with_aligner
    from aligner_chain.chat_model import ChatAligner
    from aligner_chain.errors import AlignerError, CorrectionFailed
    from aligner_chain.graph import make_aligner_node, route_final_answer
    from aligner_chain.prompts import TEMPLATES, format_prompt, get_template
    from aligner_chain.runnable import AlignerRunnable

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AlignedChatModel": "aligner_chain.aligned_chat_model",
    "AlignerBackend": "aligner_chain.backends",
    "CallableBackend": "aligner_chain.backends",
    "CorrectionRequest": "aligner_chain.backends",
    "CorrectionResult": "aligner_chain.backends",
    "OpenAIBackend": "aligner_chain.backends",
    "TransformersBackend": "aligner_chain.backends",
    "ChatAligner": "aligner_chain.chat_model",
    "AlignerError": "aligner_chain.errors",
    "CorrectionFailed": "aligner_chain.errors",
    "make_aligner_node": "aligner_chain.graph",
    "route_final_answer": "aligner_chain.graph",
    "TEMPLATES": "aligner_chain.prompts",
    "format_prompt": "aligner_chain.prompts",
    "get_template": "aligner_chain.prompts",
    "AlignerRunnable": "aligner_chain.runnable",
    "with_aligner": "aligner_chain.chains",
}

__all__ = [
    "TEMPLATES",
    "AlignedChatModel",
    "AlignerBackend",
    "AlignerError",
    "AlignerRunnable",
    "CallableBackend",
    "ChatAligner",
    "CorrectionFailed",
    "CorrectionRequest",
    "CorrectionResult",
    "OpenAIBackend",
    "TransformersBackend",
    "__version__",
    "format_prompt",
    "get_template",
    "make_aligner_node",
    "route_final_answer",
    "with_aligner",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aligner_chain' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
