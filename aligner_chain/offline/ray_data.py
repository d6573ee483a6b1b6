"""Offline correction on Ray Data: one Aligner replica per Ray actor (needs ``aligner-chain[ray]``).

* :func:`correct_dataset`: a Ray ``Dataset`` with question and answer columns in, the same rows with
  the result columns (``correction``, ``status``, ``reason``, ``detail``) out, lazily like any Ray
  transform, for pipelines that already live in Ray. Each replica builds the project's own backend
  (:func:`~aligner_chain.backends.factory.build_backend`): a local model (on a GPU with
  ``gpus_per_replica``) or an OpenAI-compatible server (``base_url=``).
* :func:`iter_corrections`: what ``aligner-chain correct --engine ray`` and the bootstrap's
  correction step run: requests keyed by row id go into Ray's object store, are corrected, and come
  back in input order, every row id checked to come back exactly once.

Fault tolerance is Ray's: a replica that dies (a killed process, a lost node) is restarted and its
batch is run again, and ordered execution plus the row ids make sure no row is lost or written twice.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, DataContext, Dataset
from ray.util.debug import log_once

from aligner_chain.arguments import check_keywords
from aligner_chain.backends.base import CorrectionRequest, CorrectionResult
from aligner_chain.backends.factory import build_backend
from aligner_chain.backends.openai import API_KEY_ENV
from aligner_chain.offline.corrections import AlignerUnavailable, check_aligner, correct_requests
from aligner_chain.offline.ray_options import RayOptions
from aligner_chain.offline.rows import OutputFields, output_row, result_of_row

__all__ = ["AlignerReplica", "correct_dataset", "iter_corrections", "ray_session"]

logger = logging.getLogger(__name__)

ROW_ID = "row_id"
PAYLOAD = "payload"
_STAGED_ROWS = 4096  # rows per table put in the object store (rounded up to whole blocks)
_ROOT_CAUSE = re.compile(r"AlignerUnavailable: (.+)")


class AlignerReplica:
    """One Aligner replica (a Ray actor's state): the backend is built and loaded once, then each
    call corrects one batch (a ``pyarrow.Table``) and returns it with the result columns added."""

    def __init__(
        self,
        backend_options: Mapping[str, Any],
        question_column: str,
        answer_column: str,
        fields: OutputFields,
    ) -> None:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # one bar per replica would only clutter the log
        self.backend = build_backend(**backend_options)
        check_aligner(self.backend)  # a model that cannot load fails the job now, not row by row
        self.question_column, self.answer_column, self.fields = question_column, answer_column, fields

    def __call__(self, batch: pa.Table) -> pa.Table:
        clashes = self.fields.clashes(batch.column_names)
        if clashes:
            raise ValueError(self.fields.clash_message(clashes, flag="output_prefix="))
        for column in (self.question_column, self.answer_column):
            if column not in batch.column_names:
                raise ValueError(f"the dataset has no column {column!r}; columns: {batch.column_names}")
        questions = batch.column(self.question_column).to_pylist()
        answers = batch.column(self.answer_column).to_pylist()
        results: list[CorrectionResult | None] = [None] * len(answers)
        valid = [i for i, (q, a) in enumerate(zip(questions, answers, strict=True)) if _both_str(q, a)]
        for i in set(range(len(answers))) - set(valid):
            problem = _type_problem(questions[i], answers[i], self.question_column, self.answer_column)
            results[i] = CorrectionResult.failed("invalid_row", problem)
        corrected = correct_requests(
            self.backend, [CorrectionRequest(questions[i], answers[i]) for i in valid]
        )
        for i, result in zip(valid, corrected, strict=True):
            results[i] = result
        rows = [
            output_row({"answer": a if isinstance(a, str) else ""}, r, self.fields)
            for a, r in zip(answers, results, strict=True)
            if r is not None
        ]
        for name in self.fields.names:
            batch = batch.append_column(name, pa.array([row.get(name) for row in rows], type=pa.string()))
        return batch


def _both_str(question: Any, answer: Any) -> bool:
    return isinstance(question, str) and isinstance(answer, str)


def _type_problem(question: Any, answer: Any, question_column: str, answer_column: str) -> str:
    bad = [
        (c, v) for c, v in ((question_column, question), (answer_column, answer)) if not isinstance(v, str)
    ]
    return "; ".join(f'"{c}" must be a string, got {type(v).__name__}' for c, v in bad)


def correct_dataset(
    dataset: Dataset,
    model: str | None = None,
    *,
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    cpus_per_replica: float | None = None,
    batch_size: int = 8,
    rows_per_block: int | None = None,
    question_column: str = "question",
    answer_column: str = "answer",
    output_prefix: str = "",
    **backend_options: Any,
) -> Dataset:
    """``dataset`` with ``correction``, ``status``, ``reason`` and ``detail`` columns added (names
    prefixed with ``output_prefix``), every other column as it was; lazy, like any Ray transform.

    Args:
        dataset: rows with string ``question_column`` and ``answer_column``. A row where either is
            not a string comes back ``failed`` with reason ``"invalid_row"``; an empty answer is
            ``skipped`` (``"empty"``).
        model: the Aligner (hub id or directory for a local model; the served name with ``base_url``).
        replicas: actors, each with its own Aligner (one model per actor).
        gpus_per_replica: GPUs per actor (0: CPU); ``cpus_per_replica``: CPUs per actor (default 1).
        batch_size: rows per replica call.
        rows_per_block: the dataset is re-cut into blocks of this many rows (default
            ``4 * batch_size``) so every replica gets work even when the input came as one block.
        output_prefix: put in front of the result column names (a column that already has one of
            them is refused, never overwritten).
        **backend_options: options of :func:`~aligner_chain.backends.factory.build_backend`
            (``base_url``, ``template``, ``max_new_tokens``, ``device``, ``dtype``, ``adapter``...).

    Rows come back in input order when the dataset's ``DataContext`` has
    ``execution_options.preserve_order = True`` (:func:`iter_corrections` sets it).

    Raises:
        TypeError: an unknown backend option.
        ValueError: a bad value, or a column the results would overwrite (when the schema is
            known up front; else the job fails with the same message).
    """
    layout = RayOptions(
        replicas=replicas,
        gpus_per_replica=gpus_per_replica,
        cpus_per_replica=cpus_per_replica,
        batch_size=batch_size,
    )
    options = _backend_options(model, backend_options, batch_size)
    fields = OutputFields.with_prefix(output_prefix)
    if rows_per_block is not None and rows_per_block < 1:
        raise ValueError(f"rows_per_block must be >= 1, got {rows_per_block}")
    known = dataset.columns(fetch_if_missing=False)  # checked here when known, else in each replica
    clashes = fields.clashes(known or ())
    if clashes:
        raise ValueError(fields.clash_message(clashes, flag="output_prefix="))
    return dataset.repartition(target_num_rows_per_block=rows_per_block or 4 * batch_size).map_batches(
        AlignerReplica,
        fn_constructor_kwargs={
            "backend_options": options,
            "question_column": question_column,
            "answer_column": answer_column,
            "fields": fields,
        },
        compute=ActorPoolStrategy(size=layout.replicas),
        num_cpus=layout.cpus,
        num_gpus=layout.gpus_per_replica or None,
        batch_size=batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
    )


def _backend_options(model: str | None, given: Mapping[str, Any], batch_size: int) -> dict[str, Any]:
    """The ``build_backend`` keyword arguments for every replica, checked here (on the driver)."""
    valid = [name for name in inspect.signature(build_backend).parameters if name != "model"]
    check_keywords("correct_dataset", given, valid)
    options = {"max_batch_size": batch_size, **given, "model": model}
    if options.get("base_url") and options.get("api_key") is None and os.environ.get(API_KEY_ENV):
        options["api_key"] = os.environ[API_KEY_ENV]  # replicas may run where this variable is unset
    build_backend(**options)  # checks the options (nothing is loaded)
    return options


@contextmanager
def ray_session(options: RayOptions) -> Iterator[None]:
    """Use the Ray instance this process runs, else connect to ``options.address`` (or
    ``$RAY_ADDRESS``), else start a local instance with room for the replicas and the reads; shut
    down only what was started here."""
    if ray.is_initialized():
        yield
        return
    if options.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=options.address, logging_level=logging.ERROR)
    else:
        # A throwaway local instance: no token file, no usage report.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        cpus = max(os.cpu_count() or 1, math.ceil(options.replicas * options.cpus + 1))
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.ERROR)
    try:
        yield
    finally:
        ray.shutdown()


def _check_room(options: RayOptions) -> None:
    """Refuse a layout that cannot run: Ray would wait forever for resources that never come."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    need = options.replicas * options.cpus
    if need + 1 > cpus:
        most = max((cpus - 1) / options.replicas, 0)
        raise ValueError(
            f"{options.replicas} replica(s) x {options.cpus:g} CPU leave no CPU for reading the input on a "
            f"Ray cluster of {cpus:g} CPUs; pass --cpus-per-replica {most:.2g} (or fewer --replicas)"
        )
    if options.replicas * options.gpus_per_replica > gpus:
        raise ValueError(
            f"{options.replicas} replica(s) x {options.gpus_per_replica:g} GPU need "
            f"{options.replicas * options.gpus_per_replica:g} GPUs; the Ray cluster has {gpus:g}"
        )


@contextmanager
def _ordered_execution() -> Iterator[None]:
    context = DataContext.get_current()
    saved = (
        context.execution_options.preserve_order,
        context.enable_progress_bars,
        context.print_on_execution_start,
    )
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the caller shows its own progress
    context.print_on_execution_start = False
    # Ray Data says once per process that its bars are off; the caller shows its own progress.
    log_once("ray_data_progress_manager_disabled")
    data_logger = logging.getLogger("ray.data")  # "execution finished in ..." lines
    level = data_logger.level
    data_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        (
            context.execution_options.preserve_order,
            context.enable_progress_bars,
            context.print_on_execution_start,
        ) = saved
        data_logger.setLevel(level)


def _stage(
    pending: Iterable[tuple[int, CorrectionRequest, str | None]], rows_per_table: int
) -> tuple[list[Any], list[int]]:
    """Put the requests into the object store as Arrow tables, in order; return the table refs and
    the row ids. Ray spills them to disk when the object store is full, so the driver holds one
    table at a time whatever the input's size."""
    refs: list[Any] = []
    ids: list[int] = []
    chunk: list[tuple[int, CorrectionRequest, str | None]] = []

    def flush() -> None:
        table = pa.table(
            {
                ROW_ID: pa.array([i for i, _, _ in chunk], type=pa.int64()),
                "question": pa.array([r.question for _, r, _ in chunk], type=pa.string()),
                "answer": pa.array([r.answer for _, r, _ in chunk], type=pa.string()),
                PAYLOAD: pa.array([p for _, _, p in chunk], type=pa.string()),
            }
        )
        refs.append(ray.put(table))
        ids.extend(i for i, _, _ in chunk)
        chunk.clear()

    last = -1
    for row_id, request, payload in pending:
        if row_id <= last:
            raise ValueError(f"row ids must increase; {row_id} came after {last}")
        last = row_id
        chunk.append((row_id, request, payload))
        if len(chunk) == rows_per_table:
            flush()
    if chunk:
        flush()
    return refs, ids


def iter_corrections(
    pending: Iterable[tuple[int, CorrectionRequest, str | None]],
    model: str | None,
    *,
    options: RayOptions,
    backend_options: Mapping[str, Any] | None = None,
) -> Iterator[list[tuple[int, CorrectionResult, str | None]]]:
    """Correct ``(row_id, request, payload)`` triples (row ids increasing) on Ray; yield
    ``(row_id, result, payload)`` groups in input order as Ray hands them back. ``payload`` is any
    text that travels with the row (``aligner-chain correct`` sends the row itself, so the driver
    holds no rows in memory).

    The rows go to Ray through its object store (no shared storage needed on a cluster); Ray starts
    once every row is staged.

    Raises:
        AlignerUnavailable: a replica could not load or reach the Aligner.
        ValueError: a layout the cluster cannot run (not enough CPUs or GPUs).
        RuntimeError: a row id came back twice, out of order, or not at all (never expected: Ray
            retries the batches of a replica that died).
    """
    block = 4 * options.batch_size
    with ray_session(options), _ordered_execution():
        _check_room(options)
        refs, ids = _stage(pending, block * math.ceil(_STAGED_ROWS / block))
        if not ids:
            return
        corrected = correct_dataset(
            ray.data.from_arrow_refs(refs),
            model,
            replicas=options.replicas,
            gpus_per_replica=options.gpus_per_replica,
            cpus_per_replica=options.cpus_per_replica,
            batch_size=options.batch_size,
            rows_per_block=block,
            **dict(backend_options or {}),
        )
        fields = OutputFields()
        expected = iter(ids)
        try:
            for batch in corrected.select_columns([ROW_ID, PAYLOAD, *fields.names]).iter_batches(
                batch_size=None, batch_format="pyarrow"
            ):
                assert isinstance(batch, pa.Table)
                group = []
                for row in batch.to_pylist():
                    _check_id(row[ROW_ID], next(expected, None))
                    group.append((int(row[ROW_ID]), result_of_row(row, fields), row[PAYLOAD]))
                yield group
        except ray.exceptions.RayError as err:
            cause = _ROOT_CAUSE.search(str(err))
            if cause:
                raise AlignerUnavailable(cause.group(1).strip()) from err
            raise
        missing = next(expected, None)
        if missing is not None:
            raise RuntimeError(f"row {missing} did not come back from Ray")


def _check_id(got: Any, expected: int | None) -> None:
    if expected is None or got != expected:
        raise RuntimeError(
            f"Ray returned row {got} where row {expected} was due: refusing to write rows twice"
        )
