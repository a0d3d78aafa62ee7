import json
import math

import pytest

from corea.calibration import PlattMap
from corea.cascade import Cascade, CascadeConfig, Tier, TierSpec
from corea.costs import Price
from corea.models import Generation, GenerationConfig, TransformersModel

SHORT = GenerationConfig(max_new_tokens=5)


def cascade(tiny_model, tiny_model_b, threshold):
    return Cascade([Tier(tiny_model, threshold, Price(1.0, 1.0)),
                    Tier(tiny_model_b, None, Price(10.0, 10.0))], SHORT)


def test_a_format_failure_is_deferred_and_pays_both_tiers(tiny_model, tiny_model_b):
    # The tiny models cannot write the format, so their confidence reads as 0.
    result = cascade(tiny_model, tiny_model_b, 0.5).answer("What is 2 + 2?")
    assert [s.decision for s in result.steps] == ["deferred", "final"]
    assert result.answered_by == "tiny-b"
    first, second = result.steps
    assert result.cost == pytest.approx(first.cost + second.cost)
    assert second.cost == pytest.approx(
        10 * (second.generation.prompt_tokens + second.generation.completion_tokens) / 1e6)


def test_threshold_zero_keeps_every_answer(tiny_model, tiny_model_b):
    results = cascade(tiny_model, tiny_model_b, 0.0).answer_batch(["a?", "b?", "c?"])
    assert all([s.decision for s in r.steps] == ["kept"] for r in results)


def test_events_stream_each_tier(tiny_model, tiny_model_b):
    events = list(cascade(tiny_model, tiny_model_b, 0.5).events("What is 2 + 2?"))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "tier_start" and kinds[-1] == "done"
    assert [e["step"].tier for e in events if e["type"] == "step"] == [1, 2]
    done = events[-1]["result"]
    assert done.steps[-1].generation.completion_tokens > 0


def test_config_round_trip_and_validation(tmp_path):
    config = CascadeConfig((TierSpec("smollm2", 0.7), TierSpec("qwen", price=Price(0.2, 0.6))),
                           GenerationConfig(max_new_tokens=100))
    path = tmp_path / "cascade.json"
    config.save(path)
    assert CascadeConfig.load(path) == config
    assert json.loads(path.read_text())["tiers"][0] == {"model": "smollm2", "threshold": 0.7}
    with pytest.raises(ValueError, match="at least two tiers"):
        CascadeConfig((TierSpec("smollm2"),))
    with pytest.raises(ValueError, match="needs a threshold"):
        CascadeConfig((TierSpec("smollm2"), TierSpec("qwen")))
    with pytest.raises(ValueError, match="unknown generation option"):
        CascadeConfig.from_dict({"tiers": [{"model": "a", "threshold": 0.5}, {"model": "b"}],
                                 "generation": {"beams": 4}})


def test_a_signal_is_kept_in_the_config_and_checked(tmp_path):
    config = CascadeConfig((TierSpec("smollm2", 0.6, signal="answer_probability"),
                            TierSpec("qwen")))
    path = tmp_path / "cascade.json"
    config.save(path)
    assert CascadeConfig.load(path) == config
    assert json.loads(path.read_text())["tiers"][0]["signal"] == "answer_probability"
    with pytest.raises(ValueError, match="cannot defer on 'vote_share'"):
        CascadeConfig.from_dict({"tiers": [{"model": "a", "threshold": 0.5,
                                            "signal": "vote_share"}, {"model": "b"}]})


def test_a_token_signal_needs_a_model_with_log_probabilities(tiny_model, tiny_model_b):
    with pytest.raises(ValueError, match="load it with token log-probabilities"):
        Tier(tiny_model, 0.5, Price(1.0, 1.0), "answer_probability")


@pytest.fixture(scope="module")
def tiny_with_logprobs(tiny_model_dir):
    return TransformersModel(tiny_model_dir, name="tiny-logprobs", logprobs=True)


def test_a_tier_defers_on_its_signal_not_on_the_stated_confidence(tiny_with_logprobs,
                                                                 tiny_model_b):
    # The reply states 0.9, but its answer token was only 30% likely: the token signal defers it.
    text = "Answer: 7\nConfidence: 0.9"
    tokens = (("Answer:", -0.01, -5.0), (" 7", math.log(0.3), math.log(0.25)),
              ("\nConfidence: 0.9", -0.01, -5.0))
    generation = Generation(text, 10, 3, 0.1, token_logprobs=tokens)
    by_tokens = Cascade([Tier(tiny_with_logprobs, 0.5, Price(1.0, 1.0), "answer_probability"),
                         Tier(tiny_model_b, None, Price(10.0, 10.0))], SHORT)
    step = by_tokens.decide(0, generation)
    assert (step.signal, step.decision) == ("answer_probability", "deferred")
    assert step.confidence == pytest.approx(0.3)
    margin = Cascade([Tier(tiny_with_logprobs, 0.04, Price(1.0, 1.0), "first_token_margin"),
                      Tier(tiny_model_b, None, Price(10.0, 10.0))], SHORT).decide(0, generation)
    assert margin.confidence == pytest.approx(0.05) and margin.decision == "kept"
    stated = cascade(tiny_with_logprobs, tiny_model_b, 0.5).decide(0, generation)
    assert (stated.confidence, stated.decision) == (0.9, "kept")


def test_a_cascade_on_a_token_signal_runs_end_to_end(tiny_with_logprobs, tiny_model_b):
    result = Cascade([Tier(tiny_with_logprobs, 0.5, Price(1.0, 1.0), "answer_probability"),
                      Tier(tiny_model_b, None, Price(10.0, 10.0))], SHORT).answer("What is 2+2?")
    first = result.steps[0]
    assert first.generation.token_logprobs  # the model was asked for them and gave them
    # Gibberish from random weights has no "Answer:" line: nothing to score, so it is deferred.
    assert (first.confidence, first.decision) == (None, "deferred")


def test_the_cascade_reads_the_mapped_signal_of_a_model_that_declares_one(tiny_with_logprobs,
                                                                         tiny_model_b):
    text = "Answer: 7\nConfidence: 0.9"
    tokens = (("Answer:", -0.01, -5.0, ()), (" 7", math.log(0.3), math.log(0.25), ()),
              ("\nConfidence: 0.9", -0.01, -5.0, ()))
    generation = Generation(text, 10, 3, 0.1, token_logprobs=tokens)

    def decide(signal):
        tiers = [Tier(tiny_with_logprobs, 0.5, Price(1.0, 1.0), signal),
                 Tier(tiny_model_b, None, Price(10.0, 10.0))]
        return Cascade(tiers, SHORT).decide(0, generation)

    assert decide("answer_probability").confidence == pytest.approx(0.3)  # no map: as read
    platt = PlattMap("answer_probability", 2.0, 2.0)
    tiny_with_logprobs.confidence_map = platt
    try:
        step = decide("answer_probability")
        assert step.confidence == pytest.approx(platt(0.3)) and step.decision == "kept"
        assert decide("verbalized").confidence == 0.9  # a map of another signal leaves it be
    finally:
        tiny_with_logprobs.confidence_map = None
