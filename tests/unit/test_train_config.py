"""TrainConfig validation, YAML recipes and how `aligner-chain train` flags override them (no training)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from aligner_chain import cli
from training.aligner import command as train_command
from training.aligner.config import DEFAULT_LR_FULL, DEFAULT_LR_LORA, TrainConfig

REQUIRED = ["--data", "d.jsonl", "--base-model", "base", "--output-dir", "out"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return parser.parse_args(list(argv))


def _config(*argv: str) -> TrainConfig:
    config: TrainConfig = train_command.build_config(_args(*argv))
    return config


def test_defaults_follow_the_issue() -> None:
    config = TrainConfig(data="d.jsonl", base_model="b", output_dir="o")
    assert (config.resolved_template.name, config.identity_fraction, config.epochs, config.max_length) == (
        "aligner-v1",
        0.1,
        3.0,
        2048,
    )
    assert (config.method, config.lora_r, config.lora_alpha, config.lora_target_modules) == (
        "lora",
        16,
        32,
        "all-linear",
    )
    assert config.resolved_learning_rate == DEFAULT_LR_LORA
    assert config.replace(full=True).resolved_learning_rate == DEFAULT_LR_FULL
    assert config.replace(full=True).method == "full" and config.replace(qlora=True).method == "qlora"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"max_length": -1}, "max_length"),
        ({"lora_r": 1.5}, "lora_r"),
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"max_steps": 0}, "max_steps"),
        ({"lr_scheduler_type": "zigzag"}, "lr_scheduler_type"),
        ({"identity_fraction": 1.5}, "identity_fraction"),
        ({"identity_fraction": -3}, "identity_fraction"),
        ({"identity_fraction": True}, "identity_fraction"),
        ({"full": True, "qlora": True}, "qlora"),
        ({"save_total_limit": 0}, "save_total_limit"),
        ({"columns": ["question"]}, "columns"),
        ({"data": ""}, "data"),
        ({"template": "no placeholders ASSISTANT:"}, "template"),
    ],
)
def test_bad_settings_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{"data": "d.jsonl", "base_model": "b", "output_dir": "o", **change})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["paper-full", "lora-2b", "lora-7b", "tiny-cpu"])
def test_every_shipped_recipe_builds_a_valid_config(name: str) -> None:
    settings = train_command.load_recipe(name)
    config = _config("--config", name, *REQUIRED)
    for key, value in settings.items():
        if key not in {"base_model"}:
            assert getattr(config, key) == value, key


def test_paper_recipe_is_the_published_setting() -> None:
    config = _config("--config", "paper-full", *REQUIRED)
    assert config.full and config.epochs == 3 and config.learning_rate == 2e-5
    assert config.lr_scheduler_type == "cosine" and config.warmup_ratio == 0.03 and config.max_length == 2048
    assert config.bf16 is True and config.batch_size * config.gradient_accumulation_steps * 8 == 256
    assert _config("--config", "lora-7b", *REQUIRED).method == "lora"


def test_flags_override_the_recipe_only_when_given(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "full: true\nepochs: 5\nlearning-rate: 1.0e-5\nbatch_size: 2\nbase_model: from-recipe\n"
    )
    config = _config("--config", str(recipe), "--data", "d", "--output-dir", "o", "--epochs", "1")
    assert (config.epochs, config.learning_rate, config.batch_size, config.full) == (1.0, 1e-5, 2, True)
    assert config.base_model == "from-recipe"
    assert _config("--config", str(recipe), *REQUIRED).base_model == "base"
    # --lora-r turns a full-fine-tuning recipe into LoRA; --no-bf16 overrides bf16: true.
    lora = _config("--config", "paper-full", *REQUIRED, "--lora-r", "8", "--no-bf16")
    assert (lora.full, lora.lora_r, lora.bf16) == (False, 8, False)
    # Flags not given keep the dataclass defaults.
    plain = _config(*REQUIRED)
    assert plain == TrainConfig(data="d.jsonl", base_model="base", output_dir="out")


def test_unknown_recipe_key_is_named(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\nlearning_rat: 1.0e-4\n")
    with pytest.raises(
        ValueError, match=r"unknown key 'learning_rat'.*r\.yaml|r\.yaml.*unknown key 'learning_rat'"
    ):
        train_command.load_recipe(str(recipe))
    recipe.write_text("- epochs\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        train_command.load_recipe(str(recipe))
    recipe.write_text("epochs: [1\n")
    with pytest.raises(ValueError, match="YAML"):
        train_command.load_recipe(str(recipe))
    with pytest.raises(ValueError, match=r"not a shipped recipe.*paper-full"):
        train_command.load_recipe("no-such-recipe")


def test_identity_fraction_is_a_share_or_a_row_count() -> None:
    assert _config(*REQUIRED, "--identity-fraction", "0.25").identity_fraction == 0.25
    assert _config(*REQUIRED, "--identity-fraction", "1.0").identity_fraction == 1.0
    count = _config(*REQUIRED, "--identity-fraction", "500").identity_fraction
    assert count == 500 and isinstance(count, int)
    assert _config(*REQUIRED, "--identity-fraction", "0").identity_fraction == 0


def test_column_map_and_target_modules() -> None:
    config = _config(*REQUIRED, "--column-map", "question=prompt, correction=revision")
    assert config.columns == {"question": "prompt", "correction": "revision"}
    assert _config(*REQUIRED, "--lora-target-modules", "q_proj,v_proj").lora_target_modules == [
        "q_proj",
        "v_proj",
    ]
    with pytest.raises(ValueError, match="FIELD=COLUMN"):
        _config(*REQUIRED, "--column-map", "prompt")


def test_cli_usage_errors_return_2(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert cli.main(["train", "--data", "d.jsonl"]) == 2
    assert "missing --base-model, --output-dir" in capsys.readouterr().err
    assert cli.main(["train", *REQUIRED, "--full", "--lora-r", "8"]) == 2  # mutually exclusive
    assert "not allowed with" in capsys.readouterr().err
    assert cli.main(["train", *REQUIRED, "--batch-size", "0"]) == 2
    assert "batch_size must be a positive integer" in capsys.readouterr().err
    missing = tmp_path / "missing.jsonl"
    assert (
        cli.main(["train", "--data", str(missing), "--base-model", "b", "--output-dir", str(tmp_path)]) == 2
    )
    assert "missing.jsonl" in capsys.readouterr().err


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ["--data", "--base-model", "--output-dir", "--template", "--identity-fraction", "--epochs"]:
        assert flag in out
    for flag in ["--learning-rate", "--batch-size", "--max-length", "--lora-r", "--full", "--merge"]:
        assert flag in out
    assert "--resume" in out and "--config" in out and "accelerate launch" in out


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_qlora_without_bitsandbytes_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aligner_chain.cli import main

    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "q", "answer": "a", "correction": "c"}\n')
    command = ["train", "--data", str(data), "--base-model", str(tmp_path), "--qlora"]
    assert main([*command, "--output-dir", str(tmp_path / "out")]) == 2
    assert "pip install bitsandbytes" in capsys.readouterr().err
