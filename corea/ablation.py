"""The training ablation: what each stage of `python -m training` did to the small model.

Each stage's model has trace tables of the same held-out questions (benchmarks/traces/
`<prefix>-<set>.jsonl`) and, once trained, a run record (benchmarks/runs/<stage>.json, copied from
OUTPUT_DIR/run.json). A row reports arith-mix accuracy per level, format rate, ECE, AUROC and the
saving of a threshold chosen on one seeded half of the questions and applied to the other; GSM8K
and SVAMP accuracy and AUROC; and the examples, steps and wall time the stage took.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corea.metrics import TracePair, join_traces, trace_summary
from corea.thresholds import choose_threshold
from corea.traces import read_trace

MAX_DROP = 0.02
HALF_SEED = 0
MIN_JUDGED = 100  # held-out questions below which a saving is shown but called unjudged
RUNS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "runs"


@dataclass(frozen=True)
class Stage:
    label: str
    trace_prefix: str  # benchmarks/traces/<prefix>-<set>.jsonl
    record: str | None  # benchmarks/runs/<record>.json


STAGES = (
    Stage("untrained (few-shot prompt)", "smollm2", None),
    Stage("+ SFT (competence)", "smollm2-sft", "mix-sft"),
    Stage("+ SFT, measured confidence line", "smollm2-sftconf", "mix-sft-conf"),
    Stage("+ self-label (loss on the value only)", "smollm2-selflabel", "mix-self-label"),
    Stage("+ self-label (whole reply)", "smollm2-selflabel-full", "mix-self-label-full"),
    Stage("+ self-label (whole reply, more GSM8K, 5 samples)", "smollm2-selflabel-ood",
          "mix-self-label-ood"),
    Stage("+ self-label (same replies, rows spread over targets)", "smollm2-selflabel-spread",
          "mix-self-label-ood-spread"),
    Stage("+ self-label (same replies, targets pooled by level)", "smollm2-selflabel-pooled",
          "mix-self-label-pooled"),
    Stage("+ self-label (pooled targets, loss on the value too; after whole reply)",
          "smollm2-selflabel-pooled-value", "mix-self-label-pooled-value"),
    Stage("+ self-label at 2,096 problems (pooled targets, loss on the value too; after whole "
          "reply; trained on an H100)", "smollm2-selflabel-2k", "mix-self-label-2k"),
    Stage("+ self-label (level share, loss on the value only; after whole reply)",
          "smollm2-selflabel-level", "mix-self-label-level"),
    Stage("+ self-label (level share, loss on the value too; after whole reply)",
          "smollm2-selflabel-level-value", "mix-self-label-level-value"),
    Stage("+ GRPO (Brier)", "smollm2-grpo-brier", "mix-grpo-brier"),
    Stage("+ GRPO (group L1)", "smollm2-grpo-group", "mix-grpo-group"),
)


def seeded_halves(pair: TracePair, seed: int = HALF_SEED) -> tuple[TracePair, TracePair]:
    """Two disjoint halves of the questions, drawn by a seeded permutation of their ids' order."""
    order = np.random.default_rng(seed).permutation(len(pair))
    first = np.zeros(len(pair), dtype=bool)
    first[order[: len(pair) // 2]] = True

    def take(mask):
        return TracePair(pair.ids[mask], pair.confidence[mask], pair.slm_correct[mask],
                         pair.slm_cost[mask], pair.llm_correct[mask], pair.llm_cost[mask])
    return take(first), take(~first)


def held_out_saving(pair: TracePair, max_drop: float = MAX_DROP) -> dict | None:
    """The cheapest threshold within `max_drop` of LLM-only on the first half, applied to the
    second: its saving and its loss there. None when no threshold qualifies on the first half."""
    calibration, test = seeded_halves(pair)
    chosen = choose_threshold(calibration, "max_drop", max_drop)
    if chosen is None:
        return None
    keep = test.confidence >= chosen["threshold"]
    accuracy = float(np.where(keep, test.slm_correct, test.llm_correct).mean())
    cost = float((test.slm_cost + np.where(keep, 0.0, test.llm_cost)).mean())
    return {"threshold": chosen["threshold"], "saving": 1 - cost / float(test.llm_cost.mean()),
            "loss": float(test.llm_correct.mean()) - accuracy, "n_test": len(test),
            "llm_share": float((~keep).mean())}


def _read(path: Path) -> list[dict] | None:
    return read_trace(path) if path.is_file() else None


def _read_by(path: Path, signal: str, mapped: bool = True) -> list[dict] | None:
    """A table with its confidence read by `signal` (a column of the table, or the stated one),
    through the model's Platt map where it declares one, unless not `mapped`."""
    from corea.signals import has_column, with_signal

    rows = _read(path)
    if rows and not has_column(rows, signal):
        return None  # traced without that column: nothing to read it by
    return with_signal(rows, signal, mapped=mapped) if rows else rows


def stage_row(stage: Stage, traces: Path, runs: Path, signal: str = "verbalized",
              mapped: bool = True) -> dict | None:
    """A stage's figures, its confidence read by `signal`; None when its arith-mix table is
    missing."""
    slm = _read_by(traces / f"{stage.trace_prefix}-arith-mix.jsonl", signal, mapped)
    llm = _read(traces / "qwen-arith-mix.jsonl")
    if slm is None:
        return None
    row = {"stage": stage, "signal": signal, "arith": trace_summary(slm),
           "prompt_tokens": float(np.mean([r["prompt_tokens"] for r in slm])),
           "completion_tokens": float(np.mean([r["completion_tokens"] for r in slm])),
           "cost": float(np.mean([r["cost"] for r in slm]))}
    if llm:
        row["held_out"] = held_out_saving(join_traces(slm, llm))
    for name in ("gsm8k", "svamp"):
        rows = _read_by(traces / f"{stage.trace_prefix}-{name}.jsonl", signal, mapped)
        row[name] = trace_summary(rows) if rows else None
    record_path = runs / f"{stage.record}.json" if stage.record else None
    row["record"] = json.loads(record_path.read_text()) \
        if record_path and record_path.is_file() else None
    return row


def _pct(value) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _num(value, spec=".3f") -> str:
    return "—" if value is None else format(value, spec)


def _held_cell(held: dict | None) -> str:
    if held is None:
        return "none within 2 pts on the first half"
    cell = f"{_pct(held['saving'])} ({held['loss'] * 100:+.1f} pts)"
    if held["n_test"] < MIN_JUDGED:
        cell += f", n={held['n_test']}: too few to judge"
    return cell


def _cost_cell(record: dict | None) -> str:
    if not record:
        return "—"
    # A GRPO record's grpo_seconds add up every run of the stage (resumed ones too);
    # train_seconds is its last run's, already among them.
    training = "grpo_seconds" if "grpo_seconds" in record else "train_seconds"
    seconds = sum(record.get(key, 0) for key in (training, "sample_seconds",
                                                  "sample_seconds_reused"))
    examples = record.get("examples") or record.get("self_label_rows") \
        or record.get("train_questions")
    steps = record.get("steps") or record.get("self_label_steps")
    config = record.get("config") or {}
    if "grpo_seconds" in record and steps and config.get("num_generations"):
        # GRPO samples num_generations replies per question: the questions it saw, not its pool.
        examples = (steps * config.get("per_device_train_batch_size", 1)
                    * config.get("gradient_accumulation_steps", 1) // config["num_generations"])
        return f"{examples} questions · {steps} steps · {seconds / 60:.0f} min"
    return f"{examples or '—'} ex. · {steps or '—'} steps · {seconds / 60:.0f} min"


SHIPPED_PREFIX = "smollm2-calibrated"  # the shipped default SLM's tables


def shipped_rows(adapter: Path | None, traces: Path, runs: Path) -> list[dict]:
    """A shipped adapter from its own tables (SHIPPED_PREFIX), read as stated and, where the
    adapter declares another signal to be served with or a Platt map (its corea.json), by that
    signal, raw and then through the map, as served; empty when its corea.json names no stage or
    its arith-mix table is missing. The last row is the reading it is served with."""
    from corea import embedded
    from corea.calibration import adapter_map

    serving = embedded.adapter_serving(adapter) if adapter is not None else {}
    if not serving.get("stage"):
        return []
    signal, threshold = embedded.serving_defaults(str(adapter))
    platt = adapter_map(adapter)
    readings = [("verbalized", False, "as stated")]
    if signal != "verbalized":
        readings.append((signal, False, f"read as {signal}"))
    if platt is not None and platt.signal == signal:
        readings.append((signal, True, f"served: {signal} through its Platt map"))
    rows = []
    for read, mapped, how in readings:
        label = f"shipped default `{adapter.name}` (the {serving['stage']} model), {how}"
        row = stage_row(Stage(label, SHIPPED_PREFIX, serving.get("stage")), traces, runs, read,
                        mapped)
        if row:
            rows.append({**row, "served_threshold": threshold, "mapped": mapped})
    return rows


def ablation_section(traces: Path, runs: Path) -> list[str]:
    rows = [row for row in (stage_row(s, traces, runs) for s in STAGES) if row]
    from corea import embedded

    rows += shipped_rows(embedded.shipped_adapters().get(embedded.TRAINED_SLM or ""), traces, runs)
    if not rows:
        return []
    lines = [
        "## Training ablation: what each stage did to the small model", "",
        "SmolLM2-135M after each stage of `python -m training` (configs in training/configs/, "
        "run records in benchmarks/runs/), on the fixed arith-mix test questions (levels 1-5 "
        "interleaved; n per row: the first n of the 300 that its table holds) and the GSM8K/SVAMP "
        "questions of its tables. Held-out saving: the cheapest "
        f"threshold within {MAX_DROP * 100:.0f} points of the LLM alone on one seeded half of "
        "arith-mix, applied to the other half (saving and points lost there). Wall time on this "
        "machine, all of the stage (sampling included).", "",
        "| stage | arith-mix L1 / L2 / L3 / L4 / L5 | all | format | ECE | AUROC | held-out "
        "saving (loss) | GSM8K acc. · AUROC | SVAMP acc. · AUROC | tokens in · out, cost per "
        "question | examples · steps · time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        arith = row["arith"]
        levels = " / ".join(_pct(arith.get("accuracy_by_level", {}).get(str(level)))
                            for level in range(1, 6))
        held = row.get("held_out")
        held_cell = _held_cell(held)
        sets = [f"{_pct(s['accuracy'])} · {_num(s['auroc'], '.2f')} (n={s['n']})" if s else "—"
                for s in (row["gsm8k"], row["svamp"])]
        lines.append(f"| {row['stage'].label} | {levels} | {_pct(arith['accuracy'])} "
                     f"(n={arith['n']}) "
                     f"| {_pct(arith['format_rate'])} | {_num(arith['ece'])} "
                     f"| {_num(arith['auroc'], '.2f')} | {held_cell} | {sets[0]} | {sets[1]} "
                     f"| {row['prompt_tokens']:.0f} · {row['completion_tokens']:.0f}, "
                     f"${row['cost'] * 1e6:.2f} per 1M q. | {_cost_cell(row['record'])} |")
    for prefix in SIGNAL_TABLES:
        lines += signal_table(traces, prefix)
    lines += ["", "Cost per question is the SLM's own (compute-based prices, README): the trained "
              "stages are served zero-shot, without the two worked examples the untrained model "
              "needs, so their prompts are shorter. "
              "A stage whose replies state no confidence (the SFT stage teaches none) has "
              "format 0% and defers everything on the stated confidence; its accuracy still "
              "counts. The second SFT pass goes on from the first with fresh worked solutions "
              "that end with a confidence line whose value is the first model's measured share "
              "right on training questions of the same level (training/configs/"
              "cpu-mix-sft-conf.yaml); the self-label stage then sets each value from the "
              "model's own sampled replies per question.", ""]
    lines += speed_paragraph(traces.parent / "results" / "trained_slm_speed.json")
    return lines


def speed_paragraph(path: Path) -> list[str]:
    """The trained SLM's speed on llama.cpp against the untrained one's, from
    benchmarks/trained_slm_speed.py's last result, where there is one."""
    if not path.is_file():
        return []
    result = json.loads(path.read_text())
    before, after = result["arms"]["untrained"], result["arms"]["trained"]
    machine = result["machine"]
    load = machine["load_average_before"][0]
    return [
        f"**On llama.cpp** (`{result['command']}`, {result['date']}, {machine['cores']} cores, "
        f"llama.cpp threads: {machine['threads']}, load average {load:.1f} when it started): "
        f"over {result['questions']} {result['task']} questions answered back to back, "
        f"{after['model']} (its LoRA merged into the GGUF, zero-shot) writes "
        f"{after['tokens_per_second']:.1f} tokens/s against the untrained model's "
        f"{before['tokens_per_second']:.1f}, **{after['tokens_per_second_ratio']:.2f}x** "
        f"(target at least 0.8x). Per question: {before['mean_prompt_tokens']:.0f} prompt and "
        f"{before['mean_completion_tokens']:.0f} reply tokens, {before['mean_seconds_per_question']:.2f} s "
        f"before; {after['mean_prompt_tokens']:.0f} and {after['mean_completion_tokens']:.0f}, "
        f"{after['mean_seconds_per_question']:.2f} s after.", ""]


# Stages whose arith-mix tables carry token log-probabilities (and the probe's column, if scored).
SIGNAL_TABLES = ("smollm2-sft", "smollm2-sftconf", "smollm2-selflabel", "smollm2-selflabel-full",
                 "smollm2-selflabel-ood", "smollm2-selflabel-spread", "smollm2-selflabel-pooled",
                 "smollm2-selflabel-pooled-value", "smollm2-selflabel-2k",
                 "smollm2-selflabel-level", "smollm2-selflabel-level-value", "smollm2-grpo-brier",
                 "smollm2-grpo-group", "smollm2-calibrated")


def signal_table(traces: Path, prefix: str) -> list[str]:
    """A stage's deferral signals on arith-mix side by side: its stated confidence (as stated, and
    as its mean over the value's digits), the probability of its answer's tokens, and the
    hidden-state probe (corea.probe), where its table has them."""
    from corea.signals import with_signal

    slm = _read(traces / f"{prefix}-arith-mix.jsonl")
    llm = _read(traces / "qwen-arith-mix.jsonl")
    if not slm or not llm:
        return []
    label = next((s.label for s in STAGES if s.trace_prefix == prefix),
                 "shipped default (each signal as served, through its Platt map where it declares"
                 " one)" if prefix == SHIPPED_PREFIX else prefix)
    lines = ["", f"Deferral signals of the {label} model on arith-mix (same questions, same "
             "held-out halves; a reply with no stated confidence reads 0):", "", "| signal | AUROC | ECE | held-out saving (loss) |", "|---|---|---|---|"]
    for signal in ("verbalized", "verbalized_mean", "answer_probability", "probe"):
        if signal != "verbalized" and not any(signal in row for row in slm):
            lines.append(f"| {signal} | not in the table | | |")
            continue
        pair = join_traces(with_signal(slm, signal), llm)
        summary = trace_summary(with_signal(slm, signal))
        held = held_out_saving(pair)
        cell = _held_cell(held)
        lines.append(f"| {signal} | {_num(summary['auroc'], '.3f')} | {_num(summary['ece'])} "
                     f"| {cell} |")
    return lines


def lineage(record: dict | None, name: str | None, runs: Path) -> list[tuple[str, dict]]:
    """(record name, run record) of a stage and of each stage it went on from (its config's
    start_adapter, runs/<name>/adapter), first stage first."""
    chain, seen = [], set()
    while record and name and name not in seen:
        seen.add(name)
        chain.append((name, record))
        start = (record.get("config") or {}).get("start_adapter") or ""
        name = Path(start).parent.name if start else None
        path = runs / f"{name}.json" if name else None
        record = json.loads(path.read_text()) if path and path.is_file() else None
    return chain[::-1]


def model_card(readings: list[dict], untrained: dict, runs: Path) -> str:
    """The shipped trained SLM's card (README.md beside its adapter), every figure read from its
    trace tables and its stages' run records, like the ablation table. `readings`: its rows as
    stated and, last, by the signal it is served with (shipped_rows)."""
    row = readings[-1]
    arith = row["arith"]
    held = row.get("held_out")
    signal, threshold = row["signal"], row["served_threshold"]
    read_as = ("the confidence it states" if signal == "verbalized" else
               f"`{signal}` ({SIGNAL_MEANINGS.get(signal, signal)})")
    if row.get("mapped"):
        read_as += (", through a Platt map fitted on its answers to training questions "
                    "(`python -m corea calibrate`), so that it reads as the chance of being right")

    def versus(reading: dict, key: str, source: str) -> str:
        now = reading["arith"] if source == "arith" else reading.get(source)
        before = untrained["arith"] if source == "arith" else untrained.get(source)
        if not now:
            return "—"
        show = _pct if key == "accuracy" else (lambda v: _num(v, ".3f"))
        return f"{show(before.get(key))} → {show(now.get(key))}" if before else show(now.get(key))

    def line(name: str, reading: dict, key: str) -> str:
        return (f"| {name} | {versus(reading, key, 'arith')} | {versus(reading, key, 'gsm8k')} "
                f"| {versus(reading, key, 'svamp')} |")

    measures = [line("accuracy", row, "accuracy")]
    for reading in readings:
        name = "stated confidence" if reading["signal"] == "verbalized" else reading["signal"]
        name += ", as served (mapped)" if reading.get("mapped") else ""
        measures += [line(f"ECE of the {name}", reading, "ece"),
                     line(f"AUROC of the {name}", reading, "auroc")]
    table = "\n".join(measures)
    labels = {s.record: s.label for s in STAGES if s.record}
    recipe = "\n".join(
        f"- **{labels.get(name, name).lstrip('+ ')}** ({_cost_cell(record)})"
        + (f": {record['stopped_early']} ({record['steps']} of "
           f"{record['planned_steps']} steps)" if record.get("stopped_early") else "")
        for name, record in lineage(row["record"], row["stage"].record, runs))
    levels = " · ".join(f"L{k} {_pct(v)}" for k, v in arith.get("accuracy_by_level", {}).items())
    saving = (f"saves {_pct(held['saving'])} of the LLM-alone cost on the other half, at "
              f"{held['loss'] * 100:+.1f} points against the LLM alone there (threshold "
              f"{held['threshold']:.2f}, {_pct(held['llm_share'])} of questions deferred)"
              if held else "finds no threshold within 2 points of the LLM alone")
    return f"""---
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
library_name: peft
license: apache-2.0
tags: [corea, confidence-calibration, cascade, lora, sft, trl]
pipeline_tag: text-generation
---

# SmolLM2-135M, trained to be right on easy arithmetic and to say when it is

The default small model of corea's cascade: a LoRA adapter on SmolLM2-135M-Instruct, served
**zero-shot** (corea's system prompt, no worked examples) and on llama.cpp through a merged GGUF
that corea builds once from the embedded base (`corea.gguf_merge`). It answers, then states
`Confidence: <0 to 1>`. A cascade reads that as {read_as}, and defers to the large model below
{threshold:.2f} (as its corea.json declares; `--signal` and `--threshold` override them).

## How it was trained (2 CPU cores, no GPU; configs in training/configs/cpu-mix-*.yaml)

{recipe}

## Measured (held-out questions, greedy; `python -m corea bench --training-only` rewrites this card)

Untrained (few-shot prompt) → this model. arith-mix: the fixed test questions (levels 1-5), n =
{arith['n']}.

| | arith-mix | GSM8K | SVAMP |
|---|---|---|---|
{table}

arith-mix accuracy by level: {levels}; format followed {_pct(arith['format_rate'])}; mean
confidence ({signal}) {arith['mean_confidence']:.2f}.

In front of Qwen2.5-Coder-1.5B on arith-mix, a threshold on {signal} chosen on one seeded half
of the questions {saving}. Its own replies cost {row['prompt_tokens']:.0f} prompt and
{row['completion_tokens']:.0f} completion tokens per question (the untrained model, with the two
worked examples it needs: {untrained['prompt_tokens']:.0f} and
{untrained['completion_tokens']:.0f}).

## Limits

A 135M model trained on generated arithmetic and GSM8K solutions: on GSM8K and SVAMP it is still
mostly wrong (see the table). Greedy decoding states one of a few values; the probabilities behind
that choice (`verbalized_mean`) rank its answers far better than the value it writes. Its Platt
map was fitted on arithmetic: on other questions its confidence runs high (see the ECE on GSM8K and
SVAMP), so choose the threshold on your own traces (`python -m corea tune`) before trusting it.
"""


SIGNAL_MEANINGS = {"verbalized_mean": "the stated value's mean under the model's probabilities "
                                      "for its digits"}


def write_model_card(adapter_dir: Path, traces: Path, runs: Path) -> Path | None:
    """The card of a shipped adapter whose corea.json names the stage it comes from
    (`{"stage": "<record>"}`), from the shipped tables (SHIPPED_PREFIX); None when it names none
    or those tables are missing."""
    readings = shipped_rows(adapter_dir, traces, runs)
    rows = [row for row in (stage_row(s, traces, runs) for s in STAGES) if row]
    untrained = next((r for r in rows if r["stage"].record is None), None)
    if not readings or untrained is None:
        return None
    path = adapter_dir / "README.md"
    path.write_text(model_card(readings, untrained, runs))
    return path


SECTION_START = "## Training ablation"
SECTION_END = "## Per data set"


def splice_section(text: str, start: str, end: str | None, section: list[str]) -> str:
    """`text` with the part from the heading `start` up to the heading `end` (or to the end, when
    None or not found) replaced by `section`; placed before `end`, or at the end, when `start`
    is not there yet."""
    if start in text:
        head, rest = text.split(start, 1)
        tail = rest[rest.index(end):] if end and end in rest else ""
    elif end and end in text:
        head, tail = text.split(end, 1)
        tail = end + tail
    else:
        head, tail = (text.rstrip("\n") + "\n\n" if text.strip() else ""), ""
    return head + "\n".join(section) + "\n" + tail


def refresh_training_section(report: Path, traces: Path, runs: Path) -> list[str]:
    """Rewrite only the training ablation section of an existing report, from the trace tables
    and run records: seconds, no model runs."""
    section = ablation_section(traces, runs)
    if not section:
        raise ValueError(f"no stage has an arith-mix table in {traces}: trace the stages first")
    text = report.read_text() if report.is_file() else ""
    report.write_text(splice_section(text, SECTION_START, SECTION_END, section))
    from corea import embedded

    shipped = embedded.shipped_adapters().get(embedded.TRAINED_SLM or "")
    if shipped is not None:
        write_model_card(shipped, traces, runs)
    return section
