"""The trained SLM against the untrained one on llama.cpp, each served as the cascade serves it:
tokens per second, seconds, prompt and completion tokens per question.

    .venv/bin/python benchmarks/trained_slm_speed.py --adapter adapters/smollm2-135m-mix \
        --task arith-mix --limit 20

The untrained SmolLM2 runs its embedded GGUF with the two worked examples in its prompt; the
trained one runs the GGUF with its LoRA adapter merged in (corea.gguf_merge, Q8_0 where the
adapter changed a weight) and, when its corea.json says so, zero-shot. Greedy, 320 new tokens at
most, the reply ends after its confidence line, each call from an empty cache. The two models
answer each question back to back, alternating which goes first, so a machine whose load changes
during the run slows both alike. Writes benchmarks/results/trained_slm_speed.json.
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
from corea.models import GenerationConfig, load_model  # noqa: E402
from corea.protocol import build_messages  # noqa: E402
from corea.tasks import get_task  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "trained_slm_speed.json"


def run(adapter: Path, task_name: str, limit: int, max_new_tokens: int) -> dict:
    task = get_task(task_name)
    examples = task.examples(task.default_split, limit)
    models = {"untrained": load_model(embedded.DEFAULT_SLM, backend="llama.cpp"),
              "trained": load_model(str(adapter), backend="llama.cpp")}
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_when_done=True)

    def ask(model, question):
        messages = build_messages(question, few_shot=getattr(model, "few_shot", True),
                                  hint=task.hint)
        start = time.perf_counter()
        generation = model.generate([messages], config)[0]
        return time.perf_counter() - start, generation

    for model in models.values():  # the first call pays one-off costs
        ask(model, examples[0].question)
    labels = list(models)
    rows = []
    for index, example in enumerate(examples):
        order = labels if index % 2 == 0 else labels[::-1]
        replies = {label: ask(models[label], example.question) for label in order}
        rows.append({label: {"seconds": seconds, "prompt_tokens": reply.prompt_tokens,
                             "completion_tokens": reply.completion_tokens}
                     for label, (seconds, reply) in replies.items()})
        print(f"{index + 1}/{len(examples)} " + ", ".join(
            f"{label} {rows[-1][label]['seconds']:.2f} s" for label in labels), flush=True)
    arms = {}
    for label in labels:
        seconds = sum(row[label]["seconds"] for row in rows)
        tokens = sum(row[label]["completion_tokens"] for row in rows)
        arms[label] = {
            "model": models[label].name,
            "tokens_per_second": tokens / seconds,
            "mean_seconds_per_question": seconds / len(rows),
            "median_seconds_per_question": statistics.median(row[label]["seconds"]
                                                             for row in rows),
            "mean_prompt_tokens": statistics.mean(row[label]["prompt_tokens"] for row in rows),
            "mean_completion_tokens": statistics.mean(row[label]["completion_tokens"]
                                                      for row in rows)}
    arms["trained"]["tokens_per_second_ratio"] = \
        arms["trained"]["tokens_per_second"] / arms["untrained"]["tokens_per_second"]
    return {"task": task_name, "questions": len(rows), "arms": arms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, required=True,
                        help="the trained SLM's adapter folder (adapters/NAME or a run's adapter)")
    parser.add_argument("--task", default="arith-mix", help="a built-in task")
    parser.add_argument("--limit", type=int, default=20, help="number of test questions")
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not (args.adapter / "adapter_config.json").is_file():
        parser.error(f"{args.adapter} is not an adapter folder (no adapter_config.json)")
    load_before = os.getloadavg()
    result = run(args.adapter, args.task, args.limit, args.max_new_tokens)
    result.update({
        "command": "python benchmarks/trained_slm_speed.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "cores": os.cpu_count(),
                    "threads": os.environ.get("COREA_THREADS", "all cores"),
                    "load_average_before": load_before,
                    "load_average_after": os.getloadavg()}})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    arms = result["arms"]
    print(f"tokens/s: untrained {arms['untrained']['tokens_per_second']:.1f}, trained "
          f"{arms['trained']['tokens_per_second']:.1f} "
          f"({arms['trained']['tokens_per_second_ratio']:.2f}x); seconds per question "
          f"{arms['untrained']['mean_seconds_per_question']:.2f} -> "
          f"{arms['trained']['mean_seconds_per_question']:.2f}; written to {args.out}")


if __name__ == "__main__":
    main()
