"""Sweeps: a study file's cells run over seeds, and the paper-style table they make.

study.py declares (Study, Pretraining, Row, Column, Plot) and expands a study into
jobs; runner.py runs them (local processes, resumable) or prints them as commands;
stats.py is the statistics of a table; report.py writes table.md/.csv/.tex, the plots
and provenance.json. `t5x-lite sweep` and `t5x_lite.api.sweep` are the entry points.
"""

from t5x_lite.sweep.study import Column, Plot, Pretraining, Row, Study

__all__ = ["Column", "Plot", "Pretraining", "Row", "Study"]
