"""Metrics over trace tables: the threshold sweep, the Pareto frontier and calibration scores.

Semantics of a two-tier cascade at threshold t: the SLM's answer is kept when its confidence is
>= t; otherwise the LLM's answer is used and both calls are paid. A missing confidence (format
failure) counts as 0. Everything here is a pure, vectorized function of the trace rows, so a sweep
over 10,000 questions takes milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corea.traces import TraceError

ECE_BINS = 10
DEFAULT_MAX_DROP = 0.02


@dataclass(frozen=True)
class TracePair:
    """An SLM and an LLM trace joined on question id, as arrays in one order."""

    ids: np.ndarray
    confidence: np.ndarray  # SLM confidence, missing -> 0
    slm_correct: np.ndarray
    slm_cost: np.ndarray
    llm_correct: np.ndarray
    llm_cost: np.ndarray
    dropped_slm: int = 0  # rows of either table with no partner in the other
    dropped_llm: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def _confidence(row: dict) -> float:
    value = row["confidence"]
    return float(value) if value is not None and row.get("format_ok", True) else 0.0


def join_traces(slm_rows: list[dict], llm_rows: list[dict]) -> TracePair:
    llm_by_id = {row["id"]: row for row in llm_rows}
    shared = [row for row in slm_rows if row["id"] in llm_by_id]
    if not shared:
        raise TraceError("the two trace tables share no question ids: trace the same task and split "
                         "with both models")
    partners = [llm_by_id[row["id"]] for row in shared]
    return TracePair(
        ids=np.array([row["id"] for row in shared]),
        confidence=np.array([_confidence(row) for row in shared], dtype=float),
        slm_correct=np.array([row["correct"] for row in shared], dtype=bool),
        slm_cost=np.array([row["cost"] for row in shared], dtype=float),
        llm_correct=np.array([row["correct"] for row in partners], dtype=bool),
        llm_cost=np.array([row["cost"] for row in partners], dtype=float),
        dropped_slm=len(slm_rows) - len(shared),
        dropped_llm=len(llm_rows) - len(shared),
    )


# ----------------------------------------------------------------------------------- calibration

def expected_calibration_error(confidence, correct, bins: int = ECE_BINS) -> float:
    """ECE with equal-width bins; a confidence of exactly 1 falls in the last bin."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    # Per bin, |sum of confidences - number right| = count x |mean confidence - accuracy|.
    confidence_sums = np.bincount(index, weights=confidence, minlength=bins)
    right_counts = np.bincount(index, weights=correct, minlength=bins)
    return float(np.abs(confidence_sums - right_counts).sum() / len(confidence))


