"""Benchmarks of strategy memory: the online stream, strategy writing, retrieval latency.

The online stream: questions in a seeded order, an empty store at the start, the cascade learning
as it goes (each deferral may store a strategy that later questions retrieve). One row per
question, in trace-table form (same `task` and `model` as the SLM's plain trace, plus
`strategies`), then a report against the same SLM without memory on the same questions:

    python -m corea bench-memory stream --task arith-mix --limit 150 \\
        --slm-trace benchmarks/traces/smollm2-arith-mix.jsonl \\
        --llm-trace benchmarks/traces/qwen-arith-mix.jsonl \\
        --out benchmarks/traces/smollm2-memory-arith-mix.jsonl
    python -m corea bench-memory report --task arith-mix ...   # the tables and plot only

A prompt identical to one in the plain traces (the SLM's when no strategy was retrieved, the
LLM's answer call) is answered from that trace, since greedy decoding gives the same reply;
everything else (the SLM with strategies, the LLM's strategy calls) runs the models. An SLM that
defers on a token signal (a trained adapter served on `verbalized_mean`) always runs: its
decision needs the reply's token probabilities, which a trace table keeps only as signal values.
The SLM defers on its serving defaults (signal, threshold, Platt map, zero-shot prompt) unless
told otherwise. Resumable: rows already in --out are skipped and the store is kept beside it.

    python -m corea bench-memory write --task arith-mix --limit 30    # same call vs second call
    python -m corea bench-memory latency --size 10000                 # retrieval ms per question
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corea.cascade import Cascade, Tier
from corea.checking import is_correct
from corea.costs import resolve_price
from corea.memory import (Embedder, MemoryConfig, StrategyMemory, export_jsonl, get_embedder,
                          llm_messages, open_store, parse_strategy, slm_messages,
                          strategy_request)
from corea.metrics import evaluate_threshold, join_traces, summarize
from corea.models import Generation, GenerationConfig, Model, get_model
from corea.protocol import build_messages, parse_reply
from corea.signals import with_signal
from corea.tasks import Example, get_task
from corea.traces import read_trace, trace_row

REPORT = Path("benchmarks/memory_stream.md")


# ------------------------------------------------------------------------------------- replay

class ReplayModel(Model):
    """A model whose replies to prompts it has already answered are read from its trace table
    (greedy decoding repeats them); any other prompt goes to the model itself, loaded on first
    need."""

    def __init__(self, spec: str, name: str, known: dict[str, Generation], *,
                 model: Model | None = None, few_shot: bool = True):
        self.spec, self.name, self.known = spec, name, known
        self._model = model
        self.replayed = self.generated = 0
        # What the cascade reads off a model: its prompt form, Platt map and token probabilities.
        self.few_shot = model.few_shot if model is not None else few_shot
        self.confidence_map = model.confidence_map if model is not None else None
        self.logprobs = bool(getattr(model, "logprobs", False))

    @staticmethod
    def key(messages: list[dict]) -> str:
        return json.dumps(messages, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_trace(cls, spec: str, rows: list[dict], hint: str | None,
                   few_shot: bool = True) -> "ReplayModel":
        known = {cls.key(build_messages(row["question"], hint=hint, few_shot=few_shot)):
                 Generation(row["output"], row["prompt_tokens"], row["completion_tokens"],
                            row["latency_s"]) for row in rows}
        return cls(spec, rows[0]["model"] if rows else spec, known, few_shot=few_shot)

    @classmethod
    def live(cls, model: Model) -> "ReplayModel":
        """Every prompt runs the model (what a token signal needs); the counts still apply."""
        return cls(model.name, model.name, {}, model=model)

    def generate(self, conversations, config=GenerationConfig()):
        out = []
        for messages in conversations:
            known = self.known.get(self.key(messages)) if config == GenerationConfig() else None
            if known is not None:
                self.replayed += 1
                out.append(known)
                continue
            if self._model is None:
                self._model = get_model(self.spec)
            self.generated += 1
            generation = self._model.generate([messages], config)[0]
            if config == GenerationConfig():  # the same prompt again gets the same reply
                self.known[self.key(messages)] = generation
            out.append(generation)
        return out


# ------------------------------------------------------------------------------------- stream

@dataclass
class StreamPlan:
    task: str
    limit: int
    out: Path
    slm: str = "smollm2"
    llm: str = "qwen"
    slm_trace: Path | None = None  # read for replay; streamed questions it lacks are added
    llm_traces: tuple[Path, ...] = ()  # read for replay; missing answers go to the last one
    split: str | None = None
    seed: int = 0
    threshold: float | None = None  # None: the SLM's serving default (embedded.serving_defaults)
    signal: str | None = None  # what the SLM defers on; None: its serving default
    write: str = "second_call"
    admit_confidence: float = 0.9
    min_similarity: float = 0.5
    top_k: int = 2
    store: Path | None = None  # default: runs/memory/<out's name>.db
    max_questions: int | None = None  # stop after this many new rows (bounded runs)
    export: Path | None = None  # where the finished stream's strategies are exported (JSONL)
    quote_problem: bool = False  # notes quote the problem each strategy was written for
    consult: str = "always"  # or on_doubt: the SLM reads the notes only when it would defer


def stream_order(examples: list[Example], seed: int) -> list[Example]:
    order = list(examples)
    random.Random(seed).shuffle(order)
    return order


def _serving(plan: StreamPlan) -> tuple[str, float]:
    """(signal, threshold) the SLM defers on: the plan's, else what the SLM is served with."""
    from corea.embedded import serving_defaults

    signal, threshold = serving_defaults(plan.slm)
    return plan.signal or signal, plan.threshold if plan.threshold is not None else threshold


