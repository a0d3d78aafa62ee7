"""The Gradio demo: ask through the cascade, tune the threshold on trace tables, run a batch,
train the small model and watch its curves."""

from __future__ import annotations

import gradio as gr

from corea.ui.ask import build_ask_tab
from corea.ui.batch import build_batch_tab
from corea.ui.memory import build_memory_tab
from corea.ui.training import build_training_tab
from corea.ui.tune import build_tune_tab

INTRO = """# corea — a small model answers first; the unsure go to a large one
The small model (SLM) states a confidence with its answer. Below the threshold the question is
deferred to the large model (LLM), and both calls are paid. Runs offline on two embedded models:
SmolLM2-135M-Instruct (SLM) and Qwen2.5-Coder-1.5B-Instruct (LLM)."""


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="corea: confidence-routed cascades") as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Ask", id="ask"):
                build_ask_tab()
            with gr.Tab("Tune the threshold", id="tune"):
                build_tune_tab(demo)
            with gr.Tab("Run a batch", id="batch"):
                build_batch_tab()
            with gr.Tab("Training", id="training"):
                build_training_tab()
            with gr.Tab("Memory", id="memory"):
                build_memory_tab()
    # Model work runs one request at a time (2 CPU cores); the queue bounds how many wait.
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo
