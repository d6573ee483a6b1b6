"""Synthetic preference data from an Aligner's corrections of an upstream model's answers.

For each prompt: the upstream answers (concurrently, with retries for transient errors), the Aligner
corrects (batched), and a corrected answer becomes one preference row (``prompt``, ``chosen`` =
correction, ``rejected`` = original, TRL's standard format) and one SFT row (``prompt``,
``completion`` = correction). Unchanged, failed and skipped corrections are counted and left out.

Crash-safe: upstream answers (``answers.jsonl``) and outcomes (``done.jsonl``) are appended and
fsynced as they finish, keyed by a hash of the prompt; a restart skips what is done and reuses
answers already paid for. ``preferences.jsonl`` and ``sft.jsonl`` are derived from ``done.jsonl``
(rebuilt on start when a crash left them behind).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable

from aligner_chain.backends.base import CorrectionRequest, CorrectionResult, Outcome, classify
from aligner_chain.jsonl import write_jsonl
from aligner_chain.offline.ray_options import RayOptions
from aligner_chain.retry import is_transient_error
from training.common.concurrency import call_with_retries, map_as_completed
from training.common.records import read_records
from training.common.resumable import JsonlLog, stable_key

__all__ = [
    "ANSWERS_FILE",
    "DONE_FILE",
    "PREFERENCES_FILE",
    "SFT_FILE",
    "SUMMARY_FILE",
    "PromptSource",
    "answer_text",
    "as_aligner",
    "collect_preferences",
    "iter_done",
    "load_prompts",
]

logger = logging.getLogger(__name__)

PREFERENCES_FILE = "preferences.jsonl"
SFT_FILE = "sft.jsonl"
DONE_FILE = "done.jsonl"
ANSWERS_FILE = "answers.jsonl"
SUMMARY_FILE = "summary.json"

PromptSource = str | Path | Sequence[str] | Sequence[Mapping[str, Any]]


def load_prompts(
    prompts: PromptSource, *, question_column: str = "question", split: str = "train"
) -> list[str]:
    """Questions from strings, rows (``question_column``), or a path: JSONL, CSV, JSON (a list),
    a ``datasets`` ``save_to_disk`` directory, or a hub dataset id.

    Raises:
        ValueError: an unreadable source, or rows without ``question_column`` (the message names the
            columns found).
        TypeError: a row that is neither a string nor a mapping.
    """
    if isinstance(prompts, (str, Path)):
        records: list[Any] = read_records(prompts, split, what="prompts")
        source = str(prompts)
    else:
        records, source = list(prompts), "prompts"
    questions: list[str] = []
    for i, record in enumerate(records):
        if isinstance(record, str):
            questions.append(record)
        elif isinstance(record, Mapping):
            value = record.get(question_column)
            if not isinstance(value, str):
                raise ValueError(
                    f"{source}: row {i} has no string column {question_column!r}; columns found: "
                    f"{sorted(record)}. Pass question_column= (--question-column) to name it"
                )
            questions.append(value)
        else:
            raise TypeError(f"{source}: row {i} must be a str or a mapping, got {type(record).__name__}")
    return questions


def answer_text(output: Any) -> str:
    """The text of an upstream's output: a message's text, or a string."""
    if isinstance(output, BaseMessage):
        return str(output.text)
    if isinstance(output, str):
        return output
    raise TypeError(
        f"the upstream returned {type(output).__name__}; it must return a message (a chat model) or a str. "
        "Wrap other runnables, e.g. `chain | StrOutputParser()`"
    )


def as_aligner(aligner: Any) -> Runnable[Any, Any]:
    """An ``AlignerRunnable`` for a model path; any other runnable as it is."""
    if isinstance(aligner, (str, Path)):
        from aligner_chain.runnable import AlignerRunnable

        return AlignerRunnable(model=str(aligner))
    if not isinstance(aligner, Runnable):
        raise TypeError(f"aligner must be an AlignerRunnable or a model path, got {type(aligner).__name__}")
    return aligner


def _rows_of(record: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    q, chosen, rejected = record["question"], record["correction"], record["original"]
    return {"prompt": q, "chosen": chosen, "rejected": rejected}, {"prompt": q, "completion": chosen}


def _reconcile(out: Path, done: list[dict[str, Any]]) -> None:
    """Make ``preferences.jsonl``/``sft.jsonl`` match the done-log (a crash between the writes)."""
    written = [r for r in done if r.get("status") == "written"]
    for name in (PREFERENCES_FILE, SFT_FILE):
        lines = JsonlLog(out / name).read()
        if len(lines) != len(written):
            logger.warning(
                "%s: %d rows, the done-log has %d; rebuilding it", out / name, len(lines), len(written)
            )
            index = 0 if name == PREFERENCES_FILE else 1
            write_jsonl(out / name, (_rows_of(r)[index] for r in written))


def _outcome(answer: str, output: Any) -> tuple[str, str | None, str | None]:
    """``(status, correction, reason)`` for one Aligner output: ``"written"`` with the correction
    when it changed the answer, else the outcome's status. A report of no correction (skipped,
    failed, unchanged) is taken as it is; any text is classified by the one rule (:func:`classify`)."""
    meta = output.response_metadata.get("aligner") if isinstance(output, BaseMessage) else None
    if isinstance(output, CorrectionResult):  # from the Ray engine
        outcome = classify(answer, output)
    elif meta and meta.get("status") in ("skipped", "failed", "unchanged"):
        outcome = Outcome(meta["status"], answer, meta.get("reason"), meta.get("detail"))
    elif isinstance(output, (BaseMessage, str)):
        outcome = classify(answer, CorrectionResult.ok(answer_text(output)))
    else:
        return "failed", None, f"unexpected aligner output {type(output).__name__}"
    if outcome.status == "corrected":
        return "written", outcome.text.strip(), None
    return outcome.status, None, outcome.reason


def collect_preferences(
    prompts: PromptSource,
    upstream: Runnable[Any, Any],
    aligner: Any,
    output_dir: str | Path,
    *,
    max_concurrency: int = 8,
    retries: int = 3,
    retry_wait: float = 1.0,
    retry_on: tuple[type[BaseException], ...] = (),
    on_upstream_error: Literal["raise", "skip"] = "raise",
    question_column: str = "question",
    split: str = "train",
    chunk_size: int = 64,
    make_input: Callable[[str], Any] | None = None,
    progress: bool = True,
    ray: RayOptions | None = None,
) -> dict[str, Any]:
    """Answer ``prompts`` with ``upstream``, correct with ``aligner``, write the preference data.

    Args:
        prompts: strings, rows with ``question_column``, or a path (see :func:`load_prompts`).
        upstream: any LangChain runnable answering a question: it gets the question string (or
            ``make_input(question)``) and returns a message or a string.
        aligner: an ``AlignerRunnable`` (or a model path for one).
        output_dir: where ``preferences.jsonl``, ``sft.jsonl`` and the logs go; calling again on
            the same directory continues where it stopped.
        max_concurrency: upstream calls in flight at once (and the Aligner batch concurrency).
        retries: retries per upstream call on transient errors (timeouts, connection errors, 429,
            5xx), with exponential backoff from ``retry_wait`` seconds; ``retry_on`` adds types.
            A prompt that still fails is counted in ``upstream_errors`` and tried again next run.
        on_upstream_error: a non-transient upstream error stops the run (``"raise"``, after saving
            what finished) or is counted and skipped (``"skip"``).
        chunk_size: prompts answered before each Aligner batch.
        ray: correct on Ray Data instead (:mod:`aligner_chain.offline.ray_data`): every prompt is
            answered first, then all answers are corrected in one Ray job with ``ray.replicas``
            Aligner replicas built from ``aligner``'s model options (a model path or an
            ``AlignerRunnable`` with ``model``/``base_url``; not a ready backend). Outcomes are
            recorded as they come back, so an interrupted job resumes the same way.

    Returns:
        Counts for this call: ``total`` prompts, ``done_before`` (done in earlier runs), ``written``,
        ``unchanged``, ``failed``, ``skipped``, ``upstream_errors``, ``duplicates``, and ``rows``
        (preference rows in the files now), ``answers_reused`` and ``seconds``.
    """
    from tqdm.auto import tqdm

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if on_upstream_error not in ("raise", "skip"):
        raise ValueError(f"on_upstream_error must be 'raise' or 'skip', got {on_upstream_error!r}")
    start = time.perf_counter()
    questions = load_prompts(prompts, question_column=question_column, split=split)
    runnable = as_aligner(aligner)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    done_log, answers_log = JsonlLog(out / DONE_FILE), JsonlLog(out / ANSWERS_FILE)
    prefs_log, sft_log = JsonlLog(out / PREFERENCES_FILE), JsonlLog(out / SFT_FILE)
    for log in (prefs_log, sft_log):  # both files exist even when no row is written
        log.path.touch()
    done_records = done_log.read()
    _reconcile(out, done_records)
    done_keys = {r["key"] for r in done_records}
    answers = {r["key"]: r["answer"] for r in answers_log.read()}

    unique: dict[str, str] = {}
    for question in questions:
        unique.setdefault(stable_key(question), question)
    counts: Counter[str] = Counter()
    counts["duplicates"] = len(questions) - len(unique)
    pending = [(k, q) for k, q in unique.items() if k not in done_keys]
    done_before = len(unique) - len(pending)
    bar = tqdm(total=len(unique), initial=done_before, desc="collect", unit="prompt", disable=not progress)

    def ask(item: tuple[str, str]) -> str:
        value = make_input(item[1]) if make_input else item[1]
        output = call_with_retries(
            lambda: upstream.invoke(value), retries=retries, wait_seconds=retry_wait, retry_on=retry_on
        )
        answer = answer_text(output)
        # Saved here, in the worker, the moment it is paid for: an interrupt (Ctrl-C) in the main
        # thread still lets the calls in flight finish, and their answers must not be lost.
        answers_log.append({"key": item[0], "question": item[1], "answer": answer})
        return answer

    def answer_chunk(chunk: list[tuple[str, str]]) -> None:
        counts["answers_reused"] += sum(1 for k, _ in chunk if k in answers)
        stop, fatal = threading.Event(), None
        to_ask = [(k, q) for k, q in chunk if k not in answers and q.strip()]
        for (key, question), answer, error in map_as_completed(
            ask, to_ask, max_concurrency=max_concurrency, stop=stop
        ):
            if error is None and answer is not None:
                answers[key] = answer  # already in answers.jsonl (see ask)
            elif is_transient_error(error, retry_on) or on_upstream_error == "skip":  # type: ignore[arg-type]
                logger.warning("upstream failed for %r after retries: %r", question[:80], error)
                counts["upstream_errors"] += 1
                bar.update(1)
            elif fatal is None:
                fatal = error
                stop.set()
        if fatal is not None:
            raise fatal

    logs = (done_log, prefs_log, sft_log)
    try:
        chunks = [pending[offset : offset + chunk_size] for offset in range(0, len(pending), chunk_size)]
        for chunk in chunks:
            answer_chunk(chunk)
            if ray is None:
                _correct_chunk(chunk, answers, runnable, max_concurrency, logs, counts, bar)
        if ray is not None:
            _correct_on_ray(pending, answers, runnable, ray, logs, counts, bar)
    finally:
        bar.close()
        summary = {
            "total": len(questions),
            "done_before": done_before,
            **{
                name: counts[name]
                for name in ("written", "unchanged", "failed", "skipped", "upstream_errors", "duplicates")
            },
            "answers_reused": counts["answers_reused"],
            "rows": len(prefs_log.read()),
            "seconds": round(time.perf_counter() - start, 3),
            "output_dir": str(out),
        }
        _write_summary(out, summary, done_log)
    return summary


def _triage(
    chunk: list[tuple[str, str]], answers: dict[str, str]
) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """The chunk's records that need no Aligner (blank prompt or answer), and the
    ``(key, question, answer)`` to correct; prompts the upstream failed on are left for next run."""
    records: list[dict[str, Any]] = []
    to_correct: list[tuple[str, str, str]] = []
    for key, question in chunk:
        if not question.strip():
            records.append({"key": key, "status": "skipped", "reason": "empty_prompt", "question": question})
        elif key not in answers:
            continue  # the upstream failed: not done, tried again next run
        elif not answers[key].strip():
            records.append(
                {
                    "key": key,
                    "status": "skipped",
                    "reason": "empty_answer",
                    "question": question,
                    "original": "",
                }
            )
        else:
            to_correct.append((key, question, answers[key]))
    return records, to_correct


def _record_of(key: str, question: str, answer: str, output: Any) -> dict[str, Any]:
    status, correction, reason = _outcome(answer, output)
    record: dict[str, Any] = {"key": key, "status": status, "question": question, "original": answer}
    if correction is not None:
        record["correction"] = correction
    if reason is not None:
        record["reason"] = reason
    return record


def _keep(
    records: list[dict[str, Any]], logs: tuple[JsonlLog, JsonlLog, JsonlLog], counts: Counter[str], bar: Any
) -> None:
    """Record outcomes: the done-log first, then the preference and SFT rows of written ones."""
    done_log, prefs_log, sft_log = logs
    for record in records:
        done_log.append(record)
        if record["status"] == "written":
            pref, sft = _rows_of(record)
            prefs_log.append(pref)
            sft_log.append(sft)
        counts[record["status"]] += 1
        bar.update(1)


def _correct_chunk(
    chunk: list[tuple[str, str]],
    answers: dict[str, str],
    aligner: Runnable[Any, Any],
    max_concurrency: int,
    logs: tuple[JsonlLog, JsonlLog, JsonlLog],
    counts: Counter[str],
    bar: Any,
) -> None:
    """Correct the chunk's answered prompts and record each outcome."""
    records, to_correct = _triage(chunk, answers)
    if to_correct:
        inputs = [{"question": q, "answer": AIMessage(content=a)} for _, q, a in to_correct]
        outputs = aligner.batch(inputs, config={"max_concurrency": max_concurrency})
        records += [_record_of(*item, output) for item, output in zip(to_correct, outputs, strict=True)]
    _keep(records, logs, counts, bar)


