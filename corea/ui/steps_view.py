"""The Ask tab's view of step-level routing: the reply with each step coloured by its writer."""

from __future__ import annotations

import html

from corea.steps import DEFAULT_ROUTER_DIR, StepConfig

ROUTING_CHOICES = ("per question", "per step")
WRITER_COLOURS = {"slm": "#d4edda", "llm": "#d6e4ff"}  # green: small model, blue: large model


def step_config_for_ui() -> StepConfig:
    """The shipped learned policy when it is there, else STEER's token-probability rule."""
    if (DEFAULT_ROUTER_DIR / "learned.json").is_file():
        return StepConfig(router="learned")
    return StepConfig(router="threshold")


def routed_html(steps: list[dict], slm_name: str, llm_name: str) -> str:
    """The reply so far, one span per step, coloured by the model that wrote it; hovering shows
    the router's score of the SLM's step (or of the draft the LLM's step replaced)."""
    if not steps:
        return ""
    spans = []
    for step in steps:
        writer = "slm" if step["model"] == slm_name else "llm"
        if step.get("confidence") is not None:
            title = f"{step['model']}: kept, score {step['confidence']:.2f}"
        elif step.get("draft_confidence") is not None:
            title = f"{step['model']}: replaced a draft scored {step['draft_confidence']:.2f}"
        else:
            title = step["model"]
        if step.get("cut"):
            title += " (cut: no step end within its budget)"
        spans.append(f'<span class="corea-step" data-writer="{writer}" title="{html.escape(title)}"'
                     f' style="background:{WRITER_COLOURS[writer]};border-radius:3px;'
                     f'white-space:pre-wrap">{html.escape(step["text"])}</span>')
    legend = (f'<small><span style="background:{WRITER_COLOURS["slm"]}">&nbsp;'
              f'{html.escape(slm_name)}&nbsp;</span> '
              f'<span style="background:{WRITER_COLOURS["llm"]}">&nbsp;'
              f'{html.escape(llm_name)}&nbsp;</span></small>')
    body = "".join(spans)
    return f'<div id="corea-routed">{legend}<div style="margin-top:4px">{body}</div></div>'


def routed_decision(result, slm_name: str, llm_name: str) -> str:
    """What step routing did with the question, in a line or two of markdown."""
    reply = result.routed
    shares = reply.step_shares()
    by_model = reply.totals()["by_model"]
    lines = [f"**Routed per step**: {len(reply.steps)} steps, "
             f"{100 * shares.get(slm_name, 0):.0f}% by {slm_name}, "
             f"{100 * shares.get(llm_name, 0):.0f}% by {llm_name}; {reply.switches} switch(es)"
             + (f", {reply.cut_steps} cut step(s)" if reply.cut_steps else "") + ".",
             f"Answer **{result.answer or '—'}**. Total: ${result.cost:.8f} ("
             + ", ".join(f"{name} ${entry['cost']:.8f}" for name, entry in by_model.items())
             + f"), {result.latency_s:.1f} s of model time."]
    if reply.fallback:
        lines.append(f"{llm_name} failed mid-question; {slm_name} finished the reply "
                     "(fallback).")
    return "\n\n".join(lines)
