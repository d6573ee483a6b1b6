"""A model that cannot be had is said at once, clearly: missing paths, empty or pickle-only
directories, corrupt safetensors, and hub ids with no cache and no hub (probed once, not retried)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from aligner_chain.backends import availability
from aligner_chain.backends.availability import check_source, hub_unreachable, is_hub_id
from aligner_chain.backends.local_model import LocalModel
from aligner_chain.errors import AlignerError


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty Hugging Face cache and a hub endpoint that refuses connections."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(availability, "_probe", None)


def test_hub_ids_and_paths_are_told_apart(tmp_path: Path) -> None:
    assert is_hub_id("aligner/aligner-7b-v1.0") and is_hub_id("gpt2")
    assert not is_hub_id("./runs/aligner") and not is_hub_id("/models/x") and not is_hub_id("a/b/c")
    (tmp_path / "org").mkdir()
    assert not is_hub_id(str(tmp_path / "org"))


def test_missing_path_says_it_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(AlignerError, match=r"model=.*no-such-dir' does not exist"):
        check_source(str(tmp_path / "no-such-dir"))
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(AlignerError, match="is a file; pass the directory"):
        check_source(str(tmp_path / "weights.safetensors"))


def test_a_directory_without_a_model_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(AlignerError, match=r"holds no model: missing config.json, \*.safetensors"):
        check_source(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(AlignerError, match=r"missing \*.safetensors; it holds pytorch_model.bin \(pickle\)"):
        check_source(str(tmp_path), field="adapter")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x"}))
    with pytest.raises(AlignerError, match=r"adapter=.*missing \*.safetensors"):
        check_source(str(adapter), field="adapter")


def test_a_corrupt_safetensors_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    save_file({"w": torch.zeros(4, 4)}, str(tmp_path / "model.safetensors"))
    check_source(str(tmp_path))  # whole: fine
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 3])  # cut short
    with pytest.raises(AlignerError, match=r"model.safetensors is not a readable safetensors file"):
        check_source(str(tmp_path))


@pytest.mark.usefixtures("no_hub")
def test_an_unreachable_hub_is_reported_at_once_naming_the_option() -> None:
    start = time.monotonic()
    with pytest.raises(
        AlignerError, match=r"model='some-org/some-aligner'.*hub cannot be reached.*ALIGNER_MODEL"
    ):
        check_source("some-org/some-aligner")
    assert time.monotonic() - start < 5.0, "one quick probe, no download retries"
    assert hub_unreachable() is not None and availability._probe is not None


@pytest.mark.usefixtures("no_hub")
def test_a_failed_load_is_remembered_for_a_cool_down(monkeypatch: pytest.MonkeyPatch) -> None:
    model = LocalModel("some-org/some-aligner", device="cpu")
    model.load_retry_after_s = 1.0
    probes: list[str] = []
    real = availability._ask
    monkeypatch.setattr(availability, "_ask", lambda endpoint: probes.append(endpoint) or real(endpoint))
    monkeypatch.setattr(availability, "_REMEMBER_S", 0.0)  # every check would probe again
    with pytest.raises(AlignerError, match="hub cannot be reached") as first:
        model.load()
    start = time.monotonic()
    with pytest.raises(AlignerError, match="not tried again for another") as second:
        model.load()
    assert time.monotonic() - start < 0.5 and len(probes) == 1
    assert str(first.value) in str(second.value)
    time.sleep(1.1)
    with pytest.raises(AlignerError, match="hub cannot be reached") as third:
        model.load()
    assert "not tried again" not in str(third.value)
    assert len(probes) == 2, "after the cool-down the next call tries again"
