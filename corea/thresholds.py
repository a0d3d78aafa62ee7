"""Choosing the threshold for a goal, from a pair of trace tables.

Three goals a product team states (each picks from the thresholds the sweep found):

- `max_drop`: lose at most X accuracy (as a fraction, 0.02 = 2 points) against LLM-only; the
  cheapest threshold that does.
- `budget`: spend at most $Y per 1,000 questions; the most accurate threshold within it.
- `llm_share`: send at most Z (a fraction) of the questions to the LLM; the most accurate.

`guaranteed_threshold` chooses for `max_drop` with a statistical guarantee on new questions from the
same distribution (Learn-then-Test with fixed-sequence testing): with probability at least
1 - delta over the calibration sample, the chosen threshold's rate of questions *lost* to the cascade
(kept by the SLM and wrong, where the LLM was right) is at most the allowed drop.
"""

from __future__ import annotations

import math

import numpy as np

from corea.metrics import TracePair, evaluate_threshold, sweep_curve

GOALS = {
    "max_drop": "lose at most X points of accuracy against LLM-only",
    "budget": "spend at most $Y per 1,000 questions",
    "llm_share": "send at most Z% of the questions to the LLM",
}


def _points(pair: TracePair) -> list[dict]:
    return [evaluate_threshold(pair, t) for t in sweep_curve(pair).thresholds]


def choose_threshold(pair: TracePair, goal: str, value: float) -> dict | None:
    """The threshold that meets `goal` at `value` on these traces, or None if none does."""
    if goal not in GOALS:
        raise ValueError(f"unknown goal {goal!r}; choose one of {', '.join(GOALS)}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"the goal's value must be a non-negative number, not {value}")
    points = _points(pair)
    if goal == "max_drop":
        floor = float(pair.llm_correct.mean()) - value - 1e-12
        eligible = [p for p in points if p["accuracy"] >= floor]
        return min(eligible, key=lambda p: (p["cost"], -p["accuracy"])) if eligible else None
    if goal == "budget":
        eligible = [p for p in points if p["cost"] * 1000 <= value + 1e-12]
    else:
        eligible = [p for p in points if p["llm_share"] <= value + 1e-12]
    return max(eligible, key=lambda p: (p["accuracy"], -p["cost"])) if eligible else None


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space so large n does not overflow."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                 + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(0, k + 1)]
    peak = max(log_terms)
    return min(1.0, math.exp(peak) * sum(math.exp(t - peak) for t in log_terms))


def min_calibration_questions(max_drop: float, delta: float) -> int:
    """The fewest calibration questions from which any threshold can be certified: even with
    nothing lost, (1 - max_drop)^n must fall to delta."""
    return math.ceil(math.log(delta) / math.log(1 - max_drop))


def guaranteed_threshold(pair: TracePair, max_drop: float, delta: float = 0.1) -> dict | None:
    """The lowest threshold whose loss rate is certified <= max_drop at level 1 - delta.

    Fixed-sequence testing walks thresholds from the most cautious (defer all) downwards and stops
    at the first one whose null hypothesis "loss rate > max_drop" cannot be rejected; each test's
    p-value is the exact binomial tail of the observed number of lost questions.
    """
    if not 0 < delta < 1 or not 0 < max_drop < 1:
        raise ValueError("max_drop and delta must lie strictly between 0 and 1")
    n = len(pair)
    harmed = (~pair.slm_correct) & pair.llm_correct  # keeping these loses a right answer
    chosen = None
    for point in sorted(_points(pair), key=lambda p: -p["threshold"]):
        kept = pair.confidence >= point["threshold"]
        lost = int((kept & harmed).sum())
        p_value = binomial_cdf(lost, n, max_drop)
        if p_value > delta:
            break
        chosen = {**point, "lost": lost, "p_value": p_value, "delta": delta}
    return chosen


def random_and_oracle_curves(pair: TracePair, shares: np.ndarray | None = None) -> dict:
    """Accuracy against share deferred for random deferral (expected) and for the oracle
    (defer exactly the questions the SLM gets wrong, the ones the LLM can fix first)."""
    shares = np.linspace(0, 1, 51) if shares is None else shares
    slm_accuracy, llm_accuracy = float(pair.slm_correct.mean()), float(pair.llm_correct.mean())
    random_accuracy = (1 - shares) * slm_accuracy + shares * llm_accuracy
    gain = pair.llm_correct.astype(float) - pair.slm_correct.astype(float)
    best_first = np.sort(gain)[::-1]  # defer the largest gains first
    cumulative = np.concatenate([[0.0], np.cumsum(best_first)])
    counts = np.round(shares * len(pair)).astype(int)
    oracle_accuracy = slm_accuracy + cumulative[counts] / len(pair)
    return {"share": shares.tolist(), "random": random_accuracy.tolist(),
            "oracle": oracle_accuracy.tolist()}


def threshold_for_goal(pair: TracePair, goal: str, amount: float,
                       confidence: float | None = None) -> dict | None:
    """The threshold for a goal (max_drop, budget or llm_share): the best on these questions, or
    with `confidence` (max_drop only) the one Learn-then-Test certifies for new questions."""
    if confidence is None:
        return choose_threshold(pair, goal, amount)
    if goal != "max_drop":
        raise ValueError("a guarantee certifies accuracy lost, not a budget or an LLM share")
    if not 0 < confidence < 1:
        raise ValueError("a guarantee's confidence lies strictly between 0 and 1, such as 0.9")
    return guaranteed_threshold(pair, amount, delta=1 - confidence)
