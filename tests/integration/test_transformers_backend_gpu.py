"""TransformersBackend on CUDA (skipped without a GPU): bf16 by default, placement, batch == serial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from aligner_chain.backends import CorrectionRequest
from aligner_chain.backends.transformers import TransformersBackend

pytestmark = pytest.mark.gpu

EOS_ID = 1  # the tiny tokenizer's </s>
REQUESTS = [
    CorrectionRequest("What is the capital of France?", "Paris is in Germany."),
    CorrectionRequest("How do I boil an egg?", "Put it in the microwave for a long, long time."),
    CorrectionRequest("Why?", "Because."),
    CorrectionRequest("Tokens?", "a </s> b <pad> c <|im_end|> d"),
]


def make(model: Path, **kwargs: Any) -> TransformersBackend:
    options: dict[str, Any] = {"max_new_tokens": 12, "generation_kwargs": {"forced_eos_token_id": EOS_ID}}
    return TransformersBackend(model, **{**options, **kwargs})


def test_auto_picks_cuda_and_bfloat16(tiny_model_dir: Path) -> None:
    with make(tiny_model_dir) as b:
        assert all(r.status == "ok" for r in b.correct(REQUESTS))
        assert b.resolved_device == "cuda" and b.resolved_dtype == torch.bfloat16
        model: Any = b.loaded_model
        assert {p.device.type for p in model.parameters()} == {"cuda"}
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_explicit_device_index_and_dtype(tiny_model_dir: Path) -> None:
    with make(tiny_model_dir, device="cuda:0", dtype="float16") as b:
        assert b.correct(REQUESTS[:1])[0].status == "ok"
        model: Any = b.loaded_model
        assert {(p.device.type, p.device.index) for p in model.parameters()} == {("cuda", 0)}
        assert model.dtype == torch.float16


def test_batch_equals_serial_on_gpu(tiny_model_dir: Path) -> None:
    # float32 keeps padded and unpadded rows numerically identical enough for greedy argmax.
    with make(tiny_model_dir, device="cuda", dtype="float32") as b:
        serial = [b.correct([r])[0] for r in REQUESTS]
        assert all(r.status == "ok" for r in serial)
        assert b.correct(REQUESTS) == serial
        assert b.batch_sizes[-1] == len(REQUESTS)
        assert "".join(b.stream(REQUESTS[0])) == serial[0].text
