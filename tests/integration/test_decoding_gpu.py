"""Decoding modes on CUDA (skipped without a GPU; benchmarks/gpu_check.sh runs them on one): the
automatic plan (continuous batching, compiled decoding warmed up at load), and every mode giving the
same results as static batches, streaming and cancelling through the running batch.

The copy model's greedy choices have wide margins, so bf16 gives the same tokens as float32.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from aligner_chain.backends import CorrectionRequest
from aligner_chain.backends.transformers import TransformersBackend
from tests.conftest import COPY_TEMPLATE

pytestmark = pytest.mark.gpu


def make(copy_model: Any, **kwargs: Any) -> TransformersBackend:
    options: dict[str, Any] = {"template": COPY_TEMPLATE, "max_new_tokens": 96}
    return TransformersBackend(copy_model.path, **{**options, **kwargs})


def requests_for(copy_model: Any) -> list[CorrectionRequest]:
    rows = [CorrectionRequest(f"Question {n}?", copy_model.chain_text(n)) for n in (5, 30, 60)]
    rows += [
        CorrectionRequest("Why?", "Because of the weather." + copy_model.marker(n)) for n in (12, 40, 80)
    ]
    return rows


@pytest.fixture(scope="module")
def expected(copy_model: Any) -> list[Any]:
    with make(copy_model, device="cpu", scheduling="static", prompt_lookup="off") as cpu:
        return cpu.correct(requests_for(copy_model))


def test_cuda_plan_is_continuous_and_compiled_and_warm(copy_model: Any, expected: list[Any]) -> None:
    with make(copy_model) as b:
        t0 = time.perf_counter()
        b.load()
        load_s = time.perf_counter() - t0
        plan = b.decoding_plan
        assert plan is not None and b.resolved_device == "cuda" and b.resolved_dtype == torch.bfloat16
        assert plan.scheduling == "continuous" and plan.compiled and plan.threads == 1
        assert b.engine.compiled is not None and b.engine.compiled.warmed_up
        t0 = time.perf_counter()
        first = b.correct(requests_for(copy_model)[:1])
        assert time.perf_counter() - t0 < max(5.0, load_s), "the first call is not where compiling happens"
        assert first == expected[:1] and b.engine.modes["compiled"] == 1, "a lone row takes the compiled path"
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda r: b.correct([r])[0], requests_for(copy_model)))
        assert got == expected
        assert b.correct(requests_for(copy_model)) == expected
        assert b.engine.modes["continuous"] >= 6


def test_every_mode_gives_the_same_results_on_cuda(copy_model: Any, expected: list[Any]) -> None:
    for options in (
        {"scheduling": "static", "compiled": "off", "prompt_lookup": "on"},
        {"scheduling": "static", "compiled": "on"},
        {"scheduling": "continuous", "compiled": "off"},
    ):
        with make(copy_model, **options) as b:
            assert [b.correct([r])[0] for r in requests_for(copy_model)] == expected, options
            assert b.correct(requests_for(copy_model)) == expected, options


def test_streams_and_cancellation_through_the_running_batch_on_cuda(
    copy_model: Any, expected: list[Any]
) -> None:
    with make(copy_model, compiled="off", max_new_tokens=900) as b:
        b.load()
        scheduler = b.engine.continuous
        assert scheduler is not None
        assert "".join(b.stream(requests_for(copy_model)[2])) == expected[2].text
        stream = b.stream(CorrectionRequest("Long?", copy_model.chain_text(copy_model.longest)))
        assert next(stream)
        stream.close()
        deadline = time.monotonic() + 30
        while scheduler.in_flight:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert b.correct(requests_for(copy_model)[:2]) == expected[:2]
