"""A sentence-transformers encoder run by ONNX Runtime: the same vectors, about twice as fast.

Retrieving strategies costs one query embedding per question, and on a CPU that embedding is
nearly all of it: PyTorch's per-operator overhead dominates a 6-layer encoder on one short
sentence. The transformer part of the model is exported once to ONNX (kept in corea's cache next
to the converted models) and run by ONNX Runtime; tokenization, mean pooling and normalisation are
the sentence-transformers model's own. The export is checked against PyTorch on probe sentences
when it is made and whenever it is loaded; a model whose pipeline is not Transformer + mean
Pooling (+ Normalize), a missing `onnxruntime`, or a failed check leaves the PyTorch path in use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np

LOG = logging.getLogger("corea.memory")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PROBES = ("Tom has 3 apples and buys 4 more. How many apples does he have?",
          "Compute the total cost first, then divide by the number of people.", "x")
# Largest cosine distance from PyTorch's vectors that still counts as the same model.
TOLERANCE = 1e-4


def supported(model) -> bool:
    """A sentence-transformers model whose encoding this module reproduces exactly."""
    kinds = [type(module).__name__ for module in model]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        return False
    pooling = model[1]
    return getattr(pooling, "pooling_mode", None) in ("mean", None) and \
        getattr(pooling, "pooling_mode_mean_tokens", True)


def _export(model, path: Path) -> None:
    import torch

    transformer = model[0].auto_model.eval()
    names = [name for name in INPUTS if name in model.tokenizer.model_input_names]

    class LastHiddenState(torch.nn.Module):
        """Keyword inputs in a fixed order: the exporter passes positional ones."""

        def __init__(self):
            super().__init__()
            self.transformer = transformer

        def forward(self, *tensors):
            return self.transformer(**dict(zip(names, tensors))).last_hidden_state

    sample = model.tokenizer(["a sentence"], return_tensors="pt")
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it treats as constants
        torch.onnx.export(LastHiddenState(), tuple(sample[name] for name in names), str(partial),
                          input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    partial.replace(path)


class OnnxEncoder:
    """`encode(texts)` as SentenceTransformer.encode(..., normalize_embeddings=True) gives it."""

    def __init__(self, model, session):
        self._model, self._session = model, session
        self._names = [i.name for i in session.get_inputs()]

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        chunks = [self._encode(list(texts[start:start + batch_size]))
                  for start in range(0, len(texts), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        batch = self._model.tokenizer(texts, padding=True, truncation=True,
                                      max_length=self._model.max_seq_length, return_tensors="np")
        hidden = self._session.run(None, {name: batch[name].astype(np.int64)
                                          for name in self._names})[0]
        mask = batch["attention_mask"][..., None].astype(np.float32)
        vectors = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        # Normalised: the store compares by dot product.
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def onnx_encoder(model, folder: Path, cache: Path) -> OnnxEncoder | None:
    """The ONNX Runtime encoder of `model` (loaded from `folder`), exported into `cache` on first
    use; None where it cannot reproduce the PyTorch vectors."""
    try:
        import onnxruntime
    except ImportError:
        return None
    if not supported(model):
        return None
    weights = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin"))
    digest = hashlib.sha256("".join(f"{p.name}:{p.stat().st_size}" for p in weights).encode())
    path = cache / f"{folder.name}-{digest.hexdigest()[:12]}.onnx"
    try:
        if not path.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            _export(model, path)
        options = onnxruntime.SessionOptions()
        # One query at a time is the retrieval workload: a second thread only adds hand-offs.
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", 1))
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
        encoder = OnnxEncoder(model, session)
        expected = model.encode(list(PROBES), convert_to_numpy=True, normalize_embeddings=True,
                                show_progress_bar=False)
        agreement = float((encoder.encode(list(PROBES)) * expected).sum(axis=1).min())
        if agreement < 1 - TOLERANCE:
            LOG.warning("ONNX export of %s disagrees with PyTorch (cosine %.6f): using PyTorch",
                        folder.name, agreement)
            return None
        return encoder
    except Exception as error:  # an exporter or runtime this code does not know: PyTorch works
        LOG.warning("ONNX Runtime encoder for %s unavailable (%s): using PyTorch", folder.name,
                    error)
        return None
