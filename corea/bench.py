"""`python -m corea bench`: the cascade against every baseline, on held-out data, from trace tables.

Builds (or resumes) trace tables for the default pair under benchmarks/traces/, then writes a report
with the exact command behind it: per data set and confidence signal, accuracy and cost of each
model alone, the largest saving within 2 points of LLM-only, AIQ, APGR, ECE/AUROC/Brier; a
threshold chosen on a calibration half with a statistical guarantee and checked on the test half;
what calibration protects at a fixed threshold; and the speed of each backend on this machine.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from corea import embedded
from corea.costs import resolve_price
from corea.metrics import TracePair, join_traces, summarize
from corea.models import GenerationConfig, get_model, load_model
from corea.signals import vote_share
from corea.tasks import get_task
from corea.thresholds import choose_threshold, guaranteed_threshold
from corea.traces import read_trace, run_trace

DATASETS = (("gsm8k", "test"), ("svamp", "test"), ("strategyqa", "dev"), ("arith-1", "test"),
            ("arith-2", "test"))
FIXED_THRESHOLD = 0.8
GUARANTEE = {"max_drop": 0.02, "delta": 0.1}
SAMPLING = {"temperature": 0.7}


@dataclass(frozen=True)
class BenchPlan:
    limit: int
    samples: int
    max_new_tokens: int
    traces: Path
    adapter: Path | None
    out: Path


def _trace(model, task_name, split, path, plan, config=None, batch_size=8):
    task = get_task(task_name)
    run_trace(model, task, path, split=split, limit=plan.limit, batch_size=batch_size,
              config=config or GenerationConfig(max_new_tokens=plan.max_new_tokens),
              price=resolve_price(model.name))
    wanted = [e.id for e in task.examples(split, plan.limit)]
    rows = {row["id"]: row for row in read_trace(path)}
    return [rows[i] for i in wanted]


def build_traces(plan: BenchPlan) -> dict[str, dict[str, list[dict]]]:
    """For each data set: the SLM (with token log-probabilities), k sampled SLM runs, the LLM, and
    the calibrated SLM when an adapter is given. Resumable: finished rows are reused."""
    slm = get_model(embedded.DEFAULT_SLM, logprobs=True)
    llm = get_model(embedded.DEFAULT_LLM)
    calibrated = None
    if plan.adapter:
        calibrated = load_model(embedded.DEFAULT_SLM, adapter=plan.adapter, backend="transformers")
        calibrated.name = f"{embedded.DEFAULT_SLM}+{plan.adapter.name}"
    tables = {}
    for name, split in DATASETS:
        t = plan.traces
        entry = {"slm": _trace(slm, name, split, t / f"smollm2-{name}.jsonl", plan),
                 "llm": _trace(llm, name, split, t / f"qwen-{name}.jsonl", plan)}
        entry["samples"] = [
            _trace(slm, name, split, t / f"smollm2-sample{k}-{name}.jsonl", plan,
                   GenerationConfig(max_new_tokens=plan.max_new_tokens, seed=k, **SAMPLING))
            for k in range(1, plan.samples + 1)]
        if calibrated is not None:
            entry["calibrated"] = _trace(calibrated, name, split,
                                         t / f"smollm2-calibrated-{name}.jsonl", plan,
                                         batch_size=16)
        tables[name] = entry
    return tables


def _with_confidence(rows: list[dict], values: list[float]) -> list[dict]:
    return [{**row, "confidence": float(v), "format_ok": True} for row, v in zip(rows, values)]


def signal_pairs(entry: dict, checker: str) -> dict[str, TracePair]:
    slm, llm = entry["slm"], entry["llm"]
    by_id = [{row["id"]: row for row in sample} for sample in entry["samples"]]
    signals = {
        "verbalized (untrained)": [r["confidence"] if r.get("format_ok") and r["confidence"]
                                   is not None else 0.0 for r in slm],
        "answer token probability": [r.get("answer_probability") or 0.0 for r in slm],
        "first-token margin": [r.get("first_token_margin") or 0.0 for r in slm],
        "oracle": [1.0 if r["correct"] else 0.0 for r in slm],
    }
    if by_id:
        signals[f"self-consistency (k={len(by_id)})"] = [
            vote_share(r["answer"], [s[r["id"]]["answer"] for s in by_id], checker) for r in slm]
    pairs = {name: join_traces(_with_confidence(slm, values), llm) for name, values in signals.items()}
    if "calibrated" in entry:
        pairs["verbalized (calibrated)"] = join_traces(entry["calibrated"], llm)
    return pairs


def apgr(report: dict) -> float | None:
    """Average performance gap recovered (RouteLLM): the mean over the share of calls sent to the
    LLM of (accuracy - SLM accuracy) / (LLM accuracy - SLM accuracy)."""
    weak, strong = report["slm_only"]["accuracy"], report["llm_only"]["accuracy"]
    if strong <= weak:
        return None
    points = sorted((p["llm_share"], p["accuracy"]) for p in report["points"])
    shares = np.array([0.0] + [p[0] for p in points] + [1.0])
    gaps = (np.array([weak] + [p[1] for p in points] + [points[-1][1]]) - weak) / (strong - weak)
    return float(np.trapezoid(gaps, shares))


def random_deferral_saving(pair: TracePair, max_drop: float = 0.02) -> float | None:
    """The best saving of random deferral (in expectation) within `max_drop` of LLM-only."""
    shares = np.linspace(0, 1, 1001)
    slm_acc, llm_acc = pair.slm_correct.mean(), pair.llm_correct.mean()
    accuracy = (1 - shares) * slm_acc + shares * llm_acc
    cost = pair.slm_cost.mean() + shares * pair.llm_cost.mean()
    ok = accuracy >= llm_acc - max_drop - 1e-12
    return float(1 - cost[ok].min() / pair.llm_cost.mean()) if ok.any() else None


def halves(pair: TracePair) -> tuple[TracePair, TracePair]:
    """Calibration and test halves: even and odd positions, a fixed split."""
    def take(mask):
        return TracePair(pair.ids[mask], pair.confidence[mask], pair.slm_correct[mask],
                         pair.slm_cost[mask], pair.llm_correct[mask], pair.llm_cost[mask])
    index = np.arange(len(pair))
    return take(index % 2 == 0), take(index % 2 == 1)


def holdout_check(pair: TracePair) -> dict:
    calibration, test = halves(pair)
    result = {}
    for label, chosen in (("empirical", choose_threshold(calibration, "max_drop",
                                                          GUARANTEE["max_drop"])),
                          ("guaranteed", guaranteed_threshold(calibration, **GUARANTEE))):
        if chosen is None:
            result[label] = None
            continue
        t = chosen["threshold"]
        keep = test.confidence >= t
        accuracy = float(np.where(keep, test.slm_correct, test.llm_correct).mean())
        cost = float((test.slm_cost + np.where(keep, 0, test.llm_cost)).mean())
        result[label] = {"threshold": t, "test_loss": float(test.llm_correct.mean()) - accuracy,
                         "test_saving": 1 - cost / float(test.llm_cost.mean())}
    return result


def dataset_figure(name: str, reports: dict[str, dict]) -> go.Figure:
    figure = go.Figure()
    for signal, report in reports.items():
        points = sorted(report["points"], key=lambda p: p["cost"])
        figure.add_trace(go.Scatter(x=[p["relative_cost"] for p in points],
                                    y=[p["accuracy"] for p in points], mode="lines+markers",
                                    name=signal))
    any_report = next(iter(reports.values()))
    for label, key in (("SLM only", "slm_only"), ("LLM only", "llm_only")):
        figure.add_trace(go.Scatter(x=[any_report[key]["relative_cost"]],
                                    y=[any_report[key]["accuracy"]], mode="markers+text",
                                    text=[label], textposition="top center", name=label,
                                    marker={"size": 12, "symbol": "diamond"}))
    figure.update_layout(title=f"{name}: accuracy vs relative cost by deferral signal",
                         xaxis_title="cost relative to LLM only", yaxis_title="accuracy",
                         template="plotly_white")
    return figure


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def _num(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def dataset_section(name: str, entry: dict, pairs: dict[str, TracePair],
                    plot: str) -> tuple[list[str], dict[str, dict]]:
    reports = {signal: summarize(pair) for signal, pair in pairs.items()}
    base = reports["verbalized (untrained)"]
    lines = [f"### {name} ({len(entry['slm'])} questions)", "",
             f"SLM only: accuracy {base['slm_only']['accuracy']:.1%}, relative cost "
             f"{base['slm_only']['relative_cost']:.3f} · LLM only: accuracy "
             f"{base['llm_only']['accuracy']:.1%}, ${base['llm_only']['cost'] * 1000:.4f} per "
             f"1,000 questions · plot: `{plot}`", "",
             "| deferral signal | saving within 2 pt | accuracy there | sent to LLM | AIQ | APGR | "
             "ECE | AUROC | Brier |", "|---|---|---|---|---|---|---|---|---|"]
    for signal, report in reports.items():
        best = report["best_within_2pt"]
        lines.append(
            f"| {signal} | {_pct(best['saving'] if best else None)} | "
            f"{_pct(best['accuracy'] if best else None)} | {_pct(best['llm_share'] if best else None)}"
            f" | {_num(report['aiq'])} | {_num(apgr(report))} | {_num(report['ece'])} | "
            f"{_num(report['auroc'])} | {_num(report['brier'])} |")
    lines.append(f"| random deferral (expected) | {_pct(random_deferral_saving(pairs['oracle']))} "
                 "| | | | | | | |")
    check = holdout_check(pairs.get("verbalized (calibrated)", pairs["verbalized (untrained)"]))
    lines += ["", "Threshold for “lose at most 2 points”, chosen on the even-numbered questions and "
                  "applied to the odd-numbered ones "
                  f"({'calibrated' if 'verbalized (calibrated)' in pairs else 'untrained'} "
                  "verbalized confidence):", ""]
    for label in ("empirical", "guaranteed"):
        c = check[label]
        lines.append(f"- {label}{' (Learn-then-Test, 90% confidence)' if label == 'guaranteed' else ''}"
                     + (f": threshold {c['threshold']:.3f}, realized loss {c['test_loss'] * 100:+.1f}"
                        f" pts, saving {_pct(c['test_saving'])}" if c else ": none certified"))
    lines.append("")
    return lines, reports


def protection_table(tables: dict, pairs_by_dataset: dict) -> list[str]:
    lines = [f"## What calibration protects (threshold {FIXED_THRESHOLD})", "",
             "Accuracy lost against LLM-only when the SLM's stated confidence is trusted at a fixed "
             "threshold.", "", "| data set | untrained: lost | untrained: sent to LLM | "
             "calibrated: lost | calibrated: sent to LLM |", "|---|---|---|---|---|"]
    for name, pairs in pairs_by_dataset.items():
        cells = []
        for signal in ("verbalized (untrained)", "verbalized (calibrated)"):
            pair = pairs.get(signal)
            if pair is None:
                cells += ["—", "—"]
                continue
            keep = pair.confidence >= FIXED_THRESHOLD
            accuracy = float(np.where(keep, pair.slm_correct, pair.llm_correct).mean())
            cells += [f"{(float(pair.llm_correct.mean()) - accuracy) * 100:+.1f} pts",
                      _pct(float((~keep).mean()))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def speed_section(plan: BenchPlan) -> list[str]:
    """Throughput of each backend for each embedded model, single and batched, load times, and
    the cascade's own overhead — as ratios against a baseline measured in this run."""
    from corea.cascade import Cascade, Tier
    from corea.models import LlamaCppModel, TransformersModel
    from corea.protocol import build_messages

    questions = [e.question for e in get_task("arith-1").examples("test", 4)]
    conversations = [build_messages(q, hint="Give the final answer as a number.") for q in questions]
    config = GenerationConfig(max_new_tokens=48)
    rows = []

    def run(label, model, batch):
        start = time.perf_counter()
        if batch:
            generations = model.generate(conversations, config)
        else:
            generations = [model.generate([c], config)[0] for c in conversations]
        elapsed = time.perf_counter() - start
        tokens = sum(g.completion_tokens for g in generations)
        rows.append((label, tokens / elapsed, len(conversations) / elapsed * 60))

    loads = []
    for name in (embedded.DEFAULT_SLM, embedded.DEFAULT_LLM):
        path = embedded.resolve_embedded(name).locate()
        start = time.perf_counter()
        model = LlamaCppModel(path, name=name)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        LlamaCppModel(path, name=name)
        loads.append((f"{name} llama.cpp", cold, time.perf_counter() - start))
        run(f"{name} · llama.cpp · one at a time", model, batch=False)
    slm_path = embedded.trainable_copy(embedded.DEFAULT_SLM)
    start = time.perf_counter()
    slm_tf = TransformersModel(slm_path, name=embedded.DEFAULT_SLM)
    loads.append((f"{embedded.DEFAULT_SLM} transformers (converted copy)",
                  time.perf_counter() - start, None))
    run(f"{embedded.DEFAULT_SLM} · transformers · one at a time", slm_tf, batch=False)
    run(f"{embedded.DEFAULT_SLM} · transformers · batch of {len(conversations)}", slm_tf, batch=True)

    slm = get_model(embedded.DEFAULT_SLM)
    cascade = Cascade([Tier(slm, 0.0, resolve_price(slm.name)),
                       Tier(get_model(embedded.DEFAULT_LLM), None, resolve_price("qwen"))], config)
    slm.generate(conversations[:1], config)  # warm-up: the first call pays one-off costs
    # The cascade's own cost is its wall time beyond the model calls it makes; timing a direct
    # call beside it would not be fair, since llama.cpp reuses the prompt cached by the other.
    start = time.perf_counter()
    via = [cascade.answer(q, hint="Give the final answer as a number.") for q in questions]
    cascade_s = time.perf_counter() - start
    model_s = sum(result.latency_s for result in via)
    base = rows[0][1]
    lines = ["## Speed on this machine", "",
             f"{len(conversations)} generated arithmetic questions, 48 new tokens at most, greedy.", "",
             "| model · backend · mode | tokens/s | questions/min | vs SmolLM2 llama.cpp |",
             "|---|---|---|---|"]
    lines += [f"| {label} | {tps:.1f} | {qpm:.1f} | {tps / base:.2f}× |" for label, tps, qpm in rows]
    lines += ["", "| model load | first (s) | again, file cached (s) |", "|---|---|---|"]
    lines += [f"| {label} | {cold:.2f} | {'—' if warm is None else f'{warm:.2f}'} |"
              for label, cold, warm in loads]
    lines += ["", f"Cascade overhead (threshold 0, so the SLM answers every question): "
                  f"{cascade_s:.3f} s of wall time through the cascade for {model_s:.3f} s inside "
                  f"the model calls, ratio {cascade_s / model_s:.3f} (prompt building, parsing, "
                  "pricing and decisions make the difference).", ""]
    return lines


