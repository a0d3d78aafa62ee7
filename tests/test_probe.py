"""The hidden-state probe signal, on a tiny model built from a config."""

import json

import numpy as np
import pytest

from corea.metrics import auroc
from corea.probe import Probe, fit_from_traces, fit_probe, hidden_features, judged_text, score_trace
from corea.signals import with_signal


def _row(i, split="train", correct=True, output="2 + 3 = 5.\nAnswer: 5\nConfidence: 0.9"):
    return {"id": f"q{i}", "task": "arith-1", "split": split, "question": f"What is {i} + 3?",
            "gold": "5", "model": "tiny", "output": output, "answer": "5", "confidence": 0.9,
            "format_ok": True, "correct": correct, "prompt_tokens": 10, "completion_tokens": 5,
            "cost": 0.001, "latency_s": 0.1}


def test_the_probe_judges_the_reply_without_its_stated_confidence():
    assert judged_text("2 + 3 = 5.\nAnswer: 5\nConfidence: 0.9") == "2 + 3 = 5.\nAnswer: 5"
    assert judged_text("2 + 3 = 5.\nAnswer: 5") == "2 + 3 = 5.\nAnswer: 5"


def test_hidden_features_are_one_vector_per_reply_whatever_the_batch(tiny_model):
    rows = [_row(i, output="x" * (i + 1) + "\nAnswer: 5") for i in range(5)]
    alone = hidden_features(tiny_model, rows, few_shot=False, batch_size=1, progress=False)
    batched = hidden_features(tiny_model, rows, few_shot=False, batch_size=4, progress=False)
    assert alone.shape == (5, tiny_model.model.config.hidden_size)
    # left padding: the last position is each reply's own last token in a batch too
    np.testing.assert_allclose(alone, batched, atol=1e-4)
    assert not np.allclose(alone[0], alone[1])


def test_a_fitted_probe_ranks_what_it_learned_and_survives_a_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    correct = rng.uniform(size=400) < 0.5
    features = rng.normal(size=(400, 16))
    features[:, 3] += np.where(correct, 1.5, -1.5)  # one informative direction
    probe = fit_probe(features[:300], correct[:300])
    held_out = probe.score(features[300:])
    assert auroc(held_out, correct[300:]) > 0.85
    probe.save(tmp_path / "probe.json")
    again = Probe.load(tmp_path / "probe.json")
    np.testing.assert_allclose(again.score(features[300:]), held_out)
    assert again.meta["rows"] == 300


def test_a_probe_needs_right_and_wrong_replies():
    with pytest.raises(ValueError, match="both right and wrong"):
        fit_probe(np.zeros((4, 3)), [True] * 4)


def test_a_broken_probe_file_is_named(tmp_path):
    path = tmp_path / "probe.json"
    path.write_text("{\"mean\": [1]}")
    with pytest.raises(ValueError, match="probe.json is not a probe file"):
        Probe.load(path)


def test_fit_refuses_held_out_rows_and_score_adds_the_column(tiny_model, tmp_path):
    train = tmp_path / "train.jsonl"
    rows = [_row(i, correct=i % 2 == 0, output=("right " if i % 2 == 0 else "wrong ") * 3
                 + "\nAnswer: 5") for i in range(12)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    probe = fit_from_traces(tiny_model, [train], tmp_path / "probe.json", few_shot=False,
                            progress=False)
    assert probe.meta["rows"] == 12 and probe.meta["right"] == 6
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(_row(i, split="test")) + "\n" for i in range(3)))
    with pytest.raises(ValueError, match="training questions only"):
        fit_from_traces(tiny_model, [test], tmp_path / "no.json", few_shot=False, progress=False)
    scored = score_trace(tiny_model, probe, test, progress=False)
    assert all(0.0 <= row["probe"] <= 1.0 for row in scored)
    on_disk = [json.loads(line) for line in test.read_text().splitlines()]
    assert [row["probe"] for row in on_disk] == [row["probe"] for row in scored]
    swept = with_signal(on_disk, "probe")
    assert [row["confidence"] for row in swept] == [row["probe"] for row in scored]


def test_sweeping_on_the_probe_without_its_column_says_how_to_get_it():
    with pytest.raises(ValueError, match="corea probe score"):
        with_signal([_row(0)], "probe")
