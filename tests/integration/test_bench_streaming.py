"""The streaming benchmark runs end to end (tiny random Aligners, fast upstream) and records machine,
settings and every mode. No timing asserts: the figures are the script's output, not a test's."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from aligner_chain.aligner_config import AlignerConfig, save_aligner_config

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_streaming.py"


pytestmark = pytest.mark.usefixtures("restore_process_settings")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_streaming", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_streaming", module)
    spec.loader.exec_module(module)
    return module


def test_main_writes_every_mode_with_machine_and_settings(bench, tiny_model_dir, tmp_path, capsys):
    sentence_dir = tmp_path / "sentence-aligner"
    shutil.copytree(tiny_model_dir, sentence_dir)
    save_aligner_config(sentence_dir, AlignerConfig("stream-aligner"))
    output = tmp_path / "out" / "streaming.json"
    argv = ["--whole-model", str(tiny_model_dir), "--sentence-model", str(sentence_dir), "--device", "cpu"]
    argv += ["--sentences", "3", "--answers", "1", "--runs", "1", "--rate", "300", "--max-new-tokens", "4"]
    assert bench.main([*argv, "--train-answers", "50", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["machine"]["cpu_cores"] and report["machine"]["versions"]["torch"]
    assert report["settings"]["rate"] == 300 and report["settings"]["training_seconds"] == {}
    assert list(report["summary"]) == [name for name, _, _ in bench.MODES]
    for row in report["summary"].values():
        assert row["total_p50_s"] > 0 and 0 <= row["exact_match"] <= 1
    assert set(report["ratios"]) == {
        "first_token_whole_over_sentence",
        "first_token_today_over_sentence",
        "total_sentence_over_whole",
    }
    printed = capsys.readouterr().out
    assert "| AlignedChatModel, sentence-level Aligner |" in printed and str(output) in printed


def test_the_timed_upstream_writes_on_its_own_schedule(bench):
    upstream = bench.TimedUpstream(answers={"q": ["A", " b", "."]}, rate=1000.0)
    assert "".join(c.text for c in upstream.stream("q")) == "A b."
    assert upstream.invoke("q").text == "A b."
