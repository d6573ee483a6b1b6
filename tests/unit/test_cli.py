"""The `aligner-chain` entry point and the row handling of `aligner-chain correct` (no weights)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

import pytest

from aligner_chain import __version__, cli
from aligner_chain.backends import CallableBackend, CorrectionRequest, CorrectionResult
from aligner_chain.correct_command import output_row, parse_row
from aligner_chain.offline.corrections import correct_requests


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("correct", "train", "bootstrap", "eval", "--log-level", "--version"):
        assert name in out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"aligner-chain {__version__}"


def test_correct_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["correct", "--help"]) == 0
    out = capsys.readouterr().out
    flags = ["--output", "--model", "--adapter", "--template", "--batch-size", "--max-new-tokens"]
    flags += ["--base-url", "--tokenizer", "--device", "--dtype", "--trust-remote-code", "--progress"]
    for flag in flags:
        assert flag in out
    flags += ["--concurrency", "--resume", "--overwrite", "--output-prefix", "--engine", "--ray-address"]
    flags += ["--replicas", "--gpus-per-replica", "--cpus-per-replica"]
    for flag in flags:
        assert flag in out
    assert "ALIGNER_MODEL" in out and "malformed" in out


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert cli.main(["correct", "--batch-size", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
    assert cli.main(["correct", "--no-such-flag"]) == 2


def test_missing_extra_keeps_help_working_and_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ghost = cli.Subcommand("training.no_such_command", extra="train")
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", ghost)
    assert cli.main(["--help"]) == 0
    assert "ghost" in capsys.readouterr().out
    assert cli.main(["ghost", "--data", "x.jsonl"]) == 1
    err = capsys.readouterr().err
    assert 'pip install "aligner-chain[train]"' in err and "ghost" in err


def test_command_modules_keep_imports_light() -> None:
    code = (
        "import sys; from aligner_chain.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'httpx', 'trl', 'datasets', 'ray', 'pyarrow') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_parse_row_names_the_problem() -> None:
    assert parse_row({"question": "Q", "answer": "A", "id": 3}) == CorrectionRequest("Q", "A")
    with pytest.raises(ValueError, match='"answer" is missing'):
        parse_row({"question": "Q"})
    with pytest.raises(ValueError, match='"question" must be a string, got int'):
        parse_row({"question": 1, "answer": "A"})
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        parse_row(["Q", "A"])


def test_output_row_statuses_keep_extra_keys() -> None:
    row = {"id": 7, "question": "Q", "answer": "Paris is in Germany. "}
    corrected = output_row(row, CorrectionResult.ok("Paris is in France."))
    assert corrected == {**row, "correction": "Paris is in France.", "status": "corrected", "reason": None}
    assert output_row(row, CorrectionResult.ok("Paris is in Germany."))["status"] == "unchanged"
    skipped = output_row(row, CorrectionResult.skipped("too_long", "4096 > 2048"))
    assert skipped == {
        **row,
        "correction": None,
        "status": "skipped",
        "reason": "too_long",
        "detail": "4096 > 2048",
    }
    assert output_row(row, CorrectionResult.failed("truncated"))["status"] == "failed"
    json.dumps(skipped)


def test_a_failing_batch_fails_its_rows_only() -> None:
    class Broken(CallableBackend):
        def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
            raise RuntimeError("model could not be loaded")

    results = correct_requests(Broken(lambda q, a: a), [CorrectionRequest("Q", "A")] * 2)
    assert [(r.status, r.reason) for r in results] == [("failed", "backend_error")] * 2
    assert "model could not be loaded" in (results[0].detail or "")
    assert correct_requests(CallableBackend(lambda q, a: a.upper()), [CorrectionRequest("Q", "a")]) == [
        CorrectionResult.ok("A")
    ]


def test_empty_answers_are_skipped_without_a_model_call() -> None:
    seen: list[str] = []
    backend = CallableBackend(lambda q, a: seen.append(a) or a.upper())
    requests = [CorrectionRequest("Q", a) for a in ("a", "", " \n\t", "b")]
    results = correct_requests(backend, requests)
    assert [(r.status, r.reason, r.text) for r in results] == [
        ("ok", None, "A"),
        ("skipped", "empty", None),
        ("skipped", "empty", None),
        ("ok", None, "B"),
    ]
    assert seen == ["a", "b"]


def test_the_ray_engine_without_ray_says_what_to_install(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"question": "Q", "answer": "A"}) + "\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "aligner_chain.offline.ray_data", raising=False)
    args = ["correct", str(source), "-o", str(tmp_path / "out.jsonl"), "--engine", "ray", "--model", "m"]
    assert cli.main(args) == 1
    assert 'pip install "aligner-chain[ray]"' in capsys.readouterr().err
