"""Fit the step routers on training-split SLM step traces.

    # the SLM writes training questions step by step (resumable), then both routers are fitted
    python -m training router --task arith-mix --limit 40 --out adapters/step-router
    # fit only, on step traces already written
    python -m training router --traces benchmarks/traces/step-slm-arith-mix-train.jsonl --out DIR

Each SLM step is labelled against the question's reference solution: a step is on track when its
equations compute, the new numbers it brings are values the reference solution reaches, an
answer line gives the gold answer, it does not repeat a sentence already written, and every step
before it was on track. Two routers come out:

- `gmm.json`: a two-component Gaussian mixture over the steps' token statistics (mean and
  minimum token probability, logit scale), fitted without the labels;
- `learned.json`: the policy, a logistic model over every step feature
  (`corea.steps.LEARNED_FEATURES`) giving the probability that keeping the SLM's step keeps the
  solution on track; the cascade keeps a step when it reaches the tier's threshold.

`fit.json` beside them records the data and each router's AUROC for the labels, in-sample and on
held-out questions (two folds by question).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from corea import arithmetic
from corea.checking import is_correct
from corea.metrics import auroc
from corea.steps import (LEARNED_FEATURES, STATISTICS, LearnedRouter, MixtureRouter,
                         mixture_inputs, policy_inputs)

MIXTURE_STATISTICS = ("mean_prob", "min_prob")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_GSM8K_ID = re.compile(r"^gsm8k-train-(\d+)$")
_ARITH_ID = re.compile(r"^(?:arith-mix-)?arith(\d)-train-(\d+)$")


def _numbers(text: str) -> set[float]:
    values = set()
    for match in _NUMBER.findall(text):
        try:
            values.add(round(float(match.replace(",", "")), 6))
        except ValueError:
            continue
    return values


def reference_values(row: dict) -> set[float] | None:
    """The values a reference solution of the question reaches (its intermediate results and
    the answer); None when the question has no reference solution corea knows of."""
    found = _ARITH_ID.match(row["id"])
    if found:
        level, index = int(found.group(1)), int(found.group(2))
        problem = arithmetic.generate(level, "train", index + 1)[index]
        # an operation's working may hold two equations ("5 * 4 = 20, and 19 + 20 = 39")
        values = {round(float(v), 6) for eq in problem.working
                  for v in re.findall(r"=\s*(-?\d+(?:\.\d+)?)", eq)}
        return values | {float(problem.answer)}
    found = _GSM8K_ID.match(row["id"])
    if found:
        from corea.tasks import gsm8k_rows

        solution = gsm8k_rows("train")[int(found.group(1))]["answer"]
        values = {round(float(v.replace(",", "")), 6)
                  for v in re.findall(r"=\s*(-?\d[\d,]*(?:\.\d+)?)\s*>>", solution)}
        return values | _numbers(solution.rsplit("####", 1)[1])
    return None


def step_labels(row: dict) -> list[int | None]:
    """1 for a step that keeps the solution on track, 0 otherwise, None for the confidence line
    (it is no reasoning) and for questions without a reference."""
    reference = reference_values(row)
    if reference is None:
        return [None] * len(row["steps"])
    known = _numbers(row["question"])
    labels, on_track = [], True
    for step in row["steps"]:
        text, features = step["text"], step.get("features") or {}
        if re.match(r"\s*confidence", text, re.I):
            labels.append(None)
            continue
        if features.get("answer_line"):
            answer = text.split(":", 1)[1] if ":" in text else ""
            ok = is_correct(answer.strip(), row["gold"], "numeric")
        else:
            new = _numbers(text) - known
            ok = (features.get("equation_check", 0.5) != 0.0 and new <= reference
                  and not features.get("repeat"))
        on_track = on_track and ok
        labels.append(int(on_track))
        known |= _numbers(text)
    return labels


def labelled_steps(rows: list[dict]) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Every labelled SLM step of the rows: their features, labels and question index."""
    features, labels, groups = [], [], []
    for index, row in enumerate(rows):
        for step, label in zip(row["steps"], step_labels(row)):
            if label is None or not step["text"].strip() or "features" not in step:
                continue
            features.append(step["features"])
            labels.append(label)
            groups.append(index)
    return features, np.array(labels, dtype=int), np.array(groups, dtype=int)


def fit_mixture(features: list[dict], statistics=MIXTURE_STATISTICS, iterations: int = 200,
                seed: int = 0) -> MixtureRouter:
    """EM for a two-component diagonal Gaussian mixture, started from the lower and upper
    thirds of the data, so the same traces give the same mixture."""
    x = np.array([mixture_inputs(f, statistics) for f in features], dtype=float)
    if len(x) < 4:
        raise ValueError(f"{len(x)} steps are too few to fit a mixture: trace more questions")
    order = np.argsort(x.sum(axis=1))
    thirds = [order[: len(x) // 3], order[-(len(x) // 3):]]
    means = np.array([x[part].mean(axis=0) for part in thirds])
    variances = np.array([x.var(axis=0) + 1e-3] * 2)
    weights = np.array([0.5, 0.5])
    for _ in range(iterations):
        log = np.stack([np.log(weights[k]) - 0.5 * np.sum(
            np.log(2 * np.pi * variances[k]) + (x - means[k]) ** 2 / variances[k], axis=1)
            for k in range(2)], axis=1)
        log -= log.max(axis=1, keepdims=True)
        resp = np.exp(log)
        resp /= resp.sum(axis=1, keepdims=True)
        counts = resp.sum(axis=0) + 1e-9
        weights = counts / counts.sum()
        means = (resp.T @ x) / counts[:, None]
        variances = np.stack([(resp[:, k:k + 1] * (x - means[k]) ** 2).sum(axis=0) / counts[k]
                              for k in range(2)]) + 1e-3
    return MixtureRouter(statistics, weights.tolist(), means.tolist(), variances.tolist())


def fit_policy(features: list[dict], labels: np.ndarray, l2: float = 1e-2,
               iterations: int = 3000, learning_rate: float = 0.5) -> LearnedRouter:
    """Logistic regression by gradient descent on standardized inputs (no extra dependency)."""
    if len(set(labels.tolist())) < 2:
        raise ValueError("the training steps are all on track or all off track: a policy needs "
                         "both; trace more (or more varied) questions")
    x = np.array([policy_inputs(f) for f in features], dtype=float)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (x - mean) / scale
    weights, bias = np.zeros(z.shape[1]), 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ weights + bias)))
        error = p - labels
        weights -= learning_rate * (z.T @ error / len(z) + l2 * weights)
        bias -= learning_rate * error.mean()
    return LearnedRouter(LEARNED_FEATURES, mean.tolist(), scale.tolist(), weights.tolist(),
                         float(bias))


def _auroc(router, features: list[dict], labels: np.ndarray) -> float | None:
    value = auroc([router.score(f) for f in features], labels.astype(bool))
    return round(value, 4) if value is not None else None


def fit_routers(rows: list[dict], out: str | Path) -> dict:
    """Fit both routers on the step traces `rows`, write them and fit.json to `out`."""
    from corea.steps import ThresholdRouter

    features, labels, groups = labelled_steps(rows)
    if not features:
        raise ValueError("no labelled steps: the traces need training-split questions of a task "
                         "with reference solutions (arith-mix, arith-N, gsm8k train)")
    mixture = fit_mixture(features)
    policy = fit_policy(features, labels)
    held_out = {}
    fold = groups % 2
    for name in ("gmm", "learned"):
        scores, truth = [], []
        for part in (0, 1):
            train = [f for f, g in zip(features, fold) if g != part]
            test = [f for f, g in zip(features, fold) if g == part]
            if not train or not test or len(set(labels[fold != part].tolist())) < 2:
                continue
            fitted = fit_mixture(train) if name == "gmm" else \
                fit_policy(train, labels[fold != part])
            scores += [fitted.score(f) for f in test]
            truth += labels[fold == part].tolist()
        value = auroc(scores, np.array(truth, dtype=bool)) if scores else None
        held_out[name] = round(value, 4) if value is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gmm.json").write_text(json.dumps(mixture.to_dict(), indent=2) + "\n")
    (out / "learned.json").write_text(json.dumps(policy.to_dict(), indent=2) + "\n")
    models = sorted({row["model"] for row in rows if row.get("model")})
    record = {
        # The SLM whose steps these are: a cascade serving it picks these routers by default.
        "model": models[0] if len(models) == 1 else (models or None),
        "questions": len(rows), "steps": len(features), "on_track_share": float(labels.mean()),
        "tasks": sorted({row["task"] for row in rows}),
        "auroc_in_sample": {name: _auroc(router, features, labels) for name, router in
                            {"learned": policy, "gmm": mixture,
                             **{s: ThresholdRouter(s) for s in STATISTICS}}.items()},
        "auroc_held_out": held_out,
        "policy_weights": dict(zip(LEARNED_FEATURES, [round(w, 4) for w in policy.weights])),
    }
    (out / "fit.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def collect_and_fit(tasks: list[str], traces: list[str], out: str | Path, limit: int,
                    model: str = "smollm2", trace_dir: str | Path | None = None) -> dict:
    """`python -m training router`: trace the SLM step by step on each task's training split
    (resumable), then fit both routers on those traces and any given ones."""
    from corea.steps import read_step_trace, run_step_trace

    if not tasks and not traces:
        raise ValueError("give --task (to trace the SLM) or --traces (step traces already written)")
    rows = []
    for path in traces:
        rows += read_step_trace(path)
    if tasks:
        from corea.costs import resolve_price
        from corea.models import get_model
        from corea.steps import Writer
        from corea.tasks import get_task

        slm = get_model(model, logprobs=True)
        writer = Writer(slm, resolve_price(slm.name))
        folder = Path(trace_dir) if trace_dir else Path(out) / "traces"
        for name in tasks:
            task = get_task(name)
            if "train" not in task.splits:
                raise ValueError(f"task {name!r} has no training split")
            rows += run_step_trace(writer, task, folder / f"step-slm-{name}-train.jsonl",
                                   split="train", limit=limit)
    return fit_routers(rows, out)
