"""Fixtures for the demo, the examples and the tests, built offline: a synthetic correction task
where the question matters (:mod:`.synthetic`) and tiny models trained from scratch (:mod:`.tiny_model`)."""
