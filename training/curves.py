"""Temporary alias kept for a run started before the move to corea.plots."""
from corea.plots import read_log, training_figure  # noqa: F401
