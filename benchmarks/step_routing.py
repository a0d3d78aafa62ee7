"""Step-level routing on the embedded pair, measured: SLM step traces, LLM continuations, and the
sweep of every router and threshold against question-level routing and the LLM alone.

    # 1. the SLM writes every question step by step (token statistics per step); resumable
    COREA_THREADS=1 python benchmarks/step_routing.py slm --task arith-mix --limit 100
    # 2. the LLM continues after the handoff steps the routers choose (priority: LLM alone, then
    #    each router's operating points); resumable, stops after --minutes
    COREA_THREADS=1 python benchmarks/step_routing.py llm --task arith-mix --limit 100 --minutes 30
    # 3. the sweep, the step-* trace tables and benchmarks/STEP_ROUTING.md (no model runs)
    python benchmarks/step_routing.py report --task arith-mix --task svamp --task gsm8k

`--llm program:qwen` measures the same SLM steps against the LLM answering by program
(corea.program): steps 2 and 3 then write `step-llm-program-*.jsonl` and
`STEP_ROUTING_PROGRAM.md`. A program LLM takes over from the question alone, so its reply after
any handoff is its reply to the question, read from `qwen-program-TASK.jsonl` (run live only where
the SLM's steps left it less token budget than that reply took).

With one switch per question (the LLM, once called, writes the rest: `max_switches: 1,
llm_steps: 0`), a step-routed reply is fixed by the SLM's own steps and the step where the router
first refuses one, so every router and threshold is read off these two tables
(`corea.steps.replay_handoff`, checked against the live loop in tests/test_steps.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corea import embedded  # noqa: E402
from corea.costs import default_price  # noqa: E402
from corea.models import GenerationConfig, get_model  # noqa: E402
from corea.protocol import build_messages  # noqa: E402
from corea.steps import (DEFAULT_ROUTER_DIR, ThresholdRouter, Writer, handoff_step,  # noqa: E402
                         load_router, replay_handoff, run_step_trace)
from corea.tasks import get_task  # noqa: E402

TRACES = ROOT / "benchmarks" / "traces"
LLM = "qwen"
MAX_NEW_TOKENS = 320
# Enough for the five operations of arith-mix's hardest level, its answer and its confidence; the
# 135M model otherwise repeats one sentence until the token budget runs out.
MAX_STEPS = 12


def _tagged(*parts: str) -> str:
    return "-".join(part for part in parts if part)


def slm_path(task: str, split: str = "test", tag: str = "") -> Path:
    """The SLM's step trace; training-split traces (what the routers are fitted on) say so.
    `tag` names another SLM's tables beside the first one's (`--slm-tag`)."""
    return TRACES / (f"{_tagged('step-slm', tag, task)}.jsonl" if split != "train"
                     else f"{_tagged('step-slm', tag, task)}-train.jsonl")


def router_dir(tag: str = "") -> Path:
    """Where the fitted routers of the tagged SLM are (`python -m training router --out`)."""
    return DEFAULT_ROUTER_DIR.with_name(_tagged(DEFAULT_ROUTER_DIR.name, tag))


def llm_variant(llm: str) -> str:
    """"" for the embedded LLM, "program" for it answering by program; nothing else is
    benchmarked here."""
    from corea.program import base_spec, is_program_spec

    if embedded.resolve_embedded(base_spec(llm)) is not embedded.resolve_embedded(LLM):
        raise SystemExit(f"--llm: {llm!r} is not the embedded LLM ({LLM}) or program:{LLM}")
    return "program" if is_program_spec(llm) else ""


def llm_path(task: str, llm: str = LLM, tag: str = "") -> Path:
    return TRACES / f"{_tagged('step-llm', llm_variant(llm), tag, task)}.jsonl"


def llm_alone_path(task: str, llm: str = LLM) -> Path:
    """The LLM's committed plain trace of the task (greedy, the same prompt and budget)."""
    variant = llm_variant(llm)
    return TRACES / f"{_tagged(LLM, variant, task)}.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def run_slm(task_name: str, split: str | None, limit: int, out: Path | None = None,
            slm: str | None = None, tag: str = "") -> None:
    task = get_task(task_name)
    split = split or task.default_split
    model = get_model(slm or embedded.default_slm(), logprobs=True)
    out = out or slm_path(task_name, split, tag)
    written = {row["model"] for row in read_jsonl(out)}
    if written - {model.name}:
        raise SystemExit(f"{out} holds steps of {', '.join(sorted(written))}, not {model.name}: "
                         "move it away (and its step-llm table) to trace another SLM")
    run_step_trace(Writer(model, default_price(model.name)), task, out, split=split, limit=limit,
                   max_steps=MAX_STEPS, generation=GenerationConfig(max_new_tokens=MAX_NEW_TOKENS),
                   progress=lambda line: print(line, flush=True))


