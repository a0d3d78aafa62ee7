"""The Tune tab: move the threshold over a pair of trace tables and see cost and accuracy live."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

from corea.cascade import tuned_config
from corea.metrics import TracePair, evaluate_threshold, join_traces, summarize
from corea.plots import move_marker, pareto_figure, thin
from corea.thresholds import (min_calibration_questions, random_and_oracle_curves,
                              threshold_for_goal)
from corea.traces import TraceError, parse_trace_lines, read_trace
from corea.signals import with_signal
from corea.ui.common import SIGNAL_CHOICES, bundled_trace_pairs, signal_for_ui

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
CERTIFY_CONFIDENCE = 0.9
GOAL_LABELS = {
    "Lose at most X points of accuracy": "max_drop",
    "Spend at most $Y per 1,000 questions": "budget",
    "Send at most Z% of questions to the LLM": "llm_share",
}


@dataclass
class LoadedPair:
    """One visitor's trace pair and its precomputed report (kept in their session state)."""

    name: str
    pair: TracePair
    report: dict
    slm_model: str
    llm_model: str
    signal: str = "verbalized"
    # Built at the first slider position, then only their current-point markers move. Slider
    # events run one at a time per visitor (trigger_mode="always_last"), so no lock is needed.
    pareto: go.Figure | None = None
    deferral: go.Figure | None = None


def _read_upload(path: str, label: str) -> list[dict]:
    file = Path(path)
    if file.stat().st_size > MAX_UPLOAD_BYTES:
        raise gr.Error(f"the {label} file is over {MAX_UPLOAD_BYTES // 2**20} MB")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise gr.Error(f"the {label} file is not text: upload a JSONL trace table") from None
    try:
        rows = parse_trace_lines(text.splitlines(), f"{label} file")
    except TraceError as error:
        raise gr.Error(str(error)) from None
    if not rows:
        raise gr.Error(f"the {label} file has no rows")
    return rows


def load_pair(choice: str | None, slm_upload: str | None, llm_upload: str | None,
              signal: str = "verbalized") -> LoadedPair:
    if slm_upload or llm_upload:
        if not (slm_upload and llm_upload):
            raise gr.Error("upload both trace tables: the small model's and the large model's")
        slm_rows, llm_rows = _read_upload(slm_upload, "SLM"), _read_upload(llm_upload, "LLM")
        name = "uploaded traces"
    else:
        pairs = bundled_trace_pairs()
        if choice not in pairs:
            raise gr.Error("choose a bundled trace pair or upload two trace tables")
        slm_rows, llm_rows = (read_trace(p) for p in pairs[choice])
        name = choice
    try:
        pair = join_traces(with_signal(slm_rows, signal), llm_rows)
    except (TraceError, ValueError) as error:
        raise gr.Error(str(error)) from None
    return LoadedPair(name, pair, summarize(pair), slm_rows[0]["model"], llm_rows[0]["model"],
                      signal)


def metrics_markdown(loaded: LoadedPair, point: dict) -> str:
    report = loaded.report
    llm = report["llm_only"]
    lost = (llm["accuracy"] - point["accuracy"]) * 100
    relative = point["relative_cost"]
    saving = f"{(1 - relative):.1%}" if relative is not None else "—"
    return (
        f"**Threshold {point['threshold']:.2f}** on {len(loaded.pair)} questions ({loaded.name})\n\n"
        f"| accuracy | relative cost | saving | sent to LLM | accuracy lost vs LLM-only |\n"
        f"|---|---|---|---|---|\n"
        f"| {point['accuracy']:.1%} | {relative:.3f} | {saving} | {point['llm_share']:.1%} "
        f"| {lost:+.1f} pts |\n\n"
        f"LLM only: {llm['accuracy']:.1%} · SLM only: {report['slm_only']['accuracy']:.1%} · "
        f"cost ${point['cost'] * 1000:.4f} per 1,000 questions"
    )


def threshold_view(loaded: LoadedPair, threshold: float) -> tuple[go.Figure, str, dict, go.Figure]:
    """What moving the slider recomputes: the current point, both plots' markers, the numbers."""
    point = evaluate_threshold(loaded.pair, threshold)
    label = f"threshold {point['threshold']:.2f}"
    if loaded.pareto is None:
        loaded.pareto = pareto_figure(loaded.report, title="Cost vs accuracy", current=point)
        loaded.deferral = deferral_figure(loaded, point)
    else:
        move_marker(loaded.pareto, point["relative_cost"], point["accuracy"], label)
        move_marker(loaded.deferral, point["llm_share"], point["accuracy"], label)
    return loaded.pareto, metrics_markdown(loaded, point), point, loaded.deferral


