"""The strategy memory's sentence encoder on ONNX Runtime (corea.onnx_encoder): the same vectors as
sentence-transformers on PyTorch, exported once, and PyTorch kept where the export cannot match."""

import numpy as np
import pytest

from test_memory import needs_minilm

pytestmark = needs_minilm

QUESTIONS = ["Tom has 3 apples and buys 4 more. How many apples does he have?",
             "A train leaves at 3 pm and travels 120 km at 60 km/h. When does it arrive?",
             "", "word " * 400]  # empty, and longer than the encoder's 256 tokens


@pytest.fixture(scope="module")
def embedders(tmp_path_factory):
    import os

    from corea.memory import Embedder

    previous = os.environ.get("COREA_CACHE")
    os.environ["COREA_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # a fresh export
    try:
        yield Embedder(), Embedder(onnx=False)
    finally:
        if previous is None:
            os.environ.pop("COREA_CACHE")
        else:
            os.environ["COREA_CACHE"] = previous


def test_onnx_runtime_gives_the_pytorch_vectors(embedders):
    fast, reference = embedders
    assert fast.runtime == "onnxruntime" and reference.runtime == "torch"
    mine, theirs = fast.encode(QUESTIONS), reference.encode(QUESTIONS)
    assert mine.shape == theirs.shape == (len(QUESTIONS), 384) and mine.dtype == np.float32
    assert np.allclose(np.linalg.norm(mine, axis=1), 1, atol=1e-5)
    assert (mine * theirs).sum(axis=1).min() > 1 - 1e-5
    # One at a time (the retrieval path) and in a batch (padding) give the same vectors.
    single = np.concatenate([fast.encode([question]) for question in QUESTIONS])
    assert np.abs(single - mine).max() < 1e-4
    assert fast.encode([]).shape == (0, 384)


def test_a_pipeline_it_cannot_reproduce_stays_on_pytorch(embedders, tmp_path):
    from sentence_transformers.models import Pooling

    from corea.memory import minilm_dir
    from corea.onnx_encoder import onnx_encoder, supported

    _, reference = embedders
    model = reference._model
    assert supported(model)
    original = model[1]
    model._modules["1"] = Pooling(384, pooling_mode="cls")  # CLS pooling: not what it computes
    try:
        assert not supported(model)
        assert onnx_encoder(model, minilm_dir(), tmp_path) is None
        assert not list(tmp_path.glob("*.onnx"))  # refused before any export
    finally:
        model._modules["1"] = original


def test_an_export_that_disagrees_with_pytorch_is_not_used(embedders, tmp_path):
    """A corrupt or stale cached export fails the load-time check against PyTorch."""

    from corea.memory import minilm_dir
    from corea.onnx_encoder import onnx_encoder

    fast, reference = embedders
    assert onnx_encoder(reference._model, minilm_dir(), tmp_path) is not None
    exported = next(tmp_path.glob("*.onnx"))
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(exported))
    weight = max(graph.graph.initializer, key=lambda tensor: np.prod(tensor.dims))
    values = numpy_helper.to_array(weight).copy()
    values *= -1  # a different model under the same name
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(graph, str(exported))
    assert onnx_encoder(reference._model, minilm_dir(), tmp_path) is None


def test_the_latency_bench_times_the_encoder_against_pytorch_in_the_same_run(tmp_path):
    from corea.memory_bench import retrieval_latency

    result = retrieval_latency(200, tmp_path / "latency.db", queries=5)
    assert result["size"] == 200 and result["queries"] == 5
    assert result["encoder_runtime"] == "onnxruntime"
    assert result["embed_torch_median_ms"] > 0 and result["embed_median_ms"] > 0
    assert result["total_median_ms"] >= result["search_median_ms"]
