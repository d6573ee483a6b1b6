"""`make demo` runs examples/quickstart.py: it must train, correct through with_aligner and report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


@pytest.mark.slow
def test_quickstart_trains_and_corrects_held_out_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
    assert spec is not None and spec.loader is not None
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)

    assert quickstart.main(["--output-dir", str(tmp_path), "--epochs", "2", "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("question:") == 2 and out.count("original:") == 2 and out.count("corrected:") == 2
    assert "held-out exact match:" in out
    saved = json.loads((tmp_path / "aligner" / "aligner_config.json").read_text())
    assert saved["template"] == "aligner-v1"
    assert [stage["name"] for stage in saved["extra"]["stages"]] == ["warmup", "residual"]

    # --reuse loads the trained Aligner instead of training again.
    assert quickstart.main(["--output-dir", str(tmp_path), "--reuse", "--show", "0"]) == 0
    assert "reusing the Aligner" in capsys.readouterr().out
