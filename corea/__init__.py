"""corea: a small model answers first, with a stated confidence; the unsure go to a large one."""

__version__ = "0.1.0"
