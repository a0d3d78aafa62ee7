"""The Batch tab: the cascade over N questions of a task, live."""

from __future__ import annotations

import gradio as gr
import plotly.graph_objects as go

from corea.cascade import Cascade, Tier
from corea.costs import resolve_price
from corea.models import GenerationConfig, ModelError
from corea.tasks import BUILTIN_TASKS, get_task
from corea.ui.common import (SIGNAL_CHOICES, gpu, llm_choices, load_for_ui, served_as,
                             serving_for_ui, signal_for_ui, slm_choices)

HEADERS = ["id", "gold", "answer", "SLM confidence", "answered by", "correct", "cost (USD)"]
MAX_QUESTIONS = 50


def running_figure(correct: list[bool], deferred: list[bool], costs: list[float]) -> go.Figure:
    steps = list(range(1, len(correct) + 1))
    accuracy = [sum(correct[:i]) / i for i in steps]
    share = [sum(deferred[:i]) / i for i in steps]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=steps, y=accuracy, mode="lines+markers", name="accuracy"))
    figure.add_trace(go.Scatter(x=steps, y=share, mode="lines+markers", name="share deferred"))
    figure.update_layout(title=f"After {len(correct)} questions: total ${sum(costs):.6f}",
                         xaxis_title="questions", yaxis_range=[0, 1], template="plotly_white",
                         legend={"orientation": "h", "y": -0.2})
    return figure


@gpu
def run_batch(task_name, count, slm, llm, endpoint_model, token, threshold,
              signal_label="stated confidence", progress=gr.Progress()):
    if task_name not in BUILTIN_TASKS:
        raise gr.Error(f"unknown task {task_name!r}")
    count = int(count)
    if not 1 <= count <= MAX_QUESTIONS:
        raise gr.Error(f"choose between 1 and {MAX_QUESTIONS} questions")
    task = get_task(task_name)
    examples = task.examples(limit=count)
    signal = signal_for_ui(signal_label)
    slm_model = load_for_ui(slm, signal=signal)
    llm_model = load_for_ui(llm, endpoint_model, token)
    cascade = Cascade([Tier(slm_model, float(threshold), resolve_price(slm_model.name), signal),
                       Tier(llm_model, None, resolve_price(llm_model.name))],
                      GenerationConfig(max_new_tokens=320))
    rows, correct, deferred, costs = [], [], [], []
    progress(0, desc="starting")
    for index, example in enumerate(examples):
        try:
            result = cascade.answer_batch([example.question], hint=task.hint,
                                          golds=[example.gold], checker=task.checker)[0]
        except ModelError as error:
            raise gr.Error(str(error)) from None
        first = result.steps[0]
        correct.append(bool(result.correct))
        deferred.append(len(result.steps) > 1)
        costs.append(result.cost)
        rows.append([example.id, example.gold, result.answer or "—",
                     "—" if first.confidence is None else round(first.confidence, 3),
                     result.answered_by, "✓" if result.correct else "✗", round(result.cost, 8)])
        progress((index + 1) / len(examples), desc=f"{index + 1}/{len(examples)}")
        summary = (f"**{index + 1}/{len(examples)}** · accuracy {sum(correct) / len(correct):.1%} · "
                   f"deferred {sum(deferred) / len(deferred):.1%} · cost ${sum(costs):.6f}")
        yield rows, running_figure(correct, deferred, costs), summary


def build_batch_tab() -> None:
    """The tab's components and events (inside a gr.Blocks context)."""
    label, served = serving_for_ui(slm_choices()[0])
    with gr.Row():
        task = gr.Dropdown(list(BUILTIN_TASKS), value="arith", label="Task")
        count = gr.Slider(1, MAX_QUESTIONS, value=10, step=1, label="Questions")
        threshold = gr.Slider(0, 1, value=served, step=0.01, label="Threshold")
        signal = gr.Radio(list(SIGNAL_CHOICES), value=label,
                          label="SLM confidence is")
    with gr.Row():
        slm = gr.Dropdown(slm_choices(), value=slm_choices()[0], allow_custom_value=True,
                          label="Small model (SLM)")
        llm = gr.Dropdown(llm_choices(), value=llm_choices()[0], allow_custom_value=True,
                          label="Large model (LLM)")
        endpoint_model = gr.Textbox(label="Endpoint model name")
        token = gr.Textbox(label="Endpoint token", type="password")
    slm.change(served_as, [slm], [signal, threshold])
    button = gr.Button("Run batch", variant="primary")
    summary = gr.Markdown()
    plot = gr.Plot(label="Running accuracy and deferrals")
    table = gr.Dataframe(headers=HEADERS, label="Questions", interactive=False)
    button.click(run_batch, [task, count, slm, llm, endpoint_model, token, threshold, signal],
                 [table, plot, summary], api_name="run_batch", concurrency_limit=1,
                 concurrency_id="models")
