"""Session-wide servers for the integration tests: a local Ray instance, and ``transformers serve``
on the tiny trained Aligner (plain and with continuous batching), each started once per session;
and :func:`restore_process_settings` for the tests that run a benchmark script in-process."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.transformers_serve import CONTINUOUS_BATCHING, TransformersServe

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
"""A chat template for the served copy of the Aligner, so the same server can also play a judge
(``/v1/chat/completions``); completions, which the Aligner uses, never read it."""


@pytest.fixture(scope="session")
def ray_local() -> Iterator[object]:
    """A local Ray instance for the session: 2 CPUs, a small object store, a short temp dir (Ray
    puts unix sockets under it), no token auth, shut down and removed at the end."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(
        num_cpus=2,
        object_store_memory=128 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        _temp_dir=temp_dir,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def served_aligner_dir(trained_aligner_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained tiny Aligner's weights and tokenizer, with a chat template added."""
    from transformers import AutoTokenizer

    served = tmp_path_factory.mktemp("served") / "aligner"
    shutil.copytree(trained_aligner_dir, served)
    tokenizer = AutoTokenizer.from_pretrained(served)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(served)
    return served


@pytest.fixture(scope="session", params=["plain", "continuous-batching"])
def transformers_server(
    request: pytest.FixtureRequest, served_aligner_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TransformersServe]:
    """``transformers serve`` on the tiny trained Aligner, once per mode per session."""
    pytest.importorskip("fastapi", reason="needs transformers[serving]")
    extra = CONTINUOUS_BATCHING if request.param == "continuous-batching" else ()
    log = tmp_path_factory.mktemp("serve") / f"transformers-serve-{request.param}.log"
    with TransformersServe(served_aligner_dir, log, *extra) as server:
        yield server


@pytest.fixture
def restore_process_settings() -> Iterator[None]:
    """The benchmark scripts quiet the library's and transformers' loggers and pin torch's threads
    for their run; the tests that come after must not inherit that (a WARNING another test waits for
    would never arrive)."""
    import torch
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("aligner_chain")
    level, threads = logger.level, torch.get_num_threads()
    verbosity = hf_logging.get_verbosity()  # type: ignore[no-untyped-call]
    bars = hf_logging.is_progress_bar_enabled()  # type: ignore[no-untyped-call]
    yield
    logger.setLevel(level)
    torch.set_num_threads(threads)
    hf_logging.set_verbosity(verbosity)  # type: ignore[no-untyped-call]
    if bars:
        hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
