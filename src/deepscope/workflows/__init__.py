"""Workflows above the trainer: the diagnosis run (:mod:`.run`), its repair (:mod:`.repair`, with the trials of
:mod:`.trials`) and the ``doctor`` verb that runs them (:mod:`.doctor`)."""
