#!/usr/bin/env bash
# Measures each embedded model on 100 questions of GSM8K test, SVAMP and the generated task
# (levels 1-3 interleaved), writing trace tables to benchmarks/traces/. Resumable: run it again
# after an interruption and it continues where it stopped.
#   bash scripts/embedded_accuracy.sh [LIMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
LIMIT=${1:-100}
for model in smollm2 qwen; do
  for task in arith svamp gsm8k; do
    extra=(); [ "$model" = smollm2 ] && extra=(--logprobs)  # token-probability signals too
    $PY -m corea trace --model "$model" --task "$task" --limit "$LIMIT" "${extra[@]}" \
      --out "benchmarks/traces/$model-$task.jsonl"
  done
done
for task in arith svamp gsm8k; do
  $PY -m corea sweep --slm "benchmarks/traces/smollm2-$task.jsonl" \
    --llm "benchmarks/traces/qwen-$task.jsonl" --plot "benchmarks/plots/pareto-$task.html"
done
