"""`aligner-chain correct` end to end: a tiny trained Aligner, locally and behind a local server."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from aligner_chain.cli import main
from tests.integration.completions_server import CompletionsServer, train_tiny_aligner

ROWS = [
    ("What is the capital of France?", "Paris is in Germany.", "Paris is in France."),
    ("How do I boil an egg?", "Put it in the microwave.", "Simmer it for nine minutes."),
    ("Why is the sky blue?", "Rayleigh scattering.", "Rayleigh scattering."),
]
needs_transformers_backend = pytest.mark.skipif(
    importlib.util.find_spec("aligner_chain.backends.transformers") is None,
    reason="TransformersBackend not available",
)


@pytest.fixture(scope="module")
def aligner_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_aligner(tiny_model_dir, tmp_path_factory.mktemp("aligner"), ROWS)


@pytest.fixture(scope="module")
def server(aligner_dir: Path):
    with CompletionsServer(model_dir=aligner_dir) as srv:
        yield srv


def write_input(path: Path) -> Path:
    lines = [
        json.dumps({"id": 1, "question": ROWS[0][0], "answer": ROWS[0][1]}),
        "this is not json",
        json.dumps({"id": 2, "question": ROWS[1][0], "answer": ROWS[1][1], "source": "unit"}),
        "",
        json.dumps({"id": 3, "question": ROWS[2][0]}),
        json.dumps(["a", "list"]),
        json.dumps({"id": 4, "question": ROWS[2][0], "answer": ROWS[2][1]}),
        json.dumps({"id": 5, "question": "Why?", "answer": "long answer " * 300}),
        json.dumps({"id": 6, "question": "Why?", "answer": 42}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def check_output(rows: list[dict], stderr: str) -> None:
    assert [row["id"] for row in rows] == [1, 2, 4, 5]
    assert [row["status"] for row in rows] == ["corrected", "corrected", "unchanged", "skipped"]
    assert [row["correction"] for row in rows[:3]] == [c for _, _, c in ROWS]
    assert rows[1]["source"] == "unit" and rows[0]["reason"] is None
    assert rows[3]["reason"] == "too_long" and rows[3]["correction"] is None
    for line, problem in [(2, "not valid JSON"), (5, '"answer" is missing'), (6, "expected a JSON object")]:
        assert f"line {line}: {problem}" in stderr
    assert 'line 9: "answer" must be a string, got int' in stderr
    assert (
        "wrote 4 row(s) (2 corrected, 1 unchanged, 1 skipped, 0 failed); skipped 4 malformed row(s)" in stderr
    )


@needs_transformers_backend
def test_correct_with_a_local_model(
    aligner_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = write_input(tmp_path / "in.jsonl"), tmp_path / "out" / "corrected.jsonl"
    args = ["correct", str(source), "--model", str(aligner_dir), "--output", str(output)]
    args += ["--batch-size", "2", "--max-new-tokens", "24", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    check_output(rows, capsys.readouterr().err)


@needs_transformers_backend
def test_a_model_that_cannot_load_fails_rows_and_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_input(tmp_path / "in.jsonl")
    args = ["correct", str(source), "--model", str(tmp_path / "missing-model"), "--device", "cpu"]
    assert main([*args, "--batch-size", "3", "--output", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {(row["status"], row["reason"]) for row in rows} == {
        ("failed", "backend_error")
    }
    assert "(0 corrected, 0 unchanged, 0 skipped, 4 failed)" in capsys.readouterr().err


def test_correct_from_stdin_through_a_server(
    server: CompletionsServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_input(tmp_path / "in.jsonl")
    monkeypatch.setattr(sys, "stdin", io.StringIO(source.read_text(encoding="utf-8")))
    args = ["correct", "--base-url", server.base_url, "--model", "tiny", "--max-new-tokens", "24"]
    assert main([*args, "--tokenizer", str(source.parent / "missing")]) == 0  # bad tokenizer: rows fail
    captured = capsys.readouterr()
    assert {json.loads(line)["reason"] for line in captured.out.splitlines()} == {"backend_error"}
    monkeypatch.setattr(sys, "stdin", io.StringIO(source.read_text(encoding="utf-8")))
    assert main([*args, "--batch-size", "3"]) == 0
    captured = capsys.readouterr()
    check_output([json.loads(line) for line in captured.out.splitlines()], captured.err)
    assert server.payloads[-1]["model"] == "tiny" and server.payloads[-1]["max_tokens"] == 24


def test_flag_conflicts_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_input(tmp_path / "in.jsonl")
    assert main(["correct", str(source), "--base-url", "http://127.0.0.1:9", "--adapter", "x"]) == 2
    assert "--lora-modules" in capsys.readouterr().err
    assert main(["correct", str(tmp_path / "nope.jsonl")]) == 1
    assert "input file not found" in capsys.readouterr().err
    assert main(["correct", str(source), "--output", str(source)]) == 1


def test_console_script(server: CompletionsServer, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "aligner-chain"
    source, output = write_input(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    command = [str(script), "--log-level", "info", "correct", str(source), "-o", str(output)]
    command += ["--base-url", server.base_url, "--max-new-tokens", "24", "--progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    check_output([json.loads(line) for line in output.read_text().splitlines()], result.stderr)
    assert "row" in result.stderr and "server's tokenizer decides" in result.stderr  # bar and info log
