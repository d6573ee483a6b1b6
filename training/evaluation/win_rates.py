"""Win rates of corrected over original answers (or any two answer sets), per dimension.

An LLM judge (any LangChain chat model) sees each pair twice, the corrected answer first as A, then
as B; a verdict that changes with the order counts as a tie, and a pair with an unparseable verdict
is counted as ``unparseable`` and left out of ``omega = (wins - losses) / (wins + ties + losses)``.
A reward-model judge scores both answers instead. Judge calls run concurrently with retries and
can be cached in a JSONL file, so an interrupted evaluation resumes without paying twice.
Reports: JSON, a Markdown table and a bar chart PNG.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.common.concurrency import call_with_retries, map_as_completed
from training.common.records import read_records
from training.common.resumable import JsonlLog, stable_key
from training.evaluation.judges import (
    RewardModelJudge,
    Verdict,
    judge_messages,
    parse_verdict,
    resolve_judge_prompts,
)

__all__ = [
    "EVAL_FIELDS",
    "EvalRow",
    "judge_win_rates",
    "load_eval_rows",
    "markdown_table",
    "omega",
    "reward_model_win_rates",
    "write_reports",
]

logger = logging.getLogger(__name__)

EVAL_FIELDS = ("question", "original", "corrected")


@dataclass(frozen=True)
class EvalRow:
    """One comparison: ``corrected`` is the candidate, ``original`` the baseline."""

    question: str
    original: str
    corrected: str


def omega(wins: int, ties: int, losses: int) -> float | None:
    """``(wins - losses) / (wins + ties + losses)``; ``None`` when there is nothing to count."""
    total = wins + ties + losses
    return (wins - losses) / total if total else None


def _as_rows(rows: Any, columns: Mapping[str, str] | None = None) -> list[EvalRow]:
    mapping = {f: f for f in EVAL_FIELDS}
    for key, value in (columns or {}).items():
        if key not in EVAL_FIELDS:
            raise ValueError(f"column mapping key {key!r} is not one of {list(EVAL_FIELDS)}")
        mapping[key] = value
    if isinstance(rows, (str, Path)):
        return load_eval_rows(rows, columns=columns)
    result: list[EvalRow] = []
    for i, row in enumerate(rows):
        if isinstance(row, EvalRow):
            result.append(row)
            continue
        if not isinstance(row, Mapping):
            raise TypeError(
                f"row {i} must be a mapping with {list(mapping.values())}, got {type(row).__name__}"
            )
        values = [row.get(mapping[f]) for f in EVAL_FIELDS]
        if not all(isinstance(v, str) for v in values):
            raise ValueError(
                f"row {i} needs string columns {[mapping[f] for f in EVAL_FIELDS]}; columns found: "
                f"{sorted(row)}. Pass a column mapping, e.g. columns={{'original': 'answer', "
                "'corrected': 'correction'}}"
            )
        result.append(EvalRow(*values))  # type: ignore[arg-type]
    return result


def load_eval_rows(
    source: str | Path, *, columns: Mapping[str, str] | None = None, split: str = "train"
) -> list[EvalRow]:
    """Rows from a JSONL, CSV or JSON file, a ``datasets`` directory or a hub id; ``columns`` maps
    ``question``/``original``/``corrected`` to the file's names (e.g. ``{"original": "answer"}``).

    Raises:
        ValueError: an unreadable source or missing columns (the message names those found).
    """
    records = read_records(source, split, what="evaluation data")
    try:
        return _as_rows(records, columns)
    except (ValueError, TypeError) as err:
        raise ValueError(f"evaluation data {source}: {err}") from err


def _judge_id(judge: Any) -> str:
    for attr in ("model_name", "model", "model_id"):
        value = getattr(judge, attr, None)
        if isinstance(value, str):
            return value
    return type(judge).__name__


def _outcome(first: Verdict | None, second: Verdict | None) -> str:
    """Pair outcome for the corrected answer; ``first``: corrected was A, ``second``: it was B."""
    if first is None or second is None:
        return "unparseable"
    as_a = {"A": "win", "B": "loss", "C": "tie"}[first]
    as_b = {"B": "win", "A": "loss", "C": "tie"}[second]
    return as_a if as_a == as_b else "tie"


def _tally(outcomes: Sequence[str]) -> dict[str, Any]:
    counts = {k: sum(1 for o in outcomes if o == k) for k in ("win", "tie", "loss", "unparseable")}
    return {
        "wins": counts["win"],
        "ties": counts["tie"],
        "losses": counts["loss"],
        "unparseable": counts["unparseable"],
        "omega": omega(counts["win"], counts["tie"], counts["loss"]),
    }


def judge_win_rates(
    rows: Any,
    judge: Any,
    dimensions: Sequence[str] = ("helpful", "harmless"),
    *,
    prompts: Mapping[str, str] | None = None,
    columns: Mapping[str, str] | None = None,
    max_concurrency: int = 8,
    retries: int = 3,
    retry_wait: float = 1.0,
    cache_path: str | Path | None = None,
    progress: bool = True,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Compare ``corrected`` against ``original`` per dimension with a chat-model judge.

    Args:
        rows: rows with ``question``, ``original``, ``corrected`` (or ``columns`` naming them), or a
            path for :func:`load_eval_rows`.
        judge: any LangChain chat model.
        dimensions: judge prompts to use (:data:`training.evaluation.judges.JUDGE_PROMPTS`); ``prompts``
            overrides or adds system prompts per dimension.
        cache_path: a JSONL file of judge replies keyed by the exact messages sent; calls already
            there are not repeated (resume an interrupted run, or re-tally for free).
        details: when a list is passed, one record per pair and dimension is appended to it.

    Returns:
        ``{dimension: {"wins", "ties", "losses", "unparseable", "omega"}}``; ``omega`` is a
        fraction in ``[-1, 1]`` (``None`` when every pair was unparseable).
    """
    from tqdm.auto import tqdm

    eval_rows = _as_rows(rows, columns)
    system = resolve_judge_prompts(dimensions, prompts)
    judge_id = _judge_id(judge)
    cache = JsonlLog(cache_path) if cache_path is not None else None
    replies: dict[str, str] = {r["key"]: r["reply"] for r in cache.read()} if cache else {}

    tasks: list[tuple[str, list[Any]]] = []
    queued: set[str] = set()
    plan: list[tuple[str, int, str, str]] = []  # (dimension, row index, key corrected-as-A, key as-B)
    for dim in dimensions:
        for index, row in enumerate(eval_rows):
            keys = []
            for answer_a, answer_b in ((row.corrected, row.original), (row.original, row.corrected)):
                messages = judge_messages(system[dim], row.question, answer_a, answer_b)
                key = stable_key(judge_id, *(str(m.content) for m in messages))
                keys.append(key)
                if key not in replies and key not in queued:
                    queued.add(key)
                    tasks.append((key, messages))
            plan.append((dim, index, keys[0], keys[1]))

    def ask(task: tuple[str, list[Any]]) -> str:
        reply = call_with_retries(lambda: judge.invoke(task[1]), retries=retries, wait_seconds=retry_wait)
        return str(getattr(reply, "text", reply))

    fatal: BaseException | None = None
    stop = threading.Event()
    with tqdm(total=len(tasks), desc="judge", unit="call", disable=not progress) as bar:
        for (key, _), reply, error in map_as_completed(
            ask, tasks, max_concurrency=max_concurrency, stop=stop
        ):
            bar.update(1)
            if error is not None:
                fatal = fatal or error
                stop.set()  # start nothing new; replies still running are kept
                continue
            replies[key] = str(reply)
            if cache is not None:
                cache.append({"key": key, "reply": replies[key]})
    if fatal is not None:
        raise fatal

    results: dict[str, dict[str, Any]] = {}
    for dim in dimensions:
        outcomes = []
        for d, index, key_a, key_b in plan:
            if d != dim:
                continue
            outcome = _outcome(parse_verdict(replies[key_a]), parse_verdict(replies[key_b]))
            outcomes.append(outcome)
            if details is not None:
                details.append(
                    {
                        "dimension": dim,
                        "row": index,
                        "outcome": outcome,
                        "verdict_corrected_first": parse_verdict(replies[key_a]),
                        "verdict_corrected_second": parse_verdict(replies[key_b]),
                    }
                )
        results[dim] = _tally(outcomes)
    return results


