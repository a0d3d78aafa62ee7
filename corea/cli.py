"""`python -m corea`: ask a question through the cascade, trace a model over a task, sweep traces.

    python -m corea ask "Tom has 3 boxes of 4 apples and eats 2. How many are left?"
    python -m corea trace --model smollm2 --task gsm8k --limit 100 --out traces/slm-gsm8k.jsonl
    python -m corea trace --model qwen    --task gsm8k --limit 100 --out traces/llm-gsm8k.jsonl
    python -m corea sweep --slm traces/slm-gsm8k.jsonl --llm traces/llm-gsm8k.jsonl --plot pareto.html
    python -m corea tune  --slm traces/slm-gsm8k.jsonl --llm traces/llm-gsm8k.jsonl --max-drop 0.02 \
        --guarantee 0.9 --export cascade.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

from corea import embedded
from corea.costs import Price, load_price_table, resolve_price
from corea.models import BACKENDS, GenerationConfig, ModelError
from corea.checking import CHECKERS
from corea.signals import RUNTIME_SIGNALS, SIGNALS
from corea.tasks import BUILTIN_TASKS, ColumnMapping
from corea.traces import TraceError, read_trace


class UsageError(Exception):
    """Bad input from the command line: reported in one line, exit code 2."""


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=GenerationConfig.max_new_tokens,
                       help="longest reply in tokens (default: %(default)s)")
    group.add_argument("--temperature", type=float, default=0.0,
                       help="sampling temperature; 0 is greedy (default: %(default)s)")
    group.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model loading")
    group.add_argument("--backend", choices=BACKENDS, default="auto",
                       help="for GGUF models: llama.cpp (fast on CPU) or transformers; auto prefers "
                            "llama.cpp when installed (default: %(default)s)")
    group.add_argument("--token-env", default=None, metavar="VAR",
                       help="environment variable holding the endpoint token (default: "
                            "COREA_API_TOKEN, then HF_TOKEN); tokens are never taken as arguments")
    group.add_argument("--price-table", default=None, metavar="JSON",
                       help='prices, {"model": {"input": USD per 1M, "output": USD per 1M}}')


def _generation(args) -> GenerationConfig:
    if args.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    if args.temperature < 0:
        raise UsageError("--temperature cannot be negative")
    return GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            seed=args.seed)


def _token(args) -> str | None:
    import os

    if args.token_env:
        if not os.environ.get(args.token_env):
            raise UsageError(f"--token-env {args.token_env}: that variable is not set")
        return os.environ[args.token_env]
    return None


def _price_table(args) -> dict[str, Price] | None:
    if not args.price_table:
        return None
    try:
        return load_price_table(args.price_table)
    except ValueError as error:
        raise UsageError(str(error)) from error


# ---------------------------------------------------------------------------------------------- ask

def cmd_ask(args) -> int:
    from corea.cascade import Cascade, CascadeConfig, TierSpec
    from corea.protocol import validate_question
    from corea.tasks import HINTS

    try:
        question = validate_question(args.question)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if args.config:
        try:
            config = CascadeConfig.load(args.config)
        except ValueError as error:
            raise UsageError(str(error)) from error
    else:
        models = args.model or [embedded.default_slm(), embedded.DEFAULT_LLM]
        # Unless told, each tier is served as its model declares (corea.embedded.serving_defaults).
        served = [embedded.serving_defaults(m) for m in models[:-1]]
        thresholds = args.threshold or [threshold for _, threshold in served]
        if len(models) < 2:
            raise UsageError("a cascade needs at least two --model tiers")
        if len(thresholds) != len(models) - 1:
            raise UsageError(f"{len(models)} tiers need {len(models) - 1} --threshold value(s), "
                             f"got {len(thresholds)}")
        # The last tier's answer is final whatever its confidence: no log-probabilities for it.
        signals = [args.signal or signal for signal, _ in served] + ["verbalized"]
        tiers = [TierSpec(m, t, backend=args.backend, signal=s)
                 for m, t, s in zip(models, thresholds + [None], signals)]
        try:
            # A cascade stops each reply after its Confidence line (corea.stopping).
            config = CascadeConfig(tuple(tiers), dataclasses.replace(_generation(args),
                                                                     stop_when_done=True))
        except ValueError as error:
            raise UsageError(str(error)) from error
    if args.memory:
        from corea.memory_cli import with_memory

        config = with_memory(config, args.memory, args.namespace, args.memory_write,
                             args.memory_consult)
    if args.routing == "step" and config.step is None:
        from corea.steps import StepConfig

        try:
            config = dataclasses.replace(config, step=StepConfig(router=args.step_router))
        except ValueError as error:
            raise UsageError(str(error)) from error
    cascade = Cascade.from_config(config, token=_token(args), price_table=_price_table(args))
    hint = HINTS[args.checker]
    result, shown = None, 0
    for event in cascade.events(question, hint=hint):
        kind = event["type"]
        if kind == "done":
            result = event["result"]
        elif args.json:
            continue
        elif kind == "memory":
            from corea.memory_cli import print_recall

            print_recall(event["recall"])
        elif kind == "tier_start":
            print(f"\n── tier {event['tier']}: {event['model']} ──", flush=True)
            shown = 0
        elif kind == "delta":  # stream the reply as it is written
            print(event["text"][shown:], end="", flush=True)
            shown = len(event["text"])
        elif kind == "route_step":  # step routing: each step with the model that wrote it
            step = event["step"]
            score = step.get("confidence", step.get("draft_confidence"))
            print(f"[{step['model']}{'' if score is None else f' {score:.2f}'}] "
                  f"{step['text'].strip()}", flush=True)
            shown = len(event["text"])
        elif kind == "step":
            step = event["step"]
            print(step.generation.text[shown:].rstrip())
            _print_step(step)
    if args.json:
        print(json.dumps(_result_json(result), indent=2))
    else:
        print(f"\nFinal answer: {result.answer}  (by {result.answered_by}; "
              f"total cost ${result.cost:.8f}, {result.latency_s:.1f} s)")
        if cascade.memory is not None:
            from corea.memory_cli import print_lesson

            print_lesson(result)
    if cascade.memory is not None:
        cascade.memory.close()
    return 0


def _print_step(step) -> None:
    missing = "format failure" if step.signal == "verbalized" else "no answer to score"
    shown = f"{step.confidence:.2f}" if step.confidence is not None else f"none ({missing} → 0)"
    signal = "" if step.signal == "verbalized" else f" ({step.signal.replace('_', ' ')})"
    rule = "" if step.threshold is None else f" vs threshold {step.threshold:.2f}"
    print(f"→ answer {step.parsed.answer!r}, confidence{signal} {shown}{rule}: "
          f"{step.decision.upper()}")
    print(f"  tokens {step.generation.prompt_tokens} in / {step.generation.completion_tokens} out, "
          f"cost ${step.cost:.8f}, {step.generation.latency_s:.1f} s", flush=True)


def _result_json(result) -> dict:
    return {
        "question": result.question, "answer": result.answer, "answered_by": result.answered_by,
        "cost": result.cost, "latency_s": result.latency_s,
        "steps": [{"tier": s.tier, "model": s.model, "output": s.generation.text,
                   "answer": s.parsed.answer, "confidence": s.confidence, "signal": s.signal,
                   "stated_confidence": s.parsed.confidence,
                   "format_ok": s.parsed.format_ok, "decision": s.decision,
                   "threshold": s.threshold, "prompt_tokens": s.generation.prompt_tokens,
                   "completion_tokens": s.generation.completion_tokens, "cost": s.cost,
                   "latency_s": s.generation.latency_s} for s in result.steps],
        "strategies": result.strategies, "memory_note": result.memory_note,
        "memory_cost": result.memory_cost,
        "lesson": None if result.lesson is None else {
            "strategy": result.lesson.strategy, "stored_id": result.lesson.stored_id,
            "merged": result.lesson.merged, "reason": result.lesson.reason},
        **({"routed": {"steps": result.routed.steps, "switches": result.routed.switches,
                       "cut_steps": result.routed.cut_steps, "fallback": result.routed.fallback,
                       "by_model": result.routed.totals()["by_model"]}}
           if result.routed is not None else {}),
    }


# -------------------------------------------------------------------------------------------- trace

def cmd_trace(args) -> int:
    from corea.models import get_model
    from corea.tasks import get_task
    from corea.traces import run_trace

    mapping = ColumnMapping(args.question_field, args.answer_field, args.id_field, args.checker)
    try:
        task = get_task(args.task, mapping, hub_config=args.hub_config,
                        hub_split=args.split or "test")
        examples = task.examples(args.split, args.limit)  # validates split, limit and the file
    except ValueError as error:
        raise UsageError(str(error)) from error
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if not args.out.name.endswith(".jsonl"):
        raise UsageError(f"--out {args.out}: trace tables are JSON Lines; use a .jsonl name")
    price_override = None
    if args.price_in is not None or args.price_out is not None:
        price_override = Price(args.price_in or 0.0, args.price_out or 0.0)
    extra = {"logprobs": True} if args.logprobs else {}
    model = get_model(args.model, adapter=args.adapter, backend=args.backend, token=_token(args),
                      **extra)
    price = resolve_price(model.name, _price_table(args), price_override)
    summary = run_trace(model, task, args.out, split=args.split, limit=args.limit,
                        batch_size=args.batch_size, config=_generation(args), price=price,
                        few_shot=False if args.zero_shot else None, progress=not args.quiet)
    print(f"{summary.path}: {summary.rows} rows ({summary.new_rows} new) of {len(examples)} asked; "
          f"accuracy {summary.accuracy:.3f}, format followed {summary.format_rate:.3f}")
    return 0


# -------------------------------------------------------------------------------------------- sweep

def _signal_pair(args):
    """The trace pair of --slm and --llm, the SLM deferring on --signal; and the models the two
    tables are of."""
    from corea.metrics import join_traces
    from corea.signals import with_signal
    from corea.tasks import builtin_checker

    slm_rows = read_trace(args.slm)
    if not slm_rows:
        raise UsageError(f"{args.slm} has no rows")
    samples = [read_trace(path) for path in getattr(args, "samples", [])]
    checker = getattr(args, "checker", None) or builtin_checker(slm_rows[0]["task"])
    if args.signal == "vote_share" and checker is None:
        raise UsageError(f"task {slm_rows[0]['task']!r} is not built in: say how answers are "
                         f"compared with --checker ({', '.join(CHECKERS)})")
    llm_rows = read_trace(args.llm)
    if not llm_rows:
        raise UsageError(f"{args.llm} has no rows")
    pair = join_traces(with_signal(slm_rows, args.signal, samples=samples,
                                   checker=checker or "exact"), llm_rows)
    if pair.dropped_slm or pair.dropped_llm:
        print(f"note: {pair.dropped_slm} SLM and {pair.dropped_llm} LLM rows have no partner "
              "in the other table and were left out", file=sys.stderr)
    return pair, (slm_rows[0]["model"], llm_rows[0]["model"])


def cmd_sweep(args) -> int:
    from corea.metrics import summarize

    pair, _ = _signal_pair(args)
    report = summarize(pair, max_drop=args.max_drop)
    if args.plot:
        from corea.plots import pareto_figure

        args.plot.parent.mkdir(parents=True, exist_ok=True)
        pareto_figure(report, title=f"{args.slm.name} → {args.llm.name}").write_html(
            str(args.plot), include_plotlyjs=True)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "reliability"}))
        return 0
    print(_sweep_table(report))
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def cmd_tune(args) -> int:
    from corea.cascade import tuned_config
    from corea.metrics import evaluate_threshold
    from corea.thresholds import min_calibration_questions, threshold_for_goal

    goal, value = next((g, getattr(args, g)) for g in ("max_drop", "budget", "llm_share")
                       if getattr(args, g) is not None)
    if args.guarantee is not None and goal != "max_drop":
        raise UsageError("--guarantee certifies an accuracy loss: use it with --max-drop")
    if args.guarantee is not None and not 0 < args.guarantee < 1:
        raise UsageError("--guarantee is a confidence level between 0 and 1, such as 0.9")
    pair, models = _signal_pair(args)
    point = threshold_for_goal(pair, goal, value, args.guarantee)
    wanted = f"--{goal.replace('_', '-')} {value:g}" + (
        f" with {args.guarantee:.0%} confidence" if args.guarantee is not None else "")
    if point is None:
        needed = "" if args.guarantee is None else (
            f"; a certificate needs at least "
            f"{min_calibration_questions(value, 1 - args.guarantee)} questions even when "
            "nothing is lost")
        print(f"no threshold meets {wanted} on these {len(pair)} questions{needed}",
              file=sys.stderr)
        return 1
    threshold = min(point["threshold"], 1.0)  # above every confidence: defer everything
    point = evaluate_threshold(pair, point["threshold"])
    llm_accuracy = float(pair.llm_correct.mean())
    result = {"goal": goal, "value": value, "guarantee": args.guarantee, "signal": args.signal,
              "threshold": threshold, "questions": len(pair), **point,
              "accuracy_lost": llm_accuracy - point["accuracy"], "saving": 1 - point["relative_cost"]}
    if args.export:
        tuned_config(*models, threshold, args.signal).save(args.export)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"threshold {threshold:.3f} on {args.signal} for {wanted} ({len(pair)} questions): "
          f"accuracy {point['accuracy']:.1%} ({result['accuracy_lost'] * 100:+.1f} pts against "
          f"the LLM alone), saving {result['saving']:.1%}, {point['llm_share']:.1%} sent to the "
          f"LLM, ${point['cost'] * 1000:.4f} per 1,000 questions")
    if result["saving"] < 0:
        print("note: at this threshold the cascade costs more than the LLM alone (every question "
              "also pays for the SLM's reply): calling the LLM alone is cheaper")
    if args.export:
        print(f"cascade config: {args.export} (python -m corea ask|serve --config {args.export})")
    return 0


def _fmt(value, spec=".3f") -> str:
    return "—" if value is None else format(value, spec)


def _sweep_table(report: dict) -> str:
    llm, slm = report["llm_only"], report["slm_only"]
    lines = [
        f"{report['n']} questions",
        f"LLM only: accuracy {llm['accuracy']:.3f}, cost ${llm['cost']:.8f}/question",
        f"SLM only: accuracy {slm['accuracy']:.3f}, cost ${slm['cost']:.8f}/question "
        f"({_fmt(slm['relative_cost'])} of LLM)",
        f"SLM calibration: ECE {report['ece']:.3f}, AUROC {_fmt(report['auroc'])}, "
        f"Brier {report['brier']:.3f}",
        "",
        f"{'threshold':>9}  {'accuracy':>8}  {'rel.cost':>8}  {'to LLM':>6}  frontier",
    ]
    for p in report["points"]:
        lines.append(f"{p['threshold']:>9.3f}  {p['accuracy']:>8.3f}  {_fmt(p['relative_cost']):>8}"
                     f"  {p['llm_share']:>6.1%}  {'*' if p['on_frontier'] else ''}")
    best = report["best_within_2pt"]
    lines.append("")
    if best:
        lines.append(f"Best within 2 points of LLM-only: threshold {best['threshold']:.3f}, accuracy "
                     f"{best['accuracy']:.3f}, saving {_fmt(best['saving'], '.1%')}, "
                     f"{best['llm_share']:.1%} sent to the LLM")
    else:
        lines.append("No threshold keeps accuracy within 2 points of LLM-only for less than the "
                     "LLM alone costs: use the LLM alone.")
    if "best_within_max_drop" in report:
        b = report["best_within_max_drop"]
        lines.append(f"Best within {report['max_drop']:g}: " + (
            f"threshold {b['threshold']:.3f}, saving {_fmt(b['saving'], '.1%')}" if b else "none"))
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- serve

def cmd_serve(args) -> int:
    from corea.cascade import CascadeConfig
    from corea.serve import ServePolicy, default_config, serve

    try:
        config = CascadeConfig.load(args.config) if args.config else default_config()
    except ValueError as error:
        raise UsageError(str(error)) from error
    if not args.config:
        print("no --config: serving the embedded defaults, "
              + " -> ".join(tier.model for tier in config.tiers)
              + f" (threshold {config.tiers[0].threshold})", file=sys.stderr, flush=True)
    policy = ServePolicy(retries=args.retries, backoff_s=args.backoff, cooldown_s=args.cooldown,
                         max_new_tokens=args.max_tokens_limit)
    serve(config, args.host, args.port, policy, token=_token(args))
    return 0


# -------------------------------------------------------------------------------------------- bench

def cmd_bench(args) -> int:
    from corea.bench import BenchPlan, run_bench
    if args.training_only:
        from corea.ablation import RUNS_DIR, refresh_training_section

        report = args.out or Path("benchmarks") / "REPORT.md"
        print("\n".join(refresh_training_section(report, args.traces, RUNS_DIR)))
        return 0
    limit = args.limit or (20 if args.quick else 200)
    samples = args.samples if args.samples is not None else (3 if args.quick else 5)
    adapter = args.adapter
    if adapter is None and embedded.shipped_adapters():  # the default SLM's, else the first
        shipped = embedded.shipped_adapters()
        adapter = shipped.get(embedded.TRAINED_SLM or "") or next(iter(shipped.values()))
        if adapter.is_relative_to(Path.cwd()):  # named in the report as the repository has it
            adapter = adapter.relative_to(Path.cwd())
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UsageError(f"--adapter {adapter}: not an adapter directory")
    out = args.out or Path("benchmarks") / ("quick/REPORT.md" if args.quick else "REPORT.md")
    command = "python -m corea " + shlex.join(args.argv)
    plan = BenchPlan(limit, samples, args.max_new_tokens, args.traces, adapter and Path(adapter),
                     out)
    print(f"report: {run_bench(plan, command)}")
    return 0


# --------------------------------------------------------------------------------------- listings

def cmd_calibrate(args) -> int:
    """Fit a trained adapter's Platt map on its trace table of training questions and declare it
    in the adapter's corea.json (corea.calibration)."""
    from corea.calibration import fit_platt
    from corea.metrics import expected_calibration_error
    from corea.signals import with_signal

    adapter = args.adapter
    if not (adapter / "adapter_config.json").is_file():
        raise UsageError(f"--adapter {adapter}: not an adapter directory")
    rows = read_trace(args.trace)
    if not rows:
        raise UsageError(f"{args.trace}: the table is empty")
    others = sorted({row["model"] for row in rows if not row["model"].endswith(f"+{adapter.name}")})
    if others:
        raise UsageError(f"{args.trace}: answers of {', '.join(others)}, not of {adapter.name}: "
                         "fit a model's map on its own answers")
    tested = sum(row.get("split") == "test" for row in rows)
    if tested:
        raise UsageError(f"{args.trace}: {tested} rows are test questions; fit the map on "
                         "training questions (trace with --split train) and measure on the test")
    try:
        raw = with_signal(rows, args.signal, mapped=False)
        values, correct = [row["confidence"] for row in raw], [row["correct"] for row in raw]
        tasks = " + ".join(sorted({row["task"] for row in rows}))
        platt = fit_platt(values, correct, args.signal,
                          f"{len(rows)} {tasks} {rows[0].get('split', '')} questions "
                          f"({args.trace.name})")
    except ValueError as error:
        raise UsageError(f"{args.trace}: {error}") from error
    before = expected_calibration_error(values, correct)
    after = expected_calibration_error([platt(v) for v in values], correct)
    print(f"{args.signal} on {platt.fitted_on}: slope {platt.slope:.3f}, intercept "
          f"{platt.intercept:.3f}; ECE there {before:.3f} -> {after:.3f}")
    if args.dry_run:
        return 0
    serving = embedded.adapter_serving(adapter)
    serving["calibration"] = platt.to_dict()
    # A map of a signal the cascade does not defer on would change nothing: serve on it.
    serving["signal"] = args.signal
    (adapter / "corea.json").write_text(json.dumps(serving, indent=2) + "\n")
    print(f"written to {adapter / 'corea.json'}: the cascade now defers on {args.signal} of "
          f"{adapter.name}, read through this map, live and from its trace tables")
    return 0