def reliability_figure(report: dict, signal_label: str = "stated confidence") -> go.Figure:
    bins = [b for b in report["reliability"] if b["count"]]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                                line={"dash": "dash", "color": "#999"}))
    figure.add_trace(go.Bar(
        x=[(b["low"] + b["high"]) / 2 for b in bins], y=[b["accuracy"] for b in bins],
        width=0.09, name="accuracy in bin", marker_color="#1f5fa8",
        customdata=[[b["count"], b["confidence"]] for b in bins],
        hovertemplate="%{customdata[0]} answers, mean confidence %{customdata[1]:.2f}<br>"
                      "accuracy %{y:.2f}<extra></extra>"))
    auroc = report["auroc"]
    figure.update_layout(
        title=f"SLM reliability · ECE {report['ece']:.3f} · AUROC "
              f"{'—' if auroc is None else f'{auroc:.3f}'} · Brier {report['brier']:.3f}",
        xaxis_title=signal_label, yaxis_title="accuracy", template="plotly_white",
        xaxis_range=[0, 1], yaxis_range=[0, 1], legend={"orientation": "h", "y": -0.2})
    return figure


def deferral_figure(loaded: LoadedPair, point: dict | None = None) -> go.Figure:
    curves = random_and_oracle_curves(loaded.pair)
    points = thin(loaded.report["points"], key="llm_share")
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[p["llm_share"] for p in points], y=[p["accuracy"] for p in points],
                                mode="lines+markers", name="confidence", line={"color": "#1f5fa8"}))
    figure.add_trace(go.Scatter(x=curves["share"], y=curves["random"], mode="lines",
                                name="random deferral", line={"dash": "dot", "color": "#888"}))
    figure.add_trace(go.Scatter(x=curves["share"], y=curves["oracle"], mode="lines",
                                name="oracle", line={"dash": "dash", "color": "#2ca02c"}))
    if point:
        figure.add_trace(go.Scatter(
            x=[point["llm_share"]], y=[point["accuracy"]], mode="markers",
            name=f"threshold {point['threshold']:.2f}",
            marker={"size": 14, "symbol": "circle-open", "line": {"width": 3}, "color": "#000"}))
    figure.update_layout(title="Accuracy vs share sent to the LLM", xaxis_title="share deferred",
                         yaxis_title="accuracy", template="plotly_white", xaxis_tickformat=".0%",
                         legend={"orientation": "h", "y": -0.2})
    return figure


def propose(loaded: LoadedPair, goal_label: str, value: float,
            certify: bool = False) -> tuple[float, str]:
    """The threshold for a goal; with `certify` (accuracy goal only), the one Learn-then-Test
    certifies for new questions at CERTIFY_CONFIDENCE, rather than the best on these."""
    goal = GOAL_LABELS.get(goal_label)
    if goal is None:
        raise gr.Error("choose a goal")
    if value is None or value < 0:
        raise gr.Error("the goal needs a non-negative number")
    amount = {"max_drop": value / 100, "budget": value, "llm_share": value / 100}[goal]
    if certify and goal != "max_drop":
        raise gr.Error("a guarantee certifies accuracy lost: choose the first goal to use it")
    if certify and not 0 < amount < 1:
        raise gr.Error("a certified loss lies strictly between 0 and 100 points")
    point = threshold_for_goal(loaded.pair, goal, amount, CERTIFY_CONFIDENCE if certify else None)
    certified = f", certified at {CERTIFY_CONFIDENCE:.0%} confidence" if certify else ""
    if point is None:
        needed = "" if not certify else (
            " A certificate needs at least "
            f"{min_calibration_questions(amount, 1 - CERTIFY_CONFIDENCE)} questions even when "
            "nothing is lost.")
        return gr.skip(), (f"No threshold meets “{goal_label}” with {value:g}{certified} on "
                           f"these {len(loaded.pair)} questions.{needed}")
    threshold = min(point["threshold"], 1.0)
    note = "" if point["threshold"] <= 1.0 else " (every question deferred)"
    return threshold, (f"Proposed threshold **{threshold:.3f}**{note} for “{goal_label}” = "
                       f"{value:g}{certified}: accuracy {point['accuracy']:.1%}, "
                       f"{point['llm_share']:.1%} sent to the LLM.")


