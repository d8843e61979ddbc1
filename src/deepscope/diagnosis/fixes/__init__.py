"""Candidate fixes, as data: spec transforms (:mod:`.spec`) and module surgery (:mod:`.module`)."""

from deepscope.diagnosis.fixes.spec import *  # noqa: F403
from deepscope.diagnosis.fixes.spec import __all__  # noqa: F401
