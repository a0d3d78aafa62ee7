"""Two (or more) small models side by side on their committed trace tables, each read the way it
would be served: accuracy, the AUROC and ECE of its confidence signal (raw, and through a Platt
map), and the cascade in front of the LLM (`--llm`) at a fixed threshold.

    python benchmarks/compare_slms.py \\
        --slm shipped=smollm2-calibrated:verbalized_mean \\
        --slm 2k=smollm2-selflabel-2k:verbalized:benchmarks/traces/smollm2-selflabel-2k-arith-mix-train.jsonl \\
        --task arith-mix --task svamp --task gsm8k

Each --slm is LABEL=PREFIX:SIGNAL[:TRAIN_TABLE], for the tables benchmarks/traces/PREFIX-TASK.jsonl.
With a TRAIN_TABLE the signal's Platt map is fitted on it (as `python -m corea calibrate` would);
without one, a shipped adapter's own map is used (the model named in its rows), if it has one.
The result is added to benchmarks/results/slm_comparison.json under the command that made it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corea.calibration import fit_platt  # noqa: E402
from corea.metrics import at_threshold, join_traces, trace_summary  # noqa: E402
from corea.signals import with_signal  # noqa: E402
from corea.traces import read_trace  # noqa: E402

TRACES = ROOT / "benchmarks" / "traces"
OUT = ROOT / "benchmarks" / "results" / "slm_comparison.json"


def read_as_served(rows: list[dict], signal: str, train: Path | None) -> list[dict]:
    if train is None:
        return with_signal(rows, signal)
    fitted = with_signal(read_trace(train), signal, mapped=False)
    platt = fit_platt([r["confidence"] for r in fitted], [r["correct"] for r in fitted], signal,
                      fitted_on=train.name)
    return with_signal(rows, signal, platt=platt)


def compare(slms: list[tuple[str, str, str, Path | None]], tasks: list[str],
            threshold: float, llm: str = "qwen") -> dict:
    result = {}
    for label, prefix, signal, train in slms:
        result[label] = {"tables": prefix, "signal": signal,
                         "map_fitted_on": str(train.relative_to(ROOT)) if train else "shipped"}
        for task in tasks:
            rows = read_trace(TRACES / f"{prefix}-{task}.jsonl")
            raw = trace_summary(with_signal(rows, signal, mapped=False))
            served = read_as_served(rows, signal, train)
            summary = trace_summary(served)
            cascade = at_threshold(join_traces(served, read_trace(TRACES / f"{llm}-{task}.jsonl")),
                                   threshold)
            result[label][task] = {
                "n": summary["n"], "accuracy": summary["accuracy"], "auroc": summary["auroc"],
                "ece_raw": raw["ece"], "ece_served": summary["ece"],
                f"cascade_at_{threshold:g}": cascade}
    return result


def parse_slm(text: str) -> tuple[str, str, str, Path | None]:
    label, _, spec = text.partition("=")
    parts = spec.split(":", 2)
    if not label or len(parts) < 2 or not all(parts[:2]):
        raise argparse.ArgumentTypeError(f"{text!r}: give LABEL=PREFIX:SIGNAL[:TRAIN_TABLE]")
    prefix, signal, *train = parts
    return label, prefix, signal, (ROOT / train[0]).resolve() if train else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slm", type=parse_slm, action="append", required=True,
                        help="LABEL=PREFIX:SIGNAL[:TRAIN_TABLE] (repeatable)")
    parser.add_argument("--task", action="append", required=True)
    parser.add_argument("--threshold", type=float, default=0.8,
                        help="the fixed threshold of the cascade column (default: %(default)s)")
    parser.add_argument("--llm", default="qwen",
                        help="the LLM's tables, benchmarks/traces/LLM-TASK.jsonl, for the cascade "
                             "column (default: %(default)s; qwen-program: the LLM by program)")
    args = parser.parse_args(argv)
    command = "python benchmarks/compare_slms.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    result = compare(args.slm, args.task, args.threshold, args.llm)
    table = json.loads(OUT.read_text()) if OUT.is_file() else {}
    table[command] = {"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "result": result}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
