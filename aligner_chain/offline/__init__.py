"""Correcting many rows at once: the JSONL row format, a resumable output in input order, a
single-process engine that keeps requests in flight, and (with the ``ray`` extra) Ray Data.

Importing this package loads nothing heavy; :mod:`aligner_chain.offline.ray_data` imports Ray and
is only imported when a Ray engine is asked for.
"""