def routers(tag: str = "") -> dict[str, object]:
    found = {"threshold": ThresholdRouter("mean_prob")}
    for kind in ("gmm", "learned"):
        try:
            found[kind] = load_router(kind, path=router_dir(tag) / f"{kind}.json")
        except ValueError as error:
            print(f"skipping the {kind} router: {error}", file=sys.stderr)
    return found


def thresholds_for(router, slm_rows: list[dict], points: int) -> list[float]:
    """Thresholds at quantiles of the router's scores over the steps: each moves some handoff."""
    import numpy as np

    scores = sorted({round(router.score(step["features"]), 4)
                     for row in slm_rows for step in row["steps"] if step["text"].strip()})
    if not scores:
        return [0.0]
    picks = np.quantile(scores, np.linspace(0, 1, points)).tolist()
    return sorted({0.0, *[round(p + 1e-4, 4) for p in picks], 1.01})


def needed_handoffs(slm_rows: list[dict], points: int, tag: str = "",
                    every_step: bool = False) -> list[tuple[str, int]]:
    """(question id, handoff step) pairs, the most useful first: the LLM alone (step 0), then
    each router's handoffs at thresholds spread over its score range, coarse grid first; with
    `every_step` (free for a program LLM) then every step, which the routers that also read the
    confidence step may pick."""
    order: list[tuple[str, int]] = [(row["id"], 0) for row in slm_rows]
    for grid in (5, points):
        for name, router in routers(tag).items():
            for threshold in thresholds_for(router, slm_rows, grid):
                for row in slm_rows:
                    k = handoff_step(row["steps"], router, threshold)
                    if k is not None:
                        order.append((row["id"], k))
    if every_step:
        order += [(row["id"], k) for row in slm_rows for k in range(len(row["steps"]))]
    seen, unique = set(), []
    for pair in order:
        if pair not in seen:
            seen.add(pair)
            unique.append(pair)
    return unique