def reward_model_win_rates(
    rows: Any,
    judge: RewardModelJudge | str | Path,
    *,
    margin: float = 0.0,
    columns: Mapping[str, str] | None = None,
    name: str = "reward",
    details: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Compare with a reward model: ``corrected`` wins when its reward exceeds ``original``'s by
    more than ``margin``, loses when it is lower by more than ``margin``, else ties (identical
    answers always tie).

    Returns ``{name: {"wins", "ties", "losses", "unparseable": 0, "omega", "mean_reward_delta"}}``.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    scorer = judge if isinstance(judge, RewardModelJudge) else RewardModelJudge(judge)
    eval_rows = _as_rows(rows, columns)
    corrected = scorer.score([(r.question, r.corrected) for r in eval_rows])
    original = scorer.score([(r.question, r.original) for r in eval_rows])
    outcomes = []
    for index, (c, o) in enumerate(zip(corrected, original, strict=True)):
        delta = c - o
        outcome = "win" if delta > margin else "loss" if delta < -margin else "tie"
        if eval_rows[index].corrected.strip() == eval_rows[index].original.strip():
            outcome = "tie"  # the same text; batching noise in the scores must not decide it
        outcomes.append(outcome)
        if details is not None:
            details.append(
                {"dimension": name, "row": index, "outcome": outcome, "corrected": c, "original": o}
            )
    tally = _tally(outcomes)
    deltas = [c - o for c, o in zip(corrected, original, strict=True)]
    tally["mean_reward_delta"] = sum(deltas) / len(deltas) if deltas else None
    return {name: tally}


def write_reports(
    results: Mapping[str, Mapping[str, Any]],
    output_dir: str | Path,
    *,
    title: str = "Corrected vs original",
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` (a table, omega in %) and ``report.png`` (a bar chart of
    omega per dimension) into ``output_dir``; returns their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "title": title,
        "results": {
            dim: {**r, "omega_percent": None if r.get("omega") is None else round(100 * r["omega"], 2)}
            for dim, r in results.items()
        },
        **({"meta": dict(meta)} if meta else {}),
    }
    paths = {"json": out / "report.json", "markdown": out / "report.md", "chart": out / "report.png"}
    paths["json"].write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    paths["markdown"].write_text(markdown_table(results, title=title))
    _bar_chart(results, paths["chart"], title)
    return paths


def markdown_table(results: Mapping[str, Mapping[str, Any]], *, title: str | None = None) -> str:
    """A Markdown table: dimension, wins, ties, losses, unparseable, omega (%)."""
    lines = [f"## {title}\n"] if title else []
    lines += [
        "| dimension | wins | ties | losses | unparseable | omega (%) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for dim, r in results.items():
        om = "n/a" if r.get("omega") is None else f"{100 * r['omega']:+.1f}"
        lines.append(f"| {dim} | {r['wins']} | {r['ties']} | {r['losses']} | {r['unparseable']} | {om} |")
    return "\n".join(lines) + "\n"


def _bar_chart(results: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = list(results)
    values = [100 * (results[d].get("omega") or 0.0) for d in dims]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(dims) + 2), 3.6), dpi=120)
    try:
        colors = ["#2e7d32" if v >= 0 else "#c62828" for v in values]
        bars = ax.bar(dims, values, color=colors)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylim(-105, 105)
        ax.set_ylabel("omega (%)")
        ax.set_title(title)
        for bar, dim, value in zip(bars, dims, values, strict=True):
            label = "n/a" if results[dim].get("omega") is None else f"{value:+.1f}%"
            y = value + (4 if value >= 0 else -10)
            ax.text(bar.get_x() + bar.get_width() / 2, y, label, ha="center", fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
