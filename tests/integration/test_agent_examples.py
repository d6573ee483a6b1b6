"""The agent examples run end to end on a tiny local Aligner, so they cannot rot."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMES = ["chain", "langgraph_agent", "agent_middleware"]
# What each example must show besides the correction: the tool turn kept, one message per turn.
EXPECTED = {
    "chain": ["with_aligner(llm, aligner)", "llm | aligner (question in config)", "== streamed:"],
    "langgraph_agent": [
        "[model] calls ['get_weather']",
        "[aligner",
        "state: 4 messages (human, ai, tool, ai)",
    ],
    "agent_middleware": ["calls ['find_poison_center'] (untouched)", "[tool] US poison control"],
}


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NAMES)
def test_example_runs_on_a_tiny_aligner(
    name: str, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load(name).main(["--aligner", str(tiny_model_dir), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "corrected:" in out and "status:" in out
    for snippet in EXPECTED[name]:
        assert snippet in out


@pytest.mark.parametrize("name", NAMES)
def test_example_without_an_aligner_says_how_to_make_one(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load(name).main(["--aligner", str(tmp_path / "missing" / "aligner")]) == 2
    assert "make demo" in capsys.readouterr().err
