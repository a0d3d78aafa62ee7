"""Held-out evaluation of an SLM, with or without an adapter: trace tables through corea, then
accuracy, format rate, ECE, AUROC and Brier (and accuracy per difficulty level)."""

from __future__ import annotations

from pathlib import Path

from corea.costs import resolve_price
from corea.metrics import trace_summary
from corea.models import GenerationConfig, Model, load_model
from corea.tasks import Task
from corea.traces import read_trace, run_trace


def evaluate_model(model: Model, sets: list[tuple[Task, str]], limit: int, out_dir: Path,
                   label: str, max_new_tokens: int = 160, batch_size: int = 16) -> dict:
    """Scores per task and over all of them; the trace tables stay in `out_dir` (resumable)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    price = resolve_price(model.name)
    results, everything = {}, []
    for task, split in sets:
        out = out_dir / f"{label}-{task.name}-{split}.jsonl"
        run_trace(model, task, out, split=split, limit=limit, batch_size=batch_size,
                  config=GenerationConfig(max_new_tokens=max_new_tokens), price=price)
        wanted = {e.id for e in task.examples(split, limit)}
        rows = [row for row in read_trace(out) if row["id"] in wanted]
        results[task.name] = trace_summary(rows)
        everything.extend(rows)
    results["all"] = trace_summary(everything)
    return results


def evaluate(model_spec: str, adapter: str | None, sets: list[tuple[Task, str]], limit: int,
             out_dir: Path, label: str, max_new_tokens: int = 160) -> dict:
    model = load_model(model_spec, adapter=adapter, backend="transformers")
    return evaluate_model(model, sets, limit, out_dir, label, max_new_tokens)


def format_results(results: dict, title: str) -> str:
    lines = [title, f"{'task':<14}{'n':>5}{'accuracy':>10}{'format':>8}{'ECE':>8}{'AUROC':>8}"
                    f"{'Brier':>8}  by level"]
    for name, r in results.items():
        auroc = "—" if r["auroc"] is None else f"{r['auroc']:.3f}"
        levels = " ".join(f"L{k}:{v:.2f}" for k, v in r.get("accuracy_by_level", {}).items())
        lines.append(f"{name:<14}{r['n']:>5}{r['accuracy']:>10.3f}{r['format_rate']:>8.2f}"
                     f"{r['ece']:>8.3f}{auroc:>8}{r['brier']:>8.3f}  {levels}")
    return "\n".join(lines)
