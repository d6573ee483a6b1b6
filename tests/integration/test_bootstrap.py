"""Bootstrapping end to end with tiny real models, nothing mocked.

The upstream is a tiny Llama fine-tuned to answer the synthetic task's questions badly: one fixed
flawed answer per question, with a wrong value and a rude remark (e.g. "There are 24 centimetres in a
metre. Figure it out yourself."), served by
``LocalUpstream``; the Aligner corrects through ``AlignerRunnable`` (a rule backend that knows the
right answers here; a tiny Aligner trained through the CLI in ``test_bootstrap_cli.py``). Then one
DPO round must raise the upstream's log-probability margin of chosen over rejected on held-out pairs
and one SFT round must make it produce the corrections more often. ``test_bootstrap_cli.py`` reuses
:func:`build_task` for ``aligner-chain bootstrap --rounds 2``, crash/resume and ``aligner-chain eval``.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aligner_chain.backends.callable import CallableBackend
from aligner_chain.runnable import AlignerRunnable
from training.bootstrap import split_prompts
from training.bootstrap.collect import PREFERENCES_FILE, SFT_FILE, collect_preferences
from training.bootstrap.local_upstream import UPSTREAM_CONFIG_NAME, LocalUpstream
from training.bootstrap.upstream_trainer import completion_logprobs, preference_margins, train_upstream
from training.demo.synthetic import _all_rows

SEED = 0
#: The flaw every upstream answer ends with, which an Aligner removes (with the wrong value).
RUDE = " Figure it out yourself."
#: A LoRA learning rate that moves a 2-layer, 64-wide model within a few dozen steps.
LORA_LR = 5e-3


@dataclass(frozen=True)
class Task:
    questions: list[str]
    flawed: dict[str, str]
    right: dict[str, str]
    upstream_dir: Path
    #: The random tiny model (and tokenizer) the upstream was trained from.
    base_dir: Path

    def rule_aligner(self) -> AlignerRunnable:
        """An Aligner that knows the right answer to every question (unchanged when already right)."""
        return AlignerRunnable(backend=CallableBackend(lambda q, a: self.right[q], name="rule"))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """A tiny model on a busy 2-core machine trains about ten times faster on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_task(tmp_path_factory: pytest.TempPathFactory) -> Task:
    """45 questions, a flawed and a right answer each, and an upstream trained to answer flawed."""
    from training.demo.tiny_model import build_tiny_model

    rows = _all_rows()
    rng = random.Random(SEED)
    flawed: dict[str, str] = {}
    right: dict[str, str] = {}
    for question in sorted({r.question for r in rows}):
        options = [r for r in rows if r.question == question]
        right[question] = options[0].correction
        wrong = [r.answer for r in options if r.correction == right[question] and r.answer != r.correction]
        flawed[question] = rng.choice(wrong) + RUDE
    questions = sorted(right)
    corpus = [t for r in rows for t in (r.question, r.answer, r.correction)] + ["Question: Answer:", RUDE]
    base = build_tiny_model(tmp_path_factory.mktemp("upstream-base"), corpus, seed=SEED)
    upstream_dir = tmp_path_factory.mktemp("upstream-flawed")
    train_upstream(
        "sft",
        base,
        [{"prompt": q, "completion": flawed[q]} for q in questions],
        upstream_dir,
        lora=False,
        learning_rate=3e-3,
        epochs=30,
        batch_size=16,
        seed=SEED,
        disable_tqdm=True,
        logging_steps=1000,
    )
    return Task(questions, flawed, right, upstream_dir, base)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Task:
    """The task (see :func:`build_task`), built once for this module."""
    return build_task(tmp_path_factory)


@pytest.fixture(scope="module")
def split(task: Task) -> tuple[list[str], list[str]]:
    """(train questions, held-out questions): 36 and 9, disjoint."""
    held = split_prompts(task.questions, 5, seed=SEED)[0]
    return [q for q in task.questions if q not in held], held


