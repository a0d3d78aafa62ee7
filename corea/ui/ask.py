"""The Ask tab: one question through the cascade, streamed, with each tier's decision."""

from __future__ import annotations

import html

import gradio as gr

from corea.cascade import Cascade, Tier
from corea.costs import resolve_price
from corea.models import GenerationConfig, ModelError
from corea.program import ProgramAidedModel
from corea.protocol import validate_question
from corea.tasks import HINTS, get_task
from corea.ui.common import (SIGNAL_CHOICES, gpu, llm_choices, load_for_ui, served_as,
                             serving_for_ui, signal_for_ui, slm_choices)
from corea.ui.memory import lesson_markdown, memory_for, recall_markdown
from corea.ui.steps_view import ROUTING_CHOICES, routed_decision, routed_html, step_config_for_ui

ANSWER_KINDS = {"a number": "numeric", "yes or no": "yesno", "free text": "exact"}
STEP_HEADERS = ["tier", "model", "answer", "confidence", "decision", "tokens in", "tokens out",
                "cost (USD)", "time (s)"]


def example_questions() -> list[list[str]]:
    picks = [("gsm8k", "test", "a number"), ("svamp", "test", "a number"),
             ("strategyqa", "dev", "yes or no"), ("arith-1", "test", "a number"),
             ("arith-2", "test", "a number")]
    return [[get_task(name).examples(split, 1)[0].question, kind] for name, split, kind in picks]


def confidence_bar(confidence: float | None, threshold: float,
                   signal_label: str = "stated confidence") -> str:
    """A bar of the SLM's confidence (by the chosen signal) with the threshold marked on it."""
    value = 0.0 if confidence is None else confidence
    color = "#2ca02c" if value >= threshold else "#d62728"
    if confidence is not None:
        label = f"{signal_label} {value:.2f}"
    elif signal_label == "stated confidence":
        label = "no confidence stated (format failure: counts as 0)"
    else:
        label = f"no answer to take the {signal_label} of (counts as 0)"
    return (
        f'<div class="corea-bar" data-confidence="{value:.4f}" style="position:relative;height:22px;'
        f'background:#eee;border-radius:4px;margin:4px 0">'
        f'<div style="width:{value * 100:.1f}%;height:100%;background:{color};border-radius:4px"></div>'
        f'<div title="threshold" style="position:absolute;top:-3px;left:{threshold * 100:.1f}%;'
        f'width:3px;height:28px;background:#000"></div></div>'
        f'<small>{html.escape(label)} · threshold {threshold:.2f}</small>'
    )


def _step_row(step) -> list:
    confidence = step.confidence
    return [step.tier, step.model, step.parsed.answer or "—",
            "—" if confidence is None else round(confidence, 3), step.decision,
            step.generation.prompt_tokens, step.generation.completion_tokens,
            round(step.cost, 8), round(step.generation.latency_s, 2)]


@gpu
def ask(question, slm, llm, endpoint_model, token, threshold, answer_kind,
        signal_label="stated confidence", use_memory=False, memory_store="",
        memory_namespace="default", routing="per question", max_new_tokens=320):
    """Stream the cascade: yields (SLM text, confidence bar, decision, LLM text, steps table).
    With memory, the decision also shows the strategies the SLM was given and what was learned."""
    try:
        question = validate_question(question)
    except ValueError as error:
        raise gr.Error(str(error)) from None
    signal = signal_for_ui(signal_label)
    per_step = routing == "per step"
    # Step routing reads the SLM's token probabilities, as the token signals do.
    slm_model = load_for_ui(slm, signal="answer_probability" if per_step else signal)
    llm_model = load_for_ui(llm, endpoint_model, token)
    by_program = all(isinstance(m, ProgramAidedModel) for m in (slm_model, llm_model))
    memory = memory_for(memory_store, memory_namespace, by_program) if use_memory else None
    cascade = Cascade([Tier(slm_model, float(threshold), resolve_price(slm_model.name), signal),
                       Tier(llm_model, None, resolve_price(llm_model.name))],
                      GenerationConfig(max_new_tokens=int(max_new_tokens), stop_when_done=True),
                      memory, step=step_config_for_ui() if per_step else None)
    texts, bar, decision, rows = ["", ""], confidence_bar(None, threshold), "", []
    routed, written = "", []  # per step: the reply coloured by the model that wrote each step
    given = ""  # the strategies memory gave the SLM
    try:
        for event in cascade.events(question, hint=HINTS[ANSWER_KINDS.get(answer_kind, "exact")]):
            if event["type"] == "memory":
                given = recall_markdown(event["recall"])
            elif event["type"] == "delta":
                texts[event["tier"] - 1] = event["text"]
            elif event["type"] == "route_step":
                texts[0] = event["text"]
                written.append(event["step"])
                routed = routed_html(written, slm_model.name, llm_model.name)
            elif event["type"] == "step" and per_step:
                rows.append(_step_row(event["step"]))
            elif event["type"] == "step":
                step = event["step"]
                rows.append(_step_row(step))
                if step.tier == 1:
                    bar = confidence_bar(step.confidence, threshold, signal_label)
                    decision = (f"**Kept** by {step.model}: answer **{step.parsed.answer}**"
                                if step.decision == "kept" else
                                f"**Deferred** to {llm_model.name} (confidence "
                                f"{step.deferral_confidence:.2f} < threshold {threshold:.2f})…")
                else:
                    decision += f" {llm_model.name} answers **{step.parsed.answer or '—'}**."
            elif event["type"] == "done":
                result = event["result"]
                decision += (f"\n\nTotal: ${result.cost:.8f}, {result.latency_s:.1f} s of model time")
                decision += lesson_markdown(result)
                if per_step:
                    decision = routed_decision(result, slm_model.name, llm_model.name)
            yield texts[0], bar, given + decision, texts[1], rows, routed
    except ModelError as error:
        raise gr.Error(str(error)) from None


