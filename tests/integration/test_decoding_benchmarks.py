"""The decoding benchmark and the GPU check run end to end with tiny settings on CPU and record the
machine, the settings and every figure (no timing asserts: the figures are the scripts' output)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_decoding, gpu_check

pytestmark = pytest.mark.usefixtures("restore_process_settings")
ROOT = Path(__file__).resolve().parents[2]
needs_data = pytest.mark.skipif(
    not bench_decoding.DEFAULT_DATA.is_file(), reason="the real corrections (../shared/data) are absent"
)


@pytest.mark.slow
@needs_data
def test_bench_decoding_writes_every_contender_and_goal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "decoding.json"
    argv = ["--rows", "6", "--copy-rows", "3", "--lone-rows", "2", "--rounds", "1", "--quick"]
    argv += ["--batch-sizes", "2,4", "--callers", "2,4", "--stream-callers", "2", "--length-scale", "0.05"]
    assert bench_decoding.main([*argv, "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["machine"]["load_average"] is not None and report["machine"]["versions"]["transformers"]
    assert report["settings"]["rows"] == 6 and "chain Llama" in report["settings"]["workload"]
    contenders = report["results"]["contenders"]
    expected = {"model_card_loop", "raw_generate", "ours_defaults_batch", "ours_continuous_callers_4"}
    expected |= {
        "ours_defaults_streams_2",
        "copy_ours_defaults",
        "copy_ours_lookup_off",
        "lone_ours_defaults",
    }
    if importlib.util.find_spec("langchain_huggingface") is not None:
        expected.add("pipeline")
    assert expected <= contenders.keys()
    assert all(figures["identical_outputs"] for figures in contenders.values()), "every contender, same text"
    assert contenders["raw_generate"]["x_raw_generate"] == 1.0
    assert set(report["results"]["calibration"]["raw_generate"]) == {"2", "4"}
    backends = report["results"]["backends"]
    assert backends["copy_defaults"]["rows_per_path"].get("prompt_lookup", 0) >= 3
    assert backends["continuous"]["rows_per_path"].get("continuous", 0) >= 6
    assert [g["goal"] for g in report["results"]["goals"]][-2].startswith("copy-aware")
    assert "| contender |" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_check_runs_every_step_with_the_tiny_flag(tmp_path: Path) -> None:
    output = tmp_path / "gpu.json"
    assert gpu_check.main(["--tiny", "--output", str(output)]) == 0
    results = json.loads(output.read_text())["results"]
    assert set(results["throughput_tokens_per_s"]) == {"static_callers", "continuous_callers", "raw_generate"}
    assert results["continuous_over_static"] > 0
    assert set(results["batch1_latency"]) == {"backend_defaults", "backend_compiled_off", "model_generate"}
    assert all(results["identical_outputs"].values())
    assert results["workload"]["callers"] == 4 and len(results["goals"]) == 2


@pytest.mark.slow
def test_gpu_check_script_runs_the_gpu_tests_and_the_check(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "gpu-tests.xml").is_file() and (tmp_path / "gpu_check.json").is_file()
    assert "skipped" in done.stdout, "the gpu tests are collected (and skip without CUDA)"


@pytest.mark.slow
def test_bench_idle_worker_times_every_contender(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_idle_worker

    output = tmp_path / "idle.json"
    argv = ["--size", "64", "--matmuls", "2", "--reps", "1", "--hidden", "32", "--answer-words", "12"]
    assert bench_idle_worker.main([*argv, "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    rows = {row["contender"]: row for row in report["results"]["contenders"]}
    expected = ["alone", "thread_that_decoded_idles", "ours_right_after_a_call", "ours_idle"]
    assert list(rows) == [*expected, "ours_continuous_idle"]
    assert rows["alone"]["x_alone"] == 1.0 and all(row["median_ms"] > 0 for row in rows.values())
    assert rows["ours_idle"]["worker_alive"] is False, "the CPU worker exits once idle"
    assert report["settings"]["torch_threads"] >= 1 and report["machine"]["load_average"] is not None
    assert "| ours_idle |" in capsys.readouterr().out
