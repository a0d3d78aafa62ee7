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
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from corea import embedded
from corea.ablation import RUNS_DIR, ablation_section
from corea.costs import resolve_price
from corea.metrics import TracePair, at_threshold, join_traces, summarize
from corea.metrics import auroc as metrics_auroc
from corea.models import GenerationConfig, get_model
from corea.signals import SIGNALS, TOKEN_SIGNALS, has_column, with_signal
from corea.tasks import get_task
from corea.thresholds import choose_threshold, guaranteed_threshold, min_calibration_questions
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
    # Sampled runs only need answers: without per-token log-probabilities llama.cpp is ~3x faster.
    sampler = get_model(embedded.DEFAULT_SLM)
    llm = get_model(embedded.DEFAULT_LLM)
    calibrated = None
    if plan.adapter:  # as it is served: merged into the GGUF on llama.cpp where it can be
        calibrated = get_model(str(plan.adapter), logprobs=True)
    # Pass by pass rather than set by set: the greedy tables of every set (which carry all the
    # single-pass signals) are finished before any sampled run starts, so a run cut short by time
    # still reports every set, with fewer samples.
    t = plan.traces
    tables = {name: {"slm": _trace(slm, name, split, t / f"smollm2-{name}.jsonl", plan),
                     "llm": _trace(llm, name, split, t / f"qwen-{name}.jsonl", plan),
                     "samples": []}
              for name, split in DATASETS}
    if calibrated is not None:
        # Read by the signal the adapter declares it is served with (its corea.json).
        signal, _ = embedded.serving_defaults(str(plan.adapter))
        for name, split in DATASETS:
            tables[name]["calibrated"] = with_signal(
                _trace(calibrated, name, split, t / f"smollm2-calibrated-{name}.jsonl", plan,
                       batch_size=16), signal)
    for k in range(1, plan.samples + 1):
        sampling = GenerationConfig(max_new_tokens=plan.max_new_tokens, seed=k, **SAMPLING)
        for name, split in DATASETS:
            tables[name]["samples"].append(
                _trace(sampler, name, split, t / f"smollm2-sample{k}-{name}.jsonl", plan, sampling))
    return tables


SIGNAL_LABELS = {"verbalized": "verbalized (untrained)",
                 "answer_probability": "answer token probability",
                 "first_token_margin": "first-token margin",
                 "verbalized_mean": "stated confidence, mean over its digits",
                 "oracle": "oracle (upper bound)"}


def signal_pairs(entry: dict, checker: str) -> dict[str, TracePair]:
    """Each deferral signal's trace pair, keyed by its label in the report."""
    slm, llm = entry["slm"], entry["llm"]
    # A column signal counts where the table has its column (tables traced before it existed
    # do not).
    pairs = {label: join_traces(with_signal(slm, signal), llm)
             for signal, label in SIGNAL_LABELS.items()
             if has_column(slm, signal)}
    if entry["samples"]:
        pairs[f"self-consistency (k={len(entry['samples'])})"] = join_traces(
            with_signal(slm, "vote_share", samples=entry["samples"], checker=checker), llm)
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


def calibration_test_split(pair: TracePair) -> tuple[TracePair, TracePair]:
    """A fixed split: two of every three questions calibrate, the third tests. Two thirds rather
    than half, because certifying a loss rate of at most 2% at 90% confidence needs at least
    ln(0.1)/ln(0.98) = 114 calibration questions even when nothing is lost."""
    def take(mask):
        return TracePair(pair.ids[mask], pair.confidence[mask], pair.slm_correct[mask],
                         pair.slm_cost[mask], pair.llm_correct[mask], pair.llm_cost[mask])
    index = np.arange(len(pair))
    return take(index % 3 != 2), take(index % 3 == 2)


