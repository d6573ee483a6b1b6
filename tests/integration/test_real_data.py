"""The training data path on 805 real Aligner-2B corrections (shared/data, used by path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aligner_chain.prompts import format_prompt
from aligner_chain.tokenization import encode_prompt

REAL_DATA = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "alpacaeval_aligner2b_claude3opus.jsonl"
)

pytestmark = pytest.mark.skipif(not REAL_DATA.is_file(), reason=f"real data not found at {REAL_DATA}")


@pytest.fixture(scope="module")
def real_rows():
    from training.aligner.data import load_correction_data

    return load_correction_data(REAL_DATA)


def test_all_real_rows_load(real_rows):
    assert len(real_rows.rows) == 805
    assert real_rows.dropped == {"empty": 0, "non_string": 0}
    unchanged = sum(r.answer == r.correction for r in real_rows.rows)
    assert 0 < unchanged < 805 // 5  # a real Aligner leaves a minority of answers as they were


def test_real_rows_tokenize_with_the_loss_on_the_correction_only(real_rows):
    from training.aligner.data import IGNORE_INDEX, identity_rows, tokenize_rows
    from training.demo.tiny_model import build_tiny_tokenizer

    rows = real_rows.rows[:120]
    tokenizer = build_tiny_tokenizer([format_prompt(r.question, r.answer) + " " + r.correction for r in rows])
    features = tokenize_rows(rows, tokenizer, template="aligner-2b", max_length=4096)
    assert features.dropped_too_long == 0 and len(features) == len(rows)
    for row, ids, labels in zip(rows, features.input_ids, features.labels, strict=True):
        prompt_len = len(encode_prompt(tokenizer, format_prompt(row.question, row.answer, "aligner-2b")))
        assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
        assert labels[prompt_len:] == ids[prompt_len:]
        assert ids[-1] == tokenizer.eos_token_id
    short = tokenize_rows(rows, tokenizer, template="aligner-2b", max_length=256)
    assert short.dropped_too_long > 0  # real answers are long: dropped and counted, never truncated
    assert all(len(ids) <= 256 for ids in short.input_ids)

    warmup = identity_rows(real_rows.rows, 0.1, seed=0)
    assert len(warmup) == 80
    assert all(r.correction == r.answer for r in warmup)
