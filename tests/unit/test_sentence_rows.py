"""Sentence-level training rows: aligning answers with corrections, explicit rows, the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aligner_chain.backends import CallableBackend
from aligner_chain.prompts import get_template
from aligner_chain.sentence_loop import SentenceLoop
from training.aligner.config import TrainConfig
from training.aligner.data import CorrectionRow, tokenize_rows
from training.aligner.sentences import (
    SentenceRow,
    align_sentences,
    identity_sentence_rows,
    load_sentence_data,
    sentence_rows,
)
from training.demo.synthetic import HEDGE, make_multi_sentence_task
from training.demo.tiny_model import build_tiny_tokenizer


@pytest.mark.parametrize(
    ("answer", "correction", "revisions", "counts"),
    [
        ("A one. B two. C three.", "A one. B two. C three.", ["A one.", "B two.", "C three."], (3, 0, 0, 0)),
        ("A one. B bad. C three.", "A one. B two. C three.", ["A one.", "B two.", "C three."], (2, 1, 0, 0)),
        ("A one. Hedge. C three.", "A one. C three.", ["A one.", "", "C three."], (2, 0, 1, 0)),
        ("A one. C three.", "A one. New. C three.", ["A one. New.", "C three."], (2, 0, 0, 1)),
        ("A one. C three.", "Start. A one. C three.", ["Start. A one.", "C three."], (2, 0, 0, 1)),
        ("A one. B bad.", "A one. B two. Also this.", ["A one.", "B two. Also this."], (1, 1, 0, 1)),
        ("A one. B bad. X bad.", "A one. B two.", ["A one.", "B two.", ""], (1, 1, 1, 0)),
        ("A one. Hedge. B bad.", "A one. B two.", ["A one.", "", "B two."], (1, 1, 1, 0)),
        ("Hedge. B bad.", "New start. B two.", ["New start.", "B two."], (0, 2, 0, 0)),
    ],
)
def test_sentences_are_kept_rewritten_dropped_or_inserted(answer, correction, revisions, counts):
    got, stats = align_sentences(answer, correction)
    assert got == revisions
    assert (stats["kept"], stats["rewritten"], stats["dropped"], stats["inserted"]) == counts


def test_rows_carry_the_prefix_inference_will_show() -> None:
    row = CorrectionRow(
        "q", "- A one. Hedge.\n- B bad.\n```\ncode.\n```\nC three.", "- A one.\n- B two.\nC three."
    )
    rows, _ = sentence_rows(row)
    assert [(r.prefix, r.sentence, r.revision) for r in rows] == [
        ("", "A one.", "A one."),
        ("- A one.", "Hedge.", ""),
        ("- A one.", "B bad.", "B two."),
        ("- A one.\n- B two.\n```\ncode.\n```", "C three.", "C three."),
    ]
    # The same loop at inference, fed these revisions, sees exactly these prefixes.
    revisions = {r.sentence: r.revision for r in rows}
    seen: list[str] = []

    def revise(question: str, sentence: str, prefix: str) -> str:
        seen.append(prefix)
        return revisions[sentence]

    loop = SentenceLoop("q")
    backend = CallableBackend(revise, granularity="sentence")
    for unit in loop.feed(row.answer) + loop.flush():
        loop.correct(backend, unit)
    assert seen == [r.prefix for r in rows]
    assert loop.outcome().text == "- A one.\n- B two.\n```\ncode.\n```\nC three."


def test_rows_from_question_answer_correction_data(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    lines = [
        {"prompt": "Q1", "answer": "A one. B bad.", "correction": "A one. B two."},
        {"prompt": "Q2", "answer": "```\nno prose\n```", "correction": "Fixed."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    data = load_sentence_data(path, columns={"question": "prompt"})
    assert data.rows == [
        SentenceRow("Q1", "", "A one.", "A one."),
        SentenceRow("Q1", "A one.", "B bad.", "B two."),
    ]
    assert data.counts == {"kept": 1, "rewritten": 1, "dropped": 0, "inserted": 0, "unaligned": 1}


def test_explicit_sentence_rows_allow_an_empty_prefix_and_revision(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    lines = [
        {"question": "Q", "prefix": "", "sentence": "A one.", "rev": "A one."},
        {"question": "Q", "prefix": "A one.", "sentence": "Hedge.", "rev": ""},
        {"question": "Q", "prefix": "A one.", "sentence": " ", "rev": "x"},
        {"question": "Q", "prefix": None, "sentence": "B.", "rev": "B."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    data = load_sentence_data(path, columns={"revision": "rev"})
    assert data.rows == [SentenceRow("Q", "", "A one.", "A one."), SentenceRow("Q", "A one.", "Hedge.", "")]
    assert data.counts == {"empty": 1, "non_string": 1}
    with pytest.raises(ValueError, match="not fields"):
        load_sentence_data(path, columns={"answr": "x"})
    (tmp_path / "partial.jsonl").write_text(
        json.dumps({"question": "Q", "sentence": "A.", "revision": "A."}) + "\n"
    )
    with pytest.raises(ValueError, match=r"missing \['prefix'\]"):
        load_sentence_data(tmp_path / "partial.jsonl")


def test_identity_rows_copy_the_sentence() -> None:
    rows = [SentenceRow("Q", "p", f"S{i}.", "") for i in range(10)]
    warm = identity_sentence_rows(rows, 0.3, seed=1)
    assert len(warm) == 3 and all(r.revision == r.sentence for r in warm)
    assert warm == identity_sentence_rows(rows, 0.3, seed=1)


def test_sentence_rows_tokenize_in_a_sentence_template() -> None:
    rows = [SentenceRow("Q?", "A one.", "B bad.", "B two."), SentenceRow("Q?", "", "Hedge.", "")]
    tokenizer = build_tiny_tokenizer(["Q? A one. B bad. B two. Hedge. ##Question ##Answer_Prefix"] * 5)
    features = tokenize_rows(rows, tokenizer, template="stream-aligner")
    first = tokenizer.decode(features.input_ids[0])
    assert "##Answer_Prefix: A one. | ##Answer_Last_Sentence: B bad. | ##Your_Revision: B two.</s>" in first
    dropped = [t for t, label in zip(features.input_ids[1], features.labels[1], strict=True) if label != -100]
    assert tokenizer.decode(dropped) == " </s>"  # an empty revision: the space, then EOS
    with pytest.raises(ValueError, match="needs a prefix"):
        tokenize_rows([CorrectionRow("Q", "A.", "B.")], tokenizer, template="stream-aligner")


def test_the_config_pairs_the_granularity_with_its_template() -> None:
    config = TrainConfig(data="d", base_model="b", output_dir="o", granularity="sentence")
    assert config.resolved_template == get_template("stream-aligner")
    assert TrainConfig(data="d", base_model="b", output_dir="o").resolved_template.name == "aligner-v1"
    with pytest.raises(ValueError, match="corrects whole answers but granularity is 'sentence'"):
        TrainConfig(data="d", base_model="b", output_dir="o", granularity="sentence", template="aligner-v1")
    with pytest.raises(ValueError, match="granularity must be one of"):
        TrainConfig(data="d", base_model="b", output_dir="o", granularity="paragraph")  # type: ignore[arg-type]


def test_the_multi_sentence_task_fixes_only_the_wrong_sentences() -> None:
    task = make_multi_sentence_task(n_train=200, n_held_out=30)
    assert not {(r.question, r.answer) for r in task.train} & {(r.question, r.answer) for r in task.held_out}
    for row in task.train + task.held_out:
        _, counts = align_sentences(row.answer, row.correction)
        assert counts["inserted"] == 0
        assert counts["dropped"] == row.answer.count(HEDGE)
        assert 2 <= counts["kept"] + counts["rewritten"] <= 3
    shares = [align_sentences(r.answer, r.correction)[1]["rewritten"] > 0 for r in task.train]
    assert 0.5 < sum(shares) / len(shares) < 0.9  # most answers have a wrong sentence, not all
