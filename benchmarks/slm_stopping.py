"""The embedded SLM with and without the stopping rule (corea.stopping): tokens and seconds per
question, format failures and accuracy, on fixed test questions.

    COREA_THREADS=1 python benchmarks/slm_stopping.py --task svamp --limit 20 \
        --out benchmarks/slm_stopping.md

Greedy, 320 new tokens at most, llama.cpp. The two runs of a question are made back to back,
alternating which goes first, so a machine whose load changes during the run slows both alike.
The replies with the rule are the replies without it, cut (greedy decoding, and each call starts
from an empty cache), so any accuracy difference comes from what the cut removed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs as `python benchmarks/slm_stopping.py` from a checkout

from corea import embedded  # noqa: E402
from corea.checking import is_correct  # noqa: E402
from corea.models import GenerationConfig, get_model  # noqa: E402
from corea.protocol import build_messages, parse_reply  # noqa: E402
from corea.tasks import get_task  # noqa: E402


def run(task_name: str, limit: int, max_new_tokens: int) -> dict:
    task = get_task(task_name)
    examples = task.examples(task.default_split, limit)
    model = get_model(embedded.DEFAULT_SLM)
    plain = GenerationConfig(max_new_tokens=max_new_tokens)
    stopping = GenerationConfig(max_new_tokens=max_new_tokens, stop_when_done=True)
    model.generate([build_messages(examples[0].question, hint=task.hint)], plain)  # warm-up
    rows = {"without": [], "with": []}
    for index, example in enumerate(examples):
        messages = build_messages(example.question, hint=task.hint)
        order = [("without", plain), ("with", stopping)]
        for label, config in order if index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            generation = model.generate([messages], config)[0]
            seconds = time.perf_counter() - start
            parsed = parse_reply(generation.text)
            format_ok = parsed.format_ok and generation.finish_reason != "repetition"
            rows[label].append({"tokens": generation.completion_tokens, "seconds": seconds,
                                "format_ok": format_ok, "repetition":
                                    generation.finish_reason == "repetition",
                                "correct": is_correct(parsed.answer, example.gold, task.checker)})
    return rows


def report(rows: dict, command: str, task: str) -> str:
    def mean(label, key):
        return statistics.mean(row[key] for row in rows[label])

    lines = ["# The SLM with and without the stopping rule", "",
             f"Command: `{command}` · {time.strftime('%Y-%m-%d %H:%M')} · "
             f"{len(rows['with'])} {task} test questions, {embedded.DEFAULT_SLM} on llama.cpp, "
             "greedy, 320 new tokens at most", "",
             "| | mean tokens / question | mean seconds / question | format followed | "
             "cut as repetition | accuracy |", "|---|---|---|---|---|---|"]
    for label in ("without", "with"):
        lines.append(f"| {label} the rule | {mean(label, 'tokens'):.1f} | "
                     f"{mean(label, 'seconds'):.2f} | {mean(label, 'format_ok'):.0%} | "
                     f"{sum(r['repetition'] for r in rows[label])} | {mean(label, 'correct'):.0%} |")
    lines += ["", f"Tokens with the rule / without: "
                  f"{mean('with', 'tokens') / mean('without', 'tokens'):.2f}; seconds: "
                  f"{mean('with', 'seconds') / mean('without', 'seconds'):.2f}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="svamp")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/slm_stopping.md"))
    args = parser.parse_args()
    rows = run(args.task, args.limit, args.max_new_tokens)
    command = (f"python benchmarks/slm_stopping.py --task {args.task} --limit {args.limit} "
               f"--out {args.out}")
    args.out.write_text(report(rows, command, args.task))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
