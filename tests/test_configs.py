"""The example cascade configs in configs/: each loads, and builds the cascade it describes."""

import json
from pathlib import Path

import pytest

from conftest import embedded_installed
from corea.cascade import Cascade, CascadeConfig
from corea.models import EndpointModel, LlamaCppModel, load_model
from corea.serve import default_config

CONFIGS = Path(__file__).parent.parent / "configs"
EXAMPLES = sorted(CONFIGS.glob("*.json"))


def test_the_examples_ship():
    names = {path.name for path in EXAMPLES}
    assert {"default.json", "three-tiers.json", "openai-endpoint.json"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_is_a_valid_cascade_config(path):
    config = CascadeConfig.load(path)
    assert len(config.tiers) >= 2 and config.tiers[-1].threshold is None
    # A cascade stops each reply at its Confidence line unless its config says otherwise.
    assert config.generation.stop_when_done
    # Written back and read again, it is the same cascade (what `tune --export` relies on).
    assert CascadeConfig.from_dict(config.to_dict()) == config
    # No secret in a shipped config: endpoint tokens come from the environment.
    text = path.read_text().lower()
    assert "api_key" not in text and "hf_" not in text.replace("hf_token", "")


def test_the_default_example_is_what_serve_runs_without_a_config():
    assert CascadeConfig.load(CONFIGS / "default.json") == default_config()


def test_three_tiers_with_a_token_budget_on_the_first():
    config = CascadeConfig.load(CONFIGS / "three-tiers.json")
    assert len(config.tiers) == 3
    assert config.tiers[0].max_new_tokens == 160 and config.tiers[1].max_new_tokens is None
    assert config.tiers[0].threshold < config.tiers[1].threshold
    assert config.tiers[2].model.startswith("https://")


@pytest.mark.skipif(not embedded_installed("smollm2"), reason="embedded SLM not installed")
def test_the_endpoint_example_builds_with_its_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("COREA_API_TOKEN", "secret-token-from-env")
    config = CascadeConfig.load(CONFIGS / "openai-endpoint.json")
    cascade = Cascade.from_config(config, loader=lambda spec, **kw: load_model(spec, **kw))
    slm, llm = (tier.model for tier in cascade.tiers)
    assert isinstance(slm, LlamaCppModel) and isinstance(llm, EndpointModel)
    assert llm.base_url == "http://127.0.0.1:8001/v1" and llm.model_id == "Qwen/Qwen2.5-7B-Instruct"
    assert llm._client.token == "secret-token-from-env"
    assert "secret" not in repr(llm) and "secret" not in llm.name
    assert cascade.tiers[1].price.input_per_million == pytest.approx(0.762)
    # The first tier's budget caps its replies; the last tier keeps the cascade's.
    assert cascade.tier_generation(0).max_new_tokens == 160
    assert cascade.tier_generation(1).max_new_tokens == config.generation.max_new_tokens


def test_a_tier_budget_must_be_a_positive_whole_number():
    data = json.loads((CONFIGS / "default.json").read_text())
    data["tiers"][0]["max_new_tokens"] = 0
    with pytest.raises(ValueError, match="max_new_tokens"):
        CascadeConfig.from_dict(data)
