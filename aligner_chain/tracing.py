"""What happened to an answer, on the traced run itself: tags ``aligner:<status>`` (and
``aligner:<reason>`` when skipped or failed) and metadata ``aligner_status``/``aligner_reason``, so a
tracer (LangSmith, any ``BaseTracer``) shows it even where the output is a plain string.
"""

from __future__ import annotations

from typing import Any

from langchain_core.tracers.schemas import Run

from aligner_chain.backends.base import Outcome

__all__ = ["annotate_run"]


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
