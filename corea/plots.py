"""Plotly figures: a sweep report's Pareto plot and a training run's curves (the CLI writes them
as HTML; the app shows them live)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

MAX_PLOTTED_POINTS = 400  # more are indistinguishable on screen and slow to send on every move


def thin(points: list[dict], key: str = "cost", limit: int = MAX_PLOTTED_POINTS) -> list[dict]:
    """At most `limit` points, evenly spread along `key`, keeping both ends."""
    if len(points) <= limit:
        return points
    ordered = sorted(points, key=lambda p: p[key])
    keep = np.unique(np.linspace(0, len(ordered) - 1, limit).round().astype(int))
    return [ordered[i] for i in keep]


def pareto_figure(report: dict, title: str = "Cascade cost vs accuracy",
                  current: dict | None = None) -> go.Figure:
    """Accuracy against cost relative to LLM-only, every threshold, the frontier highlighted."""
    points = thin(report["points"])
    rel = [p["relative_cost"] for p in points]
    figure = go.Figure()
    figure.add_trace(go.Scatter(
        x=rel, y=[p["accuracy"] for p in points], mode="markers", name="thresholds",
        marker={"size": 6, "color": "#9db4d0"},
        customdata=[[p["threshold"], p["llm_share"]] for p in points],
        hovertemplate="threshold %{customdata[0]:.3f}<br>accuracy %{y:.3f}<br>"
                      "relative cost %{x:.3f}<br>to LLM %{customdata[1]:.1%}<extra></extra>",
    ))
    frontier = thin([p for p in report["points"] if p.get("on_frontier")])
    if frontier:
        figure.add_trace(go.Scatter(
            x=[p["relative_cost"] for p in frontier], y=[p["accuracy"] for p in frontier],
            mode="lines+markers", name="Pareto frontier", line={"color": "#1f5fa8"},
            hoverinfo="skip"))
    for label, key, color in (("SLM only", "slm_only", "#2ca02c"), ("LLM only", "llm_only", "#d62728")):
        anchor = report[key]
        figure.add_trace(go.Scatter(
            x=[anchor["relative_cost"]], y=[anchor["accuracy"]], mode="markers+text",
            name=label, text=[label], textposition="top center",
            marker={"size": 12, "symbol": "diamond", "color": color}))
    best = report.get("best_within_2pt")
    if best:
        figure.add_trace(go.Scatter(
            x=[best["relative_cost"]], y=[best["accuracy"]], mode="markers", name="best within 2 pt",
            marker={"size": 14, "symbol": "star", "color": "#ff7f0e"}))
    if current:
        figure.add_trace(go.Scatter(
            x=[current["relative_cost"]], y=[current["accuracy"]], mode="markers",
            name=f"threshold {current['threshold']:.2f}",
            marker={"size": 16, "symbol": "circle-open", "line": {"width": 3}, "color": "#000"}))
    figure.update_layout(title=title, xaxis_title="cost relative to LLM only",
                         yaxis_title="accuracy", template="plotly_white",
                         legend={"orientation": "h", "y": -0.2})
    return figure


def move_marker(figure: go.Figure, x: float, y: float, name: str) -> go.Figure:
    """Move a figure's current-point marker (its last trace) without rebuilding the figure:
    rebuilding costs tens of milliseconds, moving one marker a fraction of one."""
    figure.data[-1].update(x=[x], y=[y], name=name)
    return figure


# Training curves, from the JSON Lines log that `python -m training grpo` writes.

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
