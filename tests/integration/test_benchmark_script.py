"""The benchmark script runs end to end with tiny settings and records machine and settings.

No timing asserts: the figures themselves are the script's output, not a test's.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_backend.py"


pytestmark = pytest.mark.usefixtures("restore_process_settings")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_backend", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_backend", module)
    spec.loader.exec_module(module)
    return module


def test_main_writes_machine_settings_and_every_figure(bench, tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "out" / "result.json"
    argv = [
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--batch-sizes",
        "2,1",
        "--requests",
        "2",
        "--min-calls",
        "1",
    ]
    argv += [
        "--max-new-tokens",
        "4",
        "--stream-runs",
        "1",
        "--overhead-calls",
        "5",
        "--overhead-repeats",
        "1",
        "--threads",
        "1",
    ]
    assert bench.main([*argv, "--output", str(output)]) == 0

    report = json.loads(output.read_text())
    machine = report["machine"]
    for key in ("cpu_model", "cpu_cores", "ram_gib", "gpu_name", "torch_threads", "load_average"):
        assert key in machine
    assert machine["versions"]["torch"] and machine["versions"]["transformers"]
    assert machine["torch_threads"] == 1

    settings = report["settings"]
    assert settings["model"] == str(tiny_model_dir)
    assert settings["batch_sizes"] == [1, 2]
    assert settings["max_new_tokens"] == 4
    assert settings["max_batch_size"] == 2

    results = report["results"]
    assert results["load"]["resolved_device"] == "cpu"
    assert results["load"]["resolved_dtype"] == "float32"
    batched = results["batched_calls"]
    assert [b["settings"]["batch_size"] for b in batched] == [1, 2]
    for b in batched:
        assert b["settings"]["requests"] == 2 and b["settings"]["max_new_tokens"] == 4
        assert b["settings"]["resolved_device"] == "cpu"
        assert sum(b["statuses"].values()) == 2
        assert 0 < b["generated_tokens"] <= 2 * 4
        assert {"p50_ms", "p95_ms"} <= b["latency"].keys()
        assert len(b["latencies_ms"]) == b["settings"]["calls"]
    dynamic = results["dynamic_batching"]
    assert dynamic["settings"]["callers"] == 2
    assert sum(dynamic["concurrent"]["batch_sizes_formed"]) == 2
    assert dynamic["sequential"]["batch_sizes_formed"] == [1, 1]
    for api in ("backend_stream", "chat_aligner_stream"):
        assert results["streaming"][api]["total"]["p50_ms"] >= 0
    overhead = results["runnable_overhead"]
    assert overhead["settings"]["batch_size"] == 2
    assert "runnable_own_cost_ms_per_invoke" in overhead
    assert overhead["same_work"] is True  # the runnable sends the backend exactly the raw batch

    printed = capsys.readouterr().out
    assert "| batch size |" in printed and "ChatAligner.stream" in printed
    assert str(output) in printed


def test_bad_batch_sizes_are_rejected_with_the_flag_named(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--batch-sizes", "1,0"])
    assert "integer >= 1" in capsys.readouterr().err


def test_percentile_interpolates(bench):
    assert bench.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert bench.percentile([1.0], 95) == 1.0
    assert bench.percentile([0.0, 10.0], 95) == pytest.approx(9.5)


@pytest.mark.slow
def test_offline_benchmark_compares_engines_on_the_same_rows(ray_local, tiny_model_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_offline", SCRIPT.parent / "bench_offline.py")
    assert spec is not None and spec.loader is not None
    bench_offline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_offline)
    output = tmp_path / "offline.json"
    argv = ["--model", str(tiny_model_dir), "--rows", "8", "--max-new-tokens", "2", "--batch-size", "2"]
    argv += ["--replicas", "1", "--cpus-per-replica", "0.5", "--output", str(output)]
    assert bench_offline.main(argv) == 0
    report = json.loads(output.read_text())
    assert report["machine"]["cpu_cores"] and report["settings"]["rows"] == 8
    engines = [run["engine"] for run in report["runs"]]
    assert engines[0] == "one-process" and engines[-1] == "ray-1"
    assert all(run["rows_per_s"] > 0 for run in report["runs"])
    assert set(report["same_output_as_one_process"].values()) == {True}
    assert "| ray-1 |" in capsys.readouterr().out
