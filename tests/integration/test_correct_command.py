"""`aligner-chain correct` end to end: a tiny trained Aligner, locally and behind a local server;
exit statuses, empty answers, refused result fields, --resume/--overwrite and --concurrency."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import threading
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
        json.dumps({"id": 7, "question": "Why?", "answer": "  \n "}),
        json.dumps({"id": 8, "question": "Why?", "answer": "A.", "status": "draft"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_output(rows: list[dict], stderr: str) -> None:
    assert [row["id"] for row in rows] == [1, 2, 4, 5, 7]
    assert [row["status"] for row in rows] == ["corrected", "corrected", "unchanged", "skipped", "skipped"]
    assert [row["correction"] for row in rows[:3]] == [c for _, _, c in ROWS]
    assert rows[1]["source"] == "unit" and rows[0]["reason"] is None
    assert rows[3]["reason"] == "too_long" and rows[3]["correction"] is None
    assert rows[4]["reason"] == "empty" and rows[4]["correction"] is None  # never sent to the model
    for line, problem in [(2, "not valid JSON"), (5, '"answer" is missing'), (6, "expected a JSON object")]:
        assert f"line {line}: {problem}" in stderr
    assert 'line 9: "answer" must be a string, got int' in stderr
    assert 'line 11: the row already has "status"' in stderr and "--output-prefix" in stderr
    assert "wrote 5 row(s) (2 corrected, 1 unchanged, 2 skipped, 0 failed)" in stderr
    assert "left out 5 invalid input row(s)" in stderr


def valid_input(path: Path, n: int = 6) -> Path:
    rows = [{"id": i, "question": ROWS[i % 3][0], "answer": ROWS[i % 3][1]} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@needs_transformers_backend
def test_correct_with_a_local_model(
    aligner_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = write_input(tmp_path / "in.jsonl"), tmp_path / "out" / "corrected.jsonl"
    flags = ["--model", str(aligner_dir), "--batch-size", "2", "--max-new-tokens", "24", "--device", "cpu"]
    assert (
        main(["correct", str(source), "--output", str(output), *flags, "--no-progress"]) == 1
    )  # rows left out
    check_output(read_rows(output), capsys.readouterr().err)
    clean = valid_input(tmp_path / "clean.jsonl")
    assert main(["correct", str(clean), "--output", str(tmp_path / "clean-out.jsonl"), *flags]) == 0
    assert "wrote 6 row(s) (4 corrected, 2 unchanged, 0 skipped, 0 failed)" in capsys.readouterr().err


@needs_transformers_backend
def test_a_model_that_cannot_load_stops_at_once_with_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = write_input(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    args = ["correct", str(source), "--model", str(tmp_path / "missing-model"), "--device", "cpu"]
    assert main([*args, "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert "the Aligner could not be loaded" in err and "--resume" in err
    assert not output.exists()  # nothing half-done to clean up


def test_correct_from_stdin_through_a_server(
    server: CompletionsServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_input(tmp_path / "in.jsonl")
    monkeypatch.setattr(sys, "stdin", io.StringIO(source.read_text(encoding="utf-8")))
    args = ["correct", "--base-url", server.base_url, "--model", "tiny", "--max-new-tokens", "24"]
    assert main([*args, "--tokenizer", str(source.parent / "missing")]) == 1  # bad tokenizer: rows fail
    captured = capsys.readouterr()
    reasons = {(row["status"], row["reason"]) for row in map(json.loads, captured.out.splitlines())}
    assert reasons == {("failed", "backend_error"), ("skipped", "empty")}
    assert "0 corrected, 0 unchanged, 1 skipped, 4 failed" in captured.err
    monkeypatch.setattr(sys, "stdin", io.StringIO(source.read_text(encoding="utf-8")))
    assert main([*args, "--concurrency", "3"]) == 1
    captured = capsys.readouterr()
    check_output([json.loads(line) for line in captured.out.splitlines()], captured.err)
    assert server.payloads[-1]["model"] == "tiny" and server.payloads[-1]["max_tokens"] == 24
    assert not any("  \n " in str(p["prompt"]) for p in server.payloads)  # the empty answer was not sent


def test_failed_rows_and_an_unreachable_server_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = valid_input(tmp_path / "in.jsonl")
    refused = lambda prompt: 400 if "egg" in prompt else None  # noqa: E731
    with CompletionsServer(rule=lambda prompt: " fixed", fail_if=refused) as srv:
        args = ["correct", str(source), "-o", str(tmp_path / "out.jsonl"), "--base-url", srv.base_url]
        assert main(args) == 1
        rows = read_rows(tmp_path / "out.jsonl")
        assert [row["status"] for row in rows] == ["corrected", "failed", "corrected"] * 2
        assert rows[1]["reason"] == "server_error" and "HTTP 400" in rows[1]["detail"]
        assert "(4 corrected, 0 unchanged, 0 skipped, 2 failed)" in capsys.readouterr().err
        url = srv.base_url
    assert main(["correct", str(source), "-o", str(tmp_path / "down.jsonl"), "--base-url", url]) == 1
    assert "cannot reach the Aligner server" in capsys.readouterr().err
    assert not (tmp_path / "down.jsonl").exists()


def test_existing_output_is_refused_resumed_or_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = valid_input(tmp_path / "in.jsonl", n=9), tmp_path / "out.jsonl"
    failing = {"on": True}
    with CompletionsServer(
        rule=lambda prompt: " fixed",
        fail_if=lambda prompt: 400 if failing["on"] and "egg" in prompt else None,
    ) as srv:
        args = ["correct", str(source), "-o", str(output), "--base-url", srv.base_url, "--concurrency", "2"]
        assert main(args) == 1  # rows 1, 4 and 7 failed
        first = output.read_bytes().splitlines(keepends=True)
        assert len(first) == 9 and b'"failed"' in first[1]
        # An interrupted run: six rows written, the seventh cut off mid-line.
        output.write_bytes(b"".join(first[:6]) + first[6][:20])
        before = output.read_bytes()

        assert main(args) == 2  # no flag: refused, untouched
        assert "--resume" in capsys.readouterr().err and output.read_bytes() == before

        failing["on"] = False
        sent = len(srv.payloads)
        assert main([*args, "--resume"]) == 0
        err = capsys.readouterr().err
        resumed = output.read_bytes().splitlines(keepends=True)
        assert [json.loads(line)["id"] for line in resumed] == list(range(9))  # each row once, in order
        for i in (0, 2, 3, 5):  # finished rows kept byte for byte
            assert resumed[i] == first[i]
        assert all(json.loads(line)["status"] == "corrected" for line in resumed)
        assert len(srv.payloads) - sent == 5  # rows 1 and 4 tried again, 6-8 computed; none twice
        assert "wrote 5 row(s)" in err and "kept 4 finished row(s)" in err

        assert main([*args, "--resume"]) == 0 and len(srv.payloads) - sent == 5  # nothing left to do
        assert output.read_bytes().splitlines(keepends=True) == resumed

        other = valid_input(tmp_path / "other.jsonl", n=3)
        other.write_text(other.read_text().replace('"id": 0', '"id": 100'))
        assert main(["correct", str(other), *args[2:], "--resume"]) == 2
        assert "other input" in capsys.readouterr().err
        assert main([*args, "--overwrite"]) == 0
        assert len(read_rows(output)) == 9 and len(srv.payloads) - sent == 14


def test_output_prefix_keeps_the_input_fields(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"question": "Q?", "answer": "A.", "status": "draft", "reason": "x"}) + "\n")
    with CompletionsServer(rule=lambda prompt: " B.") as srv:
        args = ["correct", str(source), "-o", str(tmp_path / "out.jsonl"), "--base-url", srv.base_url]
        assert main([*args, "--output-prefix", "aligner_"]) == 0
    assert read_rows(tmp_path / "out.jsonl") == [
        {
            "question": "Q?",
            "answer": "A.",
            "status": "draft",
            "reason": "x",
            "aligner_correction": "B.",
            "aligner_status": "corrected",
            "aligner_reason": None,
        }
    ]


def test_concurrency_keeps_requests_in_flight_across_batches(tmp_path: Path) -> None:
    """One slow row must not hold the others back: with 4 requests in flight, a dozen other rows are
    answered while the slow one is still out (a batch-by-batch loop would wait for it after 3 others;
    the engine reads at most 4 x 4 rows ahead); the output still comes in input order."""
    source = tmp_path / "in.jsonl"
    rows = [{"question": f"Q{i}?", "answer": "slow" if i == 1 else f"a{i}"} for i in range(24)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    lock, finished, others_done, seen = threading.Lock(), [], threading.Event(), {}

    def rule(prompt: str) -> str:
        if "slow" in prompt:  # answered once 12 other rows were (or after 10 s)
            seen["others_done"] = others_done.wait(timeout=10)
        else:
            with lock:
                finished.append(prompt)
                if len(finished) == 12:
                    others_done.set()
        return " ok"

    with CompletionsServer(rule=rule) as srv:
        args = ["correct", str(source), "-o", str(tmp_path / "out.jsonl"), "--base-url", srv.base_url]
        assert main([*args, "--concurrency", "4"]) == 0
    assert seen["others_done"], "the other rows waited for the slow one"
    assert [row["question"] for row in read_rows(tmp_path / "out.jsonl")] == [row["question"] for row in rows]


def test_flag_conflicts_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_input(tmp_path / "in.jsonl")
    assert main(["correct", str(source), "--base-url", "http://127.0.0.1:9", "--adapter", "x"]) == 2
    assert "--lora-modules" in capsys.readouterr().err
    assert main(["correct", str(tmp_path / "nope.jsonl")]) == 1
    assert "input file not found" in capsys.readouterr().err
    assert main(["correct", str(source), "--output", str(source)]) == 2
    assert main(["correct", str(source), "--resume"]) == 2
    assert "--resume needs --output FILE" in capsys.readouterr().err
    assert main(["correct", str(source), "--replicas", "2"]) == 2
    assert "only apply with --engine ray" in capsys.readouterr().err


def test_console_script(server: CompletionsServer, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "aligner-chain"
    source, output = write_input(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    command = [str(script), "--log-level", "info", "correct", str(source), "-o", str(output)]
    command += ["--base-url", server.base_url, "--max-new-tokens", "24", "--progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr  # rows were left out
    check_output([json.loads(line) for line in output.read_text().splitlines()], result.stderr)
    assert "rows/s" in result.stderr and "server's tokenizer decides" in result.stderr  # bar and info log
