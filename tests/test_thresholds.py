import math

import numpy as np
import pytest

from corea.metrics import join_traces
from corea.thresholds import (binomial_cdf, choose_threshold, guaranteed_threshold,
                              min_calibration_questions, random_and_oracle_curves,
                              threshold_for_goal)
from test_metrics import LLM, SLM

PAIR = join_traces(SLM, LLM)  # hand-computed points: t=0 (0.5, $1), t=0.6 (0.75, $3.5), t=0.9 (0.75, $8.5)


def test_max_drop_picks_the_cheapest_within_the_drop():
    assert choose_threshold(PAIR, "max_drop", 0.0)["threshold"] == 0.6
    assert choose_threshold(PAIR, "max_drop", 0.25)["threshold"] == 0.0


def test_budget_and_share_pick_the_most_accurate_within_the_limit():
    assert choose_threshold(PAIR, "budget", 3500)["threshold"] == 0.6  # $3.5/question = $3500/1k
    assert choose_threshold(PAIR, "budget", 3499)["threshold"] == 0.0
    assert choose_threshold(PAIR, "budget", 999) is None
    assert choose_threshold(PAIR, "llm_share", 0.25)["threshold"] == 0.6
    assert choose_threshold(PAIR, "llm_share", 0.1)["threshold"] == 0.0
    # above every confidence everything is deferred: share 1, cost $11
    assert choose_threshold(PAIR, "llm_share", 1.0)["accuracy"] == 0.75


def test_bad_goals():
    with pytest.raises(ValueError, match="unknown goal"):
        choose_threshold(PAIR, "speed", 1)
    with pytest.raises(ValueError, match="non-negative"):
        choose_threshold(PAIR, "budget", -1)


def test_binomial_cdf_matches_direct_sums():
    n, p = 12, 0.3
    direct = [sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
              for k in range(n + 1)]
    assert [binomial_cdf(k, n, p) for k in range(n + 1)] == pytest.approx(direct)
    assert binomial_cdf(0, 5000, 0.02) == pytest.approx(0.98 ** 5000)


def test_guarantee_is_more_cautious_than_the_empirical_choice():
    rng = np.random.default_rng(0)
    n = 2000
    confidence = rng.uniform(size=n)
    slm_correct = rng.uniform(size=n) < confidence  # calibrated by construction
    llm_correct = rng.uniform(size=n) < 0.9
    rows = lambda correct, cost, conf=None: [  # noqa: E731
        {"id": str(i), "correct": bool(c), "cost": cost,
         "confidence": None if conf is None else float(conf[i])} for i, c in enumerate(correct)]
    pair = join_traces(rows(slm_correct, 1.0, confidence), rows(llm_correct, 10.0))
    empirical = choose_threshold(pair, "max_drop", 0.05)
    certified = guaranteed_threshold(pair, 0.05, delta=0.05)
    assert certified is not None and certified["p_value"] <= 0.05
    assert certified["threshold"] >= empirical["threshold"]
    assert certified["lost"] / n < 0.05


def test_no_certificate_below_the_minimum_number_of_questions():
    assert min_calibration_questions(0.02, 0.1) == 114  # 0.98^114 < 0.1 <= 0.98^113
    assert 0.98 ** 114 < 0.1 <= 0.98 ** 113
    # A perfectly calibrated SLM that loses nothing: 113 questions certify nothing, 114 do.
    def pair_of(n):
        rows = [{"id": str(i), "correct": True, "cost": 1.0, "confidence": 0.9} for i in range(n)]
        return join_traces(rows, [{**r, "cost": 10.0, "confidence": None} for r in rows])
    assert guaranteed_threshold(pair_of(113), 0.02, delta=0.1) is None
    assert guaranteed_threshold(pair_of(114), 0.02, delta=0.1)["threshold"] == 0.9


def test_threshold_for_goal_chooses_or_certifies():
    assert threshold_for_goal(PAIR, "llm_share", 0.5) == choose_threshold(PAIR, "llm_share", 0.5)
    assert threshold_for_goal(PAIR, "max_drop", 0.3, 0.9) == guaranteed_threshold(PAIR, 0.3, 0.1)
    with pytest.raises(ValueError, match="not a budget"):
        threshold_for_goal(PAIR, "budget", 5.0, 0.9)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        threshold_for_goal(PAIR, "max_drop", 0.3, 1.0)


def test_random_and_oracle_reference_curves():
    curves = random_and_oracle_curves(PAIR, np.array([0.0, 0.25, 0.5, 1.0]))
    assert curves["random"] == pytest.approx([0.5, 0.5625, 0.625, 0.75])
    # gains (llm - slm): q1 0, q2 +1, q3 -1, q4 +1 -> best first: +1, +1, 0, -1
    assert curves["oracle"] == pytest.approx([0.5, 0.75, 1.0, 0.75])
