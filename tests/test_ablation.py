"""The training ablation's held-out saving: chosen on one seeded half, applied to the other."""

import numpy as np

from corea.ablation import held_out_saving, seeded_halves
from corea.metrics import TracePair


def _pair(n, slm_right, confidence):
    return TracePair(np.array([f"q{i}" for i in range(n)]), np.asarray(confidence, float),
                     np.asarray(slm_right, bool), np.full(n, 0.1), np.ones(n, bool),
                     np.full(n, 1.0))


def test_halves_are_disjoint_seeded_and_cover_every_question():
    pair = _pair(11, [True] * 11, [0.5] * 11)
    first, second = seeded_halves(pair)
    assert len(first) == 5 and len(second) == 6
    assert not set(first.ids) & set(second.ids)
    assert list(seeded_halves(pair)[0].ids) == list(first.ids)


def test_a_signal_that_knows_the_right_answers_saves_on_the_other_half():
    right = np.arange(200) % 2 == 0  # the SLM is right on half; the LLM on all
    saving = held_out_saving(_pair(200, right, np.where(right, 0.9, 0.1)))
    # keeps exactly its right answers: saves the LLM call on them, pays 0.1 everywhere
    test_right = seeded_halves(_pair(200, right, right))[1].slm_correct.mean()
    assert saving["loss"] == 0.0 and saving["n_test"] == 100
    assert abs(saving["saving"] - (1 - (0.1 + (1 - test_right)))) < 1e-9
    # a signal that says nothing keeps nothing within 2 points: every question is deferred
    blind = held_out_saving(_pair(200, right, np.full(200, 0.5)))
    assert blind["llm_share"] == 1.0 and blind["saving"] < 0
