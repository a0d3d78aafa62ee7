"""Platt maps: a trained SLM's confidence signal mapped to the probability that its answer is right.

A signal can rank answers well and still not be a probability: the mean over a small model's
confidence digits (corea.signals.verbalized_mean) sorts right from wrong answers but sits between
0.45 and 0.75. A Platt map, p = sigmoid(slope * logit(v) + intercept), fitted on the model's
answers to training questions (never the questions it is measured on), makes it one: a threshold of
0.8 then keeps answers that are right about 80% of the time on questions like those.

An adapter declares its map in its corea.json (`"calibration": {"signal": ..., "slope": ...,
"intercept": ..., "fitted_on": ...}`); wherever that model's signal is read, live in a cascade or
from its trace tables, it is read through the map. `python -m corea calibrate` fits one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

EPSILON = 1e-4  # values are clipped to [EPSILON, 1 - EPSILON] before the logit


@dataclass(frozen=True)
class PlattMap:
    signal: str
    slope: float
    intercept: float
    fitted_on: str = ""

    def __call__(self, value: float | None) -> float | None:
        if value is None:
            return None
        clipped = min(max(float(value), EPSILON), 1.0 - EPSILON)
        z = self.slope * math.log(clipped / (1.0 - clipped)) + self.intercept
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "calibration") -> "PlattMap":
        from corea.signals import check_runtime_signal

        if not isinstance(data, dict):
            raise ValueError(f"{where}: must be an object with signal, slope and intercept")
        unknown = set(data) - {"signal", "slope", "intercept", "fitted_on"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        try:
            signal = check_runtime_signal(data["signal"])
            slope, intercept = float(data["slope"]), float(data["intercept"])
        except KeyError as missing:
            raise ValueError(f"{where}: missing {missing}") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None
        if not (math.isfinite(slope) and math.isfinite(intercept)) or slope <= 0:
            raise ValueError(f"{where}: slope must be a positive number (a map that keeps the "
                             "order of answers) and intercept a finite one")
        return cls(signal, slope, intercept, str(data.get("fitted_on", "")))


def fit_platt(values, correct, signal: str, fitted_on: str = "") -> PlattMap:
    """The maximum-likelihood map of `values` (the signal on training questions) to whether each
    answer was right. Needs right and wrong answers both."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    values = np.clip(np.asarray([0.0 if v is None else v for v in values], dtype=float),
                     EPSILON, 1.0 - EPSILON)
    correct = np.asarray(correct, dtype=bool)
    if len(values) != len(correct) or correct.all() or not correct.any():
        raise ValueError("a Platt map needs answers that are right and answers that are wrong")
    logits = np.log(values / (1.0 - values))[:, None]
    model = LogisticRegression(C=np.inf).fit(logits, correct)  # unpenalised: plain Platt
    slope, intercept = float(model.coef_[0][0]), float(model.intercept_[0])
    if slope <= 0:
        raise ValueError(f"{signal} does not rise with correctness on these answers (fitted slope "
                         f"{slope:.3f}): no map would make it a probability")
    return PlattMap(signal, slope, intercept, fitted_on)


def adapter_map(adapter_dir: Path) -> PlattMap | None:
    """The map an adapter declares in its corea.json, if any."""
    from corea.embedded import adapter_serving

    data = adapter_serving(adapter_dir).get("calibration")
    return PlattMap.from_dict(data, f"{adapter_dir}/corea.json: calibration") if data else None


def spec_map(spec: str) -> PlattMap | None:
    """The map of a model as corea is told it (an adapter folder, or a shipped adapter's name),
    for tables whose model name ("base+adapter") names no shipped adapter."""
    from corea.embedded import shipped_adapters

    folder = Path(spec) if (Path(spec) / "adapter_config.json").is_file() \
        else shipped_adapters().get(spec)
    return adapter_map(folder) if folder is not None else None


def model_map(model_name: str) -> PlattMap | None:
    """The map of a model named in a trace table ("base+adapter"), when it is a shipped adapter
    that declares one."""
    from corea.embedded import shipped_adapters

    _, _, adapter = (model_name or "").partition("+")
    folder = shipped_adapters().get(adapter) if adapter else None
    return adapter_map(folder) if folder is not None else None
