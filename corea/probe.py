"""The hidden-state probe: a deferral signal read from inside the small model.

A logistic regression on the SLM's last-layer hidden state at the end of its answer line (the
stated confidence left out, so the probe judges the reasoning and the answer, not the number the
model chose to say), fitted on trace tables of *training* questions with their correctness as the
label. It scores a reply with one forward pass over the prompt and the reply, no generation.

    python -m corea probe fit --model smollm2 --adapter DIR --trace train.jsonl --out probe.json
    python -m corea probe score --model smollm2 --adapter DIR --probe probe.json --trace test.jsonl
    python -m corea sweep --slm test.jsonl --llm llm.jsonl --signal probe

The fitted probe is a small JSON file (standardization and weights), safe to share and load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corea.protocol import build_messages, confidence_span, parse_reply
from corea.tasks import HINTS, builtin_checker

PROBE_COLUMN = "probe"


def judged_text(output: str) -> str:
    """The reply up to its stated confidence (exclusive): what the probe judges."""
    span = confidence_span(output) if parse_reply(output).confidence is not None else None
    if span is None:
        return output.rstrip()
    return output[:span[0]].rstrip().removesuffix("Confidence:").rstrip()


def hidden_features(model, rows: list[dict], *, few_shot: bool, batch_size: int = 8,
                    progress: bool = True) -> np.ndarray:
    """The last-layer hidden state at each reply's last token (a transformers model)."""
    import torch
    from tqdm.auto import tqdm

    tokenizer, network = model.tokenizer, model.model
    texts = []
    for row in rows:
        hint = HINTS.get(builtin_checker(row["task"]) or "numeric")
        messages = build_messages(row["question"], few_shot=few_shot, hint=hint)
        messages.append({"role": "assistant", "content": judged_text(row["output"])})
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False,
                                                   continue_final_message=True))
    features = []
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # the last position is every row's last token
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="probe features",
                          disable=not progress):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                output = network(**batch, output_hidden_states=True)
            features.append(output.hidden_states[-1][:, -1, :].float().cpu().numpy())
    finally:
        tokenizer.padding_side = padding_side
    return np.concatenate(features) if features else np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class Probe:
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    meta: dict

    def score(self, features: np.ndarray) -> np.ndarray:
        """Probability that each reply is right."""
        logits = ((features - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-logits))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({
            "mean": self.mean.tolist(), "scale": self.scale.tolist(),
            "weights": self.weights.tolist(), "bias": self.bias, "meta": self.meta}) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Probe":
        try:
            data = json.loads(Path(path).read_text())
            return cls(np.asarray(data["mean"]), np.asarray(data["scale"]),
                       np.asarray(data["weights"]), float(data["bias"]), data.get("meta", {}))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a probe file written by `corea probe fit` "
                             f"({error})") from None


def fit_probe(features: np.ndarray, correct: list[bool], *, regularization: float = 1.0,
              meta: dict | None = None) -> Probe:
    """A standardized L2 logistic regression (scikit-learn) of correctness on the features."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(correct, dtype=int)
    if len(set(labels.tolist())) < 2:
        raise ValueError("the probe needs both right and wrong replies to learn from; these "
                         f"{len(labels)} are all {'right' if labels.any() else 'wrong'}")
    mean = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-6
    classifier = LogisticRegression(C=regularization, max_iter=2000)
    classifier.fit((features - mean) / scale, labels)
    return Probe(mean, scale, classifier.coef_[0], float(classifier.intercept_[0]),
                 {"rows": int(len(labels)), "right": int(labels.sum()), **(meta or {})})


def with_probe_column(rows: list[dict], scores: np.ndarray) -> list[dict]:
    return [{**row, PROBE_COLUMN: round(float(value), 6)} for row, value in zip(rows, scores)]


def _write_rows(path: Path, rows: list[dict]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
    partial.replace(path)


def fit_from_traces(model, traces: list[Path], out: Path, *, few_shot: bool,
                    progress: bool = True) -> Probe:
    """Fit a probe on trace tables of training questions and save it to `out`."""
    from corea.traces import read_trace

    rows = [row for path in traces for row in read_trace(path)]
    if not rows:
        raise ValueError("the training traces have no rows")
    held_out = [row for row in rows if row.get("split") not in (None, "train", "all")]
    if held_out:
        raise ValueError(f"{len(held_out)} rows come from the {held_out[0]['split']!r} split: fit "
                         "the probe on training questions only, so the bench stays held out")
    features = hidden_features(model, rows, few_shot=few_shot, progress=progress)
    probe = fit_probe(features, [bool(row["correct"]) for row in rows],
                      meta={"model": model.name, "few_shot": few_shot,
                            "traces": [str(path) for path in traces]})
    probe.save(out)
    return probe


def score_trace(model, probe: Probe, trace: Path, *, progress: bool = True) -> list[dict]:
    """Add the probe's score to every row of a trace table, in place."""
    from corea.traces import read_trace

    rows = read_trace(trace)
    few_shot = bool(probe.meta.get("few_shot", True))
    scored = with_probe_column(rows, probe.score(
        hidden_features(model, rows, few_shot=few_shot, progress=progress)))
    _write_rows(Path(trace), scored)
    return scored
