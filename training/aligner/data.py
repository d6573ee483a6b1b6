"""Question/answer/correction data for Aligner training.

Loading (JSON list, JSONL, CSV, a ``save_to_disk`` directory or a hub dataset id), the identity
warm-up set, and tokenized prompt + completion rows with the loss on the completion only. Prompts are
rendered by the template (:mod:`aligner_chain.prompts`) and encoded by
:mod:`aligner_chain.tokenization`, exactly as inference does. Sentence-level rows: :mod:`.sentences`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aligner_chain.prompts import AlignerTemplate, format_completion, get_template
from aligner_chain.tokenization import encode_completion, encode_prompt
from training.common.records import read_located_records

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "FIELDS",
    "IGNORE_INDEX",
    "CorrectionData",
    "CorrectionRow",
    "TokenizedRows",
    "TrainingRow",
    "identity_rows",
    "load_correction_data",
    "resolve_identity_count",
    "to_dataset",
    "tokenize_rows",
]

logger = logging.getLogger(__name__)

FIELDS = ("question", "answer", "correction")
_SHOWN_DROPS = 5  # locations listed per reason
IGNORE_INDEX = -100


@dataclass(frozen=True)
class CorrectionRow:
    """One training example: the Aligner reads ``question`` and ``answer`` and writes ``correction``."""

    question: str
    answer: str
    correction: str

    def render(self, template: AlignerTemplate) -> tuple[str, str]:
        """``(prompt, target)`` in a whole-answer template."""
        return template.format(self.question, self.answer), self.correction


class TrainingRow(Protocol):
    """A row the trainer tokenizes: a whole-answer :class:`CorrectionRow` or a sentence-level
    :class:`~training.aligner.sentences.SentenceRow`."""

    def render(self, template: AlignerTemplate) -> tuple[str, str]: ...


@dataclass(frozen=True)
class CorrectionData:
    """Rows loaded from ``source``, how many were dropped by reason, and where the first few were."""

    source: str
    rows: list[CorrectionRow]
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_at: dict[str, list[str]] = field(default_factory=dict)

    def dropped_summary(self) -> str | None:
        """Which rows were dropped and why, for the user (``None`` when none were)."""
        total = sum(self.dropped.values())
        if not total:
            return None
        parts = []
        for reason, count in self.dropped.items():
            if count:
                shown = self.dropped_at.get(reason, [])
                more = ", ..." if count > len(shown) else ""
                parts.append(f"{count} {reason} ({', '.join(shown)}{more})")
        return f"{self.source}: dropped {total} row(s) with an empty or non-string field: " + "; ".join(parts)


@dataclass(frozen=True)
class TokenizedRows:
    """Causal-LM features (``input_ids``, ``labels``) and how many rows were dropped as too long."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    dropped_too_long: int = 0
    boundary_mismatches: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


def _resolve_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    mapping = {f: f for f in FIELDS}
    for key, value in (columns or {}).items():
        if key not in FIELDS:
            raise ValueError(
                f"column mapping key {key!r} is not one of {list(FIELDS)}; map each field to your column "
                "name, e.g. {'correction': 'revision'}"
            )
        if not isinstance(value, str) or not value:
            raise ValueError(f"column mapping for {key!r} must be a non-empty column name, got {value!r}")
        mapping[key] = value
    return mapping


def load_correction_data(
    source: str | Path, *, columns: Mapping[str, str] | None = None, split: str = "train"
) -> CorrectionData:
    """Load question/answer/correction rows.

    Args:
        source: a ``.json`` (list of objects), ``.jsonl`` or ``.csv`` file, a directory written by
            ``datasets.Dataset.save_to_disk``, or a hub dataset id (``datasets.load_dataset``).
        columns: maps ``question``/``answer``/``correction`` to other column names.
        split: the split to use for hub datasets and saved ``DatasetDict`` directories.

    Rows with an empty or non-string field are dropped and counted (logged and returned).

    Raises:
        ValueError: unreadable source, or required columns missing (the message names the file and
            the columns found).
    """
    source = str(source)
    mapping = _resolve_columns(columns)
    located = read_located_records(source, split, what="training data")
    records = [record for _, record in located]
    found: list[str] = []
    for record in records:
        if isinstance(record, Mapping):
            found.extend(k for k in record if k not in found)
    wanted = [mapping[f] for f in FIELDS]
    missing = [c for c in wanted if c not in found]
    if missing or not records:
        what = f"missing column(s) {missing}" if records else "no rows"
        raise ValueError(
            f"training data {source}: {what}; columns found: {found}. Rename them or pass a column "
            "mapping (--column-map question=prompt,answer=response,correction=revision)"
        )
    rows: list[CorrectionRow] = []
    dropped = {"empty": 0, "non_string": 0}
    dropped_at: dict[str, list[str]] = {"empty": [], "non_string": []}
    for where, record in located:
        values = [record.get(c) if isinstance(record, Mapping) else None for c in wanted]
        reason = None
        if not all(isinstance(v, str) for v in values):
            reason = "non_string"
        elif not all(v.strip() for v in values):  # type: ignore[union-attr]
            reason = "empty"
        if reason is None:
            rows.append(CorrectionRow(*values))  # type: ignore[arg-type]
            continue
        dropped[reason] += 1
        if len(dropped_at[reason]) < _SHOWN_DROPS:
            dropped_at[reason].append(where)
    logger.info(
        "loaded %d rows from %s (dropped %d with an empty field, %d with a non-string field)",
        len(rows),
        source,
        dropped["empty"],
        dropped["non_string"],
    )
    if not rows:
        raise ValueError(f"training data {source}: every row was dropped ({dropped}); nothing to train on")
    data = CorrectionData(source=source, rows=rows, dropped=dropped, dropped_at=dropped_at)
    if summary := data.dropped_summary():
        logger.warning(summary)
    return data


