"""LangChain's standard chat model suites (langchain-tests) against ``AlignedChatModel``.

The upstream is a real tiny local model (``LocalUpstream`` on a random 2-layer Llama, greedy, with
``min_new_tokens`` so it never answers empty); the Aligner is the same tiny model behind
``TransformersBackend``, whole-answer (``aligner-v1``) or sentence-level (``stream-aligner``), with
``forced_eos_token_id`` so each correction ends within its budget. Nothing is downloaded.

Switched off, through the suites' own properties, because the tiny upstream lacks them:

* ``has_tool_calling`` / ``has_structured_output``: ``LocalUpstream`` has no tool calling, and
  ``AlignedChatModel`` delegates both to its upstream (the suites would detect them from the
  wrapper's methods). They are tested with a tool-calling upstream in
  ``tests/unit/test_aligned_chat_model.py``.
* ``standard_chat_model_params`` without ``timeout``, ``max_retries`` and ``api_key``: those are the
  upstream's transport settings; ``AlignedChatModel`` refuses them (``TypeError``) rather than
  ignoring them. ``temperature``, ``max_tokens`` and ``stop`` stay: they are passed to the upstream.
* image, audio, PDF, JSON mode and model override: off by the suites' defaults (a text-only local
  model), as is serialization (``is_lc_serializable`` is ``False``: it holds live models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from aligner_chain import AlignedChatModel, AlignerRunnable
from aligner_chain.backends.transformers import TransformersBackend
from training.bootstrap.local_upstream import LocalUpstream

EOS_ID = 1  # the tiny tokenizer's </s>
MODELS: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _models(tiny_model_dir: Path) -> None:
    MODELS["upstream"] = LocalUpstream(
        model=str(tiny_model_dir), max_new_tokens=16, device="cpu", generation_kwargs={"min_new_tokens": 4}
    )
    for name, template in (("answer", "aligner-v1"), ("sentence", "stream-aligner")):
        backend = TransformersBackend(
            tiny_model_dir,
            template=template,
            device="cpu",
            max_new_tokens=10,
            generation_kwargs={"forced_eos_token_id": EOS_ID},
        )
        MODELS[name] = AlignerRunnable(backend=backend)


class _Aligned:
    granularity = "answer"

    @property
    def chat_model_class(self) -> type[AlignedChatModel]:
        return AlignedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"upstream": MODELS["upstream"], "aligner": MODELS[self.granularity]}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return {"temperature": 0, "max_tokens": 100, "stop": []}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False


class TestAlignedChatModelUnit(_Aligned, ChatModelUnitTests):
    pass


class TestAlignedChatModelWholeAnswer(_Aligned, ChatModelIntegrationTests):
    granularity = "answer"


class TestAlignedChatModelSentenceLevel(_Aligned, ChatModelIntegrationTests):
    granularity = "sentence"


def test_the_suites_ran_the_aligner() -> None:
    """The suites only look at the answers' shape; here the Aligner's report is there too."""
    for name in ("answer", "sentence"):
        model = AlignedChatModel(MODELS["upstream"], MODELS[name])
        answer = model.invoke("Hello")
        report = answer.response_metadata["aligner"]
        assert report["status"] in {"corrected", "unchanged", "failed"}
        assert report["original"] == MODELS["upstream"].invoke("Hello").text
        assert answer.usage_metadata == MODELS["upstream"].invoke("Hello").usage_metadata
        assert ("sentences" in report) == (name == "sentence")