def _stream_settings(plan: StreamPlan, signal: str, threshold: float) -> dict:
    return {"seed": plan.seed, "threshold": threshold, "write": plan.write,
            "admit_confidence": plan.admit_confidence, "min_similarity": plan.min_similarity,
            "top_k": plan.top_k, "limit": plan.limit, "quote_problem": plan.quote_problem,
            **({"consult": plan.consult} if plan.consult != "always" else {}),
            # Streams on the stated confidence kept their settings from before signals existed.
            **({"signal": signal} if signal != "verbalized" else {})}


def _stream_slm(plan: StreamPlan, signal: str, rows: list[dict], hint: str | None
                ) -> ReplayModel:
    """The SLM as the stream runs it: replayed from its plain trace where greedy decoding would
    repeat a reply, live throughout when it defers on a token signal."""
    from corea.signals import TOKEN_SIGNALS

    if signal in TOKEN_SIGNALS:
        slm = ReplayModel.live(get_model(plan.slm, logprobs=True))
    else:
        model = get_model(plan.slm)
        slm = ReplayModel.from_trace(plan.slm, rows, hint, few_shot=model.few_shot)
        slm.name = model.name
    traced = {row["model"] for row in rows}
    if traced - {slm.name}:
        raise ValueError(f"{plan.slm_trace} holds replies of {', '.join(sorted(traced))}, not of "
                         f"{slm.name}: the comparison without memory needs the same SLM's trace")
    return slm


