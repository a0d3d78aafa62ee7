"""Trace tables: one model run over a task once, one JSON object per question, on disk.

Running a model is the expensive part; everything downstream (sweeps, plots, threshold choice,
benchmarks) reads trace tables. Writing is resumable: rows already in the file are skipped, and each
batch is flushed to disk as it finishes, so a crash loses at most the batch in flight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from corea.checking import is_correct
from corea.costs import Price
from corea.models import Generation, GenerationConfig, Model
from corea.protocol import FEW_SHOT, SYSTEM_PROMPT, build_messages, parse_reply
from corea.signals import TOKEN_SIGNAL_READERS
from corea.tasks import Example, Task

REQUIRED_FIELDS = {
    "id": str, "task": str, "question": str, "gold": str, "model": str, "output": str,
    "answer": (str, type(None)), "confidence": (float, int, type(None)), "correct": bool,
    "prompt_tokens": int, "completion_tokens": int, "cost": (float, int), "latency_s": (float, int),
}


class TraceError(ValueError):
    """A trace file that cannot be used; the message names the file and line."""


def setup_id(task: Task, config: GenerationConfig, few_shot: bool = True) -> str:
    """A short fingerprint of what shaped the replies besides the model: the prompt, the task's
    hint and the decoding settings. Resuming a trace under another setup would mix two runs."""
    decoding = dataclasses.asdict(config)
    # Options added after the first tables enter the fingerprint only when they change the
    # replies, so tables traced before them still resume.
    for name in ("stop", "stop_when_done"):
        if not decoding.get(name):
            decoding.pop(name, None)
    setup = {"system": SYSTEM_PROMPT, "few_shot": FEW_SHOT if few_shot else None,
             "hint": task.hint, "decoding": decoding}
    return hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:12]


def trace_row(example: Example, task: Task, split: str, model_name: str, generation: Generation,
              price: Price, setup: str | None = None, strategies: Iterable[int] = ()) -> dict:
    """One question's row; `strategies` are the ids of the memory strategies in its prompt."""
    parsed = parse_reply(generation.text)
    return {
        "id": example.id,
        "task": task.name,
        "split": split,
        "question": example.question,
        "gold": example.gold,
        "model": model_name,
        "output": generation.text,
        "answer": parsed.answer,
        "confidence": parsed.confidence,
        "format_ok": parsed.format_ok,
        "correct": is_correct(parsed.answer, example.gold, task.checker),
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "cost": price.cost(generation.prompt_tokens, generation.completion_tokens),
        "latency_s": round(generation.latency_s, 4),
        "strategies": [int(i) for i in strategies],
        **({"meta": example.meta} if example.meta else {}),
        **({"setup": setup} if setup else {}),
        **_token_signals(generation),
    }


def _token_signals(generation: Generation) -> dict:
    if not generation.token_logprobs:
        return {}
    return {signal: read(generation.text, generation.token_logprobs)
            for signal, read in TOKEN_SIGNAL_READERS.items()}


