"""The cascade against the LLM answering by program (corea.program), on the committed tables.

    python benchmarks/program_llm.py --task arith-mix --task svamp --task gsm8k

For each set with a program table (`benchmarks/traces/qwen-program-TASK.jsonl`, written by
`python -m corea trace --model program:qwen --task TASK`), each SLM's table (read on the signal it
is served with, through its Platt map) is swept against the plain LLM and against the program LLM
on the same questions: the best saving within 2 points of each LLM alone, and the threshold
chosen on two thirds of the questions checked on the other third (against the plain LLM only
where its table exists). The SLMs: the shipped default (`smollm2-calibrated-TASK.jsonl`) and the
shipped SLMs that answer by program (`smollm2-program-TASK.jsonl`, adapters/smollm2-135m-program;
`smollm2-program-rephrase-TASK.jsonl`, adapters/smollm2-135m-program-rephrase). Writes
benchmarks/results/program_llm.json and the matching section of benchmarks/REPORT.md (no model
runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corea import embedded  # noqa: E402
from corea.ablation import splice_section  # noqa: E402
from corea.bench import (PROGRAM_SECTION, RESULTS_DIR, STEP_SECTION,  # noqa: E402
                         holdout_check, program_llm_lines)
from corea.metrics import join_traces, summarize  # noqa: E402
from corea.signals import with_signal  # noqa: E402
from corea.traces import read_trace  # noqa: E402

TRACES = ROOT / "benchmarks" / "traces"
SLM_TABLES = ("smollm2-calibrated-{task}.jsonl", "smollm2-program-{task}.jsonl",
              "smollm2-program-rephrase-{task}.jsonl")
LLM_TABLES = {"plain": "qwen-{task}.jsonl", "program": "qwen-program-{task}.jsonl"}


def _point(point: dict | None) -> dict | None:
    if point is None:
        return None
    return {"threshold": point["threshold"], "accuracy": point["accuracy"],
            "saving": 1 - point["relative_cost"], "llm_share": point["llm_share"]}


def measure(task: str, slm_table: str, traces: Path = TRACES) -> dict | None:
    """An SLM against the program LLM, and the plain LLM where it has a table, on the questions
    all their tables hold."""
    paths = {"slm": traces / slm_table.format(task=task),
             **{kind: traces / name.format(task=task) for kind, name in LLM_TABLES.items()}}
    if not (paths["slm"].is_file() and paths["program"].is_file()):
        return None
    paths = {kind: path for kind, path in paths.items() if path.is_file()}
    tables = {kind: {row["id"]: row for row in read_trace(path)} for kind, path in paths.items()}
    ids = [i for i in tables["slm"] if all(i in table for table in tables.values())]
    slm_rows = [tables["slm"][i] for i in ids]
    signal, _ = embedded.serving_defaults(embedded.spec_for(slm_rows[0]["model"]))
    slm_rows = with_signal(slm_rows, signal)
    result = {"task": task, "questions": len(ids), "slm_model": slm_rows[0]["model"],
              "signal": signal, "slm_accuracy": sum(r["correct"] for r in slm_rows) / len(ids)}
    for kind in [kind for kind in LLM_TABLES if kind in paths]:
        pair = join_traces(slm_rows, [tables[kind][i] for i in ids])
        report = summarize(pair)
        result[kind] = {
            "model": tables[kind][ids[0]]["model"],
            "accuracy": report["llm_only"]["accuracy"], "cost": report["llm_only"]["cost"],
            "slm_relative_cost": report["slm_only"]["relative_cost"],
            "auroc": report["auroc"],
            "best_within_2pt": _point(report["best_within_2pt"]),
            "holdout": holdout_check(pair)["empirical"]}
    result["program_cost_vs_plain"] = (result["program"]["cost"] / result["plain"]["cost"]
                                       if "plain" in result else None)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", action="append", required=True)
    args = parser.parse_args(argv)
    measured = [m for m in (measure(task, slm) for task in args.task for slm in SLM_TABLES)
                if m is not None]
    missing = [task for task in args.task if task not in {m["task"] for m in measured}]
    if missing:
        print(f"no program table (or SLM/LLM table) for {', '.join(missing)}: trace it with "
              "`python -m corea trace --model program:qwen --task TASK`", file=sys.stderr)
    if not measured:
        return 1
    tasks = " ".join(f"--task {task}" for task in dict.fromkeys(m["task"] for m in measured))
    result = {"command": f"python benchmarks/program_llm.py {tasks}",
              "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "tasks": measured}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "program_llm.json").write_text(json.dumps(result, indent=1) + "\n")
    report = ROOT / "benchmarks" / "REPORT.md"
    if report.is_file():
        # Before the step-routing section, which its own report rewrites to the end.
        report.write_text(splice_section(report.read_text(), PROGRAM_SECTION, STEP_SECTION,
                                         program_llm_lines()))
    print("\n".join(program_llm_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