@pytest.fixture(scope="module")
def collected(
    task: Task, split: tuple[list[str], list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The flawed upstream's answers to the training questions, corrected: one directory of data."""
    out = tmp_path_factory.mktemp("collected")
    upstream = LocalUpstream(model=str(task.upstream_dir), max_new_tokens=24)
    summary = collect_preferences(split[0], upstream, task.rule_aligner(), out, progress=False)
    assert summary["written"] == len(split[0])
    return out


def _pairs(task: Task, questions: list[str]) -> list[dict[str, str]]:
    return [{"prompt": q, "chosen": task.right[q], "rejected": task.flawed[q]} for q in questions]


def _matches(model_dir: Path, questions: list[str], expected: dict[str, str]) -> int:
    answers = LocalUpstream(model=str(model_dir), max_new_tokens=24).answer_batch(questions)
    return sum(a == expected[q] for q, a in zip(questions, answers, strict=True))


def test_the_upstream_answers_flawed_and_the_pairs_are_trl_rows(
    task: Task, split: tuple[list[str], list[str]], collected: Path
) -> None:
    train_q, held_q = split
    assert len(train_q) == 36 and len(held_q) == 9 and not set(train_q) & set(held_q)
    assert _matches(task.upstream_dir, task.questions, task.flawed) == len(task.questions)
    assert json.loads((task.upstream_dir / UPSTREAM_CONFIG_NAME).read_text())["kind"] == "plain"
    prefs = [json.loads(line) for line in (collected / PREFERENCES_FILE).read_text().splitlines()]
    assert sorted(prefs, key=lambda r: r["prompt"]) == sorted(
        _pairs(task, train_q), key=lambda r: r["prompt"]
    )
    sft = [json.loads(line) for line in (collected / SFT_FILE).read_text().splitlines()]
    assert {r["prompt"]: r["completion"] for r in sft} == {q: task.right[q] for q in train_q}


@pytest.mark.slow
def test_one_dpo_round_raises_the_margin_on_held_out_pairs(
    task: Task, split: tuple[list[str], list[str]], collected: Path, tmp_path: Path
) -> None:
    held = _pairs(task, split[1])
    before = preference_margins(task.upstream_dir, held)
    result = train_upstream(
        "dpo",
        task.upstream_dir,
        collected,
        tmp_path,
        learning_rate=LORA_LR,
        epochs=5,
        seed=SEED,
        disable_tqdm=True,
        logging_steps=1000,
    )
    after = preference_margins(tmp_path, held)
    print(f"DPO held-out margins: {statistics.mean(before):.2f} -> {statistics.mean(after):.2f}")
    print("per pair:", [round(a - b, 1) for a, b in zip(after, before, strict=True)])
    # Measured (seeds 0, 1, 2; CPU): mean margin -24.1 -> +32.6, -23.6 -> +13.6, -18.7 -> +17.3 nats;
    # every held-out pair up by at least 30 nats, 25 LoRA steps.
    assert result.method == "dpo" and result.lora and result.merged and result.global_step == 25
    assert statistics.mean(before) < 0 < statistics.mean(after)
    assert all(a > b + 5.0 for a, b in zip(after, before, strict=True))
    assert not (tmp_path / "adapter_config.json").exists()  # merged: the next round loads plain weights


@pytest.mark.slow
def test_one_sft_round_produces_the_corrections_more_often(
    task: Task, split: tuple[list[str], list[str]], collected: Path, tmp_path: Path
) -> None:
    train_q, held_q = split
    before = _matches(task.upstream_dir, train_q, task.right)
    rude_before = _rude(task.upstream_dir, held_q)
    corrections = [(q, task.right[q]) for q in held_q]
    logp_before = completion_logprobs(task.upstream_dir, corrections)
    train_upstream(
        "sft",
        task.upstream_dir,
        collected,
        tmp_path,
        learning_rate=LORA_LR,
        epochs=10,
        seed=SEED,
        disable_tqdm=True,
        logging_steps=1000,
    )
    after = _matches(tmp_path, train_q, task.right)
    rude_after = _rude(tmp_path, held_q)
    logp_after = completion_logprobs(tmp_path, corrections)
    print(
        f"SFT: corrections produced {before} -> {after} of {len(train_q)}; rude held-out answers "
        f"{rude_before} -> {rude_after} of {len(held_q)}; held-out correction log-prob "
        f"{statistics.mean(logp_before):.2f} -> {statistics.mean(logp_after):.2f}"
    )
    # Measured (seeds 0, 1, 2; CPU): 31, 31 and 22 of 36; no rude held-out answer left.
    assert before == 0 and after >= 15
    assert statistics.mean(logp_after) > statistics.mean(logp_before) + 1.0


def _rude(model_dir: Path, questions: list[str]) -> int:
    answers = LocalUpstream(model=str(model_dir), max_new_tokens=24).answer_batch(questions)
    return sum(RUDE.strip() in a for a in answers)