def holdout_check(pair: TracePair) -> dict:
    """The threshold for "lose at most 2 points" chosen on the calibration split, empirically
    and with the Learn-then-Test guarantee, and what each realizes on the test split."""
    calibration, test = calibration_test_split(pair)
    if not len(test):
        raise ValueError("too few questions for a calibration and a test split (3 at least)")
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


def _holdout_cell(check: dict | None) -> str:
    if check is None:
        return "none certified"
    return (f"{check['threshold']:.3f}: loses {check['test_loss'] * 100:+.1f} pts, saves "
            f"{_pct(check['test_saving'])}")


def holdout_table(pairs: dict[str, TracePair]) -> list[str]:
    calibration, test = calibration_test_split(next(iter(pairs.values())))
    if not len(test):
        return ["Too few questions to choose a threshold on some and check it on others.", ""]
    needed = min_calibration_questions(GUARANTEE["max_drop"], GUARANTEE["delta"])
    lines = [f"Threshold for “lose at most 2 points” chosen on {len(calibration)} calibration "
             f"questions (two of every three), then applied to the other {len(test)} (loss and "
             "saving measured there). The guaranteed threshold is certified to lose at most 2% of "
             f"answers with {1 - GUARANTEE['delta']:.0%} confidence (Learn-then-Test, "
             "fixed-sequence exact binomial tests); no certificate is possible from fewer than "
             f"{needed} calibration questions, and with few more only thresholds that lose nothing "
             "on them can be certified.", "",
             "| deferral signal | empirical best on the calibration split: threshold, then loss "
             "and saving on the test split | guaranteed (same) |", "|---|---|---|"]
    for signal, pair in pairs.items():
        if signal.startswith("oracle"):
            continue
        check = holdout_check(pair)
        lines.append(f"| {signal} | {_holdout_cell(check['empirical'])} | "
                     f"{_holdout_cell(check['guaranteed'])} |")
    return lines + [""]


def majority_answer(rows: list[dict]) -> tuple[str, float]:
    """The most common gold answer and the share of questions it is right on."""
    answer, count = Counter(str(row["gold"]) for row in rows).most_common(1)[0]
    return answer, count / len(rows)


def no_better_than_majority(llm_accuracy: float, majority: tuple[str, float]) -> bool:
    """Whether the LLM is within 2 points of always giving the commonest answer."""
    return llm_accuracy <= majority[1] + 0.02


