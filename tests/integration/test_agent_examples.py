"""The examples run end to end on the tiny Aligner trained on the synthetic task, so they cannot rot.

Each example's offline script asks a question of that task with a wrong answer in one of its exact
phrasings, so the test checks the real correction, not just that something was printed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMES = ["chain", "langgraph_agent", "agent_middleware"]
# What each example must show: the correction, the tool turn kept, one message per turn.
EXPECTED = {
    "chain": [
        "== with_aligner(llm, aligner)  [status: corrected]\n"
        "draft:     The capital of Peru is Ottawa.\n"
        "corrected: The capital of Peru is Lima.",
        "== llm | aligner (question in config)  [status: corrected]\n"
        "draft:     The capital of Peru is Ottawa.\n"
        "corrected: The capital of Peru is Lima.",
        "== llm | aligner (no question)",
        "== streamed: The capital of Peru is Lima.\n",
    ],
    "langgraph_agent": [
        "[model] calls ['add']",
        "[tools] 9",
        "[model] 4 plus 5 is 8.",
        "[aligner] 4 plus 5 is 9.\n",
        "state: 4 messages (human, ai, tool, ai)",
        "[status: corrected]\ndraft:     4 plus 5 is 8.\ncorrected: 4 plus 5 is 9.",
    ],
    "agent_middleware": [
        "[ai] calls ['lookup_unit'] (untouched)",
        "[tool] There are 24 hours in a day.",
        "[ai] There are 24 hours in a day.",
        "[status: corrected]\n"
        "draft:     There are 12 hours in a day.\n"
        "corrected: There are 24 hours in a day.",
    ],
}


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # the shared trained_aligner_dir trains once per run (~40 s)
@pytest.mark.parametrize("name", NAMES)
def test_example_corrects_its_answer_with_the_demo_aligner(
    name: str, trained_aligner_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load(name).main(["--aligner", str(trained_aligner_dir), "--max-new-tokens", "32"]) == 0
    out = capsys.readouterr().out
    for snippet in EXPECTED[name]:
        assert snippet in out, f"{snippet!r} missing from:\n{out}"


@pytest.mark.parametrize("name", NAMES)
def test_example_without_an_aligner_says_how_to_make_one(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load(name).main(["--aligner", str(tmp_path / "missing" / "aligner")]) == 2
    assert "make demo" in capsys.readouterr().err
