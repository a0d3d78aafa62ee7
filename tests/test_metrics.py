"""The sweep and scores checked against numbers computed by hand."""

import math

import pytest

from corea.metrics import (area_under_hull, auroc, brier_score, evaluate_threshold,
                           expected_calibration_error, join_traces, pareto_mask, summarize)
from corea.traces import TraceError


def row(qid, correct, cost, confidence=None, format_ok=True):
    return {"id": qid, "correct": correct, "cost": cost, "confidence": confidence,
            "format_ok": format_ok}


# Four questions. SLM: confidences 0.9 (right), 0.6 (wrong), 0.6 (right), none (wrong, format
# failure -> 0). LLM: right on q1, q2, q4; wrong on q3. SLM costs 1 per question, LLM 10.
SLM = [row("q1", True, 1.0, 0.9), row("q2", False, 1.0, 0.6), row("q3", True, 1.0, 0.6),
       row("q4", False, 1.0, None, format_ok=False)]
LLM = [row("q1", True, 10.0), row("q2", True, 10.0), row("q3", False, 10.0), row("q4", True, 10.0)]


def test_sweep_matches_hand_computation():
    report = summarize(join_traces(SLM, LLM))
    assert report["llm_only"] == {"accuracy": 0.75, "cost": 10.0, "relative_cost": 1.0}
    assert report["slm_only"]["accuracy"] == 0.5 and report["slm_only"]["relative_cost"] == 0.1
    points = {p["threshold"]: p for p in report["points"]}
    above_all = math.nextafter(0.9, math.inf)
    assert sorted(points) == [0.0, 0.6, 0.9, above_all]
    # t=0: every SLM answer kept: q1 right, q2 wrong, q3 right, q4 wrong -> 2/4; cost 1 each.
    assert points[0.0]["accuracy"] == 0.5 and points[0.0]["cost"] == 1.0
    assert points[0.0]["llm_share"] == 0.0
    # t=0.6: q4 deferred (LLM right) -> 3/4; cost (4*1 + 10)/4 = 3.5.
    assert points[0.6]["accuracy"] == 0.75 and points[0.6]["cost"] == 3.5
    assert points[0.6]["relative_cost"] == 0.35 and points[0.6]["llm_share"] == 0.25
    # t=0.9: q2, q3, q4 deferred -> q1 SLM right, LLM right/wrong/right -> 3/4; cost (4+30)/4.
    assert points[0.9]["accuracy"] == 0.75 and points[0.9]["cost"] == 8.5
    # Above every confidence all questions are deferred: the LLM's accuracy, both costs.
    assert points[above_all]["accuracy"] == 0.75 and points[above_all]["cost"] == 11.0
    assert points[above_all]["llm_share"] == 1.0
    assert [points[t]["on_frontier"] for t in (0.0, 0.6, 0.9, above_all)] == [True, True, False,
                                                                            False]
    best = report["best_within_2pt"]
    assert best["threshold"] == 0.6 and best["saving"] == pytest.approx(0.65)


def test_evaluate_threshold_between_points_and_above_all():
    pair = join_traces(SLM, LLM)
    assert evaluate_threshold(pair, 0.7)["accuracy"] == 0.75  # same as t=0.9: q1 kept only
    everything = evaluate_threshold(pair, 1.01)
    assert everything["llm_share"] == 1.0 and everything["cost"] == 11.0


def test_calibration_scores_by_hand():
    confidence, correct = [0.9, 0.6, 0.6, 0.0], [True, False, True, False]
    # bins: 0.9 -> bin 9 (acc 1, |0.9-1|=0.1); 0.6 x2 -> bin 6 (acc .5, |0.6-0.5|*2=0.2);
    # 0.0 -> bin 0 (acc 0, 0). ECE = (0.1 + 0.2 + 0) / 4 = 0.075
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.075)
    # Brier: (0.1^2 + 0.6^2 + 0.4^2 + 0) / 4 = (0.01 + 0.36 + 0.16) / 4 = 0.1325
    assert brier_score(confidence, correct) == pytest.approx(0.1325)
    # AUROC: pairs (right, wrong): (0.9,0.6) 1, (0.9,0.0) 1, (0.6,0.6) 0.5, (0.6,0.0) 1 -> 3.5/4
    assert auroc(confidence, correct) == pytest.approx(0.875)
    assert auroc([0.2, 0.9], [True, True]) is None


def test_confidence_of_one_is_in_the_last_bin():
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0


def test_pareto_mask_and_hull():
    assert pareto_mask([1, 2, 3, 2], [0.5, 0.7, 0.6, 0.7]).tolist() == [True, True, False, False]
    # Two points (0, 0.5) and (1, 1.0): the hull is their chord; mean height 0.75.
    assert area_under_hull([0.0, 1.0], [0.5, 1.0]) == pytest.approx(0.75)
    # A point under the chord does not count; one above it does.
    assert area_under_hull([0.0, 0.5, 1.0], [0.5, 0.6, 1.0]) == pytest.approx(0.75)
    assert area_under_hull([0.0, 0.5, 1.0], [0.5, 1.0, 1.0]) == pytest.approx(0.875)


def test_aiq_over_a_fixed_budget_charges_costlier_curves():
    # Over budgets [0, 1]: nothing is affordable below 0.5, then the chord from 0.2 to 0.4.
    assert area_under_hull([0.5, 1.0], [0.2, 0.4], budget=1.0) == pytest.approx(0.15)
    # The same accuracies bought cheaper score higher; past the budget nothing counts.
    assert area_under_hull([0.2, 1.0], [0.2, 0.4], budget=1.0) == pytest.approx(0.24)
    assert area_under_hull([0.2, 2.0], [0.2, 0.4], budget=1.0) == pytest.approx(
        (0.2 + (0.2 + 0.8 / 1.8 * 0.2)) / 2 * 0.8)
    assert area_under_hull([2.0], [0.9], budget=1.0) == 0.0


def test_tables_that_share_no_ids():
    with pytest.raises(TraceError, match="share no question ids"):
        join_traces(SLM, [row("other", True, 1.0)])


def test_partial_overlap_is_reported():
    pair = join_traces(SLM, LLM[:3])
    assert len(pair) == 3 and pair.dropped_slm == 1 and pair.dropped_llm == 0


def test_the_cascade_at_a_fixed_threshold():
    from corea.metrics import at_threshold

    # t=0.6 keeps q1 (right), q2 (wrong), q3 (right); q4 (no confidence) goes to the LLM (right).
    fixed = at_threshold(join_traces(SLM, LLM), 0.6)
    assert fixed == {"accuracy": 0.75, "llm_accuracy": 0.75, "kept": 3, "kept_right": 2,
                     "deferred_share": 0.25}
    assert at_threshold(join_traces(SLM, LLM), 0.95)["accuracy"] == 0.75  # the LLM alone
