"""Sentence-level training rows: ``(question, prefix, sentence, revision)``.

A sentence-level Aligner reads the question, the corrected answer so far (``prefix``) and the
upstream's next sentence, and writes that sentence's revision (``""`` drops it). Rows come either
explicitly (columns ``question``, ``prefix``, ``sentence``, ``revision``; ``prefix`` and ``revision``
may be empty) or from the usual question/answer/correction rows by aligning the answer's sentences
with the correction's:

1. Both texts are cut into units by :func:`aligner_chain.segmentation.segment` (the segmenter
   inference uses); the prose units (sentences, list items' sentences, headings) take part, code
   blocks and tables pass through as at inference.
2. ``difflib.SequenceMatcher`` matches the two lists of sentences (whole sentences are the items,
   compared exactly). Its opcodes name what happened to each answer sentence:

   * ``equal``: **kept**, the revision is the sentence itself;
   * ``replace``/``delete``/``insert``: within the block, answer and correction sentences are paired
     in order so that the paired ones are as similar as possible (character ``ratio``, summed): a
     pair is **rewritten**; an answer sentence left unpaired is **dropped** (revision ``""``); a
     correction sentence left unpaired is **inserted**: it joins the revision of the answer sentence
     before it (or, at the very start, of the first one), since a revision may hold several
     sentences.

3. The rows are built by running the corrections through :class:`~aligner_chain.sentence_loop.SentenceLoop`
   as inference would, so each row's ``prefix`` is exactly what the Aligner will see: the corrected
   answer so far, with the answer's markers and whitespace.

A row pair whose answer has no prose sentence cannot be aligned and is counted as ``unaligned``.
"""

from __future__ import annotations

import difflib
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aligner_chain.backends.base import CorrectionResult
from aligner_chain.prompts import AlignerTemplate
from aligner_chain.segmentation import segment
from aligner_chain.sentence_loop import SentenceLoop
from training.aligner.data import FIELDS, CorrectionRow, load_correction_data, resolve_identity_count
from training.common.records import read_located_records

__all__ = [
    "SENTENCE_FIELDS",
    "SentenceData",
    "SentenceRow",
    "align_sentences",
    "identity_sentence_rows",
    "load_sentence_data",
    "sentence_rows",
]

logger = logging.getLogger(__name__)

SENTENCE_FIELDS = ("question", "prefix", "sentence", "revision")
_OUTCOMES = ("kept", "rewritten", "dropped", "inserted")


@dataclass(frozen=True)
class SentenceRow:
    """One sentence-level example: after ``prefix``, the Aligner turns ``sentence`` into ``revision``."""

    question: str
    prefix: str
    sentence: str
    revision: str

    def render(self, template: AlignerTemplate) -> tuple[str, str]:
        """``(prompt, target)`` in a sentence-level template."""
        return template.format(self.question, self.sentence, self.prefix), self.revision


@dataclass(frozen=True)
class SentenceData:
    """Sentence rows from ``source``; ``counts`` says how the answers' sentences were aligned
    (``kept``, ``rewritten``, ``dropped``, ``inserted``, ``unaligned`` answers) or, for explicit rows,
    how many were dropped and why."""

    source: str
    rows: list[SentenceRow]
    counts: dict[str, int] = field(default_factory=dict)