def reading(name: str, reports: dict[str, dict], majority: tuple[str, float]) -> str:
    """What the numbers mean for this set, in words generated from the numbers themselves."""
    any_report = next(iter(reports.values()))
    slm_acc = any_report["slm_only"]["accuracy"]
    llm_acc = any_report["llm_only"]["accuracy"]
    real = {signal: (r["best_within_2pt"] or {}).get("saving") for signal, r in reports.items()
            if not signal.startswith("oracle")}
    real = {signal: saving for signal, saving in real.items() if saving is not None}
    oracle = (reports["oracle (upper bound)"]["best_within_2pt"] or {}).get("saving")
    slm_cost = any_report["slm_only"]["relative_cost"]
    sentences = [f"The SLM is right on {slm_acc:.1%} of {name}, the LLM on {llm_acc:.1%}. Every "
                 f"question pays for the SLM's reply ({slm_cost:.1%} of an LLM call), so the "
                 f"cascade saves only when the SLM keeps more than {slm_cost:.1%} of the "
                 "questions, and, to stay within 2 points of the LLM, almost only questions it "
                 "answers right."]
    if slm_acc < 0.1:
        sentences.append("The SLM is rarely right here, so almost every question must go to the "
                         "LLM to keep its accuracy, and the SLM's reply is then paid for on top: "
                         "little or nothing can be saved, whatever the signal.")
    calibrated = reports.get("verbalized (calibrated)")
    if calibrated is not None:
        sentences.append(f"The calibrated SLM is right on "
                         f"{calibrated['slm_only']['accuracy']:.1%} (its own replies).")
    if no_better_than_majority(llm_acc, majority):
        sentences.append(f"The LLM does no better than always answering “{majority[0]}” (right "
                         f"on {majority[1]:.1%}): neither model shows the reasoning this set asks for, so a "
                         "saving here, where an SLM's answers are as good as the LLM's, says "
                         "nothing about deferring well.")
    if llm_acc <= slm_acc:
        sentences.append("The LLM is no better than the SLM on this set, so the cascade's "
                         "saving says nothing about deferral: keeping everything on the SLM is "
                         "as accurate.")
    if real:
        best = max(real, key=real.get)
        sentences.append(f"Best real signal within 2 points: {best}, saving {real[best]:.1%} "
                         f"(oracle bound: {_pct(oracle)}).")
        runtime = {label: signal for signal, label in SIGNAL_LABELS.items()
                   if signal in TOKEN_SIGNALS}
        if best in runtime:
            sentences.append(f"A cascade defers on it with `--signal {runtime[best]}` "
                             f"(or `\"signal\": \"{runtime[best]}\"` in its config).")
    else:
        sentences.append(f"No real signal saves anything within 2 points (oracle bound: "
                         f"{_pct(oracle)}); the honest choice is the LLM alone.")
    ranking = {signal: r["auroc"] for signal, r in reports.items()
               if not signal.startswith("oracle") and r["auroc"] is not None}
    if ranking:
        best = max(ranking, key=ranking.get)
        sentences.append(f"The signal that best separates right from wrong SLM answers is {best} "
                         f"(AUROC {ranking[best]:.3f}; 0.5 is chance).")
        losers = [f"{signal} ({auroc:.3f})" for signal, auroc in ranking.items() if auroc < 0.5]
        if losers:
            sentences.append("Worse than chance at it (AUROC below 0.5): " + ", ".join(losers)
                             + "; deferring on such a signal sends the right answers away first.")
    return " ".join(sentences)


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


def recompute_command(name: str, traces: Path, samples: int) -> str:
    sampled = " ".join(str(traces / f"smollm2-sample{k}-{name}.jsonl")
                       for k in range(1, samples + 1))
    return (f"`python -m corea sweep --slm {traces}/smollm2-{name}.jsonl --llm "
            f"{traces}/qwen-{name}.jsonl --signal S` with S one of "
            f"{', '.join(s for s in SIGNALS if s != 'vote_share')}"
            + (f"; self-consistency: `--signal vote_share --samples {sampled}`" if samples else ""))


def dataset_section(name: str, entry: dict, pairs: dict[str, TracePair], plot: str,
                    traces: Path, majority: tuple[str, float]) -> tuple[list[str], dict[str, dict]]:
    reports = {signal: summarize(pair) for signal, pair in pairs.items()}
    base = reports["verbalized (untrained)"]
    lines = [f"### {name} ({len(entry['slm'])} questions)", "",
             f"SLM only: accuracy {base['slm_only']['accuracy']:.1%}, relative cost "
             f"{base['slm_only']['relative_cost']:.3f} · LLM only: accuracy "
             f"{base['llm_only']['accuracy']:.1%}, ${base['llm_only']['cost'] * 1000:.4f} per "
             f"1,000 questions · plot: `{plot}`", "",
             "Recompute: " + recompute_command(name, traces, len(entry["samples"])), "",
             "| deferral signal | saving within 2 pt | accuracy there | sent to LLM | AIQ | APGR | "
             "ECE | AUROC | Brier |", "|---|---|---|---|---|---|---|---|---|"]
    for signal, report in reports.items():
        best = report["best_within_2pt"]
        lines.append(
            f"| {signal} | {_pct(best['saving'] if best else None)} | "
            f"{_pct(best['accuracy'] if best else None)} | {_pct(best['llm_share'] if best else None)}"
            f" | {_num(report['aiq'])} | {_num(apgr(report))} | {_num(report['ece'])} | "
            f"{_num(report['auroc'])} | {_num(report['brier'])} |")
    random_saving = random_deferral_saving(pairs["oracle (upper bound)"])
    lines.append(f"| random deferral (expected) | {_pct(random_saving)} | | | | | | | |")
    lines += ["", reading(name, reports, majority), "", *holdout_table(pairs)]
    return lines, reports


