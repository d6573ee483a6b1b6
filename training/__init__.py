"""Training side of aligner-chain: data, Aligner fine-tuning, bootstrapping and evaluation.

Needs the ``train`` extra: ``pip install "aligner-chain[train]"``.
"""