def run_llm(task_name: str, limit: int, minutes: float, points: int, llm: str = LLM,
            tag: str = "") -> None:
    from corea.program import is_program_spec

    task = get_task(task_name)
    slm_rows = read_jsonl(slm_path(task_name, tag=tag))[:limit]
    out = llm_path(task_name, llm, tag)
    done = {(row["id"], row["k"]) for row in read_jsonl(out)}
    todo = [pair for pair in needed_handoffs(slm_rows, points, tag, is_program_spec(llm))
            if pair not in done]
    print(f"{task_name}: {len(done)} continuations done, {len(todo)} to go", flush=True)
    # The LLM alone is its continuation of an empty reply: the same prompt, so a committed
    # LLM-alone trace of the task (greedy, same prompt and budget) gives those rows for free.
    # A program LLM asks the same question after any handoff: its reply there is that row too,
    # wherever it fits in the token budget the SLM's kept steps leave.
    source = llm_alone_path(task_name, llm)
    alone = {row["id"]: row for row in read_jsonl(source)}
    by_id = {row["id"]: row for row in slm_rows}

    def same_call(question_id: str, k: int) -> bool:
        if question_id not in alone:
            return False
        if k == 0:
            return True
        kept = sum(call["completion_tokens"] for call in by_id[question_id]["calls"][:k])
        return is_program_spec(llm) and \
            alone[question_id]["completion_tokens"] < MAX_NEW_TOKENS - kept
    for question_id, k in [pair for pair in todo if same_call(*pair)]:
        row = alone[question_id]
        append(out, {"id": question_id, "k": k, "model": row["model"], "text": row["output"],
                     "prompt_tokens": row["prompt_tokens"],
                     "completion_tokens": row["completion_tokens"],
                     "latency_s": row["latency_s"], "from": source.name})
    todo = [pair for pair in todo if not same_call(*pair)]
    model = None
    config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS)
    deadline = time.perf_counter() + minutes * 60
    for number, (question_id, k) in enumerate(todo, 1):
        if time.perf_counter() > deadline:
            print("time is up; run again to go on", flush=True)
            return
        model = model or get_model(llm)
        row = by_id[question_id]
        prefix = "".join(step["text"] for step in row["steps"][:k])
        kept_tokens = sum(call["completion_tokens"] for call in row["calls"][:k])
        budget = GenerationConfig(max_new_tokens=max(1, config.max_new_tokens - kept_tokens))
        generation = model.continue_reply(
            build_messages(row["question"], hint=task.hint, few_shot=model.few_shot),
            prefix, budget)
        append(out, {"id": question_id, "k": k, "model": model.name, "text": generation.text,
                     "prompt_tokens": generation.prompt_tokens,
                     "completion_tokens": generation.completion_tokens,
                     "latency_s": round(generation.latency_s, 4)})
        print(f"{task_name} llm {number}/{len(todo)} ({question_id}, k={k}) "
              f"{generation.latency_s:.1f}s", flush=True)


# -------------------------------------------------------------------------------------- report

