"""Does the large model's work, put in the small model's prompt, make the small model more right?

The strategy memory's premise, measured without the stream around it: for each of N test
questions (spread evenly over the SLM's plain trace), the nearest *other* question the LLM
answered correctly (MiniLM embeddings, as the memory retrieves) is given to the SLM with the
LLM's worked reply, in one of two forms:

- `notes`: as the memory's quoted notes block (the worked reply in the strategy's place), after
  the question, where the cascade puts it;
- `notes_first`: the same block before the question;
- `turns`: as a demonstration, a user turn with that question and an assistant turn with the
  LLM's reply, just before the question (the form few-shot prompting uses);
- `program`: as the memory's `program` mode gives it, the LLM's program on one line quoted with
  its problem (an LLM answering by program, `--llm-trace` of `program:<model>`; an SLM served
  as `program:<model>`).

The SLM's accuracy with that context is compared with its plain trace on the same questions.

    python benchmarks/memory_context.py --slm smollm2-135m-calibrated \\
        --slm-trace benchmarks/traces/smollm2-calibrated-arith-mix.jsonl \\
        --llm-trace benchmarks/traces/qwen-arith-mix.jsonl --form notes --form turns --limit 40
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corea.checking import is_correct  # noqa: E402
from corea.memory import (Strategy, get_embedder, notes_block, program_note,  # noqa: E402
                          slm_messages)
from corea.models import get_model  # noqa: E402
from corea.protocol import build_messages, parse_reply, without_confidence  # noqa: E402
from corea.tasks import get_task  # noqa: E402
from corea.traces import read_trace  # noqa: E402

OUT = ROOT / "benchmarks" / "memory" / "context-forms.json"


def with_context(form: str, question: str, hint: str | None, solved: dict,
                 few_shot: bool) -> list[dict]:
    """The SLM's messages for `question`, with the LLM's solved neighbour in `form`."""
    if form == "program":
        program = program_note(solved["output"], solved["answer"])
        if program is None:
            raise SystemExit(f"{solved['id']}: the LLM's reply holds no program computing its "
                             "answer; the program form needs a program LLM's trace")
        note = Strategy(0, "probe", solved["question"], program, None, solved["model"], 0, 0)
        return slm_messages(question, hint, [note], few_shot, with_problem=True)
    if form in ("notes", "notes_first"):
        worked = without_confidence(solved["output"]).strip()
        note = Strategy(0, "probe", solved["question"], worked, None, solved["model"], 0, 0)
        if form == "notes":
            return slm_messages(question, hint, [note], few_shot, with_problem=True)
        messages = build_messages(question, hint=hint, few_shot=few_shot)
        messages[-1] = {"role": "user",
                        "content": f"{notes_block([note], with_problem=True)}\n\n"
                                   f"{messages[-1]['content']}"}
        return messages
    messages = build_messages(question, hint=hint, few_shot=few_shot)
    demo_question = f"{solved['question']}\n{hint}" if hint else solved["question"]
    demo = [{"role": "user", "content": demo_question},
            {"role": "assistant", "content": solved["output"].strip()}]
    return messages[:-1] + demo + messages[-1:]


def measure(slm_spec: str, slm_trace: Path, llm_trace: Path, forms: list[str], limit: int,
            progress: bool = True) -> dict:
    plain = read_trace(slm_trace)
    task = get_task(plain[0]["task"])
    picked = plain[::max(1, len(plain) // limit)][:limit]
    solved = [row for row in read_trace(llm_trace) if row["correct"]]
    embedder = get_embedder()
    keys = embedder.encode([row["question"] for row in solved])
    model = get_model(slm_spec)
    if model.name != plain[0]["model"]:
        raise SystemExit(f"{slm_trace} holds {plain[0]['model']}'s replies, not {model.name}'s")
    neighbours, similarities = [], []
    for row in picked:
        scores = keys @ embedder.encode([row["question"]])[0]
        best = next(int(i) for i in np.argsort(-scores) if solved[int(i)]["id"] != row["id"])
        neighbours.append(solved[best])
        similarities.append(float(scores[best]))
    results = {}
    for form in forms:
        start, right = time.perf_counter(), []
        for index, (row, neighbour) in enumerate(zip(picked, neighbours), start=1):
            reply = model.generate([with_context(form, row["question"], task.hint, neighbour,
                                                 model.few_shot)])[0]
            right.append(is_correct(parse_reply(reply.text).answer, row["gold"], task.checker))
            if progress:
                print(f"{form} {index}/{len(picked)}: {sum(right)} right", flush=True)
        results[form] = {"accuracy_with": float(np.mean(right)),
                         "wall_s": round(time.perf_counter() - start, 1)}
    return {"task": task.name, "slm": model.name, "llm": solved[0]["model"] if solved else None,
            "questions": len(picked), "mean_similarity": float(np.mean(similarities)),
            "accuracy_without": float(np.mean([row["correct"] for row in picked])),
            "forms": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slm", required=True, help="the SLM as corea names it")
    parser.add_argument("--slm-trace", type=Path, required=True, help="its plain trace")
    parser.add_argument("--llm-trace", type=Path, required=True,
                        help="the LLM's trace of the same task (its right answers are the context)")
    parser.add_argument("--form", action="append", choices=("notes", "notes_first", "turns", "program"),
                        help="how the context is given (repeatable; default: notes and turns)")
    parser.add_argument("--limit", type=int, default=40, help="questions (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="JSON the result is added to, keyed by SLM and task "
                             "(default: benchmarks/memory/context-forms.json)")
    args = parser.parse_args(argv)
    result = measure(args.slm, args.slm_trace, args.llm_trace, args.form or ["notes", "turns"],
                     args.limit)
    result["command"] = "python benchmarks/memory_context.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    table = json.loads(args.out.read_text()) if args.out.is_file() else {}
    key = f"{result['slm']} / {result['task']}"
    earlier = table.get(key)
    if earlier and earlier["questions"] == result["questions"]:  # same questions: add the forms
        result["forms"] = {**earlier["forms"], **result["forms"]}
        result["command"] = "; ".join(dict.fromkeys(
            earlier["command"].split("; ") + [result["command"]]))
    table[key] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