def _correct_on_ray(
    pending: list[tuple[str, str]],
    answers: dict[str, str],
    aligner: Runnable[Any, Any],
    ray: RayOptions,
    logs: tuple[JsonlLog, JsonlLog, JsonlLog],
    counts: Counter[str],
    bar: Any,
) -> None:
    """Correct every answered prompt in one Ray job; record outcomes as they come back, in order."""
    from aligner_chain.offline.ray_data import iter_corrections
    from aligner_chain.offline.ray_options import replica_options

    records, to_correct = _triage(pending, answers)
    _keep(records, logs, counts, bar)
    if not to_correct:
        return
    options = replica_options(aligner)
    model = options.pop("model")
    staged = ((i, CorrectionRequest(q, a), None) for i, (_, q, a) in enumerate(to_correct))
    for group in iter_corrections(staged, model, options=ray, backend_options=options):
        _keep([_record_of(*to_correct[i], result) for i, result, _ in group], logs, counts, bar)


def _write_summary(out: Path, summary: Mapping[str, Any], done_log: JsonlLog) -> None:
    totals = Counter(r.get("status") for r in done_log.read())
    payload = {"last_run": dict(summary), "all_runs": {str(k): v for k, v in sorted(totals.items())}}
    (out / SUMMARY_FILE).write_text(json.dumps(payload, indent=2) + "\n")


def iter_done(output_dir: str | Path) -> Iterable[dict[str, Any]]:
    """The done-log records of a ``collect_preferences`` directory."""
    return JsonlLog(Path(output_dir) / DONE_FILE).read()
