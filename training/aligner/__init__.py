"""Aligner fine-tuning: question/answer/correction data (:mod:`.data`), settings (:mod:`.config`),
the identity warm-up then residual training (:mod:`.trainer`), the ``aligner-chain train`` command
(:mod:`.command`), YAML recipes (``recipes/``) and accelerate configs (``accelerate/``)."""