def run_stream(plan: StreamPlan, progress: bool = True) -> list[dict]:
    """Stream the questions through the cascade with memory. Alongside, every streamed question
    also gets the plain SLM reply and the LLM's answer (read from the traces, else run and
    added to them), so the comparison without memory covers exactly the streamed questions."""
    task = get_task(plan.task)
    split = plan.split or task.default_split
    order = stream_order(task.examples(split, plan.limit), plan.seed)
    store = plan.store or Path("runs/memory") / f"{plan.out.stem}.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    signal, threshold = _serving(plan)
    settings = _stream_settings(plan, signal, threshold)
    done = read_trace(plan.out) if plan.out.is_file() and plan.out.stat().st_size else []
    # Streams from before `quote_problem` existed quoted the problem beside each strategy.
    earlier = {"quote_problem": True, **done[0].get("stream", {})} if done else None
    if done and earlier != settings:
        raise ValueError(f"{plan.out} was streamed with other settings ({earlier}); choose "
                         "another --out")
    if done and not store.is_file():
        raise ValueError(f"{plan.out} has rows but its store {store} is gone: the stream cannot "
                         "resume without it; remove the rows to start again")
    if not done and store.exists():
        store.unlink()  # the stream starts from an empty store
    seen = {row["id"] for row in done}
    todo = [(i, e) for i, e in enumerate(order) if e.id not in seen]
    if plan.max_questions is not None:
        todo = todo[:plan.max_questions]
    hint = task.hint
    slm_rows = _rows_of(plan.slm_trace)
    llm_rows = [row for path in plan.llm_traces for row in _rows_of(path)]
    slm = _stream_slm(plan, signal, slm_rows, hint)
    llm = ReplayModel.from_trace(plan.llm, llm_rows, hint)
    llm.name = llm_rows[0]["model"] if llm_rows else get_model(plan.llm).name
    slm_price, llm_price = resolve_price(slm.name), resolve_price(llm.name)
    rows = list(done)
    if todo:
        memory = StrategyMemory(MemoryConfig(
            store=str(store), namespace=task.name, top_k=plan.top_k,
            min_similarity=plan.min_similarity, admit_confidence=plan.admit_confidence,
            write=plan.write, quote_problem=plan.quote_problem, consult=plan.consult))
        cascade = Cascade([Tier(slm, threshold, slm_price, signal), Tier(llm, None, llm_price)],
                          GenerationConfig(), memory)
        baselines = [(slm, plan.slm_trace, {r["id"] for r in slm_rows}, slm_price),
                     (llm, plan.llm_traces[-1] if plan.llm_traces else None,
                      {r["id"] for r in llm_rows}, llm_price)]
        with open(plan.out, "a", encoding="utf-8") as handle:
            for position, example in todo:
                start = time.perf_counter()
                result = cascade.answer_batch([example.question], hint=hint,
                                              golds=[example.gold], checker=task.checker)[0]
                for model, path, known, price in baselines:
                    _record_baseline(model, path, known, example, task, split, price)
                row = _stream_row(example, task, split, result, position, settings, slm_price,
                                  time.perf_counter() - start)
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
                rows.append(row)
                if progress:
                    kept = sum(r["correct"] for r in rows) / len(rows)
                    print(f"[{len(rows)}/{len(order)}] slm "
                          f"{'right' if row['correct'] else 'wrong'} (acc {kept:.3f}), "
                          f"strategies {row['strategies']}, "
                          f"{'deferred' if row['deferred'] else 'kept'}, {row['lesson']}",
                          flush=True)
        memory.close()
    if plan.export and len(rows) == len(order):
        plan.export.parent.mkdir(parents=True, exist_ok=True)
        exported = StrategyMemory(MemoryConfig(store=str(store), namespace=task.name))
        export_jsonl(exported.store, plan.export, task.name)
        exported.close()
    if progress:
        print(f"replayed from traces: SLM {slm.replayed}, LLM {llm.replayed}; generated: SLM "
              f"{slm.generated}, LLM {llm.generated}")
    return rows


def _rows_of(path: Path | None) -> list[dict]:
    return _finished_rows(path) if path is not None and path.is_file() else []


def _record_baseline(model: ReplayModel, path: Path | None, known: set, example: Example, task,
                     split: str, price) -> None:
    """The model's plain-prompt reply to a streamed question, added to its trace if missing.
    A reply the cascade just produced for that same prompt is reused, not generated again."""
    from corea.traces import setup_id

    if path is None or example.id in known:
        return
    generation = model.generate([build_messages(example.question, hint=task.hint,
                                                few_shot=model.few_shot)])[0]
    row = trace_row(example, task, split, model.name, generation, price,
                    setup_id(task, GenerationConfig(), model.few_shot))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    known.add(example.id)


def _finished_rows(path: Path) -> list[dict]:
    """A trace's rows, leaving out a last line still being written by a running trace."""
    from corea.traces import parse_trace_lines

    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    return parse_trace_lines(lines, str(path))


