"""Platt maps of a trained model's confidence signal (corea.calibration): fitted on training
questions, declared in the adapter's corea.json, read through live and from trace tables."""

import json
import math

import numpy as np
import pytest

from corea import embedded
from corea.calibration import PlattMap, adapter_map, fit_platt, model_map
from corea.metrics import expected_calibration_error
from corea.signals import with_signal
from test_cli import corea, write_trace


def test_the_fit_recovers_the_map_that_made_the_answers():
    rng = np.random.default_rng(0)
    values = rng.uniform(0.3, 0.8, 20000)
    truth = PlattMap("verbalized_mean", 4.0, -0.7)
    correct = rng.random(20000) < np.array([truth(v) for v in values])
    fitted = fit_platt(values, correct, "verbalized_mean")
    assert fitted.slope == pytest.approx(4.0, abs=0.25)
    assert fitted.intercept == pytest.approx(-0.7, abs=0.1)
    # Squeezed values (ECE far off) come out calibrated.
    assert expected_calibration_error(values, correct) > 0.1
    assert expected_calibration_error([fitted(v) for v in values], correct) < 0.02


def test_the_map_keeps_the_order_and_refuses_what_cannot_be_one():
    platt = PlattMap("verbalized_mean", 5.0, -0.5)
    assert platt(None) is None
    assert 0.0 < platt(0.0) < platt(0.4) < platt(0.6) < platt(0.9) <= platt(1.0) <= 1.0
    assert platt(0.5) == pytest.approx(1 / (1 + math.exp(0.5)))
    with pytest.raises(ValueError, match="right and answers that are wrong"):
        fit_platt([0.2, 0.9], [True, True], "verbalized")
    with pytest.raises(ValueError, match="does not rise with correctness"):
        fit_platt([0.2, 0.3, 0.8, 0.9], [True, True, False, False], "verbalized")
    for bad, message in (({"signal": "verbalized", "slope": -1, "intercept": 0}, "positive"),
                         ({"signal": "vote_share", "slope": 1, "intercept": 0}, "cannot defer"),
                         ({"signal": "verbalized", "slope": 1}, "missing 'intercept'"),
                         ({"signal": "verbalized", "slope": 1, "intercept": 0, "bias": 2},
                          "unknown keys bias")):
        with pytest.raises(ValueError, match=message):
            PlattMap.from_dict(bad)


@pytest.fixture()
def shipped(tmp_path, monkeypatch):
    """A shipped adapter `mine` whose corea.json maps verbalized_mean."""
    adapter = tmp_path / "mine"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "corea.json").write_text(json.dumps({"few_shot": False, "calibration": {
        "signal": "verbalized_mean", "slope": 3.0, "intercept": 0.5, "fitted_on": "train"}}))
    monkeypatch.setattr(embedded, "SHIPPED_ADAPTERS_DIR", tmp_path)
    return adapter


def test_a_shipped_models_tables_are_read_through_its_map(shipped):
    platt = adapter_map(shipped)
    assert platt == PlattMap("verbalized_mean", 3.0, 0.5, "train")
    assert model_map("smollm2-135m+mine") == platt and model_map("smollm2-135m") is None
    rows = [{"id": "a", "model": "smollm2-135m+mine", "confidence": 0.9, "verbalized_mean": 0.6,
             "correct": True, "format_ok": True},
            {"id": "b", "model": "smollm2-135m", "confidence": 0.9, "verbalized_mean": 0.6,
             "correct": True, "format_ok": True}]
    mapped = [row["confidence"] for row in with_signal(rows, "verbalized_mean")]
    assert mapped == [pytest.approx(platt(0.6)), 0.6]  # only the model that declares it
    assert [row["confidence"] for row in with_signal(rows, "verbalized_mean", mapped=False)] \
        == [0.6, 0.6]
    assert [row["confidence"] for row in with_signal(rows, "verbalized")] == [0.9, 0.9]


def _rows(split, model, n=60):
    rng = np.random.default_rng(1)
    values = rng.uniform(0.4, 0.8, n)
    return [{"id": f"q{i}", "split": split, "correct": bool(rng.random() < v), "confidence": 0.9,
             "verbalized_mean": float(v), "cost": 1.0, "format_ok": True}
            for i, v in enumerate(values)]


def test_calibrate_fits_on_training_answers_of_the_adapter_and_declares_the_map(tmp_path):
    adapter = tmp_path / "mine"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "corea.json").write_text(json.dumps({"few_shot": False}))  # serves on the default
    train = write_trace(tmp_path / "train.jsonl", _rows("train", "m"), "smollm2-135m+mine")
    args = ["calibrate", "--adapter", str(adapter), "--signal", "verbalized_mean"]
    # Test questions, or another model's answers, are refused and nothing is written.
    test = write_trace(tmp_path / "test.jsonl", _rows("test", "m"), "smollm2-135m+mine")
    refused = corea(*args, "--trace", str(test))
    assert refused.returncode == 2 and "60 rows are test questions" in refused.stderr
    other = write_trace(tmp_path / "other.jsonl", _rows("train", "m"), "smollm2-135m")
    refused = corea(*args, "--trace", str(other))
    assert refused.returncode == 2 and "not of mine" in refused.stderr
    dry = corea(*args, "--trace", str(train), "--dry-run")
    assert dry.returncode == 0 and "ECE there" in dry.stdout
    assert "calibration" not in json.loads((adapter / "corea.json").read_text())
    done = corea(*args, "--trace", str(train))
    assert done.returncode == 0, done.stderr
    serving = json.loads((adapter / "corea.json").read_text())
    # The fitted signal becomes the one the cascade defers on.
    assert serving["few_shot"] is False and serving["signal"] == "verbalized_mean"
    platt = PlattMap.from_dict(serving["calibration"])
    assert platt.signal == "verbalized_mean" and platt.slope > 0
    assert "60 t train questions (train.jsonl)" == platt.fitted_on
    # A table of several tasks names them all.
    mixed = write_trace(tmp_path / "mixed.jsonl", [{**row, "task": "u"} if i % 2 else row
                                                   for i, row in enumerate(_rows("train", "m"))],
                        "smollm2-135m+mine")
    done = corea(*args, "--trace", str(mixed), "--dry-run")
    assert done.returncode == 0 and "on 60 t + u train questions (mixed.jsonl)" in done.stdout
