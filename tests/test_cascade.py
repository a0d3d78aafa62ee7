import json

import pytest

from corea.cascade import Cascade, CascadeConfig, Tier, TierSpec
from corea.costs import Price
from corea.models import GenerationConfig

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