def run_bench(plan: BenchPlan, command: str) -> Path:
    tables = build_traces(plan)
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    plots = plan.out.parent / "plots"
    plots.mkdir(exist_ok=True)
    pairs_by_dataset, sections, savings = {}, [], {}
    for name, _ in DATASETS:
        pairs = signal_pairs(tables[name], get_task(name).checker)
        pairs_by_dataset[name] = pairs
        plot = plots / f"bench-{name}.html"
        section, reports = dataset_section(name, tables[name], pairs, str(plot))
        dataset_figure(name, reports).write_html(str(plot), include_plotlyjs="cdn")
        sections += section
        savings[name] = {signal: (r["best_within_2pt"] or {}).get("saving")
                         for signal, r in reports.items()}
    signals = list(dict.fromkeys(signal for row in savings.values() for signal in row))
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    lines = [
        "# corea benchmark report", "",
        f"Command: `{command}` · machine: {machine} · {time.strftime('%Y-%m-%d %H:%M')}", "",
        f"SLM {embedded.DEFAULT_SLM}, LLM {embedded.DEFAULT_LLM}, greedy, {plan.max_new_tokens} new "
        "tokens at most; prices as in README (compute-based). Every figure is recomputed by "
        f"`python -m corea sweep` from the trace tables in `{plan.traces}` (signals other than the "
        "stated confidence are columns of the SLM tables). None of these questions is used in "
        "training (test/dev splits only).", "",
        "## Headline: cost saved with accuracy within 2 points of LLM-only", "",
        "| data set | " + " | ".join(signals) + " |", "|---|" + "---|" * len(signals),
        *[f"| {name} | " + " | ".join(_pct(row.get(s)) for s in signals) + " |"
          for name, row in savings.items()],
        "", "— : no threshold keeps accuracy within 2 points of LLM-only (use the LLM alone).", "",
        "## Per data set", "", *sections,
        *protection_table(tables, pairs_by_dataset),
        *speed_section(plan),
    ]
    plan.out.write_text("\n".join(lines) + "\n")
    return plan.out
