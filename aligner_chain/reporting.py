"""How what happened to an answer is reported: a log line for every failure and every skip worth
knowing, and on the traced run itself tags ``aligner:<status>`` (and ``aligner:<reason>``) and
metadata ``aligner_status``/``aligner_reason``, so a tracer (LangSmith, any ``BaseTracer``) shows it
even where the output is a plain string.
"""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.tracers.schemas import Run

from aligner_chain.backends.base import Outcome

__all__ = ["annotate_run", "report_outcome"]

logger = logging.getLogger("aligner_chain.runnable")

# Skips not logged at all (nothing to correct), and skips that are by design (logged at INFO):
# tool-calling turns are actions, and ``skip`` is the caller's own choice. Others (``too_long``)
# are WARNINGs: an answer the caller wanted corrected was not.
_QUIET_SKIPS = frozenset({"empty"})
_CHOSEN_SKIPS = frozenset(
    {"tool_calls", "invalid_tool_calls", "tool_call_chunks", "no_text_block", "skip_predicate"}
)


def report_outcome(run_manager: Any, outcome: Outcome, model: str) -> None:
    """Log ``outcome`` (failures and too-long skips as WARNING) and put it on the traced run."""
    annotate_run(run_manager, outcome)
    detail = f" ({outcome.detail})" if outcome.detail else ""
    if outcome.status == "failed":
        logger.warning("Aligner %s failed (%s), keeping the original answer%s", model, outcome.reason, detail)
    elif outcome.status == "skipped" and outcome.reason not in _QUIET_SKIPS:
        level = logging.INFO if outcome.reason in _CHOSEN_SKIPS else logging.WARNING
        logger.log(level, "Aligner %s skipped an answer (%s)%s", model, outcome.reason, detail)


def annotate_run(run_manager: Any, outcome: Outcome) -> None:
    """Add the outcome's tags and metadata to ``run_manager``'s run as its tracers record it.

    LangChain fixes a run's tags when it starts and offers no call to add more later, but its
    tracers keep the run object (``run_map``) until the run ends and send it then: the outcome is
    written there, before the run ends.
    """
    if run_manager is None:
        return
    tags = [f"aligner:{outcome.status}"] + ([f"aligner:{outcome.reason}"] if outcome.reason else [])
    metadata = {"aligner_status": outcome.status, "aligner_reason": outcome.reason}
    for handler in getattr(run_manager, "handlers", []):
        run_map = getattr(handler, "run_map", None)
        run = run_map.get(str(run_manager.run_id)) if isinstance(run_map, dict) else None
        if isinstance(run, Run):
            run.add_tags(tags)
            run.add_metadata(metadata)