def resolve_identity_count(identity_fraction: float | int, n_rows: int) -> int:
    """How many identity rows ``identity_fraction`` means for ``n_rows`` rows.

    A ``float`` in ``[0, 1]`` is a share of the rows; an ``int`` is a row count (at most ``n_rows``).
    """
    if isinstance(identity_fraction, bool):
        raise TypeError("identity_fraction must be a float share or an int row count, not a bool")
    if isinstance(identity_fraction, int):
        if not 0 <= identity_fraction <= n_rows:
            raise ValueError(
                f"identity_fraction={identity_fraction} rows is outside [0, {n_rows}] (the number of rows); "
                "pass a row count within it or a float share such as 0.1"
            )
        return identity_fraction
    if isinstance(identity_fraction, float):
        if not 0.0 <= identity_fraction <= 1.0:
            raise ValueError(
                f"identity_fraction={identity_fraction} must be a share in [0, 1] or an int row count"
            )
        return round(identity_fraction * n_rows)
    raise TypeError(f"identity_fraction must be a float or an int, got {type(identity_fraction).__name__}")


def identity_rows(
    rows: Sequence[CorrectionRow], identity_fraction: float | int = 0.1, *, seed: int = 0
) -> list[CorrectionRow]:
    """The warm-up set: a seeded sample of ``rows`` with ``correction = answer`` (the Q-A-A rows)."""
    count = resolve_identity_count(identity_fraction, len(rows))
    picked = random.Random(seed).sample(range(len(rows)), count)
    return [CorrectionRow(rows[i].question, rows[i].answer, rows[i].answer) for i in sorted(picked)]


def tokenize_rows(
    rows: Sequence[TrainingRow],
    tokenizer: Any,
    *,
    template: str | AlignerTemplate = "aligner-v1",
    max_length: int = 2048,
) -> TokenizedRows:
    """Prompt + completion features: ``input_ids`` and ``labels`` (``-100`` on the prompt).

    The prompt is the row rendered in ``template`` (``question`` and ``answer``, or at sentence level
    ``question``, ``prefix`` and ``sentence``), the completion ``format_completion(target)`` + EOS,
    encoded by ``encode_prompt``/``encode_completion``.
    Rows longer than ``max_length`` tokens are dropped and counted, never truncated.

    Raises:
        ValueError: the tokenized prompt is not a prefix of the tokenized prompt + completion (the
            template does not end on a token boundary for this tokenizer).
    """
    resolved = get_template(template)
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    too_long = 0
    mismatches = 0
    for row in rows:
        prompt, target = row.render(resolved)
        completion = format_completion(target)
        prompt_ids = encode_prompt(tokenizer, prompt)
        joint = encode_prompt(tokenizer, prompt + completion)
        if joint[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                f"template {resolved.to_json()!r}: the tokenized prompt is not a prefix of the tokenized "
                f"prompt + completion for this tokenizer (the last prompt token merges with the "
                f"completion's leading space, e.g. {tokenizer.decode(prompt_ids[-2:])!r} vs "
                f"{tokenizer.decode(joint[len(prompt_ids) - 2 : len(prompt_ids) + 1])!r}); end the template "
                "on a token boundary such as 'ASSISTANT:' or a newline"
            )
        completion_ids = encode_completion(tokenizer, completion)
        if joint[len(prompt_ids) :] != completion_ids[:-1]:
            mismatches += 1
        ids = prompt_ids + completion_ids
        if len(ids) > max_length:
            too_long += 1
            continue
        input_ids.append(ids)
        labels.append([IGNORE_INDEX] * len(prompt_ids) + completion_ids)
    if too_long:
        logger.warning(
            "dropped %d of %d rows longer than max_length=%d tokens", too_long, len(rows), max_length
        )
    if mismatches:
        logger.warning(
            "%d rows: the completion encoded alone differs from its tokens inside prompt + completion; "
            "training uses encode_completion, as inference expects",
            mismatches,
        )
    return TokenizedRows(input_ids, labels, too_long, mismatches)


def to_dataset(features: TokenizedRows) -> Dataset:
    """A ``datasets.Dataset`` with ``input_ids`` and ``labels``, ready for TRL's ``SFTTrainer``."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": features.input_ids, "labels": features.labels})