def answered_auroc(pair: TracePair, answered: set[str]) -> float | None:
    """AUROC over the replies that gave an answer: how well a signal ranks answers, apart from
    noticing that a reply gave none (every signal scores those 0, and they are all wrong)."""
    mask = np.isin(pair.ids, list(answered))
    return metrics_auroc(pair.confidence[mask], pair.slm_correct[mask]) if mask.any() else None


def auroc_table(aurocs: dict[str, dict[str, tuple]]) -> list[str]:
    """Which signal ranks the SLM's right answers above its wrong ones, set by set: what a
    threshold can exploit, whether or not any saving is reachable yet."""
    signals = list(dict.fromkeys(signal for row in aurocs.values() for signal in row))

    def cell(values):
        return " · ".join(_num(v) for v in values) if values else "—"

    return ["## Which signal tells the SLM's right answers from its wrong ones", "",
            "AUROC of each signal against the SLM's correctness, on all questions · on those the "
            "SLM gave an answer to (0.5 is chance, 1 is the oracle; — where the SLM is never or "
            "always right). A reply without an answer is wrong and scores 0 on every signal, so "
            "the first number also rewards noticing missing answers; the second is the ranking "
            "of answers proper.", "",
            "| data set | " + " | ".join(signals) + " |", "|---|" + "---|" * len(signals),
            *[f"| {name} | " + " | ".join(cell(row.get(s)) for s in signals) + " |"
              for name, row in aurocs.items()], ""]


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
            fixed = at_threshold(pair, FIXED_THRESHOLD)
            cells += [f"{(fixed['llm_accuracy'] - fixed['accuracy']) * 100:+.1f} pts",
                      _pct(fixed["deferred_share"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if not any("verbalized (calibrated)" in pairs for pairs in pairs_by_dataset.values()):
        lines += ["", "— in the calibrated columns: no calibrated adapter was given. "
                  "`python -m corea bench --adapter PATH` fills them from a trained SLM."]
    return lines + [""]


def _fresh_process_load_seconds(path: Path, name: str) -> float:
    """Imports plus model load in a new Python process: what a user waits for on a first call.
    The file itself is likely in the OS page cache by then (dropping it needs root)."""
    code = ("import time; start = time.perf_counter(); from corea.models import LlamaCppModel; "
            f"LlamaCppModel({str(path)!r}, name={name!r}); print(time.perf_counter() - start)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return float(result.stdout.strip().splitlines()[-1])


def speed_section(plan: BenchPlan) -> list[str]:
    """Throughput of each backend for each embedded model, single and batched, load times, and
    the cascade's own overhead — as ratios against a baseline measured in this run."""
    from corea.cascade import Cascade, Tier
    from corea.models import LlamaCppModel, TransformersModel
    from corea.protocol import build_messages

    task = get_task("arith-1")
    questions = [e.question for e in task.examples("test", 4)]
    conversations = [build_messages(q, hint=task.hint) for q in questions]
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
        fresh = _fresh_process_load_seconds(path, name)
        start = time.perf_counter()
        model = LlamaCppModel(path, name=name)
        loads.append((f"{name} llama.cpp", fresh, time.perf_counter() - start))
        run(f"{name} · llama.cpp · one at a time", model, batch=False)
        if name == embedded.DEFAULT_SLM:  # the token signals' price: per-token log-probabilities
            run(f"{name} · llama.cpp · one at a time, with token log-probabilities",
                LlamaCppModel(path, name=name, logprobs=True), batch=False)
            trained = embedded.shipped_adapters().get(embedded.TRAINED_SLM)
            if trained is not None:  # the trained SLM runs merged into the GGUF (Q8_0 there)
                merged = embedded.merged_gguf(embedded.resolve_embedded(name), trained)
                run(f"{name}+{trained.name} (merged GGUF) · llama.cpp · one at a time",
                    LlamaCppModel(merged, name=trained.name), batch=False)
    for name in (embedded.DEFAULT_SLM, embedded.DEFAULT_LLM):
        # The transformers backend reads a checkpoint converted from the GGUF once and cached;
        # a conversion done here is reported as such, not as a load time.
        start = time.perf_counter()
        cached = (embedded.cache_dir() / f"{name}-hf" / "config.json").is_file()
        checkpoint = embedded.trainable_copy(name)
        if not cached:
            loads.append((f"{name} transformers: conversion from GGUF (once)", None,
                          time.perf_counter() - start))
        start = time.perf_counter()
        model = TransformersModel(checkpoint, name=name)
        loads.append((f"{name} transformers (converted copy)", None, time.perf_counter() - start))
        run(f"{name} · transformers · one at a time", model, batch=False)
        run(f"{name} · transformers · batch of {len(conversations)}", model, batch=True)
        del model  # a float32 1.5B model holds 6 GB: free it before the next

    slm = get_model(embedded.DEFAULT_SLM)
    cascade = Cascade([Tier(slm, 0.0, resolve_price(slm.name)),
                       Tier(get_model(embedded.DEFAULT_LLM), None, resolve_price("qwen"))], config)
    slm.generate(conversations[:1], config)  # warm-up: the first call pays one-off costs
    # The cascade's own cost is its wall time beyond the model calls it makes; timing a direct
    # call beside it would not be fair, since llama.cpp reuses the prompt cached by the other.
    start = time.perf_counter()
    via = [cascade.answer(q, hint=task.hint) for q in questions]
    cascade_s = time.perf_counter() - start
    model_s = sum(result.latency_s for result in via)
    base = rows[0][1]
    lines = ["## Speed on this machine", "",
             f"{len(conversations)} generated arithmetic questions, 48 new tokens at most, greedy. "
             "The llama.cpp backend answers one question at a time (one KV cache per loaded "
             "model), so only transformers has a batched row.", "",
             "| model · backend · mode | tokens/s | questions/min | vs SmolLM2 llama.cpp |",
             "|---|---|---|---|"]
    lines += [f"| {label} | {tps:.1f} | {qpm:.1f} | {tps / base:.2f}× |" for label, tps, qpm in rows]
    lines += ["", "| model load | new process, imports included (s) | in a running process (s) |",
              "|---|---|---|"]
    lines += [f"| {label} | {'—' if fresh is None else f'{fresh:.2f}'} | {loaded:.2f} |"
              for label, fresh, loaded in loads]
    lines += ["", f"Cascade overhead (threshold 0, so the SLM answers every question): "
                  f"{cascade_s:.3f} s of wall time through the cascade for {model_s:.3f} s inside "
                  f"the model calls, ratio {cascade_s / model_s:.3f} (prompt building, parsing, "
                  "pricing and decisions make the difference).", ""]
    return lines


RESULTS_DIR = RUNS_DIR.parent / "results"


def serving_lines(results: Path = RESULTS_DIR) -> list[str]:
    """The token signals' price and the Ask tab's latency, read from the JSON their scripts
    write (benchmarks/token_signal_cost.py, benchmarks/ask_latency.py), where they have run."""
    import json

    def machine(report):
        found = report["machine"]
        load = found.get("load_average_before")
        return (f"{found['machine']}, {found['cores']} cores, {found['threads']} llama.cpp "
                f"thread(s)" + (f", load average {load[0]:.1f} when it started" if load else ""))

    lines = []
    cost = results / "token_signal_cost.json"
    if cost.is_file():
        report = json.loads(cost.read_text())
        arms = report["arms"]
        before = arms.get("token signals via logits_all (before)")
        lines += ["**Token signals' price** (`" + report["command"] + "`, " + report["date"]
                  + f", {machine(report)}): {report['questions']} {report['task']} questions, "
                  f"{report['model']}. Seconds per question: "
                  f"{arms['plain']['mean_seconds_per_question']:.2f} plain, "
                  f"{arms['token signals']['mean_seconds_per_question']:.2f} with the token "
                  f"signals' log-probabilities: **{arms['token signals']['ratio_to_plain']:.2f}x** "
                  "plain" + (f" ({before['mean_seconds_per_question']:.2f} s, "
                             f"{before['ratio_to_plain']:.2f}x, the way they were read before, "
                             "with llama.cpp's logits_all)" if before else "")
                  + f". Same reply in every arm on {report['same_text']} of "
                  f"{report['questions']} questions"
                  + (f"; the log-probabilities differ from logits_all's by at most "
                     f"{report['max_logprob_difference_vs_logits_all']:.1e}"
                     if "max_logprob_difference_vs_logits_all" in report else "") + ".", ""]
    latency = results / "ask_latency.json"
    if latency.is_file():
        report = json.loads(latency.read_text())
        first, final = report["first_token_s"], report["final_answer_s"]
        deferred = sum(run["deferred"] for run in report["questions"])
        lines += ["**Ask tab latency** (`" + report["command"] + "`, " + report["date"]
                  + f", {machine(report)}): on a warm app, over its {len(report['questions'])} "
                  f"example questions ({deferred} deferred to the LLM at the default threshold), "
                  f"the first streamed token after a median {first['median']:.2f} s (max "
                  f"{first['max']:.2f} s), the final answer after a median "
                  f"{final['median']:.2f} s (max {final['max']:.2f} s).", ""]
    return lines


PROGRAM_SECTION = "## The LLM answering by program"


def program_llm_lines(results: Path = RESULTS_DIR) -> list[str]:
    """The shipped SLMs in front of the LLM answering plainly and by program (corea.program),
    read from the results benchmarks/program_llm.py writes."""
    import json

    path = results / "program_llm.json"
    if not path.is_file():
        return []
    result = json.loads(path.read_text())

    def best(entry):
        point = entry["best_within_2pt"]
        return "none" if point is None else (
            f"{_pct(point['saving'])} (acc {_pct(point['accuracy'])}, "
            f"{_pct(point['llm_share'])} to the LLM)")

    def held_out(entry):
        check = entry["holdout"]
        return "none" if check is None else (
            f"loses {100 * check['test_loss']:+.1f} pts, saves {_pct(check['test_saving'])}")

    lines = [PROGRAM_SECTION, "",
             f"From `{result['command']}` ({result['date']}, {result['machine']}), no model "
             "runs: the committed tables of the shipped SLMs (read on the signal each is served "
             "with: the default SLM answering in prose, `smollm2-calibrated-TASK.jsonl`, and "
             "the SLMs answering by program, `smollm2-program-TASK.jsonl` and "
             "`smollm2-program-rephrase-TASK.jsonl`) and of the embedded "
             "LLM asked plainly (`qwen-TASK.jsonl`, where traced) and by program "
             "(`program:qwen`, `qwen-program-TASK.jsonl`: it writes one assignment per sentence "
             "and corea runs the program), on the same questions. Saving: of the cost of that "
             "LLM alone, at the cheapest threshold within 2 points of its accuracy; held out: "
             "that threshold chosen on two of every three questions, loss and saving on the "
             "third.", "",
             "| set | questions | SLM (signal) | SLM right | LLM plain · by program (its cost "
             "vs plain) | LLM | AUROC | best within 2 points | held out |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task in result["tasks"]:
        plain = (f"{_pct(task['plain']['accuracy'])} · {_pct(task['program']['accuracy'])} "
                 f"({_pct(task['program_cost_vs_plain'])})" if "plain" in task
                 else f"— · {_pct(task['program']['accuracy'])}")
        for kind in ("plain", "program"):
            if kind not in task:
                continue
            entry = task[kind]
            lines.append(
                f"| {task['task']} | {task['questions']} | {task['slm_model']} "
                f"({task['signal']}) | {_pct(task['slm_accuracy'])} | {plain} | {kind} | "
                f"{_num(entry['auroc'])} | {best(entry)} | {held_out(entry)} |")
    return lines + [""]


STEP_SECTION = "## Step-level routing"


def step_routing_lines(results: Path = RESULTS_DIR) -> list[str]:
    """Step-level against question-level routing on the same questions, read from the results
    that benchmarks/step_routing.py's report writes (step_routing.json for the first SLM before
    the plain LLM, step_routing_<setup>.json for others; benchmarks/STEP_ROUTING*.md have the
    sweeps)."""
    import json

    paths = sorted(results.glob("step_routing*.json"), key=lambda p: (p.stem != "step_routing",
                                                                        p.stem))
    if not paths:
        return []

    def cell(point):
        if point is None:
            return "none"
        return (f"{100 * point['saving']:.1f}% ({point['method'].split(': ', 1)[-1]}, "
                f"acc {100 * point['accuracy']:.1f}%)")

    lines = [STEP_SECTION, ""]
    for path in paths:
        result = json.loads(path.read_text())
        columns = list(result["tasks"][0]["best"]) if result["tasks"] else []
        report = result.get("report", "STEP_ROUTING.md")
        lines += [f"From `{result['command']}` ({result['date']}, {result['machine']}); every "
                  f"router's sweep and the cost rule are in [{report}]({report}). The SLM writes "
                  "one step at a time and a router hands the rest to the LLM, which reads the "
                  "prompt and the steps so far again (billed; a program LLM reads the question "
                  "alone). Cell: the cheapest point of each kind of routing at that accuracy "
                  "against the LLM alone, its saving of the LLM alone's cost (the router or "
                  "signal, accuracy); none: no threshold gets there. Routers: `threshold` "
                  "(STEER's rule on the step's token probabilities), `gmm` (a two-component "
                  "Gaussian mixture), `learned` (a logistic policy fitted on training steps); "
                  "`+answer`: the confidence step kept on the stated confidence as served.", "",
                  "| set | questions | SLM alone · LLM alone | routing | "
                  + " | ".join(columns) + " |", "|---|---|---|---|" + "---|" * len(columns)]
        for task in result["tasks"]:
            for kind in ("step", "question"):
                lines.append(
                    f"| {task['task']} | {task['questions']} | "
                    f"{100 * task['slm_accuracy']:.1f}% · {100 * task['llm_accuracy']:.1f}% | "
                    f"{kind} level | "
                    + " | ".join(cell(task["best"][column][kind]) for column in columns) + " |")
        lines.append("")
    return lines


def run_bench(plan: BenchPlan, command: str) -> Path:
    tables = build_traces(plan)
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    plots = plan.out.parent / "plots"
    plots.mkdir(exist_ok=True)
    pairs_by_dataset, sections, savings, accuracies, aurocs = {}, [], {}, {}, {}
    chance_sets: list[str] = []
    for name, _ in DATASETS:
        pairs = signal_pairs(tables[name], get_task(name).checker)
        pairs_by_dataset[name] = pairs
        plot = plots / f"bench-{name}.html"
        majority = majority_answer(tables[name]["llm"])
        section, reports = dataset_section(name, tables[name], pairs, str(plot), plan.traces,
                                           majority)
        dataset_figure(name, reports).write_html(str(plot), include_plotlyjs="cdn")
        sections += section
        savings[name] = {signal: (r["best_within_2pt"] or {}).get("saving")
                         for signal, r in reports.items()}
        savings[name]["random deferral (expected)"] = random_deferral_saving(
            pairs["oracle (upper bound)"])
        answered = {row["id"] for row in tables[name]["slm"] if row["answer"] is not None}
        aurocs[name] = {signal: (r["auroc"], answered_auroc(pairs[signal], answered))
                        for signal, r in reports.items() if not signal.startswith("oracle")}
        if no_better_than_majority(reports["oracle (upper bound)"]["llm_only"]["accuracy"],
                                   majority):
            chance_sets.append(name)
        calibrated = reports.get("verbalized (calibrated)")
        accuracies[name] = (reports["oracle (upper bound)"]["slm_only"]["accuracy"],
                            calibrated and calibrated["slm_only"]["accuracy"],
                            reports["oracle (upper bound)"]["llm_only"]["accuracy"])
    signals = list(dict.fromkeys(signal for row in savings.values() for signal in row))
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    lines = [
        "# corea benchmark report", "",
        f"Command: `{command}` · machine: {machine} · {time.strftime('%Y-%m-%d %H:%M')}", "",
        f"SLM {embedded.DEFAULT_SLM}"
        + (f" (calibrated: adapter {plan.adapter})" if plan.adapter else "")
        + f", LLM {embedded.DEFAULT_LLM}, greedy, {plan.max_new_tokens} new "
        "tokens at most; prices as in README (compute-based). Every figure is recomputed by "
        f"`python -m corea sweep` from the trace tables in `{plan.traces}` (signals other than the "
        "stated confidence are columns of the SLM tables). None of these questions is used in "
        "training (test/dev splits only). Self-consistency samples: "
        f"{plan.samples} at temperature {SAMPLING['temperature']}, each paid for on every "
        "question (the SLM runs k more times).", "",
        "## Headline: cost saved with accuracy within 2 points of LLM-only", "",
        "| data set | SLM" + (" / calibrated SLM" if plan.adapter else "") + " / LLM accuracy | "
        + " | ".join(signals) + " |",
        "|---|---|" + "---|" * len(signals),
        *[f"| {name} | " + " / ".join(_pct(a) for a in accuracies[name] if a is not None) + " | "
          + " | ".join(_pct(row.get(s)) for s in signals) + " |" for name, row in savings.items()],
        "", "— : no threshold keeps accuracy within 2 points of LLM-only (use the LLM alone). The "
            "oracle is an upper bound (it knows which answers are right), not a usable signal."
        + (f" On {', '.join(chance_sets)} the LLM does no better than always giving the commonest "
           "answer, so a saving there measures nothing (see the set's section)."
           if chance_sets else ""), "",
        *auroc_table(aurocs),
        "For scale: COREA (arXiv 2603.03752) reports 21.5% saved on out-of-domain math and 16.8% "
        "on non-math within 2 points, with an RL-calibrated 7B SLM in front of a 32B LLM. The pair "
        f"here is the embedded {embedded.DEFAULT_SLM} in front of {embedded.DEFAULT_LLM}, on CPU; "
        + ("its SLM is calibrated with the adapter named above." if plan.adapter else
           "no calibrated adapter was given, so the verbalized signal is the untrained "
           "model's.") + " Each set's section says what its numbers mean.", "",
        *ablation_section(plan.traces, RUNS_DIR),
        "## Per data set", "",
        "AIQ: the best accuracy affordable at each budget (upper convex hull of accuracy against "
        "cost), averaged over budgets from 0 to the price of the LLM alone, so a signal that costs "
        "more (self-consistency pays for its samples) is charged for it. APGR: the share of the "
        "SLM-to-LLM accuracy gap recovered, averaged over the share of questions sent to the LLM "
        "(cost not counted). ECE, AUROC and Brier score the signal against the SLM's correctness.",
        "", *sections,
        *protection_table(tables, pairs_by_dataset),
        *speed_section(plan),
        *serving_lines(),
        *program_llm_lines(),
        *step_routing_lines(),
    ]
    plan.out.write_text("\n".join(lines) + "\n")
    return plan.out
