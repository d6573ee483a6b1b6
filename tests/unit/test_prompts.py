"""The prompt contract shared by training and inference."""

from __future__ import annotations

import json

import pytest

from aligner_chain.aligner_config import AlignerConfig, load_aligner_config, save_aligner_config
from aligner_chain.prompts import (
    TEMPLATES,
    AlignerTemplate,
    fold_history,
    format_completion,
    format_prompt,
    get_template,
    parse_correction,
)


def test_aligner_v1_prompt_is_the_released_models_prompt():
    assert format_prompt("Q", "A") == (
        "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more "
        "helpful and harmless: Q | A ASSISTANT:"
    )


def test_named_templates_render_as_published():
    assert format_prompt("Q", "A", "aligner-general") == (
        "BEGINNING OF CONVERSATION: USER: ##Question: Q\n##Answer: A\n##Correction:  ASSISTANT:"
    )
    assert format_prompt("Q", "A", "aligner-2b") == "##Question: Q ##Answer: A ##Revision:"
    assert "more empathic and helpful: Q | A ASSISTANT:" in format_prompt("Q", "A", "empathy")
    assert {"aligner-v1", "aligner-general", "empathy"} <= set(TEMPLATES)


def test_every_named_template_ends_on_a_token_boundary():
    for text in TEMPLATES.values():
        assert text == text.rstrip()


def test_field_values_are_inserted_verbatim():
    answer = "Use {answer} and {question} and {0} literally </s> <|im_end|>"
    prompt = format_prompt("What is {x}?", answer)
    assert "What is {x}? | " + answer + " ASSISTANT:" in prompt


def test_custom_template():
    template = get_template("Q={question}\nA={answer}\nFixed:")
    assert template == AlignerTemplate("custom", "Q={question}\nA={answer}\nFixed:")
    assert format_prompt("q", "a", template.text) == "Q=q\nA=a\nFixed:"
    assert template.to_json() == template.text
    assert get_template("empathy").to_json() == "empathy"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Q={question} Fixed:", "missing {answer}"),
        ("A={answer} Fixed:", "missing {question}"),
        ("{question} {answer} {extra}", "unknown field"),
        ("{question} {answer} ", "ends with whitespace"),
        ("aligner-v9", "not a registered name"),
        ("{question {answer}", "not a valid format string"),
    ],
)
def test_bad_templates_are_value_errors_that_say_what_is_wrong(template: str, message: str):
    with pytest.raises(ValueError, match=message):
        get_template(template)


def test_non_string_template_is_a_type_error():
    with pytest.raises(TypeError, match="template must be a str"):
        get_template(3)  # type: ignore[arg-type]


def test_history_is_folded_into_the_question():
    history = [("user", "Hi"), ("assistant", "Hello!"), ("user", "I am Ann."), ("assistant", "Hi Ann.")]
    assert fold_history("What is my name?", history, 0) == "What is my name?"
    folded = fold_history("What is my name?", history, 2)
    assert (
        folded
        == "Conversation so far:\nUser: I am Ann.\nAssistant: Hi Ann.\nCurrent question: What is my name?"
    )
    prompt = format_prompt(fold_history("What is my name?", history, 2), "Bob.")
    assert folded in prompt
    assert fold_history("Q", [], 3) == "Q"
    with pytest.raises(ValueError, match="history_turns must be >= 0"):
        fold_history("Q", history, -1)


def test_completion_and_parse_are_inverse():
    assert format_completion("Fixed.") == " Fixed."
    assert parse_correction(format_completion("Fixed.") + "\n") == "Fixed."


def test_aligner_config_round_trip(tmp_path):
    path = save_aligner_config(tmp_path / "m", AlignerConfig("empathy", "base/id", {"seed": 3}))
    assert json.loads(path.read_text())["template"] == "empathy"
    loaded = load_aligner_config(tmp_path / "m")
    assert loaded == AlignerConfig("empathy", "base/id", {"seed": 3}, granularity="answer")
    assert loaded.resolved_template().name == "empathy"
    assert load_aligner_config(tmp_path / "nothing-here") is None


def test_aligner_config_refuses_bad_templates_and_files(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        save_aligner_config(tmp_path, AlignerConfig("{question} only:"))
    (tmp_path / "aligner_config.json").write_text('{"base_model": "x"}')
    with pytest.raises(ValueError, match="needs a 'template' field"):
        load_aligner_config(tmp_path)


def test_stream_aligner_template_is_sentence_level_and_renders_the_published_format():
    template = get_template("stream-aligner")
    assert template.granularity == "sentence"
    assert get_template("aligner-v1").granularity == "answer"
    assert format_prompt("Q?", "Second one.", "stream-aligner", prefix="First one.") == (
        "##Question: Q? | ##Answer_Prefix: First one. | "
        "##Answer_Last_Sentence: Second one. | ##Your_Revision:"
    )
    assert format_prompt("Q?", "First.", template, prefix="") == (
        "##Question: Q? | ##Answer_Prefix:  | ##Answer_Last_Sentence: First. | ##Your_Revision:"
    )


def test_a_template_kind_and_its_requests_must_match():
    with pytest.raises(ValueError, match="needs a prefix"):
        format_prompt("Q", "A whole answer.", "stream-aligner")
    with pytest.raises(ValueError, match="corrects whole answers"):
        format_prompt("Q", "A sentence.", "aligner-v1", prefix="before")


def test_custom_sentence_templates_are_validated_by_their_own_fields():
    custom = get_template("Q: {question}\nSo far: {prefix}\nNext: {sentence}\nRevised:")
    assert custom.granularity == "sentence" and custom.name == "custom"
    assert custom.format("q", "s", "p") == "Q: q\nSo far: p\nNext: s\nRevised:"
    with pytest.raises(ValueError, match="missing \\{prefix\\}"):
        get_template("{question} {sentence} Revised:")
    with pytest.raises(ValueError, match=r"unknown field.*sentence-level"):
        get_template("{question} {prefix} {sentence} {answer} Revised:")


def test_aligner_config_records_and_checks_the_granularity(tmp_path):
    path = save_aligner_config(tmp_path / "s", AlignerConfig("stream-aligner"))
    assert json.loads(path.read_text())["granularity"] == "sentence"
    assert load_aligner_config(tmp_path / "s").resolved_granularity() == "sentence"
    (tmp_path / "aligner_config.json").write_text('{"template": "aligner-v1", "granularity": "sentence"}')
    with pytest.raises(ValueError, match="granularity 'sentence' does not match template 'aligner-v1'"):
        load_aligner_config(tmp_path)
    with pytest.raises(ValueError, match="granularity must be one of"):
        AlignerConfig("aligner-v1", granularity="paragraph")  # type: ignore[arg-type]