def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def evaluate(task_name: str, points: int, llm: str = LLM, tag: str = "") -> dict | None:
    """Every router x threshold on the questions that have all their continuations, with the
    question-level cascade and the LLM alone on the same questions."""
    from corea.checking import is_correct
    from corea.metrics import join_traces, sweep_curve
    from corea.protocol import parse_reply
    from corea.signals import has_column, with_signal

    task = get_task(task_name)
    slm_rows = read_jsonl(slm_path(task_name, tag=tag))
    continuations = {(row["id"], row["k"]): row
                     for row in read_jsonl(llm_path(task_name, llm, tag))}
    if not slm_rows or not continuations:
        return None
    llm_name = next(iter(continuations.values()))["model"]
    llm_price = default_price(llm_name)
    llm_params = embedded.resolve_embedded(LLM).params_billion
    found = routers(tag)
    grids = {name: thresholds_for(router, slm_rows, points) for name, router in found.items()}

    def covered(row) -> bool:
        if (row["id"], 0) not in continuations:
            return False
        return all(k is None or (row["id"], k) in continuations
                   for name, router in found.items() for t in grids[name]
                   for k in [handoff_step(row["steps"], router, t)])

    rows = [row for row in slm_rows if covered(row)]
    if not rows:
        return None

    def replay(row, k):
        return replay_handoff(row, k, continuations.get((row["id"], k)), llm_name=llm_name,
                              llm_price=llm_price, llm_params=llm_params, checker=task.checker)

    # The LLM alone: its continuation of an empty reply, a plain call (no SLM draft paid).
    llm_alone = []
    for row in rows:
        alone = continuations[(row["id"], 0)]
        parsed = parse_reply(alone["text"])
        llm_alone.append({
            "id": row["id"], "correct": is_correct(parsed.answer, row["gold"], task.checker),
            "cost": llm_price.cost(alone["prompt_tokens"], alone["completion_tokens"]),
            "flops": 2e9 * llm_params * (alone["prompt_tokens"] + alone["completion_tokens"]),
            "confidence": parsed.confidence})
    prompt_share = _mean(llm_price.cost(continuations[(row["id"], 0)]["prompt_tokens"], 0)
                         for row in rows) / _mean(r["cost"] for r in llm_alone)
    llm_accuracy = _mean(r["correct"] for r in llm_alone)
    llm_cost = _mean(r["cost"] for r in llm_alone)
    llm_flops = _mean(r["flops"] for r in llm_alone)

    sweeps = {}
    for name, router in found.items():
        points_out = []
        for threshold in grids[name]:
            routed = [replay(row, handoff_step(row["steps"], router, threshold)) for row in rows]
            steps = [s for r in routed for s in r["steps"]]
            slm_share = _mean(s["model"] == rows[0]["model"] for s in steps)
            points_out.append({
                "threshold": threshold, "accuracy": _mean(r["correct"] for r in routed),
                "cost": _mean(r["cost"] for r in routed),
                "flops": _mean(r["flops"] for r in routed),
                "llm_called": _mean(r["switches"] > 0 for r in routed),
                "slm_step_share": slm_share,
                "cut_steps": sum(r.get("cut_steps", 0) for r in routed),
                "rows": routed, **_per_question(routed)})
        sweeps[name] = points_out

    hybrids = _answer_step_sweeps(rows, found, grids, points, continuations, replay)
    # Per-question outcomes of every method at every threshold, for the held-out check.
    outcomes = {f"step: {name}": [(p["correct"], p["costs"], p["threshold"]) for p in swept]
                for name, swept in sweeps.items()}
    outcomes.update({f"step: {name}+answer": [
        (p["correct"], p["costs"], (p["threshold"], p["answer_threshold"])) for p in swept]
        for name, swept in hybrids.items()})
    signals = {"verbalized": rows,
               "answer_probability": [{**row, "confidence": row.get("answer_probability"),
                                       "format_ok": True} for row in rows]}
    if has_column(rows, "verbalized_mean"):
        # The stated confidence's mean over its digits, through the SLM's Platt map where it
        # ships one: what the cascade defers on when the shipped SLM is served.
        signals["verbalized_mean"] = with_signal(rows, "verbalized_mean")
    question_level = {}
    for signal, slm_signal in signals.items():
        pair = join_traces(slm_signal, llm_alone)
        curve = sweep_curve(pair)
        question_level[signal] = [
            {"threshold": float(t), "accuracy": float(a), "cost": float(c)}
            for t, a, c in zip(curve.thresholds, curve.accuracy, curve.cost)]
        outcomes[f"question: {signal}"] = _question_outcomes(pair, curve.thresholds)
    held_out = _held_out(outcomes, [r["correct"] for r in llm_alone],
                         [r["cost"] for r in llm_alone])
    return {"task": task_name, "tag": tag, "questions": len(rows), "of": len(slm_rows),
            "slm_model": rows[0]["model"], "llm_model": llm_name,
            "slm_accuracy": _mean(r["correct"] for r in rows),
            "slm_cost": _mean(r["cost"] for r in rows),
            "llm_accuracy": llm_accuracy, "llm_cost": llm_cost, "llm_flops": llm_flops,
            "llm_prompt_share": prompt_share, "routers": sorted(found),
            "sweeps": sweeps, "hybrids": hybrids, "question_level": question_level,
            "held_out": held_out}


def _per_question(routed: list[dict]) -> dict:
    """Right and cost per question of one routed sweep point (what the held-out check reads)."""
    return {"correct": [bool(r["correct"]) for r in routed], "costs": [r["cost"] for r in routed]}


def _question_outcomes(pair, thresholds) -> list[tuple]:
    """Per question, right and cost of the question-level cascade at each threshold."""
    outcomes = []
    for threshold in thresholds:
        keep = pair.confidence >= threshold
        outcomes.append(([bool(x) for x in (keep * pair.slm_correct
                                            + ~keep * pair.llm_correct)],
                         (pair.slm_cost + (~keep) * pair.llm_cost).tolist(), float(threshold)))
    return outcomes


HELD_OUT_LOSSES = (0.0, 0.02)
FOLDS = 3


