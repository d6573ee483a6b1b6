"""Plumbing shared by the training subpackages: reading rows from files, directories and the hub
(:mod:`.records`), crash-safe logs keyed by work item (:mod:`.resumable`), and retried, bounded
concurrent calls (:mod:`.concurrency`)."""