def build_ask_tab() -> None:
    """The tab's components and events (inside a gr.Blocks context)."""
    label, served = serving_for_ui(slm_choices()[0])
    with gr.Row():
        with gr.Column(scale=2):
            question = gr.Textbox(label="Question", lines=3, max_length=4000,
                                  placeholder="Type a question, or pick an example below")
            answer_kind = gr.Radio(list(ANSWER_KINDS), value="a number", label="Answer is")
            threshold = gr.Slider(0, 1, value=served, step=0.01, label="Threshold",
                                  info="defer to the LLM when the SLM's confidence is below it")
            signal = gr.Radio(list(SIGNAL_CHOICES), value=label,
                              label="SLM confidence is",
                              info="what it states, or how probable its answer's tokens were")
            routing = gr.Radio(list(ROUTING_CHOICES), value="per question", label="Route",
                               info="per step: the SLM drafts each step, the LLM writes the "
                                    "steps the SLM is unsure of (threshold on the step score)")
            button = gr.Button("Ask", variant="primary")
        with gr.Column(scale=1):
            slm = gr.Dropdown(slm_choices(), value=slm_choices()[0], allow_custom_value=True,
                              label="Small model (SLM)",
                              info="embedded, shipped adapter, Hub id or local path")
            llm = gr.Dropdown(llm_choices(), value=llm_choices()[0], allow_custom_value=True,
                              label="Large model (LLM)",
                              info="embedded, Hub id, local path, or endpoint http(s)://…/v1")
            endpoint_model = gr.Textbox(label="Endpoint model name", placeholder="for an endpoint")
            token = gr.Textbox(label="Endpoint token", type="password",
                               info="used for this request only; never stored or shown")
            with gr.Accordion("Strategy memory", open=False):
                use_memory = gr.Checkbox(label="Give the SLM strategies from memory",
                                         info="and let a deferred question's LLM answer add one")
                memory_store = gr.Textbox(label="Store", value="",
                                          placeholder="empty: the app's store")
                memory_namespace = gr.Textbox(label="Namespace", value="default")
    gr.Examples(example_questions(), [question, answer_kind], label="Examples")
    with gr.Row():
        with gr.Column():
            slm_text = gr.Textbox(label="SLM reasoning", lines=8, elem_id="ask-slm")
            bar = gr.HTML(label="SLM confidence", elem_id="ask-bar")
            decision = gr.Markdown(elem_id="ask-decision")
        llm_text = gr.Textbox(label="LLM reasoning (when deferred)", lines=8, elem_id="ask-llm")
    routed = gr.HTML(label="Steps by writer", elem_id="ask-routed")
    slm.change(served_as, [slm], [signal, threshold])
    steps = gr.Dataframe(headers=STEP_HEADERS, label="Per tier", interactive=False)
    button.click(ask, [question, slm, llm, endpoint_model, token, threshold, answer_kind, signal,
                       use_memory, memory_store, memory_namespace, routing],
                 [slm_text, bar, decision, llm_text, steps, routed], api_name="ask",
                 concurrency_limit=1,
                 concurrency_id="models")
