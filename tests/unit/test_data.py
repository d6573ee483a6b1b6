"""training.aligner.data: every format, bad-data errors, dropped rows, the warm-up set, tokenized rows."""

from __future__ import annotations

import csv
import json
import logging

import pytest

from aligner_chain.prompts import format_prompt
from aligner_chain.tokenization import encode_prompt
from training.aligner.data import (
    IGNORE_INDEX,
    CorrectionRow,
    identity_rows,
    load_correction_data,
    resolve_identity_count,
    to_dataset,
    tokenize_rows,
)

ROWS = [
    {"question": "What is 1 plus 1?", "answer": "It is 3.", "correction": "It is 2."},
    {"question": "Capital of Peru?", "answer": "Quito.", "correction": "Lima."},
    {"question": "Days in a week?", "answer": "7.", "correction": "7."},
]
EXPECTED = [CorrectionRow(**r) for r in ROWS]


def _write(path, rows, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    elif kind == "json":
        path.write_text(json.dumps(rows))
    else:
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv"])
def test_loads_jsonl_json_and_csv(tmp_path, kind):
    data = load_correction_data(_write(tmp_path / f"d.{kind}", ROWS, kind))
    assert data.rows == EXPECTED
    assert data.dropped == {"empty": 0, "non_string": 0}


def test_loads_a_save_to_disk_directory_and_its_split(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "flat"))
    assert load_correction_data(tmp_path / "flat").rows == EXPECTED
    DatasetDict({"train": Dataset.from_list(ROWS[:1]), "test": Dataset.from_list(ROWS[1:])}).save_to_disk(
        str(tmp_path / "dict")
    )
    assert load_correction_data(tmp_path / "dict", split="test").rows == EXPECTED[1:]
    with pytest.raises(ValueError, match=r"split 'dev' not found; splits are \['test', 'train'\]"):
        load_correction_data(tmp_path / "dict", split="dev")


def test_column_mapping(tmp_path):
    renamed = [{"prompt": r["question"], "response": r["answer"], "revision": r["correction"]} for r in ROWS]
    path = _write(tmp_path / "d.jsonl", renamed, "jsonl")
    columns = {"question": "prompt", "answer": "response", "correction": "revision"}
    assert load_correction_data(path, columns=columns).rows == EXPECTED
    with pytest.raises(ValueError, match="column mapping key 'revision'"):
        load_correction_data(path, columns={"revision": "correction"})


def test_missing_columns_name_the_file_and_the_columns_found(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [{"prompt": "Q", "answer": "A", "revision": "C"}], "jsonl")
    with pytest.raises(ValueError) as err:
        load_correction_data(path)
    message = str(err.value)
    assert str(path) in message
    assert "missing column(s) ['question', 'correction']" in message
    assert "columns found: ['prompt', 'answer', 'revision']" in message


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("broken.jsonl", '{"question": "Q"\n', "cannot read training data .*broken.jsonl"),
        ("obj.json", '{"question": "Q"}', "must hold a list of objects"),
        ("data.txt", "question,answer", "unsupported file type '.txt'"),
        ("empty.jsonl", "\n", "no rows"),
    ],
)
def test_unreadable_files_are_value_errors_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_correction_data(path)
    assert name in str(err.value)
    with pytest.raises(ValueError, match="no such file"):
        load_correction_data(tmp_path / "absent.jsonl")


def test_empty_and_non_string_rows_are_dropped_and_counted(tmp_path, caplog):
    bad = [
        {"question": "Q", "answer": "", "correction": "C"},
        {"question": "Q", "answer": "A", "correction": "   "},
        {"question": "Q", "answer": 3, "correction": "C"},
        {"question": None, "answer": "A", "correction": "C"},
        {"question": "Q", "answer": "A"},
        ["not", "an", "object"],
    ]
    path = _write(tmp_path / "mixed.jsonl", ROWS + bad, "jsonl")
    with caplog.at_level(logging.INFO, logger="training.aligner.data"):
        data = load_correction_data(path)
    assert data.rows == EXPECTED
    assert data.dropped == {"empty": 2, "non_string": 4}
    assert (
        "loaded 3 rows" in caplog.text and "dropped 2 with an empty field, 4 with a non-string" in caplog.text
    )
    only_bad = _write(tmp_path / "bad.jsonl", [ROWS[0] | {"answer": ""}], "jsonl")
    with pytest.raises(ValueError, match="every row was dropped"):
        load_correction_data(only_bad)


def test_identity_rows_are_a_seeded_share_with_correction_equal_to_answer():
    rows = [CorrectionRow(f"Q{i}", f"A{i}", f"C{i}") for i in range(50)]
    warmup = identity_rows(rows, 0.2, seed=1)
    assert len(warmup) == 10
    assert all(
        r.correction == r.answer and r in {CorrectionRow(x.question, x.answer, x.answer) for x in rows}
        for r in warmup
    )
    assert warmup == identity_rows(rows, 0.2, seed=1) != identity_rows(rows, 0.2, seed=2)
    assert len(identity_rows(rows, 7)) == 7 and identity_rows(rows, 0.0) == []
    assert len(identity_rows(rows, 1.0)) == 50
    assert resolve_identity_count(0.1, 805) == 80 and resolve_identity_count(12, 805) == 12
    with pytest.raises(ValueError, match=r"outside \[0, 50\]"):
        identity_rows(rows, 51)
    with pytest.raises(TypeError, match="not a bool"):
        resolve_identity_count(True, 5)


def test_tokenized_rows_mask_the_prompt_end_with_eos_and_drop_long_rows():
    from training.demo.tiny_model import build_tiny_tokenizer

    rows = [*EXPECTED, CorrectionRow("long " * 40, "answer", "fixed")]
    tokenizer = build_tiny_tokenizer([format_prompt(r.question, r.answer) + " " + r.correction for r in rows])
    features = tokenize_rows(rows, tokenizer, max_length=64)
    assert len(features) == 3 and features.dropped_too_long == 1
    for row, ids, labels in zip(EXPECTED, features.input_ids, features.labels, strict=True):
        prompt_len = len(encode_prompt(tokenizer, format_prompt(row.question, row.answer)))
        assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
        assert labels[prompt_len:] == ids[prompt_len:]
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[prompt_len:], skip_special_tokens=True) == " " + row.correction
    dataset = to_dataset(features)
    assert dataset.column_names == ["input_ids", "labels"] and len(dataset) == 3