def cmd_models(args) -> int:
    for model in embedded.EMBEDDED_MODELS.values():
        try:
            where = str(model.locate()) if args.locate else "installed"
        except embedded.EmbeddedModelMissing:
            where = "NOT INSTALLED"
        price = resolve_price(model.name)
        print(f"{model.name:<20} aliases {', '.join(model.aliases):<30} {where}")
        print(f"{'':<20} {model.description}; ${price.input_per_million}/1M in, "
              f"${price.output_per_million}/1M out\n{'':<20} source: {model.source}")
    return 0


def cmd_tasks(args) -> int:
    for name, task in BUILTIN_TASKS.items():
        print(f"{name:<12} {task.checker:<8} splits {'/'.join(task.splits):<11} {task.description}")
    return 0


def cmd_probe(args) -> int:
    from corea.models import load_model
    from corea.probe import Probe, fit_from_traces, score_trace

    model = load_model(args.model, adapter=args.adapter, backend="transformers")
    if args.action == "fit":
        if not args.out:
            raise UsageError("probe fit needs --out PROBE.json")
        probe = fit_from_traces(model, args.trace, args.out, few_shot=not args.zero_shot,
                                progress=not args.quiet)
        print(f"{args.out}: fitted on {probe.meta['rows']} replies ({probe.meta['right']} right)")
        return 0
    if not args.probe:
        raise UsageError("probe score needs --probe PROBE.json")
    probe = Probe.load(args.probe)
    for path in args.trace:
        rows = score_trace(model, probe, path, progress=not args.quiet)
        print(f"{path}: {len(rows)} rows scored (column 'probe')")
    return 0


