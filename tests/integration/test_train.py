"""`aligner-chain train` end to end on a tiny model built on the fly: learning, LoRA, merge, resume, bad data.

Every run goes through the real CLI (``aligner_chain.cli.main``) with the ``tiny-cpu`` recipe and is
loaded back with ``AlignerRunnable(model=OUTPUT_DIR)``. The tiny tokenizer is trained on rendered
prompts too, so the template is a few tokens instead of a hundred and training stays fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from aligner_chain import AlignerRunnable
from aligner_chain.cli import main as cli_main
from training.aligner.data import CorrectionRow
from training.aligner.run_state import checkpoints_dir
from training.demo.synthetic import SyntheticTask, make_synthetic_task, write_jsonl
from training.demo.tiny_model import build_tiny_model

# Measured on a 2-core CPU: 8 epochs reach 97% held-out exact match, 10 epochs 95-97% (two seeds);
# 6 epochs only 90%, so 10 leaves a margin.
LEARN_EPOCHS = "10"
# Copying is harder for the tiny model than it looks: 250 warm-up steps copy 57% of the held-out
# answers, 400 steps 90%.
WARMUP_STEPS = "400"
# float32 on every device, so the exact-match and weight checks mean the same on CPU and GPU.
INFERENCE: dict[str, Any] = {"max_new_tokens": 48, "dtype": "float32"}
LORA_FLAGS = ("--lora-r", "8", "--max-steps", "40")  # 40 steps: corrections end with EOS


# -- helpers ---------------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _logs(*names: str) -> Iterator[list[str]]:
    """INFO messages of the named loggers (own handler: the CLI resets the root logger's handlers)."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        yield handler.messages
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


def _train(data: Path, base: Path, output_dir: Path, *flags: str) -> int:
    argv = ["train", "--config", "tiny-cpu", "--data", str(data), "--base-model", str(base)]
    return cli_main([*argv, "--output-dir", str(output_dir), "--no-progress", *flags])


def _aligner_config(directory: Path) -> dict[str, Any]:
    saved: dict[str, Any] = json.loads((directory / "aligner_config.json").read_text())
    return saved


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _correct(model_dir: Path, rows: list[CorrectionRow]) -> list[str]:
    aligner = AlignerRunnable(model=str(model_dir), **INFERENCE)
    outputs: list[str] = aligner.batch([{"question": r.question, "answer": r.answer} for r in rows])
    return outputs


def _share(outputs: list[str], expected: list[str]) -> float:
    return sum(o.strip() == e.strip() for o, e in zip(outputs, expected, strict=True)) / len(expected)


# -- shared fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task() -> SyntheticTask:
    return make_synthetic_task()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def train_file(task: SyntheticTask, workdir: Path) -> Path:
    return write_jsonl(task.train, workdir / "train.jsonl")


@pytest.fixture(scope="module")
def small_file(task: SyntheticTask, workdir: Path) -> Path:
    """64 training rows: enough for a few optimizer steps."""
    return write_jsonl(task.train[:64], workdir / "small.jsonl")


@pytest.fixture(scope="module")
def base_dir(task: SyntheticTask, workdir: Path) -> Path:
    corpus = task.corpus(template="aligner-v1")
    return build_tiny_model(workdir / "base", corpus)


@pytest.fixture(scope="module")
def learned(train_file: Path, base_dir: Path, workdir: Path) -> Path:
    """A full fine-tune with the recipe's warm-up share (10%), long enough to learn the task."""
    output = workdir / "learned"
    assert _train(train_file, base_dir, output, "--epochs", LEARN_EPOCHS) == 0
    return output


@dataclass(frozen=True)
class LoraRun:
    output: Path
    messages: list[str]
    base_sha256_before: str


@pytest.fixture(scope="module")
def lora_run(small_file: Path, base_dir: Path, workdir: Path) -> LoraRun:
    """A short LoRA run (warm-up and residual stage), its training log and the base's hash before it."""
    before = _sha256(base_dir / "model.safetensors")
    output = workdir / "lora"
    with _logs("training.aligner.trainer") as messages:
        code = _train(small_file, base_dir, output, *LORA_FLAGS)
    assert code == 0
    return LoraRun(output, list(messages), before)


# -- 1. learning a held-out correction task --------------------------------------------------------


@pytest.mark.slow
def test_tiny_model_learns_held_out_corrections_through_the_cli(
    learned: Path, task: SyntheticTask, base_dir: Path
) -> None:
    outputs = _correct(learned, task.held_out)
    accuracy = _share(outputs, [r.correction for r in task.held_out])
    assert accuracy >= 0.9, (
        f"held-out exact match {accuracy:.0%}: {list(zip(outputs, task.held_out, strict=True))[:5]}"
    )
    # The held-out (question, answer) pairs were never trained on, and most need a real correction.
    seen = {(r.question, r.answer) for r in task.train}
    assert not seen & {(r.question, r.answer) for r in task.held_out}
    assert sum(r.answer != r.correction for r in task.held_out) >= len(task.held_out) * 0.8
    # The output directory is a full model that records its template and training.
    saved = _aligner_config(learned)
    assert saved["template"] == "aligner-v1" and saved["base_model"] == str(base_dir.resolve())
    assert saved["extra"]["method"] == "full" and saved["extra"]["merged"] is True
    assert [s["name"] for s in saved["extra"]["stages"]] == ["warmup", "residual"]
    assert (learned / "model.safetensors").is_file() and not (learned / "adapter_config.json").exists()
    # Safetensors only: no pickle (.bin, .pt, .pth) in what inference loads.
    assert not [p.name for p in learned.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    assert not list(checkpoints_dir(learned).glob("*/final/*.bin"))
    assert not (learned / "checkpoints").exists(), "resume checkpoints live beside the output, not in it"


@pytest.mark.slow
def test_learned_aligner_reports_corrected_and_unchanged(learned: Path, task: SyntheticTask) -> None:
    wrong = next(r for r in task.held_out if r.answer != r.correction)
    right = next(r for r in task.train if r.answer == r.correction)
    aligner = AlignerRunnable(model=str(learned), **INFERENCE)
    fixed, kept = aligner.batch(
        [
            {"question": wrong.question, "answer": AIMessage(wrong.answer, id="a1")},
            {"question": right.question, "answer": AIMessage(right.answer, id="a2")},
        ]
    )
    assert fixed.id == "a1" and fixed.text == wrong.correction
    assert fixed.response_metadata["aligner"]["status"] == "corrected"
    assert fixed.response_metadata["aligner"]["original"] == wrong.answer
    assert kept.text == right.answer and kept.response_metadata["aligner"]["status"] == "unchanged"
    assert fixed.response_metadata["aligner"]["template"] == "aligner-v1"


# -- 3. the identity warm-up runs first -----------------------------------------------------------


def _first_loss(messages: list[str], stage: str) -> float:
    match = next(
        re.match(rf"\[{stage}\] step 1/\d+ loss ([\d.]+)", m) for m in messages if f"[{stage}] step 1/" in m
    )
    assert match is not None
    return float(match.group(1))


@pytest.mark.slow
def test_warm_up_stage_teaches_copying_and_the_residual_stage_starts_from_it(
    train_file: Path, base_dir: Path, workdir: Path, task: SyntheticTask
) -> None:
    output = workdir / "warmup-only"
    with _logs("training.aligner.trainer") as messages:
        code = _train(train_file, base_dir, output, "--identity-fraction", "1.0", "--max-steps", WARMUP_STEPS)
    assert code == 0
    # Stage order: every warm-up message comes before the first residual one.
    stages_in_log = [m[1 : m.index("]")] for m in messages if m.startswith("[")]
    assert stages_in_log and stages_in_log[0] == "warmup" and "residual" in stages_in_log
    first_residual = stages_in_log.index("residual")
    assert set(stages_in_log[:first_residual]) == {"warmup"} and set(stages_in_log[first_residual:]) == {
        "residual"
    }

    extra = _aligner_config(output)["extra"]
    assert extra["identity_rows"] == extra["rows"] == len(task.train)
    steps = int(WARMUP_STEPS)
    assert [(s["name"], s["rows"], s["global_step"]) for s in extra["stages"]] == [
        ("warmup", len(task.train), steps),
        ("residual", len(task.train), steps),
    ]
    warmup_final = checkpoints_dir(output) / "warmup" / "final"
    done = json.loads((warmup_final / "stage_done.json").read_text())
    assert (done["name"], done["global_step"]) == ("warmup", steps)

    # The warm-up weights copy: held-out answers (mostly wrong ones) come back unchanged.
    copied = _share(_correct(warmup_final, task.held_out), [r.answer for r in task.held_out])
    assert copied >= 0.7, f"the warm-up model copied only {copied:.0%} of the held-out answers"

    # The residual stage starts from those weights, not from the random base: its first loss is far
    # below the warm-up's first loss (the base model's loss on the same kind of rows).
    warmup_first, residual_first = _first_loss(messages, "warmup"), _first_loss(messages, "residual")
    assert residual_first < warmup_first / 3, (warmup_first, residual_first)


# -- 2. LoRA trains adapter weights only -----------------------------------------------------------


def test_lora_trains_only_adapter_weights(lora_run: LoraRun, base_dir: Path) -> None:
    from safetensors.torch import load_file

    output = lora_run.output
    assert (output / "adapter_config.json").is_file() and (output / "adapter_model.safetensors").is_file()
    assert not (output / "model.safetensors").exists() and not (output / "training_args.bin").exists()
    adapter_config = json.loads((output / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base_dir.resolve())
    assert adapter_config["r"] == 8 and adapter_config["peft_type"] == "LORA"
    saved = _aligner_config(output)
    assert saved["base_model"] == str(base_dir.resolve())
    assert saved["extra"]["method"] == "lora" and saved["extra"]["merged"] is False

    tensors = load_file(str(output / "adapter_model.safetensors"))
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors), sorted(tensors)[:5]
    # lora_B starts at zero: non-zero means the adapter was trained.
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if ".lora_B." in k)
    # What each stage trained (requires_grad) is exactly the adapter: the same parameter count.
    counts = [m for m in lora_run.messages if "parameters trainable" in m]
    assert [c.split("]")[0] for c in counts] == ["[warmup", "[residual"]
    trainable = {int(re.search(r"LoRA: (\d+) of", c).group(1)) for c in counts}  # type: ignore[union-attr]
    assert trainable == {sum(t.numel() for t in tensors.values())}
    # The base model on disk is byte for byte what it was before training.
    assert _sha256(base_dir / "model.safetensors") == lora_run.base_sha256_before


def _lora_delta(adapter: dict[str, Any], module: str) -> Any:
    """``alpha / r * B @ A`` of one adapted module (r=8, alpha=32 from the flags and defaults)."""
    a = adapter[f"base_model.model.{module}.lora_A.weight"]
    b = adapter[f"base_model.model.{module}.lora_B.weight"]
    return 32 / 8 * b @ a


def test_saved_adapter_loads_in_the_runnable_on_its_base(
    lora_run: LoraRun, base_dir: Path, task: SyntheticTask
) -> None:
    import torch
    from safetensors.torch import load_file

    aligner = AlignerRunnable(model=str(lora_run.output), **INFERENCE)
    row = task.held_out[0]
    message = aligner.invoke({"question": row.question, "answer": AIMessage(row.answer)})
    meta = message.response_metadata["aligner"]
    assert meta["status"] in {"corrected", "unchanged"}, meta
    assert meta["model"] == str(lora_run.output) and meta["template"] == "aligner-v1"
    # The served weights are the recorded base plus the saved adapter's update.
    served = aligner.get_backend().loaded_model.state_dict()  # type: ignore[attr-defined]
    base = load_file(str(base_dir / "model.safetensors"))
    adapter = load_file(str(lora_run.output / "adapter_model.safetensors"))
    module = "model.layers.0.self_attn.q_proj"
    delta = _lora_delta(adapter, module)
    assert delta.abs().max() > 0
    torch.testing.assert_close(served[f"{module}.weight"].cpu(), base[f"{module}.weight"] + delta)


# -- 6. --merge writes a full model ----------------------------------------------------------------


def test_merge_writes_a_full_model_that_loads_without_peft(
    lora_run: LoraRun, small_file: Path, base_dir: Path, workdir: Path, task: SyntheticTask
) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    output = workdir / "merged"
    assert _train(small_file, base_dir, output, *LORA_FLAGS, "--merge") == 0
    assert (output / "config.json").is_file() and (output / "model.safetensors").is_file()
    assert not (output / "adapter_config.json").exists()
    assert not (output / "adapter_model.safetensors").exists()
    saved = _aligner_config(output)
    assert saved["extra"]["method"] == "lora" and saved["extra"]["merged"] is True

    model = AutoModelForCausalLM.from_pretrained(str(output))  # plain transformers, no PEFT
    assert type(model).__name__ == "LlamaForCausalLM" and not hasattr(model, "peft_config")
    merged = model.state_dict()
    base = load_file(str(base_dir / "model.safetensors"))
    module = "model.layers.1.mlp.down_proj"
    assert not torch.equal(merged[f"{module}.weight"], base[f"{module}.weight"])
    torch.testing.assert_close(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    # Same seed, data and flags as the LoRA run: the merge is base + that adapter's update.
    adapter = load_file(str(lora_run.output / "adapter_model.safetensors"))
    torch.testing.assert_close(
        merged[f"{module}.weight"], base[f"{module}.weight"] + _lora_delta(adapter, module)
    )

    row = task.held_out[1]
    message = AlignerRunnable(model=str(output), **INFERENCE).invoke(
        {"question": row.question, "answer": AIMessage(row.answer)}
    )
    assert message.response_metadata["aligner"]["status"] in {"corrected", "unchanged"}


# -- 4. --resume -----------------------------------------------------------------------------------


def test_resume_continues_from_the_last_checkpoint(
    small_file: Path, base_dir: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = workdir / "resumed"
    first = ("--identity-fraction", "0.25", "--save-steps", "2")
    assert _train(small_file, base_dir, output, *first, "--max-steps", "4") == 0
    stages = _aligner_config(output)["extra"]["stages"]
    assert [(s["name"], s["global_step"], s["resumed_from"]) for s in stages] == [
        ("warmup", 4, None),
        ("residual", 4, None),
    ]
    assert (checkpoints_dir(output) / "warmup" / "final" / "stage_done.json").is_file()
    assert (checkpoints_dir(output) / "residual" / "checkpoint-4").is_dir()
    capsys.readouterr()

    # Without --resume the run refuses to overwrite the checkpoints.
    assert _train(small_file, base_dir, output, *first, "--max-steps", "6") == 2
    assert "--resume" in capsys.readouterr().err

    assert _train(small_file, base_dir, output, *first, "--max-steps", "6", "--resume") == 0
    out = capsys.readouterr().out
    assert "warmup: 16 rows, 4 steps" in out and "finished in an earlier run" in out
    checkpoint = str(checkpoints_dir(output) / "residual" / "checkpoint-4")
    assert "residual: 64 rows, 6 steps, loss" in out and f"resumed from {checkpoint}" in out
    stages = _aligner_config(output)["extra"]["stages"]
    assert stages[0]["skipped"] == "finished in an earlier run"
    assert (stages[1]["global_step"], stages[1]["resumed_from"]) == (6, checkpoint)
    assert (checkpoints_dir(output) / "residual" / "checkpoint-6").is_dir()
    capsys.readouterr()

    # A resume with other data or another base model is refused, naming what differs: it would
    # otherwise report success after zero steps and record the new data as its source.
    other = small_file.with_name("other.jsonl")
    other.write_text("".join(small_file.read_text().splitlines(keepends=True)[:40]))
    assert _train(other, base_dir, output, *first, "--max-steps", "8", "--resume") == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "data:" in err and "40 rows" in err and "64 rows" in err
    assert _train(small_file, base_dir, output, *first, "--max-steps", "8", "--resume", "--seed", "7") == 2
    assert "seed: 42 then, 7 now" in capsys.readouterr().err
    assert _aligner_config(output)["extra"]["data"] == str(small_file)  # the finished run is untouched


# -- 5. bad data -----------------------------------------------------------------------------------


def test_missing_columns_exit_2_naming_the_file_and_the_columns_found(
    base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "Q", "answer": "A", "revision": "C"}) + "\n")
    assert _train(data, base_dir, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(data) in err and "columns found: ['prompt', 'answer', 'revision']" in err
    assert "missing column(s) ['question', 'correction']" in err and "--column-map" in err
    assert not (tmp_path / "out" / "aligner_config.json").exists()
    # A column map is applied before the check: only the column it names wrongly is still missing.
    assert _train(data, base_dir, tmp_path / "out", "--column-map", "question=prompt,correction=nope") == 2
    err = capsys.readouterr().err
    assert "missing column(s) ['nope']" in err and "columns found: ['prompt', 'answer', 'revision']" in err


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("broken.jsonl", b'{"question": "Q"\n', "cannot read training data"),
        (
            "late.jsonl",
            b'{"question": "Q", "answer": "A", "correction": "C"}\n\n{"question": "Q"\n',
            r"late.jsonl:3: not valid JSON",
        ),
        ("list.json", b'{"question": "Q"}', "must hold a list of objects"),
        ("latin1.csv", b"question,answer,correction\nQ,caf\xe9,C\n", "cannot read training data.*utf-8"),
    ],
)
def test_unreadable_data_exits_2_naming_the_file(
    base_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes,
    message: str,
) -> None:
    data = tmp_path / name
    data.write_bytes(content)
    assert _train(data, base_dir, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("aligner-chain train: error:") and name in err
    assert re.search(message, err), err


def test_empty_and_non_string_rows_are_dropped_and_counted(
    task: SyntheticTask, base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [{"question": r.question, "answer": r.answer, "correction": r.correction} for r in task.train[:8]]
    bad: list[Any] = [
        {"question": "Q", "answer": "", "correction": "C"},
        {"question": "Q", "answer": "A", "correction": "  "},
        {"question": "Q", "answer": 7, "correction": "C"},
        {"question": None, "answer": "A", "correction": "C"},
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in good + bad))
    output = tmp_path / "out"
    with _logs("training.aligner.data") as messages:
        assert _train(data, base_dir, output, "--identity-fraction", "0", "--max-steps", "1") == 0
    assert any(
        "loaded 8 rows" in m and "dropped 2 with an empty field, 2 with a non-string" in m for m in messages
    )
    extra = _aligner_config(output)["extra"]
    assert extra["rows"] == 8 and extra["dropped_rows"] == {"empty": 2, "non_string": 2}
    # ... and reported on stderr by line, not only in aligner_config.json.
    err = capsys.readouterr().err
    assert "dropped 4 row(s)" in err and "2 empty (line 9, line 10)" in err
    assert "2 non_string (line 11, line 12)" in err
    assert [s["name"] for s in extra["stages"]] == ["residual"]  # identity_fraction 0: no warm-up

    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text("".join(json.dumps(row) + "\n" for row in bad))
    assert _train(only_bad, base_dir, tmp_path / "none") == 2
    assert "every row was dropped" in capsys.readouterr().err


@pytest.mark.parametrize("problem", ["missing", "pickle-only", "corrupt"])
def test_a_base_model_that_cannot_load_is_one_line_and_exit_2(
    small_file: Path, base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str
) -> None:
    import shutil

    base = tmp_path / "base"
    if problem != "missing":
        shutil.copytree(base_dir, base)
        weights = base / "model.safetensors"
        if problem == "pickle-only":
            weights.rename(base / "pytorch_model.bin")
        else:
            weights.write_bytes(weights.read_bytes()[:100])
    assert _train(small_file, base, tmp_path / "out") == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("aligner-chain train: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    expected = {
        "missing": "does not exist",
        "pickle-only": "pytorch_model.bin (pickle)",
        "corrupt": "not a readable safetensors file",
    }[problem]
    assert "base_model=" in lines[0] or "base_model:" in lines[0]
    assert expected in lines[0]