def align_sentences(answer: str, correction: str) -> tuple[list[str], dict[str, int]]:
    """The revision of each prose sentence of ``answer`` (see the module docstring) and how many
    sentences were kept, rewritten, dropped and inserted."""
    sentences = [u.body for u in segment(answer) if u.is_prose]
    targets = [u.body for u in segment(correction) if u.is_prose]
    revisions: list[list[str]] = [[] for _ in sentences]
    counts = dict.fromkeys(_OUTCOMES, 0)
    leading: list[str] = []  # inserted before the first answer sentence
    matcher = difflib.SequenceMatcher(None, sentences, targets, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                revisions[i].append(targets[j])
            counts["kept"] += i2 - i1
            continue
        before = i1 - 1  # the answer sentence an insertion joins
        for a, c in _pairs(sentences[i1:i2], targets[j1:j2]):
            if a is not None and c is not None:
                revisions[i1 + a].append(targets[j1 + c])
                counts["rewritten"] += 1
                before = i1 + a
            elif a is not None:
                counts["dropped"] += 1
                before = i1 + a
            elif c is not None:
                (revisions[before] if before >= 0 else leading).append(targets[j1 + c])
                counts["inserted"] += 1
    if leading and revisions:
        revisions[0][:0] = leading
    return [" ".join(r) for r in revisions], counts


def _pairs(old: list[str], new: list[str]) -> list[tuple[int | None, int | None]]:
    """The in-order pairing of two blocks of sentences with the most total similarity
    (``difflib.SequenceMatcher.ratio``): ``(i, j)`` rewritten, ``(i, None)`` dropped, ``(None, j)``
    inserted."""
    n, m = len(old), len(new)
    best = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            ratio = difflib.SequenceMatcher(None, old[i], new[j], autojunk=False).ratio()
            best[i][j] = max(ratio + best[i + 1][j + 1], best[i + 1][j], best[i][j + 1])
    path: list[tuple[int | None, int | None]] = []
    i = j = 0
    while i < n or j < m:
        if i < n and j < m:
            ratio = difflib.SequenceMatcher(None, old[i], new[j], autojunk=False).ratio()
            if best[i][j] == ratio + best[i + 1][j + 1]:
                path.append((i, j))
                i, j = i + 1, j + 1
                continue
            if best[i][j] == best[i + 1][j]:
                path.append((i, None))
                i += 1
                continue
            path.append((None, j))
            j += 1
        elif i < n:
            path.append((i, None))
            i += 1
        else:
            path.append((None, j))
            j += 1
    return path


def sentence_rows(row: CorrectionRow) -> tuple[list[SentenceRow], dict[str, int]]:
    """The sentence rows of one question/answer/correction row, prefixes as inference builds them."""
    revisions, counts = align_sentences(row.answer, row.correction)
    loop = SentenceLoop(row.question)
    out: list[SentenceRow] = []
    pending = iter(revisions)
    for unit in segment(row.answer):
        request = loop.request(unit)
        if request is None:
            loop.settle(unit, None)
            continue
        revision = next(pending)
        out.append(SentenceRow(row.question, request.prefix or "", request.answer, revision))
        loop.settle(unit, CorrectionResult.ok(revision))
    return out, counts


def identity_sentence_rows(
    rows: Sequence[SentenceRow], identity_fraction: float | int = 0.1, *, seed: int = 0
) -> list[SentenceRow]:
    """The warm-up set at sentence level: a seeded sample of ``rows`` with ``revision = sentence``."""
    count = resolve_identity_count(identity_fraction, len(rows))
    picked = random.Random(seed).sample(range(len(rows)), count)
    return [
        SentenceRow(rows[i].question, rows[i].prefix, rows[i].sentence, rows[i].sentence)
        for i in sorted(picked)
    ]


def load_sentence_data(
    source: str | Path, *, columns: Mapping[str, str] | None = None, split: str = "train"
) -> SentenceData:
    """Sentence rows from ``source``: explicit rows when it has ``sentence`` and ``revision`` columns
    (after ``columns``), else question/answer/correction rows aligned sentence by sentence.

    Raises:
        ValueError: unreadable source, missing columns, a mapping key that is no field, or no rows.
    """
    source = str(source)
    mapping = dict(columns or {})
    unknown = sorted(set(mapping) - set(FIELDS) - set(SENTENCE_FIELDS))
    if unknown:
        raise ValueError(
            f"column mapping key(s) {unknown} are not fields; map {list(FIELDS)} (whole answers) or "
            f"{list(SENTENCE_FIELDS)} (sentence rows) to your columns"
        )
    located = read_located_records(source, split, what="training data")
    found = {k for _, record in located if isinstance(record, Mapping) for k in record}
    wanted = {f: mapping.get(f, f) for f in SENTENCE_FIELDS}
    if wanted["sentence"] in found and wanted["revision"] in found:
        return _explicit_rows(source, located, wanted)
    whole = {k: v for k, v in mapping.items() if k in FIELDS}
    data = load_correction_data(source, columns=whole, split=split)
    rows: list[SentenceRow] = []
    counts = dict.fromkeys((*_OUTCOMES, "unaligned"), 0)
    for row in data.rows:
        built, aligned = sentence_rows(row)
        if not built:
            counts["unaligned"] += 1
            continue
        rows.extend(built)
        for key, value in aligned.items():
            counts[key] += value
    logger.info(
        "%s: %d answers aligned into %d sentence rows (%s)",
        source,
        len(data.rows),
        len(rows),
        ", ".join(f"{k} {v}" for k, v in counts.items()),
    )
    if not rows:
        raise ValueError(f"training data {source}: no answer has a sentence to align; nothing to train on")
    return SentenceData(source, rows, counts)


def _explicit_rows(source: str, located: list[tuple[str, object]], wanted: dict[str, str]) -> SentenceData:
    missing = [c for c in wanted.values() if not any(isinstance(r, Mapping) and c in r for _, r in located)]
    if missing:
        raise ValueError(
            f"training data {source}: sentence rows need columns {list(wanted.values())}, missing {missing}; "
            "rename them or pass --column-map prefix=...,sentence=...,revision=..."
        )
    rows: list[SentenceRow] = []
    counts = {"empty": 0, "non_string": 0}
    for _, record in located:
        values = [record.get(c) if isinstance(record, Mapping) else None for c in wanted.values()]
        if not all(isinstance(v, str) for v in values):
            counts["non_string"] += 1
        elif not (values[0].strip() and values[2].strip()):  # type: ignore[union-attr]
            counts["empty"] += 1  # a question and a sentence are needed; prefix and revision may be ""
        else:
            rows.append(SentenceRow(*values))  # type: ignore[arg-type]
    if counts["empty"] or counts["non_string"]:
        logger.warning(
            "%s: dropped %d rows with an empty question or sentence, %d non-string", source, *counts.values()
        )
    if not rows:
        raise ValueError(
            f"training data {source}: every sentence row was dropped ({counts}); nothing to train on"
        )
    return SentenceData(source, rows, counts)