def reliability_bins(confidence, correct, bins: int = ECE_BINS) -> list[dict]:
    """Per bin: its range, count, mean confidence and accuracy (the reliability diagram's data)."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    result = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        result.append({
            "low": b / bins, "high": (b + 1) / bins, "count": count,
            "confidence": float(confidence[mask].mean()) if count else None,
            "accuracy": float(correct[mask].mean()) if count else None,
        })
    return result


def auroc(confidence, correct) -> float | None:
    """Probability that a right answer has higher confidence than a wrong one (ties count half).

    None when all answers are right or all wrong: the score is undefined then.
    """
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, bool)
    positives, negatives = int(correct.sum()), int((~correct).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(confidence, kind="mergesort")
    sorted_conf = confidence[order]
    ranks = np.empty(len(confidence))
    # Average rank within each run of tied confidences.
    _, starts, counts = np.unique(sorted_conf, return_index=True, return_counts=True)
    average = starts + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[correct].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def brier_score(confidence, correct) -> float:
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    return float(np.mean((confidence - correct) ** 2))


# ------------------------------------------------------------------------------------------ sweep

@dataclass(frozen=True)
class SweepCurve:
    """The cascade at every distinct threshold, in ascending threshold order."""

    thresholds: np.ndarray
    accuracy: np.ndarray
    cost: np.ndarray  # mean USD per question
    llm_share: np.ndarray


def sweep_curve(pair: TracePair) -> SweepCurve:
    """Accuracy, cost and share deferred at each distinct SLM confidence used as the threshold,
    and just above the highest one, where every question is deferred."""
    n = len(pair)
    order = np.argsort(-pair.confidence, kind="mergesort")
    conf = pair.confidence[order]
    # Prefix sums over questions in descending confidence: the first m are kept by the SLM.
    kept_gain = np.concatenate([[0.0], np.cumsum(pair.slm_correct[order].astype(float)
                                                 - pair.llm_correct[order])])
    kept_saving = np.concatenate([[0.0], np.cumsum(pair.llm_cost[order])])
    # Every distinct confidence, then the lowest threshold above them all (everything deferred).
    distinct = np.unique(conf)  # ascending
    thresholds = np.append(distinct, np.nextafter(distinct[-1], np.inf))
    kept = n - np.searchsorted(conf[::-1], thresholds, side="left")  # count of conf >= t
    accuracy = (pair.llm_correct.sum() + kept_gain[kept]) / n
    cost = (pair.slm_cost.sum() + pair.llm_cost.sum() - kept_saving[kept]) / n
    return SweepCurve(thresholds, accuracy, cost, (n - kept) / n)


def evaluate_threshold(pair: TracePair, threshold: float) -> dict:
    """The cascade at one threshold (any value, not only one that occurs)."""
    keep = pair.confidence >= threshold
    accuracy = float(np.where(keep, pair.slm_correct, pair.llm_correct).mean())
    cost = float((pair.slm_cost + np.where(keep, 0.0, pair.llm_cost)).mean())
    llm_cost = float(pair.llm_cost.mean())
    return {"threshold": float(threshold), "accuracy": accuracy, "cost": cost,
            "relative_cost": cost / llm_cost if llm_cost > 0 else None,
            "llm_share": float((~keep).mean())}


def pareto_mask(cost, accuracy) -> np.ndarray:
    """True where no other point is at least as cheap and at least as accurate (one strictly)."""
    cost, accuracy = np.asarray(cost, float), np.asarray(accuracy, float)
    order = np.lexsort((-accuracy, cost))  # by cost, then best accuracy first
    mask = np.zeros(len(cost), dtype=bool)
    best = -np.inf
    for index in order:
        if accuracy[index] > best:
            mask[index] = True
            best = accuracy[index]
    return mask


def area_under_hull(cost, accuracy, budget: float | None = None) -> float | None:
    """AIQ (RouterBench): area under the non-decreasing upper convex hull of accuracy vs cost,
    divided by the cost range, so it reads as an average accuracy over the range of budgets.

    With `budget` the range is fixed at [0, budget] (no answer is affordable below the cheapest
    point, so accuracy counts as 0 there): curves that cost different amounts, such as a cascade
    that also pays for k self-consistency samples, are then averaged over the same budgets."""
    cost, accuracy = np.asarray(cost, float), np.asarray(accuracy, float)
    if budget is None and (len(cost) < 2 or cost.max() <= cost.min()):
        return None
    if budget is not None and budget <= 0:
        return None
    points = sorted(zip(cost, accuracy))
    hull: list[tuple[float, float]] = []
    for x, y in points:
        if hull and y <= hull[-1][1]:
            continue  # non-decreasing: a costlier point that is no better adds nothing
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= 0:  # hull[-1] below the chord
                hull.pop()
            else:
                break
        hull.append((x, y))
    xs = np.array([p[0] for p in hull])
    ys = np.array([p[1] for p in hull])
    end = cost.max() if budget is None else budget
    start = xs[0] if budget is None else 0.0
    if xs[0] >= end:
        return float(ys[0]) if budget is None else 0.0
    grid = np.unique(np.concatenate([xs[xs < end], [end]]))
    heights = np.interp(grid, xs, ys)  # flat beyond the last hull point
    area = float(np.sum((grid[1:] - grid[:-1]) * (heights[1:] + heights[:-1]) / 2.0))
    return area / (end - start)


def best_within(points: list[dict], llm_accuracy: float, max_drop: float) -> dict | None:
    """The cheapest threshold whose accuracy is at most `max_drop` below LLM-only, with its saving;
    None when every such threshold costs at least as much as calling the LLM alone."""
    eligible = [p for p in points if p["accuracy"] >= llm_accuracy - max_drop - 1e-12
                and (p["relative_cost"] is None or p["relative_cost"] < 1.0)]
    if not eligible:
        return None
    best = min(eligible, key=lambda p: (p["cost"], -p["accuracy"]))
    relative = best["relative_cost"]
    return {**best, "saving": 1.0 - relative if relative is not None else None}


def summarize(pair: TracePair, max_drop: float = DEFAULT_MAX_DROP) -> dict:
    """The sweep's report: every threshold, the frontier, the best saving within `max_drop` of
    LLM-only accuracy, and the SLM's calibration. The JSON of `python -m corea sweep --json`."""
    curve = sweep_curve(pair)
    llm_cost = float(pair.llm_cost.mean())
    llm_accuracy = float(pair.llm_correct.mean())

    def relative(cost: float) -> float | None:
        return cost / llm_cost if llm_cost > 0 else None

    points = [
        {"threshold": float(t), "accuracy": float(a), "cost": float(c),
         "relative_cost": relative(float(c)), "llm_share": float(s)}
        for t, a, c, s in zip(curve.thresholds, curve.accuracy, curve.cost, curve.llm_share)
    ]
    on_frontier = pareto_mask(np.append(curve.cost, llm_cost), np.append(curve.accuracy, llm_accuracy))
    for point, flag in zip(points, on_frontier[:-1]):
        point["on_frontier"] = bool(flag)
    slm_cost = float(pair.slm_cost.mean())
    return {
        "n": len(pair),
        "dropped_ids": {"slm": pair.dropped_slm, "llm": pair.dropped_llm},
        "points": points,
        "llm_only": {"accuracy": llm_accuracy, "cost": llm_cost, "relative_cost": 1.0},
        "slm_only": {"accuracy": float(pair.slm_correct.mean()), "cost": slm_cost,
                     "relative_cost": relative(slm_cost)},
        "best_within_2pt": best_within(points, llm_accuracy, DEFAULT_MAX_DROP),
        **({"max_drop": max_drop, "best_within_max_drop": best_within(points, llm_accuracy, max_drop)}
           if max_drop != DEFAULT_MAX_DROP else {}),
        # Over budgets up to the LLM's own price: the range where a cascade can save anything.
        "aiq": area_under_hull(np.append(curve.cost, llm_cost),
                               np.append(curve.accuracy, llm_accuracy), budget=llm_cost),
        "ece": expected_calibration_error(pair.confidence, pair.slm_correct),
        "auroc": auroc(pair.confidence, pair.slm_correct),
        "brier": brier_score(pair.confidence, pair.slm_correct),
        "reliability": reliability_bins(pair.confidence, pair.slm_correct),
    }