def _stream_row(example, task, split, result, position, settings, slm_price, wall_s) -> dict:
    """The SLM's last reply (asked again with the notes when it consulted memory on doubt), with
    what all its calls cost, and what the cascade and memory did."""
    slm_steps = [step for step in result.steps if step.tier == 1]
    answered = slm_steps[-1]
    row = trace_row(example, task, split, answered.model, answered.generation, slm_price,
                    strategies=result.strategies)
    if len(slm_steps) > 1:
        row.update(cost=sum(step.cost for step in slm_steps), slm_calls=len(slm_steps),
                   prompt_tokens=sum(s.generation.prompt_tokens for s in slm_steps),
                   completion_tokens=sum(s.generation.completion_tokens for s in slm_steps))
    lesson = result.lesson
    last = result.steps[-1]
    row.update({
        "position": position, "stream": settings,
        "deferred": answered.decision == "deferred",
        "cascade_answer": result.answer, "cascade_correct": bool(result.correct),
        "cascade_cost": result.cost, "memory_cost": result.memory_cost,
        "llm_cost": last.cost if len(result.steps) > 1 else 0.0,
        "stored": getattr(lesson, "stored_id", None),
        "merged": bool(getattr(lesson, "merged", False)),
        "lesson": getattr(lesson, "reason", "") if lesson else "",
        "strategy": getattr(lesson, "strategy", None) if lesson else None,
        "memory_note": result.memory_note, "wall_s": round(wall_s, 3),
    })
    return row


# ------------------------------------------------------------------------------------- report

def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def stream_summary(stream_rows: list[dict], plain_rows: list[dict],
                   llm_rows: list[dict], confidence_map=None) -> dict:
    """With vs without memory on the same questions in stream order: the SLM's accuracy by
    half, the cascade at the stream's threshold, and its best saving within 2 points. Both
    sides are read as the stream deferred: its signal, through the SLM's Platt map (a shipped
    adapter's is found by its name; another SLM's comes as `confidence_map`)."""
    signal = _stream_signal(stream_rows)
    if signal != "verbalized":
        stream_rows, plain_rows = (with_signal(rows, signal, platt=confidence_map)
                                   for rows in (stream_rows, plain_rows))
    rows = sorted(stream_rows, key=lambda r: r["position"])
    plain = {r["id"]: r for r in plain_rows}
    llm = {r["id"]: r for r in llm_rows}
    rows = [r for r in rows if r["id"] in plain and r["id"] in llm]
    n = len(rows)
    half = n // 2
    threshold = rows[0]["stream"]["threshold"] if rows else None

    def slm_acc(part, with_memory):
        return _mean((r if with_memory else plain[r["id"]])["correct"] for r in part)

    with_pair = join_traces(rows, [llm[r["id"]] for r in rows])
    plain_pair = join_traces([plain[r["id"]] for r in rows], [llm[r["id"]] for r in rows])
    llm_cost = float(with_pair.llm_cost.sum())
    memory_cost = sum(r["memory_cost"] for r in rows)
    # The real stream's cost: the cascade as run, with the strategy calls.
    actual_cost = sum(r["cascade_cost"] for r in rows)
    actual_acc = _mean(r["cascade_correct"] for r in rows)
    plain_at = evaluate_threshold(plain_pair, threshold)
    plain_summary = summarize(plain_pair)
    with_summary = summarize(with_pair)
    summary = {
        "n": n, "threshold": threshold, "signal": signal,
        "slm_accuracy": {"with_memory": slm_acc(rows, True), "without": slm_acc(rows, False),
                         "first_half_with": slm_acc(rows[:half], True),
                         "first_half_without": slm_acc(rows[:half], False),
                         "second_half_with": slm_acc(rows[half:], True),
                         "second_half_without": slm_acc(rows[half:], False)},
        "llm_accuracy": float(with_pair.llm_correct.mean()),
        "with_prompt_strategies": _mean(bool(r["strategies"]) for r in rows),
        "stored": sum(r["stored"] is not None and not r["merged"] for r in rows),
        "merged": sum(bool(r["merged"]) for r in rows),
        "cascade_with_memory": {
            "accuracy": actual_acc, "relative_cost": _ratio(actual_cost, llm_cost),
            "saving": _saving(_ratio(actual_cost, llm_cost)),
            "llm_share": _mean(r["deferred"] for r in rows),
            "memory_cost_share": _ratio(memory_cost, llm_cost)},
        "cascade_without_memory": {
            "accuracy": plain_at["accuracy"], "relative_cost": plain_at["relative_cost"],
            "saving": _saving(plain_at["relative_cost"]), "llm_share": plain_at["llm_share"]},
        "best_within_2pt_without_memory": plain_summary["best_within_2pt"],
        # Re-thresholding a memory stream is an approximation: another threshold would have
        # deferred other questions and so filled the store differently.
        "best_within_2pt_with_memory_approx": _with_memory_cost(
            with_summary["best_within_2pt"], memory_cost, llm_cost),
    }
    return summary