def _held_out(outcomes: dict, llm_correct: list, llm_cost: list) -> dict:
    """Each method's cheapest threshold (or pair) within 0 and 2 points of the LLM alone, chosen
    on two of every three questions and applied to the third, the three ways round: every
    question is answered at a threshold chosen without it. A fair comparison of methods with one
    threshold and with two, whose in-sample best flatters the one with more to choose."""
    n = len(llm_correct)

    def acc(values, part):
        return _mean(values[i] for i in part)

    result = {}
    for method, swept in outcomes.items():
        result[method] = {}
        for loss in HELD_OUT_LOSSES:
            right_out, cost_out, chosen = [None] * n, [None] * n, []
            for fold in range(FOLDS):
                calibrate = [i for i in range(n) if i % FOLDS != fold]
                test = [i for i in range(n) if i % FOLDS == fold]
                fits = [(_mean(c[i] for i in calibrate), t, right, c) for right, c, t in swept
                        if acc(right, calibrate) >= acc(llm_correct, calibrate) - loss - 1e-12]
                if not fits:  # nothing within the loss: that third goes to the LLM alone
                    fits = [(0.0, None, llm_correct, llm_cost)]
                _, threshold, right, c = min(fits, key=lambda fit: fit[0])
                chosen.append(threshold)
                for i in test:
                    right_out[i], cost_out[i] = right[i], c[i]
            result[method][f"{loss:g}"] = {
                "thresholds": chosen,
                "loss": _mean(llm_correct) - _mean(right_out),
                "saving": 1 - sum(cost_out) / sum(llm_cost)}
    return {"folds": FOLDS, "questions": n, "methods": result}


def _answer_step_sweeps(rows, found, grids, points, continuations, replay) -> dict:
    """Each router on the reasoning steps with the confidence step kept on the stated confidence
    as the cascade reads it (`answer_threshold`): every pair of thresholds. Only where the step
    tables carry that signal and every handoff the pairs pick has its continuation."""
    import numpy as np

    from corea.calibration import model_map
    from corea.steps import answer_step_score

    confidence_map = model_map(rows[0]["model"])
    scores = sorted({round(answer_step_score(step["features"], confidence_map), 4)
                     for row in rows for step in row["steps"]
                     if "verbalized_mean" in (step.get("features") or {})})
    if not scores:
        return {}
    answer_grid = sorted({0.0, *[round(q + 1e-4, 4) for q in
                                 np.quantile(scores, np.linspace(0, 1, points)).tolist()], 1.01})
    hybrids = {}
    for name in ("threshold", "learned"):
        if name not in found:
            continue
        swept = []
        for threshold in grids[name]:
            for answer_threshold in answer_grid:
                ks = [handoff_step(row["steps"], found[name], threshold, answer_threshold,
                                   confidence_map) for row in rows]
                if any(k is not None and (row["id"], k) not in continuations
                       for row, k in zip(rows, ks)):
                    print(f"no {name}+answer sweep: continuations missing (run the llm step)",
                          file=sys.stderr)
                    return {}
                routed = [replay(row, k) for row, k in zip(rows, ks)]
                swept.append({"threshold": threshold, "answer_threshold": answer_threshold,
                              "accuracy": _mean(r["correct"] for r in routed),
                              "cost": _mean(r["cost"] for r in routed), **_per_question(routed)})
        hybrids[name] = swept
    return hybrids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("slm", "llm", "report"))
    parser.add_argument("--task", action="append", required=True)
    parser.add_argument("--split")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--points", type=int, default=11, help="thresholds per router")
    parser.add_argument("--slm", help="the SLM that writes the steps: a model name or an adapter "
                                      "folder (default: the default SLM of ask and serve)")
    parser.add_argument("--llm", default=LLM, help=f"llm/report: {LLM} (default) or "
                                                   f"program:{LLM}, answering by program")
    parser.add_argument("--slm-tag", default="", help="another SLM's tables beside the first "
                        "one's: step-slm-TAG-*.jsonl, routers in adapters/step-router-TAG, "
                        "reports STEP_ROUTING*_TAG.md")
    args = parser.parse_args(argv)
    for task in args.task:
        if args.command == "slm":
            run_slm(task, args.split, args.limit, slm=args.slm, tag=args.slm_tag)
        elif args.command == "llm":
            run_llm(task, args.limit, args.minutes, args.points, args.llm, args.slm_tag)
        else:
            from benchmarks.step_report import write_report  # noqa: PLC0415

            write_report(args.task, args.points, args.llm, args.slm_tag)
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
