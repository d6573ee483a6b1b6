"""Training side of aligner-chain (``pip install "aligner-chain[train]"``), one subpackage per concern:

* :mod:`training.aligner`: fine-tuning Aligners (data, ``TrainConfig``, the trainer, YAML recipes,
  accelerate configs) and the ``aligner-chain train`` command;
* :mod:`training.bootstrap`: upstream answers -> Aligner corrections -> preference data -> the upstream
  trained on them, round after round, and the ``aligner-chain bootstrap`` command;
* :mod:`training.evaluation`: judge-based win rates (omega), a reward-model judge, and
  ``aligner-chain eval``;
* :mod:`training.common`: plumbing the others share (reading rows, crash-safe logs, retried calls);
* :mod:`training.demo`: the synthetic tasks and tiny models that the demo and the tests build offline.
"""
