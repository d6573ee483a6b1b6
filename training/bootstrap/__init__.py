"""Bootstrapping an upstream model from its own Aligner-corrected answers.

:func:`collect_preferences` (:mod:`.collect`) turns prompts into TRL preference and SFT rows;
:func:`run_bootstrap` (:mod:`.rounds`) runs whole rounds; the upstream model is served by
:mod:`.local_upstream` and trained by :mod:`.upstream_trainer`; :mod:`.command` is
``aligner-chain bootstrap``.
"""

from training.bootstrap.collect import answer_text, collect_preferences, load_prompts
from training.bootstrap.rounds import MANIFEST_FILE, read_manifest, run_bootstrap, split_prompts

__all__ = [
    "MANIFEST_FILE",
    "answer_text",
    "collect_preferences",
    "load_prompts",
    "read_manifest",
    "run_bootstrap",
    "split_prompts",
]
