"""The price of the token signals on llama.cpp: seconds per question of the embedded SLM with and
without per-token log-probabilities (what answer_probability and first_token_margin read).

    COREA_THREADS=1 .venv/bin/python benchmarks/token_signal_cost.py --task svamp --limit 20 \
        --logits-all

Greedy, as the cascade serves it (320 new tokens at most, the reply ends after its confidence
line), each call from an empty cache. The runs of one question are made back to back, rotating
which goes first, so a machine whose load changes during the run slows every arm alike. With
`--logits-all`, a third arm takes the log-probabilities the way corea did before
(corea.models.SampledLogprobs's docstring says why it stopped): a model built with
`logits_all=True`, asked for `logprobs`/`top_logprobs`. The replies of all arms are compared
(greedy decoding: they must be the same text, and the two ways of reading the log-probabilities
must agree). Writes the figures to benchmarks/results/token_signal_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corea import embedded  # noqa: E402
from corea.models import (GenerationConfig, LlamaCppModel, cut_generation,  # noqa: E402
                          openai_token_logprobs)
from corea.protocol import build_messages  # noqa: E402
from corea.signals import answer_probability, first_token_margin  # noqa: E402
from corea.stopping import find_stop, stop_of  # noqa: E402
from corea.tasks import get_task  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "token_signal_cost.json"


class LogitsAllModel(LlamaCppModel):
    """The earlier path: llama-cpp-python's own log-probabilities, which need `logits_all=True`."""

    def __init__(self, path, name, n_threads=None):
        super().__init__(path, name=name, n_threads=n_threads)
        from llama_cpp import Llama

        threads = self._llm.n_threads
        self._llm = Llama(model_path=str(path), n_ctx=self._llm.n_ctx(), n_threads=threads,
                          n_threads_batch=threads, verbose=False, logits_all=True)

    def stream(self, messages, config=GenerationConfig()):
        options = stop_of(config)
        with self._lock:
            start = time.perf_counter()
            self._prepare(messages)
            chunks = self._llm.create_chat_completion(
                messages=messages, max_tokens=config.max_new_tokens, temperature=0.0,
                stream=True, logprobs=True, top_logprobs=2)
            text, rows, stopped = "", [], None
            for chunk in chunks:
                choice = chunk["choices"][0]
                rows += openai_token_logprobs(choice.get("logprobs")) or ()
                text += choice["delta"].get("content") or ""
                stopped = find_stop(text, **options)
                if stopped is not None:
                    chunks.close()
                    break
            elapsed = time.perf_counter() - start
        if stopped is not None:
            text, rows = cut_generation(text, tuple(rows), lambda _: stopped.cut)
        from corea.models import Generation

        yield Generation(text, 0, len(rows), elapsed, token_logprobs=tuple(rows))


def one_reply(model, messages, config) -> tuple[float, object]:
    start = time.perf_counter()
    generation = model.generate([messages], config)[0]
    if generation.token_logprobs is not None:  # the signals themselves, as the cascade reads them
        answer_probability(generation.text, generation.token_logprobs)
        first_token_margin(generation.text, generation.token_logprobs)
    return time.perf_counter() - start, generation


def run(task_name: str, limit: int, max_new_tokens: int, logits_all: bool) -> dict:
    task = get_task(task_name)
    examples = task.examples(task.default_split, limit)
    path = embedded.resolve_embedded(embedded.DEFAULT_SLM).locate()
    arms = {"plain": LlamaCppModel(path, name=embedded.DEFAULT_SLM),
            "token signals": LlamaCppModel(path, name=embedded.DEFAULT_SLM, logprobs=True)}
    if logits_all:
        arms["token signals via logits_all (before)"] = LogitsAllModel(path, embedded.DEFAULT_SLM)
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_when_done=True)
    warm = build_messages(examples[0].question, hint=task.hint)
    for model in arms.values():  # the first call pays one-off costs
        one_reply(model, warm, config)
    labels = list(arms)
    questions = []
    for index, example in enumerate(examples):
        messages = build_messages(example.question, hint=task.hint)
        order = labels[index % len(labels):] + labels[:index % len(labels)]
        replies = {label: one_reply(arms[label], messages, config) for label in order}
        row = {"id": example.id, "order": order,
               "seconds": {label: seconds for label, (seconds, _) in replies.items()},
               "tokens": {label: len(reply.token_logprobs) if reply.token_logprobs
                          else reply.completion_tokens for label, (_, reply) in replies.items()},
               "same_text": len({reply.text for _, reply in replies.values()}) == 1}
        if logits_all:
            mine = replies["token signals"][1].token_logprobs
            theirs = replies["token signals via logits_all (before)"][1].token_logprobs
            row["same_tokens"] = [r[0] for r in mine] == [r[0] for r in theirs]
            if row["same_tokens"]:
                row["max_logprob_difference"] = max(
                    (abs(a[1] - b[1]) for a, b in zip(mine, theirs)), default=0.0)
        questions.append(row)
        print(f"{index + 1}/{len(examples)} " + ", ".join(
            f"{label} {seconds:.2f} s" for label, seconds in row["seconds"].items()), flush=True)
    return {"labels": labels, "questions": questions}


def summarize(result: dict) -> dict:
    questions = result["questions"]
    arms = {}
    for label in result["labels"]:
        seconds = [q["seconds"][label] for q in questions]
        arms[label] = {"mean_seconds_per_question": statistics.mean(seconds),
                       "median_seconds_per_question": statistics.median(seconds),
                       "mean_tokens_per_question":
                           statistics.mean(q["tokens"][label] for q in questions)}
    plain = arms["plain"]["mean_seconds_per_question"]
    for label, arm in arms.items():
        arm["ratio_to_plain"] = arm["mean_seconds_per_question"] / plain
        arm["median_per_question_ratio_to_plain"] = statistics.median(
            q["seconds"][label] / q["seconds"]["plain"] for q in questions)
    summary = {"arms": arms, "same_text": sum(q["same_text"] for q in questions)}
    differences = [q["max_logprob_difference"] for q in questions
                   if "max_logprob_difference" in q]
    if differences:
        summary["max_logprob_difference_vs_logits_all"] = max(differences)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="svamp", help="a built-in task (python -m corea tasks)")
    parser.add_argument("--limit", type=int, default=20, help="number of test questions")
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--logits-all", action="store_true",
                        help="add a third arm: the earlier logits_all=True path")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M")
    result = run(args.task, args.limit, args.max_new_tokens, args.logits_all)
    command = ("COREA_THREADS=" + os.environ["COREA_THREADS"] + " "
               if os.environ.get("COREA_THREADS") else "") + \
        ("python benchmarks/token_signal_cost.py " + " ".join(sys.argv[1:])).rstrip()
    report = {
        "command": command, "date": started, "task": args.task, "questions": args.limit,
        "model": f"{embedded.DEFAULT_SLM} on llama.cpp, greedy, {args.max_new_tokens} new tokens "
                 "at most, stop after the confidence line",
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version(),
                    "threads": os.environ.get("COREA_THREADS") or os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        **summarize(result), "per_question": result["questions"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for label, arm in report["arms"].items():
        print(f"{label:40s} {arm['mean_seconds_per_question']:.3f} s/question "
              f"({arm['mean_tokens_per_question']:.0f} tokens), {arm['ratio_to_plain']:.2f}x plain")
    print(f"same text in all arms: {report['same_text']}/{args.limit}; written to {args.out}")


if __name__ == "__main__":
    main()