def _stream_signal(rows: list[dict]) -> str:
    return (rows[0]["stream"].get("signal") if rows else None) or "verbalized"


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None  # models with no known price cost 0


def _saving(relative: float | None) -> float | None:
    return None if relative is None else 1 - relative


def _with_memory_cost(point: dict | None, memory_cost: float, llm_cost: float) -> dict | None:
    if point is None or point["relative_cost"] is None or not llm_cost > 0:
        return point
    relative = point["relative_cost"] + memory_cost / llm_cost
    return {**point, "relative_cost": relative, "saving": 1 - relative}


def curves(stream_rows: list[dict], plain_rows: list[dict], window: int = 30) -> dict:
    """Along the stream: rolling SLM accuracy (with and without memory), deferral rate, and
    cumulative cost relative to the LLM alone."""
    rows = sorted(stream_rows, key=lambda r: r["position"])
    plain = {r["id"]: r for r in plain_rows}
    rows = [r for r in rows if r["id"] in plain]
    x, with_acc, without_acc, deferral, cost = [], [], [], [], []
    spent = llm_spent = 0.0
    for index, row in enumerate(rows):
        part = rows[max(0, index + 1 - window):index + 1]
        x.append(index + 1)
        with_acc.append(_mean(r["correct"] for r in part))
        without_acc.append(_mean(plain[r["id"]]["correct"] for r in part))
        deferral.append(_mean(r["deferred"] for r in part))
        spent += row["cascade_cost"]
        llm_spent += row["llm_cost"] if row["deferred"] else 0.0
        cost.append(spent)
    return {"x": x, "slm_accuracy_with": with_acc, "slm_accuracy_without": without_acc,
            "deferral_rate": deferral, "cumulative_cost": cost, "window": window}


def stream_figure(curve: dict, title: str, llm_cost_cumulative: list[float] | None = None):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=3, cols=1, shared_xaxes=True, subplot_titles=(
        f"SLM accuracy (last {curve['window']} questions)", "deferral rate (same window)",
        "cumulative cost (USD)"))
    figure.add_trace(go.Scatter(x=curve["x"], y=curve["slm_accuracy_with"], name="SLM with memory"),
                     1, 1)
    figure.add_trace(go.Scatter(x=curve["x"], y=curve["slm_accuracy_without"],
                                name="SLM without memory"), 1, 1)
    figure.add_trace(go.Scatter(x=curve["x"], y=curve["deferral_rate"], name="deferred"), 2, 1)
    figure.add_trace(go.Scatter(x=curve["x"], y=curve["cumulative_cost"],
                                name="cascade with memory"), 3, 1)
    if llm_cost_cumulative:
        figure.add_trace(go.Scatter(x=curve["x"], y=llm_cost_cumulative, name="LLM alone"), 3, 1)
    figure.update_layout(title=title, height=800)
    figure.update_xaxes(title_text="questions in stream order", row=3, col=1)
    return figure


def report_section(task: str, summary: dict, command: str, plot: str, link: str) -> str:
    """The stream's tables in Markdown; `link` is the plot's address from where it is written."""
    s, a = summary, summary["slm_accuracy"]
    w, p = s["cascade_with_memory"], s["cascade_without_memory"]

    def pct(v):
        return "—" if v is None else f"{v * 100:.1f}%"

    best_plain, best_mem = s["best_within_2pt_without_memory"], \
        s["best_within_2pt_with_memory_approx"]
    lines = [
        f"### {task}: {s['n']} questions, threshold {s['threshold']}"
        + (f" on {s['signal']}" if s.get("signal", "verbalized") != "verbalized" else ""), "",
        f"`{command}`", "",
        "| | with memory | without memory |", "|---|---|---|",
        f"| SLM accuracy, all | {pct(a['with_memory'])} | {pct(a['without'])} |",
        f"| SLM accuracy, first half | {pct(a['first_half_with'])} | "
        f"{pct(a['first_half_without'])} |",
        f"| SLM accuracy, second half | {pct(a['second_half_with'])} | "
        f"{pct(a['second_half_without'])} |",
        f"| cascade accuracy at the threshold | {pct(w['accuracy'])} | {pct(p['accuracy'])} |",
        f"| sent to the LLM | {pct(w['llm_share'])} | {pct(p['llm_share'])} |",
        f"| cost vs the LLM alone (strategy calls included) | {pct(w['relative_cost'])} | "
        f"{pct(p['relative_cost'])} |",
        f"| best saving within 2 points of the LLM alone | "
        f"{pct(best_mem['saving']) if best_mem else 'none'} (re-thresholded, approximate) | "
        f"{pct(best_plain['saving']) if best_plain else 'none'} |", "",
        f"LLM alone: {pct(s['llm_accuracy'])}. Questions whose SLM prompt had strategies: "
        f"{pct(s['with_prompt_strategies'])}; strategies stored {s['stored']}, merged "
        f"{s['merged']}; the strategy calls cost {pct(w['memory_cost_share'])} of the LLM alone. "
        f"Plot: [{plot}]({link}).", "",
    ]
    return "\n".join(lines)