def validate_row(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise TraceError(f"{where}: a trace row must be a JSON object")
    for name, kinds in REQUIRED_FIELDS.items():
        if name not in row:
            raise TraceError(f"{where}: missing field {name!r} (a trace row needs "
                             f"{', '.join(REQUIRED_FIELDS)})")
        value, allowed = row[name], _as_tuple(kinds)
        # bool is an int in Python; a JSON true is no token count.
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise TraceError(f"{where}: field {name!r} has the wrong type ({type(value).__name__})")
    confidence = row["confidence"]
    if confidence is not None and not (0.0 <= confidence <= 1.0 and math.isfinite(confidence)):
        raise TraceError(f"{where}: confidence {confidence} is outside [0, 1]")
    if row["cost"] < 0:
        raise TraceError(f"{where}: cost {row['cost']} is negative")
    # Optional: rows written before strategy memory existed have no `strategies`.
    strategies = row.get("strategies", [])
    if not isinstance(strategies, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in strategies):
        raise TraceError(f"{where}: field 'strategies' must be a list of strategy ids")
    return row


def _as_tuple(kinds) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def parse_trace_lines(lines: Iterable[str], source: str) -> list[dict]:
    rows, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TraceError(f"{where}: not valid JSON ({error.msg})") from None
        validate_row(row, where)
        if row["id"] in seen:
            raise TraceError(f"{where}: id {row['id']!r} appears twice")
        seen.add(row["id"])
        rows.append(row)
    return rows


def read_trace(path: str | Path) -> list[dict]:
    """All rows of a trace file, validated; a TraceError naming the bad line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        rows = parse_trace_lines(handle, str(path))
    if not rows:
        raise TraceError(f"trace file {path} has no rows")
    return rows


def _rows_to_resume(path: Path, model_name: str, task_name: str, setup: str) -> list[dict]:
    """Rows already in `path`. A last line cut off by a crash is removed from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
    rows = parse_trace_lines(data.decode("utf-8").splitlines(), str(path))
    for row in rows[:1]:
        if row["model"] != model_name or row["task"] != task_name:
            raise TraceError(
                f"{path} holds a trace of model {row['model']!r} on task {row['task']!r}, not "
                f"{model_name!r} on {task_name!r}: choose another --out to start a new trace"
            )
    # Rows written before fingerprints existed carry none and are taken as they are.
    others = {row["setup"] for row in rows if row.get("setup", setup) != setup}
    if others:
        raise TraceError(
            f"{path} was traced with another prompt or decoding settings (setup "
            f"{', '.join(sorted(others))}, now {setup}): choose another --out to start a new trace"
        )
    return rows


@dataclass
class TraceSummary:
    path: Path
    rows: int
    new_rows: int
    accuracy: float
    format_rate: float


def run_trace(model: Model, task: Task, out: str | Path, *, split: str | None = None,
              limit: int | None = None, batch_size: int = 8,
              config: GenerationConfig = GenerationConfig(), price: Price = Price(0.0, 0.0),
              few_shot: bool | None = None, progress: bool = True) -> TraceSummary:
    """Run `model` over `task` once and append the rows to `out`, skipping rows already there.
    The prompt carries the worked examples as the model is served (`model.few_shot`) unless
    `few_shot` says otherwise."""
    split = split or task.default_split
    few_shot = model.few_shot if few_shot is None else few_shot
    examples = task.examples(split, limit)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    setup = setup_id(task, config, few_shot)
    done = _rows_to_resume(out, model.name, task.name, setup)
    done_ids = {row["id"] for row in done}
    todo = [example for example in examples if example.id not in done_ids]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), disable=not progress,
               desc=f"{model.name} on {task.name}/{split}", unit="q")
    new_rows, handle = [], None
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            conversations = [build_messages(e.question, few_shot=few_shot, hint=task.hint)
                             for e in batch]
            generations = model.generate(conversations, config)
            rows = [trace_row(e, task, split, model.name, g, price, setup)
                    for e, g in zip(batch, generations)]
            # Opened at the first finished batch: a model that fails at once leaves no file.
            handle = handle or open(out, "a", encoding="utf-8")
            handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            handle.flush()
            os.fsync(handle.fileno())
            new_rows.extend(rows)
            bar.update(len(batch))
            so_far = done + new_rows
            bar.set_postfix(acc=f"{sum(r['correct'] for r in so_far) / len(so_far):.2f}")
    finally:
        if handle:
            handle.close()
    bar.close()
    wanted = {e.id for e in examples}
    rows = [row for row in done + new_rows if row["id"] in wanted]
    count = max(len(rows), 1)
    return TraceSummary(out, len(rows), len(new_rows),
                        sum(r["correct"] for r in rows) / count,
                        sum(r.get("format_ok", False) for r in rows) / count)
