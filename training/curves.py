"""Training curves from a run's JSON Lines log: rewards by component, calibration, length."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

PANELS = (
    ("Reward", ("reward", "rewards/format_reward/mean", "rewards/correctness_reward/mean",
                "rewards/brier_reward/mean", "rewards/group_l1_reward/mean")),
    ("Calibration of the batch", ("calibration/ece", "calibration/accuracy",
                                  "calibration/mean_confidence", "calibration/format_rate")),
    ("Completion length (tokens)", ("completions/mean_length",)),
)


def read_log(path: str | Path) -> list[dict]:
    """The log's entries; a line cut off by an interrupted run is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "step" in entry:
            entries.append(entry)
    return entries


def training_figure(log: list[dict]) -> go.Figure:
    figure = make_subplots(rows=1, cols=len(PANELS), subplot_titles=[p[0] for p in PANELS])
    for column, (_, keys) in enumerate(PANELS, start=1):
        for key in keys:
            points = [(e["step"], e[key]) for e in log if isinstance(e.get(key), (int, float))]
            if points:
                figure.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points],
                                            mode="lines+markers", name=key), row=1, col=column)
    figure.update_xaxes(title_text="step")
    figure.update_layout(template="plotly_white", height=420, legend={"orientation": "h", "y": -0.25})
    return figure