def report(task: str, stream: Path, plain: Path, llm: list[Path], command: str,
           plot_dir: Path = Path("benchmarks/plots"),
           report_dir: Path = Path("benchmarks/memory"),
           confidence_map=None) -> tuple[dict, str]:
    """The stream's summary and report section, and its plot along the stream (the SLM's
    `confidence_map` as in `stream_summary`)."""
    llm_by_id: dict[str, dict] = {}
    for path in llm:
        for row in _rows_of(path):
            llm_by_id.setdefault(row["id"], row)
    plain_rows = _rows_of(plain)
    plain_ids = {r["id"] for r in plain_rows}
    stream_rows = [r for r in read_trace(stream) if r["id"] in plain_ids and r["id"] in llm_by_id]
    if not stream_rows:
        raise ValueError(f"{stream} shares no questions with {plain} and the LLM traces")
    summary = stream_summary(stream_rows, plain_rows, list(llm_by_id.values()), confidence_map)
    curve = curves(stream_rows, plain_rows)
    ordered = sorted(stream_rows, key=lambda r: r["position"])
    llm_cumulative = list(np.cumsum([llm_by_id[r["id"]]["cost"] for r in ordered]))
    plot_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_dir / f"{stream.stem}.html"  # one per stream: several SLMs stream one task
    stream_figure(curve, f"Strategy memory on the {task} stream", llm_cumulative).write_html(
        str(plot), include_plotlyjs="cdn")
    link = os.path.relpath(plot, report_dir)
    return summary, report_section(task, summary, command, str(plot), link)


# ------------------------------------------------------------------------- strategy writing

