"""How long the Tune tab takes to follow the slider on a 10,000-question trace pair.

    .venv/bin/python benchmarks/slider_latency.py            # writes benchmarks/slider_latency.md

Measured per slider move: `threshold_view` (evaluate the threshold, move the markers of the Pareto
and deferral figures) and the JSON serialization Gradio sends to the browser; and, end to end, one
`/tune_threshold` call through gradio_client against the real app on 127.0.0.1. The baseline,
measured in the same run, keeps no state: it re-joins the tables, re-sweeps and rebuilds both
figures for every move.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corea.metrics import join_traces, summarize  # noqa: E402
from corea.ui.tune import LoadedPair, threshold_view  # noqa: E402

ROWS = 10_000


def synthetic_rows(distinct: str, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(size=ROWS)
    if distinct == "verbalized":  # stated confidences are short decimals: at most 101 values
        confidence = np.round(confidence, 2)
    slm_correct = rng.uniform(size=ROWS) < confidence
    llm_correct = rng.uniform(size=ROWS) < 0.85
    base = {"task": "synthetic", "question": "q", "gold": "1", "output": "", "answer": None,
            "prompt_tokens": 300, "completion_tokens": 100, "latency_s": 0.0}
    slm = [{**base, "id": str(i), "model": "slm", "confidence": float(confidence[i]),
            "correct": bool(slm_correct[i]), "cost": 1e-5} for i in range(ROWS)]
    llm = [{**base, "id": str(i), "model": "llm", "confidence": None,
            "correct": bool(llm_correct[i]), "cost": 1e-4} for i in range(ROWS)]
    return slm, llm


def time_ms(function, repeats: int) -> float:
    samples = []
    for index in range(repeats):
        start = time.perf_counter()
        function(index)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def measure_in_process(distinct: str) -> dict:
    slm, llm = synthetic_rows(distinct)
    pair = join_traces(slm, llm)
    loaded = LoadedPair(distinct, pair, summarize(pair), "slm", "llm")
    thresholds = np.random.default_rng(1).uniform(size=40)

    def move(i, target=loaded):
        figure, text, point, deferral = threshold_view(target, float(thresholds[i]))
        json.dumps([figure.to_plotly_json(), deferral.to_plotly_json(), text, point], default=str)

    def baseline(i):  # no state kept between moves: re-join, re-sweep, rebuild both figures
        pair = join_traces(slm, llm)
        move(i, LoadedPair(distinct, pair, summarize(pair), "slm", "llm"))

    move(0)  # warm caches and imports
    update = time_ms(move, 40)
    naive = time_ms(baseline, 10)
    return {"distinct": distinct, "thresholds": len(loaded.report["points"]),
            "update_ms": update, "baseline_ms": naive}


def measure_end_to_end() -> float:
    from gradio_client import Client, handle_file

    folder = Path(tempfile.mkdtemp())
    slm, llm = synthetic_rows("verbalized")
    for name, rows in (("slm", slm), ("llm", llm)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    port = 7900 + os.getpid() % 50
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    app = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                time.sleep(0.5)
        client.predict(None, handle_file(str(folder / "slm.jsonl")),
                       handle_file(str(folder / "llm.jsonl")), 0.5, api_name="/tune_load")
        thresholds = np.random.default_rng(2).uniform(size=20)
        return time_ms(lambda i: client.predict(float(thresholds[i]), api_name="/tune_threshold"), 20)
    finally:
        app.terminate()
        app.wait(timeout=30)


def main() -> None:
    results = [measure_in_process("verbalized"), measure_in_process("continuous")]
    round_trip = measure_end_to_end()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        "# Slider update time on a 10,000-question trace pair",
        "",
        f"Command: `.venv/bin/python benchmarks/slider_latency.py` · machine: {machine} · "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        "| confidences | distinct thresholds | per slider move (ms, median) | baseline: full "
        "re-sweep per move (ms) | speed-up vs baseline |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['distinct']} | {r['thresholds']} | {r['update_ms']:.1f} | "
                     f"{r['baseline_ms']:.1f} | {r['baseline_ms'] / r['update_ms']:.1f}× |")
    lines += ["", f"End to end through the real app (gradio_client → HTTP → queue → handler → "
                  f"response), verbalized confidences: **{round_trip:.1f} ms** median per move; the "
                  "difference from the handler's time is Gradio's HTTP and queue overhead. Any "
                  "background work on the machine during the run is included in these figures.",
              ""]
    out = ROOT / "benchmarks" / "slider_latency.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
