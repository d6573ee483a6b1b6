"""Offline correction on Ray Data, on a local Ray instance (2 CPUs) with a tiny Aligner: the same
rows as single-process `correct`, a replica killed mid-run, the Python function on Ray-read data."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from aligner_chain.cli import main
from tests.integration.completions_server import CompletionsServer, train_tiny_aligner

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ROWS = [
    ("What is the capital of France?", "Paris is in Germany.", "Paris is in France."),
    ("How do I boil an egg?", "Put it in the microwave.", "Simmer it for nine minutes."),
    ("Why is the sky blue?", "Rayleigh scattering.", "Rayleigh scattering."),
]
RAY_FLAGS = ["--engine", "ray", "--replicas", "2", "--cpus-per-replica", "0.5"]
MODEL_FLAGS = ["--batch-size", "4", "--max-new-tokens", "24", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def aligner_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_aligner(tiny_model_dir, tmp_path_factory.mktemp("aligner"), ROWS)


def write_rows(path: Path, n: int) -> Path:
    lines = []
    for i in range(n):
        question, answer, _ = ROWS[i % 3]
        lines.append(json.dumps({"id": i, "question": question, "answer": answer, "meta": {"k": [i]}}))
        if i == 5:
            lines += ["not json", json.dumps({"id": "empty", "question": "Q?", "answer": " "})]
        if i == 9:
            lines.append(json.dumps({"id": "long", "question": "Why?", "answer": "long answer " * 300}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def single_process(aligner_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """60 rows (plus an empty, a too-long and a malformed one) corrected by single-process `correct`."""
    folder = tmp_path_factory.mktemp("rows")
    source = write_rows(folder / "in.jsonl", 60)
    output = folder / "single.jsonl"
    assert main(["correct", str(source), "-o", str(output), "--model", str(aligner_dir), *MODEL_FLAGS]) == 1
    return source, output.read_bytes()


def test_ray_results_equal_single_process_correct(
    ray_local, aligner_dir: Path, single_process: tuple[Path, bytes], tmp_path: Path, capsys
) -> None:
    source, expected = single_process
    output = tmp_path / "ray.jsonl"
    args = ["correct", str(source), "-o", str(output), "--model", str(aligner_dir), *MODEL_FLAGS, *RAY_FLAGS]
    assert main(args) == 1  # the malformed row was left out, as in one process
    assert output.read_bytes() == expected
    rows = [json.loads(line) for line in expected.splitlines()]
    assert len(rows) == 62 and {r["status"] for r in rows} == {"corrected", "unchanged", "skipped"}
    assert [r["id"] for r in rows if r["status"] == "skipped"] == ["empty", "long"]
    err = capsys.readouterr().err
    assert "line 7: not valid JSON" in err and "wrote 62 row(s)" in err


def test_ray_replicas_calling_a_server_equal_single_process(
    ray_local, aligner_dir: Path, single_process: tuple[Path, bytes], tmp_path: Path
) -> None:
    source, expected = single_process
    with CompletionsServer(model_dir=aligner_dir) as server:
        args = ["correct", str(source), "-o", str(tmp_path / "out.jsonl"), "--base-url", server.base_url]
        assert main([*args, "--template", "aligner-v1", *MODEL_FLAGS, *RAY_FLAGS]) == 1
    remote = [json.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    local = [json.loads(line) for line in expected.splitlines()]
    assert [(r["id"], r["status"], r["correction"]) for r in remote] == [
        (r["id"], r["status"], r["correction"]) for r in local
    ]


def _replica_pids() -> list[int]:
    import psutil

    pids = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if "MapWorker" in command and "AlignerReplica" in command:
            pids.append(process.pid)
    return pids


def test_a_replica_killed_mid_run_loses_and_repeats_no_row(
    ray_local, aligner_dir: Path, single_process: tuple[Path, bytes], tmp_path: Path
) -> None:
    source, expected = single_process
    output = tmp_path / "ray.jsonl"
    killed: dict[str, int] = {}
    stop = threading.Event()

    def kill_one_replica_once_rows_flow() -> None:
        while not stop.is_set():
            written = len(output.read_bytes().splitlines()) if output.exists() else 0
            pids = _replica_pids()
            if written >= 8 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.update(pid=pids[0], rows_written=written)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_one_replica_once_rows_flow, daemon=True)
    watcher.start()
    args = ["correct", str(source), "-o", str(output), "--model", str(aligner_dir), *MODEL_FLAGS, *RAY_FLAGS]
    try:
        assert main([*args, "--batch-size", "2"]) == 1
    finally:
        stop.set()
        watcher.join()
    assert killed and killed["rows_written"] < 62  # the kill came mid-run
    rows = [json.loads(line) for line in output.read_bytes().splitlines()]
    assert [r["id"] for r in rows] == [json.loads(line)["id"] for line in expected.splitlines()]
    assert output.read_bytes() == expected  # every row once, in order, the same corrections


def test_correct_dataset_on_rows_read_by_ray(ray_local, aligner_dir: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from aligner_chain.backends.base import CorrectionRequest
    from aligner_chain.backends.transformers import TransformersBackend
    from aligner_chain.offline.corrections import correct_requests
    from aligner_chain.offline.ray_data import correct_dataset

    rows = [{"n": i, "question": ROWS[i % 3][0], "answer": ROWS[i % 3][1]} for i in range(12)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")

    local = correct_requests(
        TransformersBackend(aligner_dir, max_new_tokens=24, device="cpu"),
        [CorrectionRequest(r["question"], r["answer"]) for r in rows],
    )
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    for dataset, replicas in (
        (ray.data.read_json(str(tmp_path / "rows.jsonl"), lines=True), 2),
        (ray.data.read_parquet(str(tmp_path / "rows.parquet")), 1),
    ):
        out = correct_dataset(
            dataset,
            str(aligner_dir),
            replicas=replicas,
            cpus_per_replica=0.5,
            batch_size=4,
            max_new_tokens=24,
            device="cpu",
        ).take_all()
        assert [r["n"] for r in out] == list(range(12))
        assert [r["correction"] for r in out] == [result.text for result in local]
        assert {r["status"] for r in out} == {"corrected", "unchanged"} and {r["reason"] for r in out} == {
            None
        }

    mixed = ray.data.from_items(
        [
            {"question": "Q?", "answer": "A.", "status": "draft"},
            {"question": "Q?", "answer": None, "status": "x"},
        ]
    )
    with pytest.raises(
        TypeError, match=r"unknown keyword argument 'max_new_token' \(did you mean 'max_new_tokens'"
    ):
        correct_dataset(mixed, str(aligner_dir), max_new_token=3)
    with pytest.raises(ValueError, match=r'already has "status".*output_prefix='):
        correct_dataset(mixed, str(aligner_dir))
    out = correct_dataset(
        mixed,
        str(aligner_dir),
        cpus_per_replica=0.5,
        output_prefix="aligner_",
        max_new_tokens=24,
        device="cpu",
    ).take_all()
    assert out[0]["status"] == "draft" and out[0]["aligner_status"] in ("corrected", "unchanged", "failed")
    assert (out[1]["aligner_status"], out[1]["aligner_reason"]) == ("failed", "invalid_row")
    assert '"answer" must be a string, got NoneType' in out[1]["aligner_detail"]


def test_a_replica_that_cannot_load_stops_the_job(ray_local, tmp_path: Path, capsys) -> None:
    source = write_rows(tmp_path / "in.jsonl", 4)
    args = ["correct", str(source), "-o", str(tmp_path / "out.jsonl"), "--model", str(tmp_path / "missing")]
    assert main([*args, *MODEL_FLAGS, *RAY_FLAGS]) == 1
    err = capsys.readouterr().err
    assert "the Aligner could not be loaded" in err and "--resume" in err
    assert main([*args, *MODEL_FLAGS, "--engine", "ray", "--replicas", "2"]) == 2  # 2 x 1 CPU + reads > 2
    assert "--cpus-per-replica 0.5" in capsys.readouterr().err


def _done(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "done.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: r["key"])


def test_bootstrap_correction_step_on_ray_equals_the_local_one(
    ray_local, aligner_dir: Path, tmp_path: Path
) -> None:
    from langchain_core.runnables import RunnableLambda

    from aligner_chain.offline.ray_options import RayOptions
    from aligner_chain.runnable import AlignerRunnable
    from training.bootstrap.collect import PREFERENCES_FILE, collect_preferences

    answers = {f"{q} ({i})": a for i in range(6) for q, a, _ in ROWS}
    questions = [*answers, "   "]
    upstream = RunnableLambda(lambda question: answers[question])
    aligner = AlignerRunnable(str(aligner_dir), max_new_tokens=24, device="cpu")
    local = collect_preferences(questions, upstream, aligner, tmp_path / "local", progress=False)
    layout = RayOptions(replicas=2, cpus_per_replica=0.5, batch_size=4)
    on_ray = collect_preferences(questions, upstream, aligner, tmp_path / "ray", progress=False, ray=layout)
    assert _done(tmp_path / "ray") == _done(tmp_path / "local")
    assert {k: on_ray[k] for k in ("written", "unchanged", "skipped", "failed")} == {
        k: local[k] for k in ("written", "unchanged", "skipped", "failed")
    }
    assert local["written"] >= 6 and local["skipped"] == 1
    ray_rows = sorted((tmp_path / "ray" / PREFERENCES_FILE).read_text().splitlines())
    assert ray_rows == sorted((tmp_path / "local" / PREFERENCES_FILE).read_text().splitlines())
    with pytest.raises(TypeError, match="not a ready backend"):
        collect_preferences(
            questions, upstream, AlignerRunnable(backend=aligner.get_backend()), tmp_path / "x", ray=layout
        )


def test_bootstrap_cli_on_ray_through_a_server(
    ray_local, aligner_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`aligner-chain bootstrap --engine ray --aligner-base-url`: one SFT round whose corrections
    come from Ray replicas calling a completions server; they equal the local Aligner's."""
    from aligner_chain.backends.base import CorrectionRequest
    from aligner_chain.backends.transformers import TransformersBackend
    from aligner_chain.offline.corrections import correct_requests
    from training.bootstrap.collect import _outcome

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"question": f"{q} ({i})"}) + "\n" for i in range(4) for q, _, _ in ROWS)
    )
    out = tmp_path / "boot"
    with CompletionsServer(model_dir=aligner_dir) as server:
        argv = [
            "bootstrap",
            "--prompts",
            str(prompts),
            "--upstream",
            str(tiny_model_dir),
            "--aligner",
            "tiny",
        ]
        argv += ["--aligner-base-url", server.base_url, "--output-dir", str(out), "--max-new-tokens", "6"]
        argv += ["--aligner-max-new-tokens", "24", "--max-steps", "1", "--batch-size", "4", "--device", "cpu"]
        assert main([*argv, *RAY_FLAGS, "--no-progress"]) == 0
        assert len(server.payloads) == 12  # every answer went through the server
    done = _done(out / "round-1")
    assert (
        len(done) == 12
        and json.loads((out / "round-1" / "manifest.json").read_text())["status"] == "complete"
    )
    backend = TransformersBackend(aligner_dir, max_new_tokens=24, device="cpu", template="aligner-v1")
    results = correct_requests(backend, [CorrectionRequest(r["question"], r["original"]) for r in done])
    assert [(r["status"], r.get("correction")) for r in done] == [
        _outcome(r["original"], result)[:2] for r, result in zip(done, results, strict=True)
    ]