def compare_write(task_name: str, limit: int, eval_limit: int, out: Path, *, llm_spec: str = "qwen",
                  slm_spec: str = "smollm2", admit_confidence: float = 0.9,
                  seed: int = 0) -> dict:
    """Same call against second call: the LLM answers `limit` training questions both ways; each
    way's admitted strategies fill a store; the SLM then answers `eval_limit` test questions with
    each store. Cost (tokens, USD), the LLM's accuracy, admission, and the SLM's accuracy."""
    task = get_task(task_name)
    train = stream_order(task.examples("train", limit) if "train" in task.splits
                         else task.examples(None, limit), seed)
    tests = task.examples(task.default_split, eval_limit)
    llm, slm = get_model(llm_spec), get_model(slm_spec)
    llm_price = resolve_price(llm.name)
    config = GenerationConfig()
    strategy_config = GenerationConfig(max_new_tokens=MemoryConfig("x").strategy_max_new_tokens)
    modes = {"same_call": [], "second_call": []}
    for example in train:
        same = llm.generate([llm_messages(example.question, task.hint, "same_call")], config)[0]
        plain = llm.generate([build_messages(example.question, hint=task.hint)], config)[0]
        second = llm.generate([strategy_request(example.question, plain.text)],
                              strategy_config)[0]
        for mode, answer, extra in (("same_call", same, None), ("second_call", plain, second)):
            parsed = parse_reply(answer.text)
            strategy = parse_strategy(answer.text if extra is None else extra.text)
            cost = llm_price.cost(answer.prompt_tokens, answer.completion_tokens) + (
                llm_price.cost(extra.prompt_tokens, extra.completion_tokens) if extra else 0.0)
            tokens = answer.prompt_tokens + answer.completion_tokens + (
                extra.prompt_tokens + extra.completion_tokens if extra else 0)
            modes[mode].append({
                "id": example.id, "correct": is_correct(parsed.answer, example.gold, task.checker),
                "confidence": parsed.confidence if parsed.format_ok else None,
                "strategy": strategy, "cost": cost, "tokens": tokens,
                "latency_s": answer.latency_s + (extra.latency_s if extra else 0.0),
                "admitted": bool(strategy) and parsed.format_ok
                and (parsed.confidence or 0) >= admit_confidence,
                "question": example.question})
    embedder = get_embedder()
    results = {}
    with tempfile.TemporaryDirectory(prefix="corea-write-modes-") as scratch:  # each way's store
        for mode, rows in modes.items():
            store = open_store(str(Path(scratch) / f"{mode}.db"), embedder)
            for row in rows:
                if row["admitted"]:
                    keys = embedder.encode([row["question"], row["strategy"]])
                    store.add(task.name, row["question"], row["strategy"], key_embedding=keys[0],
                              text_embedding=keys[1], confidence=row["confidence"])
            correct, with_notes = [], 0
            for example in tests:
                hits = store.search(task.name, embedder.encode([example.question])[0], 2, 0.5,
                                    count_use=False)
                with_notes += bool(hits)
                reply = slm.generate([slm_messages(example.question, task.hint,
                                                   [h.strategy for h in hits], slm.few_shot)],
                                     config)[0]
                correct.append(is_correct(parse_reply(reply.text).answer, example.gold,
                                          task.checker))
            store.close()
            results[mode] = {
                "llm_accuracy": _mean(r["correct"] for r in rows),
                "strategy_written": _mean(bool(r["strategy"]) for r in rows),
                "admitted": _mean(r["admitted"] for r in rows),
                "mean_cost": _mean(r["cost"] for r in rows),
                "mean_tokens": _mean(r["tokens"] for r in rows),
                "mean_latency_s": _mean(r["latency_s"] for r in rows),
                "slm_accuracy_with_store": _mean(correct), "slm_prompts_with_notes": with_notes,
                "examples": [r["strategy"] for r in rows if r["strategy"]][:3],
            }
    replies = slm.generate([build_messages(e.question, hint=task.hint, few_shot=slm.few_shot)
                            for e in tests], config)
    plain_slm = _mean(is_correct(parse_reply(r.text).answer, e.gold, task.checker)
                      for r, e in zip(replies, tests))
    summary = {"task": task_name, "train_questions": len(train), "test_questions": len(tests),
               "slm_accuracy_without_memory": plain_slm, "modes": results,
               "llm": llm.name, "slm": slm.name}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ------------------------------------------------------------------------------ warm-up

def learn_from_task(memory: StrategyMemory, task_name: str, llm: Model, *,
                    split: str | None = None, limit: int | None = None,
                    progress: bool = True) -> dict:
    """Fill `memory` from a task's questions as the cascade would from its deferrals: the LLM
    answers each one, then writes a strategy (the memory's `write` mode) that is stored when
    the LLM's stated confidence passes the admission gate. Gold answers are only counted."""
    from tqdm.auto import tqdm

    task = get_task(task_name)
    split = split or task.default_split
    config = GenerationConfig()
    counts = {"questions": 0, "llm_right": 0, "stored": 0, "merged": 0, "not_stored": 0}
    start = time.perf_counter()
    for example in tqdm(task.examples(split, limit), desc=f"{llm.name} teaching {task.name}",
                        unit="q", disable=not progress):
        reply = llm.generate([memory.llm_messages(example.question, task.hint,
                                                  few_shot=llm.few_shot)], config)[0]
        parsed = parse_reply(reply.text)
        lesson = memory.learn(example.question, llm, parsed, reply.text, config)
        counts["questions"] += 1
        counts["llm_right"] += bool(is_correct(parsed.answer, example.gold, task.checker))
        counts["merged" if lesson.merged else "stored" if lesson.stored_id is not None
               else "not_stored"] += 1
    return {**counts, "task": task.name, "split": split, "llm": llm.name,
            "wall_s": round(time.perf_counter() - start, 1)}


# ------------------------------------------------------------------------ retrieval latency

