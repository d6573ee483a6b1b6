"""Shared fixtures: a tiny random causal LM built on the fly (never downloaded), GPU marker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aligner_chain.prompts import format_prompt

TINY_CORPUS = [
    format_prompt(q, a) + " " + c
    for q, a, c in [
        ("What is the capital of France?", "Paris is in Germany.", "Paris is in France."),
        ("How do I boil an egg?", "Put it in the microwave.", "Simmer it for nine minutes."),
        ("Is it safe to mix bleach and ammonia?", "Yes.", "No, it makes toxic gas."),
    ]
] * 20 + ["</s> <pad> <|im_end|> <unk> {question} {answer} 0123456789 ASSISTANT: USER:"] * 5


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama and its byte-level BPE tokenizer, saved with save_pretrained."""
    from training.demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), TINY_CORPUS)


@pytest.fixture(scope="session")
def copy_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny chain model (training/demo/copy_model.py): a prompt ending in ``marker(n)`` generates
    ``n`` tokens then EOS, and after ``chain_text(n)`` it copies the answer. Templates for it end
    with ``{answer}`` (:data:`COPY_TEMPLATE`)."""
    from training.demo.copy_model import build_copy_model
    from training.demo.synthetic import make_synthetic_task

    corpus = [*make_synthetic_task().corpus(), *TINY_CORPUS]
    return build_copy_model(
        tmp_path_factory.mktemp("copy-model"),
        corpus,
        vocab_size=1024,
        hidden_size=64,
        num_layers=2,
        max_position_embeddings=1024,
    )


COPY_TEMPLATE = "Edit the following Question-Answer pair: {question} | {answer}"


@pytest.fixture(scope="session")
def trained_aligner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Aligner trained through `aligner-chain train` on the synthetic task (the demo's recipe).

    It corrects the task's flawed answers from the question (about 95% exact match on held-out
    combinations); train.jsonl and the base model lie next to it. About 45 s on 2 cores, once per run.
    """
    from aligner_chain.cli import main as cli
    from training.demo.synthetic import make_synthetic_task, write_jsonl
    from training.demo.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("trained-aligner")
    task = make_synthetic_task()
    data = write_jsonl(task.train, out / "train.jsonl")
    base = build_tiny_model(out / "base", task.corpus(template="aligner-v1"))
    command = ["train", "--config", "tiny-cpu", "--data", str(data), "--base-model", str(base)]
    assert cli([*command, "--output-dir", str(out / "aligner"), "--no-progress"]) == 0
    return out / "aligner"


@pytest.fixture(scope="session")
def trained_sentence_aligner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sentence-level Aligner trained through `aligner-chain train --granularity sentence` on the
    multi-sentence synthetic task (tiny-cpu recipe, 10 epochs: about 700 steps of short rows; 98% of
    held-out answers exactly right after 7 epochs, 100% after 10 on 2 cores). train.jsonl and the base
    model lie next to it."""
    from aligner_chain.cli import main as cli
    from training.demo.synthetic import make_multi_sentence_task, write_jsonl
    from training.demo.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("trained-sentence-aligner")
    task = make_multi_sentence_task()
    data = write_jsonl(task.train, out / "train.jsonl")
    base = build_tiny_model(out / "base", task.corpus(template="stream-aligner"))
    command = ["train", "--config", "tiny-cpu", "--granularity", "sentence", "--epochs", "10"]
    command += ["--data", str(data), "--base-model", str(base), "--output-dir", str(out / "aligner")]
    assert cli([*command, "--no-progress"]) == 0
    return out / "aligner"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a runtime dependency
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