def at_threshold(pair: TracePair, threshold: float) -> dict:
    """The cascade at one fixed threshold: its accuracy, the LLM alone's, and the SLM answers it
    keeps (how many, how many right)."""
    keep = pair.confidence >= threshold
    return {"accuracy": float(np.where(keep, pair.slm_correct, pair.llm_correct).mean()),
            "llm_accuracy": float(pair.llm_correct.mean()), "kept": int(keep.sum()),
            "kept_right": int((keep & pair.slm_correct).sum()),
            "deferred_share": float((~keep).mean())}


def trace_summary(rows: list[dict]) -> dict:
    """One model's trace on its own: accuracy, format rate and calibration, overall and by level."""
    confidence = np.array([_confidence(row) for row in rows], dtype=float)
    correct = np.array([row["correct"] for row in rows], dtype=bool)
    summary = {
        "n": len(rows),
        "accuracy": float(correct.mean()),
        "format_rate": float(np.mean([row.get("format_ok", row["confidence"] is not None)
                                      for row in rows])),
        "mean_confidence": float(confidence.mean()),
        "ece": expected_calibration_error(confidence, correct),
        "auroc": auroc(confidence, correct),
        "brier": brier_score(confidence, correct),
    }
    levels = sorted({row["meta"]["level"] for row in rows if "level" in row.get("meta", {})})
    if levels:
        summary["accuracy_by_level"] = {
            str(level): float(np.mean([r["correct"] for r in rows
                                       if r.get("meta", {}).get("level") == level]))
            for level in levels
        }
    return summary
