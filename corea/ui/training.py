"""The Training tab: reward, calibration-reward and ECE curves of calibration runs, from their logs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gradio as gr

from corea.plots import read_log, training_figure
from corea.ui.common import ADAPTERS_DIR, REPO_ROOT

LOG_FILE, RUN_FILE = "train_log.jsonl", "run.json"
# Where runs are looked for: the shipped adapters and local runs (COREA_RUNS_DIR overrides).
RUNS_DIR = Path(os.environ.get("COREA_RUNS_DIR") or REPO_ROOT / "runs")


def training_runs() -> dict[str, Path]:
    runs = {}
    for root in (ADAPTERS_DIR, RUNS_DIR):
        if root.is_dir():
            for log in sorted(root.glob(f"*/{LOG_FILE}")):
                runs[str(log.parent.relative_to(root.parent))] = log.parent
    return runs


def run_summary(run_dir: Path) -> str:
    path = run_dir / RUN_FILE
    if not path.is_file():
        return "_No run record yet (the run is still going, or was not started by corea)._"
    run = json.loads(path.read_text())
    config = run.get("config", {})
    lines = [f"**{run.get('base_model', '?')}**, {run.get('steps', '?')} steps, reward "
             f"{config.get('confidence_reward', '?')}, tasks {', '.join(config.get('tasks', []))}"]
    before, after = run.get("before"), run.get("after")
    if before and after:
        lines += ["", "| held-out | accuracy | ECE | AUROC | Brier |", "|---|---|---|---|---|"]
        fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        for name in after:
            b, a = before[name], after[name]
            lines.append(f"| {name} | {fmt(b['accuracy'])} → {fmt(a['accuracy'])} | "
                         f"{fmt(b['ece'])} → {fmt(a['ece'])} | {fmt(b['auroc'])} → "
                         f"{fmt(a['auroc'])} | {fmt(b['brier'])} → {fmt(a['brier'])} |")
    return "\n".join(lines)


def show_run(name: str):
    runs = training_runs()
    if name not in runs:
        raise gr.Error("choose a training run")
    log = read_log(runs[name] / LOG_FILE)
    if not log:
        raise gr.Error(f"{name} has no logged steps yet")
    return training_figure(log), run_summary(runs[name])


def build_training_tab() -> None:
    """The tab's components and events (inside a gr.Blocks context)."""
    names = list(training_runs())
    gr.Markdown("Runs of `python -m training grpo`: shipped adapters and local runs under `runs/`.")
    with gr.Row():
        run = gr.Dropdown(names, value=names[0] if names else None, label="Training run")
        refresh = gr.Button("Refresh")
    summary = gr.Markdown()
    curves = gr.Plot(label="Training curves")
    run.change(show_run, run, [curves, summary], api_name="training_run")
    refresh.click(lambda: gr.update(choices=list(training_runs())), None, run,
                  api_visibility="private")
