"""Small synthetic correction tasks for demos and tests.

:func:`make_synthetic_task`, where the question matters: questions ask for a capital, a sum or a unit
fact; flawed answers state a wrong value (a distractor drawn from the same family) and the correction
restates the answer with the right value, which only the question determines. Some answers are
already right and stay unchanged. The held-out split uses (question, wrong value, phrasing)
combinations never seen in training, while every fact itself is seen: an Aligner passes only if it
reads the question instead of memorising answer -> correction.

:func:`make_multi_sentence_task`, for sentence-level Aligners: a question asks for several facts and
the answer gives one sentence per fact, in order; some sentences state a wrong value and some answers
carry a hedge sentence ("I am not sure about this.") that does not belong. The correction fixes only
the wrong sentences and drops the hedge; the rest is kept word for word. Held-out answers are
combinations of facts, values and hedges never seen in training.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from aligner_chain import jsonl
from aligner_chain.prompts import format_completion, get_template
from training.aligner.data import CorrectionRow

__all__ = ["HEDGE", "SyntheticTask", "make_multi_sentence_task", "make_synthetic_task", "write_jsonl"]

CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Canada": "Ottawa",
    "Chile": "Santiago",
    "Greece": "Athens",
    "Poland": "Warsaw",
}
UNITS = {
    "centimetres in a metre": "100",
    "minutes in an hour": "60",
    "days in a week": "7",
    "hours in a day": "24",
    "months in a year": "12",
    "grams in a kilogram": "1000",
    "seconds in a minute": "60",
    "legs on a spider": "8",
}
_CAPITAL_ANSWERS = ("The capital of {x} is {v}.", "It is {v}.", "{v} is the capital of {x}.")
_SUM_ANSWERS = ("{a} plus {b} is {v}.", "The answer is {v}.", "It equals {v}.")
_UNIT_ANSWERS = ("There are {v} {x}.", "The answer is {v}.", "It is {v}.")


@dataclass(frozen=True)
class SyntheticTask:
    """``train`` rows and ``held_out`` rows whose (question, answer) pairs never occur in ``train``."""

    train: list[CorrectionRow]
    held_out: list[CorrectionRow]

    def corpus(self, template: str | None = None) -> list[str]:
        """Every question, answer and correction: text to train a tiny tokenizer on.

        With a ``template`` the training rows rendered in it are added too (at sentence level: their
        sentence rows), so the template's words become single tokens and each row is about a third
        as long (training runs faster).
        """
        rows = self.train + self.held_out
        texts = [t for r in rows for t in (r.question, r.answer, r.correction)]
        if template is None:
            return texts
        resolved = get_template(template)
        if resolved.granularity == "sentence":
            from training.aligner.sentences import sentence_rows

            rendered = [s.render(resolved) for r in self.train for s in sentence_rows(r)[0]]
        else:
            rendered = [r.render(resolved) for r in self.train]
        return texts + [prompt + format_completion(target) for prompt, target in rendered]


def _all_rows() -> list[CorrectionRow]:
    rows: list[CorrectionRow] = []
    capitals = list(CAPITALS.values())
    for country, capital in CAPITALS.items():
        question = f"What is the capital of {country}?"
        for template in _CAPITAL_ANSWERS:
            right = template.format(x=country, v=capital)
            for wrong in capitals:
                rows.append(CorrectionRow(question, template.format(x=country, v=wrong), right))
    for a in range(1, 6):
        for b in range(1, 6):
            question = f"What is {a} plus {b}?"
            for template in _SUM_ANSWERS:
                right = template.format(a=a, b=b, v=a + b)
                for delta in (-2, -1, 0, 1, 2):
                    wrong = template.format(a=a, b=b, v=a + b + delta)
                    rows.append(CorrectionRow(question, wrong, right))
    values = sorted(set(UNITS.values()), key=int)
    for unit, value in UNITS.items():
        question = f"How many {unit} are there?"
        for template in _UNIT_ANSWERS:
            right = template.format(x=unit, v=value)
            for wrong in values:
                rows.append(CorrectionRow(question, template.format(x=unit, v=wrong), right))
    return rows


def make_synthetic_task(
    *, n_train: int = 600, n_held_out: int = 60, seed: int = 0, unchanged_share: float = 0.1
) -> SyntheticTask:
    """Sample disjoint train and held-out rows from the task's (question, flawed answer) pairs.

    ``unchanged_share`` is roughly the share of rows whose answer is already right (correction =
    answer); the rest carry a wrong value. Every question (fact) appears in ``train``.
    """
    rng = random.Random(seed)
    rows = _all_rows()
    right = [r for r in rows if r.answer == r.correction]
    wrong = [r for r in rows if r.answer != r.correction]
    rng.shuffle(right)
    rng.shuffle(wrong)
    n_total = n_train + n_held_out
    n_right = min(len(right), round(unchanged_share * n_total))
    pool = right[:n_right] + wrong[: n_total - n_right]
    if len(pool) < n_total:
        raise ValueError(f"the synthetic task has {len(pool)} rows; ask for at most that many in all")
    rng.shuffle(pool)
    # Held-out rows only for questions that still have training rows with another answer.
    train_questions: dict[str, int] = {}
    for row in pool:
        train_questions[row.question] = train_questions.get(row.question, 0) + 1
    held_out: list[CorrectionRow] = []
    train: list[CorrectionRow] = []
    for row in pool:
        if len(held_out) < n_held_out and train_questions[row.question] > 2:
            held_out.append(row)
            train_questions[row.question] -= 1
        else:
            train.append(row)
    return SyntheticTask(train=train, held_out=held_out)


HEDGE = "I am not sure about this."
_SENTENCES = {
    "capital": ("Capital of {x}?", "The capital of {x} is {v}."),
    "sum": ("{a} plus {b}?", "{a} plus {b} is {v}."),
    "unit": ("How many {x}?", "There are {v} {x}."),
}


def _facts() -> list[tuple[str, str, str, list[str]]]:
    """Every fact as ``(question, right sentence, sentence template with {v}, wrong values)``."""
    facts = []
    capitals = list(CAPITALS.values())
    ask, say = _SENTENCES["capital"]
    for country, capital in CAPITALS.items():
        template = say.replace("{x}", country)
        wrong = [c for c in capitals if c != capital]
        facts.append((ask.format(x=country), template.format(v=capital), template, wrong))
    ask, say = _SENTENCES["sum"]
    for a in range(1, 6):
        for b in range(1, 6):
            template = say.replace("{a}", str(a)).replace("{b}", str(b))
            wrong = [str(a + b + d) for d in (-2, -1, 1, 2)]
            facts.append((ask.format(a=a, b=b), template.format(v=a + b), template, wrong))
    values = sorted(set(UNITS.values()), key=int)
    ask, say = _SENTENCES["unit"]
    for unit, value in UNITS.items():
        template = say.replace("{x}", unit)
        facts.append(
            (ask.format(x=unit), template.format(v=value), template, [v for v in values if v != value])
        )
    return facts


def make_multi_sentence_task(
    *,
    n_train: int = 400,
    n_held_out: int = 60,
    sentences: tuple[int, int] = (2, 3),
    wrong_share: float = 0.5,
    hedge_share: float = 0.15,
    seed: int = 0,
) -> SyntheticTask:
    """Answers of ``sentences[0]``..``sentences[1]`` sentences, one per fact asked; each sentence is
    wrong with probability ``wrong_share``, and an answer carries a hedge sentence (dropped by the
    correction) with probability ``hedge_share``. Train and held-out (question, answer) pairs are
    disjoint."""
    low, high = sentences
    if not 1 <= low <= high:
        raise ValueError(f"sentences must be (low, high) with 1 <= low <= high, got {sentences!r}")
    rng = random.Random(seed)
    facts = _facts()
    seen: set[tuple[str, str]] = set()
    rows: list[CorrectionRow] = []
    attempts = 0
    while len(rows) < n_train + n_held_out:
        attempts += 1
        if attempts > 100 * (n_train + n_held_out):
            raise ValueError("cannot draw that many distinct answers; ask for fewer rows")
        picked = rng.sample(facts, rng.randint(low, high))
        said = [
            template.format(v=rng.choice(wrong)) if rng.random() < wrong_share else right
            for _, right, template, wrong in picked
        ]
        if rng.random() < hedge_share:
            said.insert(rng.randint(1, len(said)), HEDGE)
        row = CorrectionRow(
            " ".join(question for question, _, _, _ in picked),
            " ".join(said),
            " ".join(right for _, right, _, _ in picked),
        )
        if (row.question, row.answer) not in seen:
            seen.add((row.question, row.answer))
            rows.append(row)
    return SyntheticTask(train=rows[:n_train], held_out=rows[n_train:])


def write_jsonl(rows: list[CorrectionRow], path: str | Path) -> Path:
    """Write rows as JSONL with ``question``, ``answer`` and ``correction`` fields."""
    jsonl.write_jsonl(path, (asdict(r) for r in rows))
    return Path(path)