# ------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from corea.memory import CONSULT_MODES, WRITE_MODES  # the memory commands load it anyway

    parser = argparse.ArgumentParser(
        prog="python -m corea", description=__doc__.split("\n\n")[0],
        epilog="Run `python -m corea COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask = commands.add_parser("ask", help="answer one question through the cascade",
                              description="Answer one question through the cascade and show each "
                                          "tier's answer, confidence, decision, tokens, cost, time.")
    ask.add_argument("question", help="the question text")
    ask.add_argument("--model", action="append", metavar="M",
                     help="a tier's model, cheapest first; repeat for each tier (default: "
                          f"{embedded.default_slm()} then {embedded.DEFAULT_LLM})")
    ask.add_argument("--threshold", action="append", type=float, metavar="T",
                     help="confidence a tier needs to keep its answer, one per tier but the last "
                          "(default: what a trained adapter declares, else "
                          f"{embedded.DEFAULT_THRESHOLD})")
    ask.add_argument("--signal", choices=RUNTIME_SIGNALS, default=None,
                     help="what each tier's threshold is compared with: the confidence its reply "
                          "states, or a token signal of the reply, which needs "
                          "log-probabilities from the model (all local backends; endpoints that "
                          "return them); default: what a trained adapter declares, else "
                          f"{embedded.DEFAULT_SIGNAL}")
    ask.add_argument("--config", type=Path, help="a cascade config JSON (as the app exports)")
    ask.add_argument("--checker", choices=("numeric", "yesno", "choice", "exact"),
                     default="exact", help="the answer-format hint added to the question: numeric, "
                                           "yesno, choice, or exact for none (default: %(default)s)")
    ask.add_argument("--json", action="store_true", help="print the result as JSON")
    ask.add_argument("--routing", choices=("question", "step"), default="question",
                     help="question: a tier answers the whole question (default); step: the SLM "
                          "drafts each reasoning step and the LLM writes the steps whose score "
                          "is below the threshold (corea.steps)")
    ask.add_argument("--step-router", choices=("threshold", "gmm", "learned"),
                     default="threshold",
                     help="with --routing step: the step score (default: %(default)s, the "
                          "step's mean token probability)")
    ask.add_argument("--memory", metavar="PATH",
                     help="a strategy store (SQLite file, created if new, or postgresql:// URL): "
                          "similar questions' strategies go into the SLM's prompt as quoted "
                          "data, and a deferred question's LLM answer may add one")
    ask.add_argument("--namespace", default=None,
                     help="the store's namespace (default: the config's, else 'default')")
    ask.add_argument("--memory-write", choices=WRITE_MODES,
                     default=None,
                     help="with --memory: how the LLM writes what is stored (default: the "
                          "config's, else second_call); program: an LLM answering by program "
                          "(--llm program:qwen) has its checked program stored, at no extra "
                          "call, for an SLM that answers by program too")
    ask.add_argument("--memory-consult", choices=CONSULT_MODES, default=None,
                     help="with --memory: when the SLM reads the notes (default: the config's, "
                          "else always); on_doubt: it answers without them first and is asked "
                          "again with them only when it would defer")
    _add_model_options(ask)
    _add_generation_options(ask)
    ask.set_defaults(handler=cmd_ask)

    trace = commands.add_parser(
        "trace", help="run one model over a task once and write a trace table",
        description="Run one model over a task, batched, and write one JSON line per question. "
                    "Re-running with the same --out resumes where it stopped.")
    trace.add_argument("--model", required=True,
                       help="embedded name (smollm2, qwen), .gguf file, directory, Hub id or "
                            "endpoint URL http(s)://host/v1#model")
    trace.add_argument("--adapter", help="a PEFT adapter directory to apply to the model")
    trace.add_argument("--task", required=True,
                       help=f"{', '.join(BUILTIN_TASKS)}, a .jsonl/.json/.csv file, or hub:owner/name")
    trace.add_argument("--split", help="the task's split (default: its test split)")
    trace.add_argument("--limit", type=int, help="only the first N questions")
    trace.add_argument("--out", type=Path, required=True, help="the trace table to write (.jsonl)")
    trace.add_argument("--batch-size", type=int, default=8,
                       help="questions generated together (default: %(default)s)")
    trace.add_argument("--zero-shot", action="store_true",
                       help="leave out the worked examples (a model trained zero-shot leaves "
                            "them out by itself)")
    trace.add_argument("--logprobs", action="store_true",
                       help="also record token-probability confidence signals")
    trace.add_argument("--price-in", type=float, help="USD per 1M input tokens for this model")
    trace.add_argument("--price-out", type=float, help="USD per 1M output tokens for this model")
    trace.add_argument("--quiet", action="store_true", help="no progress bar")
    columns = trace.add_argument_group("your own data (a file or hub: task)")
    columns.add_argument("--question-field", default="question", help="(default: %(default)s)")
    columns.add_argument("--answer-field", default="answer", help="(default: %(default)s)")
    columns.add_argument("--id-field", help="a column with stable ids (default: a hash of the question)")
    columns.add_argument("--checker", choices=("numeric", "yesno", "choice", "exact"),
                         default="numeric", help="how answers are compared (default: %(default)s)")
    columns.add_argument("--hub-config", help="the Hub data set's configuration name")
    _add_model_options(trace)
    _add_generation_options(trace)
    trace.set_defaults(handler=cmd_trace)

    sweep = commands.add_parser(
        "sweep", help="sweep the threshold over an SLM and an LLM trace table",
        description="Join two trace tables on id and report the cascade at every threshold, the "
                    "Pareto frontier, the best saving within 2 points of LLM-only, and the SLM's "
                    "ECE, AUROC and Brier score.")
    sweep.add_argument("--slm", type=Path, required=True, help="the small model's trace table")
    sweep.add_argument("--llm", type=Path, required=True, help="the large model's trace table")
    sweep.add_argument("--json", action="store_true", help="print one JSON object")
    sweep.add_argument("--plot", type=Path, help="write an interactive Pareto plot (HTML)")
    sweep.add_argument("--max-drop", type=float, default=0.02,
                       help="accuracy loss allowed for the 'best' threshold (default: %(default)s)")
    sweep.add_argument("--signal", choices=SIGNALS, default="verbalized",
                       help="what the SLM defers on: its stated confidence (default), a token "
                            "signal column of the SLM table, the hidden-state probe's column "
                            "(`corea probe score`), the vote share of --samples, or the oracle "
                            "(defer exactly the SLM's wrong answers)")
    sweep.add_argument("--samples", type=Path, nargs="+", default=[],
                       help="sampled SLM trace tables of the same questions (for vote_share)")
    sweep.add_argument("--checker", choices=CHECKERS,
                       help="how sampled answers are compared for vote_share (default: the "
                            "built-in task's checker)")
    sweep.set_defaults(handler=cmd_sweep)

    tune = commands.add_parser(
        "tune", help="choose the threshold for a goal from two trace tables, and export it",
        description="Choose the SLM's threshold for one goal from an SLM and an LLM trace table "
                    "(as the app's Tune tab does), optionally with a statistical guarantee, and "
                    "export the cascade config that ask and serve read. Exit code 1 when no "
                    "threshold meets the goal.")
    tune.add_argument("--slm", type=Path, required=True, help="the small model's trace table")
    tune.add_argument("--llm", type=Path, required=True, help="the large model's trace table")
    goals = tune.add_mutually_exclusive_group(required=True)
    goals.add_argument("--max-drop", type=float, metavar="F",
                       help="lose at most this accuracy against the LLM alone (0.02 = 2 points); "
                            "the cheapest threshold that does")
    goals.add_argument("--budget", type=float, metavar="USD",
                       help="spend at most this many dollars per 1,000 questions; the most "
                            "accurate threshold that does")
    goals.add_argument("--llm-share", type=float, metavar="F",
                       help="send at most this share of questions to the LLM (0.3 = 30%%); the "
                            "most accurate threshold that does")
    tune.add_argument("--guarantee", type=float, metavar="CONF",
                      help="with --max-drop: certify the loss on new questions at this "
                           "confidence (Learn-then-Test), e.g. 0.9, instead of the best on these")
    tune.add_argument("--signal", choices=RUNTIME_SIGNALS, default="verbalized",
                      help="what the SLM defers on (a token signal needs an SLM table traced "
                           "with --logprobs)")
    tune.add_argument("--export", type=Path, metavar="JSON", help="write the cascade config here")
    tune.add_argument("--json", action="store_true", help="print one JSON object")
    tune.set_defaults(handler=cmd_tune)

    serve_parser = commands.add_parser(
        "serve", help="serve the cascade as an OpenAI-compatible chat API",
        description="POST /v1/chat/completions (streaming and not), GET /v1/models, GET /health. "
                    "Point any OpenAI client at http://HOST:PORT/v1.")
    serve_parser.add_argument("--config", type=Path,
                              help="the cascade config JSON (as the app's threshold tuning "
                                   "exports; examples in configs/); default: the default SLM "
                                   "as its adapter declares it is served, then the LLM "
                                   "(configs/default.json)")
    serve_parser.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    serve_parser.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    serve_parser.add_argument("--retries", type=int, default=2,
                              help="retries of a failed tier call, with backoff (default: 2)")
    serve_parser.add_argument("--backoff", type=float, default=0.5,
                              help="first retry wait in seconds, doubling (default: 0.5)")
    serve_parser.add_argument("--cooldown", type=float, default=30.0,
                              help="seconds a repeatedly failing tier is skipped (default: 30)")
    serve_parser.add_argument("--max-tokens-limit", type=int, default=512,
                              help="the largest max_tokens a request may ask (default: 512)")
    serve_parser.add_argument("--token-env", default=None, metavar="VAR",
                              help="environment variable with the endpoint tiers' token")
    serve_parser.set_defaults(handler=cmd_serve)

    bench = commands.add_parser(
        "bench", help="benchmark the default pair against every deferral baseline",
        description="Build (or resume) trace tables for the embedded pair on GSM8K, SVAMP, "
                    "StrategyQA and two generated levels, then write a report comparing deferral "
                    "signals, a held-out threshold check and the backends' speed.")
    bench.add_argument("--quick", action="store_true",
                       help="20 questions per data set and 3 samples (default: 200 and 5)")
    bench.add_argument("--limit", type=int, help="questions per data set")
    bench.add_argument("--samples", type=int, help="sampled replies for self-consistency")
    bench.add_argument("--adapter", type=Path,
                       help="the calibrated SLM adapter (default: the shipped one, if any)")
    bench.add_argument("--traces", type=Path, default=Path("benchmarks/traces"),
                       help="where trace tables are read and written (default: %(default)s)")
    bench.add_argument("--out", type=Path, help="the report (default: benchmarks/REPORT.md, "
                                                "or benchmarks/quick/REPORT.md with --quick)")
    bench.add_argument("--max-new-tokens", type=int, default=GenerationConfig.max_new_tokens)
    bench.add_argument("--training-only", action="store_true",
                       help="only rewrite the report's training ablation section, from the trace "
                            "tables and run records (seconds)")
    bench.set_defaults(handler=cmd_bench)

    calibrate = commands.add_parser(
        "calibrate", help="fit a trained adapter's confidence map on training questions",
        description="Fit a Platt map, p = sigmoid(a * logit(v) + b), from a confidence signal of a "
                    "trained adapter to the chance that its answer is right, on its trace table "
                    "of training questions, and declare it in the adapter's corea.json: the "
                    "cascade then reads that signal through the map.")
    calibrate.add_argument("--adapter", type=Path, required=True, help="the adapter folder")
    calibrate.add_argument("--trace", type=Path, required=True,
                           help="its trace table of training questions (corea trace --split "
                                "train; --logprobs for a token signal)")
    calibrate.add_argument("--signal", choices=RUNTIME_SIGNALS, default="verbalized",
                           help="the signal to map (default: %(default)s)")
    calibrate.add_argument("--dry-run", action="store_true",
                           help="fit and report, write nothing")
    calibrate.set_defaults(handler=cmd_calibrate)

    models = commands.add_parser("models", help="list the embedded models and their prices")
    models.add_argument("--locate", action="store_true",
                        help="print file paths (assembles the LLM on first use)")
    models.set_defaults(handler=cmd_models)
    tasks = commands.add_parser("tasks", help="list the built-in tasks")
    tasks.set_defaults(handler=cmd_tasks)
    probe = commands.add_parser(
        "probe", help="the hidden-state probe signal: fit it on training traces, score traces",
        description="fit: a logistic regression of correctness on the SLM's last hidden state, "
                    "from trace tables of training questions. score: add its 'probe' column to "
                    "trace tables, which `sweep --signal probe` reads.")
    probe.add_argument("action", choices=("fit", "score"))
    probe.add_argument("--model", default="smollm2", help="the SLM (default: %(default)s)")
    probe.add_argument("--adapter", help="its PEFT adapter directory")
    probe.add_argument("--trace", type=Path, nargs="+", required=True, help="trace table(s)")
    probe.add_argument("--out", type=Path, help="fit: where the probe goes (.json)")
    probe.add_argument("--probe", type=Path, help="score: a probe written by fit")
    probe.add_argument("--zero-shot", action="store_true",
                       help="fit: the traces were made without the worked examples")
    probe.add_argument("--quiet", action="store_true", help="no progress bar")
    probe.set_defaults(handler=cmd_probe)
    from corea.memory_cli import add_commands  # memory and bench-memory

    add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.handler(args)
    except (UsageError, ModelError, TraceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a trace can be resumed by running the same command again",
              file=sys.stderr)
        return 130