def export_config(loaded: LoadedPair, threshold: float) -> str:
    """A cascade config JSON that `python -m corea ask/serve --config` read."""
    config = tuned_config(loaded.slm_model, loaded.llm_model, threshold, loaded.signal)
    folder = Path(tempfile.mkdtemp(prefix="corea-config-"))
    path = folder / "cascade.json"
    config.save(path)
    return str(path)


def build_tune_tab(demo: gr.Blocks) -> None:
    """The tab's components and events (inside a gr.Blocks context)."""
    pairs = list(bundled_trace_pairs())
    state = gr.State(None)
    gr.Markdown("Run your models over your questions once (`python -m corea trace`), then choose "
                "the threshold here. Moving the slider recomputes from the trace tables only.")
    with gr.Row():
        choice = gr.Dropdown(pairs, value=pairs[0] if pairs else None, label="Bundled trace pair",
                             info="smollm2 → qwen on each task")
        slm_upload = gr.File(label="…or upload the SLM trace (JSONL)", file_types=[".jsonl"])
        llm_upload = gr.File(label="…and the LLM trace (JSONL)", file_types=[".jsonl"])
        load_button = gr.Button("Load", variant="secondary")
    with gr.Row():
        threshold = gr.Slider(0, 1, value=0.8, step=0.01, label="Threshold",
                              elem_id="tune-threshold", scale=3,
                              info="the SLM keeps its answer when its confidence ≥ threshold")
        signal = gr.Radio(list(SIGNAL_CHOICES), value="stated confidence", scale=2,
                          label="SLM confidence is",
                          info="token signals need an SLM trace made with --logprobs")
    numbers = gr.Markdown(elem_id="tune-numbers")
    with gr.Accordion("Current point as JSON", open=False):
        point_json = gr.JSON(label="current point")
    with gr.Row():
        pareto = gr.Plot(label="Pareto", elem_id="tune-pareto")
        deferral = gr.Plot(label="Deferral")
    with gr.Row():
        reliability = gr.Plot(label="Calibration")
        with gr.Column():
            goal = gr.Radio(list(GOAL_LABELS), value=list(GOAL_LABELS)[0], label="Goal")
            goal_value = gr.Number(value=2, label="X / Y / Z", info="points, $ per 1k, or percent")
            certify = gr.Checkbox(label=f"Certify it for new questions ({CERTIFY_CONFIDENCE:.0%} "
                                        "confidence, Learn-then-Test; accuracy goal)")
            propose_button = gr.Button("Propose threshold")
            proposal = gr.Markdown()
            export_button = gr.Button("Export cascade config")
            exported = gr.File(label="cascade.json", interactive=False)

    def on_load(choice, slm_file, llm_file, value, signal_label="stated confidence"):
        loaded = load_pair(choice, slm_file, llm_file, signal_for_ui(signal_label))
        figure, text, point, deferral = threshold_view(loaded, value)
        return (loaded, figure, text, point, deferral,
                reliability_figure(loaded.report, signal_label))

    def on_slide(loaded, value):
        if loaded is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return threshold_view(loaded, value)

    def on_propose(loaded, goal_label, value, certify_it=False):
        if loaded is None:
            raise gr.Error("load a trace pair first")
        return propose(loaded, goal_label, value, certify_it)

    def on_export(loaded, value):
        if loaded is None:
            raise gr.Error("load a trace pair first")
        return export_config(loaded, value)

    load_outputs = [state, pareto, numbers, point_json, deferral, reliability]
    load_inputs = [choice, slm_upload, llm_upload, threshold, signal]
    load_button.click(on_load, load_inputs, load_outputs, api_name="tune_load",
                      concurrency_limit=4)
    gr.on([choice.change, signal.change, demo.load], on_load, load_inputs, load_outputs,
          api_visibility="private", concurrency_limit=4)
    threshold.change(on_slide, [state, threshold], [pareto, numbers, point_json, deferral],
                     api_name="tune_threshold", concurrency_limit=8, show_progress="hidden",
                     trigger_mode="always_last")
    propose_button.click(on_propose, [state, goal, goal_value, certify], [threshold, proposal],
                         api_name="tune_propose")
    export_button.click(on_export, [state, threshold], exported, api_name="tune_export")