def synthetic_questions(count: int, split: str = "train") -> list[str]:
    """Distinct word problems from the arithmetic generator, levels 1-5 in equal shares: a store
    of realistic size (train split) and questions that are not in it (test split)."""
    from corea import arithmetic

    per_level = -(-count // 5)
    questions = [p.question for level in range(1, 6)
                 for p in arithmetic.generate(level, split, per_level)]
    return questions[:count]


def retrieval_latency(size: int, store_path: Path, queries: int = 200, top_k: int = 2,
                      min_similarity: float = 0.5, embed_fill: bool = False) -> dict:
    """Milliseconds per question to embed it and find its top-k among `size` stored strategies
    (SQLite store, warm cache), and the parts: embedding, search. Each is timed on the wall
    clock and in this process's CPU time, which a busy machine inflates far less.

    The stored keys are seeded random unit vectors unless `embed_fill`: a search costs the same
    whatever the vectors hold, and embedding 10,000 fixtures would cost minutes of CPU."""
    embedder = get_embedder()
    if store_path.exists():
        store_path.unlink()
    store = open_store(str(store_path), embedder)
    questions = synthetic_questions(size)
    if embed_fill:
        vectors = embedder.encode(questions)
    else:
        vectors = np.random.default_rng(0).normal(size=(size, embedder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    _bulk_fill(store, "latency", questions, vectors)
    memory = StrategyMemory(MemoryConfig(store=str(store_path), namespace="latency",
                                         top_k=top_k, min_similarity=min_similarity),
                            embedder=embedder, store=store)
    probes = synthetic_questions(queries, split="test")
    memory.recall(probes[:1])  # the first call loads the matrix
    times = {name: [] for name in ("total", "embed", "search", "total_cpu", "embed_cpu",
                                   "search_cpu")}
    for question in probes:
        t0, c0 = time.perf_counter(), time.process_time()
        vector = embedder.encode([question])[0]
        t1, c1 = time.perf_counter(), time.process_time()
        store.search("latency", vector, top_k, min_similarity)
        t2, c2 = time.perf_counter(), time.process_time()
        for name, value in (("embed", t1 - t0), ("search", t2 - t1), ("total", t2 - t0),
                            ("embed_cpu", c1 - c0), ("search_cpu", c2 - c1),
                            ("total_cpu", c2 - c0)):
            times[name].append(value * 1000)
    recall_ms = []  # recall() end to end, one question at a time, as the cascade calls it
    for question in probes[:50]:
        t0 = time.perf_counter()
        memory.recall([question])
        recall_ms.append((time.perf_counter() - t0) * 1000)
    # The baseline in the same run: the same questions embedded by sentence-transformers on
    # PyTorch, which the ONNX Runtime encoder replaces where it is installed.
    torch_ms = []
    if embedder.runtime != "torch":
        reference = Embedder(embedder.name, onnx=False)
        reference.encode(probes[:1])
        for question in probes:
            t0 = time.perf_counter()
            reference.encode([question])
            torch_ms.append((time.perf_counter() - t0) * 1000)
    stored = store.count("latency")
    store.close()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"size": stored, "queries": len(probes), "fill": "MiniLM" if embed_fill else "random",
            **{f"{name}_median_ms": statistics.median(values) for name, values in times.items()},
            "total_p90_ms": float(np.percentile(times["total"], 90)),
            "recall_median_ms": statistics.median(recall_ms),
            "embed_torch_median_ms": statistics.median(torch_ms) if torch_ms else None,
            "encoder_runtime": embedder.runtime, "torch_threads": _torch_threads(),
            "cpus": os.cpu_count(), "load_average_1m": load}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _bulk_fill(store, namespace: str, questions: list[str], vectors: np.ndarray) -> None:
    """Many strategies in one transaction (the store's add() merges one by one, which a
    latency fixture does not need)."""
    now = time.time()
    with store._transaction() as cursor:
        version = store._claim_version(cursor, namespace)
        for question, vector in zip(questions, vectors):
            cursor.execute(
                "INSERT INTO corea_strategies (namespace, seq, question, strategy, confidence, "
                "source_model, created_at, last_used_at, key_embedding, text_embedding) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (namespace, version, question, "Work through the operations in order.", 0.9,
                 "fixture", now, now, vector.tobytes(), vector.tobytes()))
