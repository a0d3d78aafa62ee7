"""How soon the Ask tab shows something: time to the first streamed token and to the final answer
for each of the app's example questions, on a warm app.

    COREA_THREADS=1 .venv/bin/python benchmarks/ask_latency.py

Builds the real app (corea.ui.build_demo), takes the function its Ask button calls (the streaming
generator Gradio runs on a click) with the defaults of the tab's controls, warms it with one
question sent to both tiers (threshold 1, so both models are loaded and have run once, as on an
app that has answered before), then runs each example question through it and times each update
it yields: the first SLM token, the deferral (when the SLM's confidence is below the threshold),
the LLM's first token, and the final update. Gradio's own transport is not included (a few ms on
127.0.0.1). Writes the figures to benchmarks/results/ask_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corea.ui import build_demo  # noqa: E402
from corea.ui.ask import example_questions  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "ask_latency.json"
WARM_QUESTION = "What is 2 + 3?"


def ask_handler(demo):
    """The Ask button's function and the values its inputs start with in the page."""
    for block_fn in demo.fns.values():
        if block_fn.api_name == "ask":
            return block_fn.fn, block_fn.inputs
    raise LookupError("the app has no 'ask' event")


def timed_click(fn, values: list) -> dict:
    """Run one click's generator to its end, timing what it yields. Outputs: (SLM text, bar,
    decision, LLM text, steps, routed)."""
    start = time.perf_counter()
    marks = {"first_update_s": None, "first_token_s": None, "deferral_shown_s": None,
             "first_llm_token_s": None}
    updates, last = 0, None
    for last in fn(*values):
        now = time.perf_counter() - start
        updates += 1
        slm_text, _, decision, llm_text = last[:4]
        for key, seen in (("first_update_s", True), ("first_token_s", bool(slm_text)),
                          ("deferral_shown_s", "Deferred" in (decision or "")),
                          ("first_llm_token_s", bool(llm_text))):
            if seen and marks[key] is None:
                marks[key] = now
    final_s = time.perf_counter() - start
    decision = last[2] if last else ""
    return {**marks, "final_answer_s": final_s, "updates": updates,
            "deferred": marks["deferral_shown_s"] is not None,
            "decision": decision.split("\n")[0][:200]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threshold", type=float, default=None,
                        help="the Ask tab's threshold (default: the slider's starting value)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M")
    start = time.perf_counter()
    demo = build_demo()
    build_s = time.perf_counter() - start
    fn, inputs = ask_handler(demo)
    names = [getattr(component, "label", None) or type(component).__name__ for component in inputs]
    # An empty textbox is sent as "" by the page (its component's value is None).
    defaults = ["" if component.value is None and type(component).__name__ == "Textbox"
                else component.value for component in inputs]
    position = {name: index for index, name in enumerate(names)}
    if args.threshold is not None:
        defaults[position["Threshold"]] = args.threshold

    def values(question: str, kind: str, threshold: float | None = None) -> list:
        chosen = list(defaults)
        chosen[position["Question"]], chosen[position["Answer is"]] = question, kind
        if threshold is not None:
            chosen[position["Threshold"]] = threshold
        return chosen

    warm = timed_click(fn, values(WARM_QUESTION, "a number", threshold=1.0))
    runs = []
    for question, kind in example_questions():
        run = timed_click(fn, values(question, kind))
        runs.append({"question": question[:120], "answer_is": kind, **run})
        print(f"first token {run['first_token_s']:.2f} s · final {run['final_answer_s']:.2f} s · "
              f"{'deferred' if run['deferred'] else 'kept'} · {question[:60]!r}")

    def stats(key):
        values_ = [run[key] for run in runs if run[key] is not None]
        return {"median": statistics.median(values_), "max": max(values_), "n": len(values_)} \
            if values_ else None

    command = ("COREA_THREADS=" + os.environ["COREA_THREADS"] + " "
               if os.environ.get("COREA_THREADS") else "") + \
        ("python benchmarks/ask_latency.py " + " ".join(sys.argv[1:])).rstrip()
    report = {
        "command": command, "date": started,
        "settings": {name: value for name, value in zip(names, defaults)
                     if name not in ("Question", "Endpoint token")},
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version(),
                    "threads": os.environ.get("COREA_THREADS") or os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "app_build_s": build_s, "warm_up": warm,
        "first_token_s": stats("first_token_s"), "final_answer_s": stats("final_answer_s"),
        "deferral_shown_s": stats("deferral_shown_s"),
        "first_llm_token_s": stats("first_llm_token_s"), "questions": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    first, final = report["first_token_s"], report["final_answer_s"]
    print(f"first token: median {first['median']:.2f} s, max {first['max']:.2f} s; final answer: "
          f"median {final['median']:.2f} s, max {final['max']:.2f} s; written to {args.out}")


if __name__ == "__main__":
    main()
