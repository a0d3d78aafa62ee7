"""What the app's tabs share: model choices, bundled traces, GPU wrapping, errors."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from corea import embedded
from corea.models import Model, ModelError, get_model
from corea.signals import TOKEN_SIGNALS

REPO_ROOT = Path(__file__).resolve().parents[2]
# The trace pairs the Tune tab offers; COREA_TRACES_DIR points it at another folder.
BUNDLED_TRACES = Path(os.environ.get("COREA_TRACES_DIR") or REPO_ROOT / "benchmarks" / "traces")
ADAPTERS_DIR = embedded.SHIPPED_ADAPTERS_DIR
SLM_PREFIX, LLM_PREFIX = "smollm2-", "qwen-"

try:  # ZeroGPU on Spaces; a no-op decorator everywhere else
    import spaces

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - spaces is in requirements, but the app must not need it
    def gpu(function=None, **_):
        return function if function is not None else (lambda f: f)


def shipped_adapters() -> list[str]:
    """Calibrated SLM adapters that ship with the project, by the name models are loaded with."""
    return list(embedded.shipped_adapters())


def _choices(default: str, *extra: str) -> list[str]:
    """The embedded model where it is installed, else its Hub checkpoint (on a Space, whose GPU
    wants transformers checkpoints rather than llama.cpp files), then the extras."""
    model = embedded.resolve_embedded(default)
    return list(dict.fromkeys([model.name if model.installed() else model.hub_id, *extra]))


def slm_choices() -> list[str]:
    """The Ask tab's small models, the default (the shipped trained SLM) first; the untrained
    embedded one stays selectable."""
    choices = _choices(embedded.DEFAULT_SLM, *shipped_adapters())
    default = embedded.default_slm()
    return [default, *[choice for choice in choices if choice != default]]


def llm_choices() -> list[str]:
    """The large models: the embedded one, the same answering by program (corea.program), its
    Hub checkpoint, and the default SLM."""
    default = _choices(embedded.DEFAULT_LLM)[0]
    return _choices(embedded.DEFAULT_LLM, f"program:{default}",
                    embedded.resolve_embedded(embedded.DEFAULT_LLM).hub_id, *slm_choices()[:1])


# What the small model's threshold can be compared with, as the tabs name it (corea.signals).
SIGNAL_CHOICES = {"stated confidence": "verbalized",
                  "answer token probability": "answer_probability",
                  "first-token margin": "first_token_margin",
                  "stated confidence, mean over its digits": "verbalized_mean",
                  "program token probability": "program_probability"}


def serving_for_ui(slm: str) -> tuple[str, float]:
    """(signal label, threshold): how `slm` is served by default, as its adapter declares
    (corea.embedded.serving_defaults); the tabs start from it."""
    try:
        signal, threshold = embedded.serving_defaults((slm or "").strip())
    except ValueError:  # a broken corea.json is reported when the model loads
        signal, threshold = embedded.DEFAULT_SIGNAL, embedded.DEFAULT_THRESHOLD
    return next(label for label, value in SIGNAL_CHOICES.items() if value == signal), threshold


def served_as(slm: str):
    """The signal and threshold controls reset to `slm`'s defaults when another SLM is picked."""
    label, threshold = serving_for_ui(slm)
    return gr.update(value=label), gr.update(value=threshold)


def signal_for_ui(label: str) -> str:
    if label not in SIGNAL_CHOICES:
        raise gr.Error(f"choose a deferral signal: {', '.join(SIGNAL_CHOICES)}")
    return SIGNAL_CHOICES[label]


def load_for_ui(spec: str, endpoint_model: str = "", token: str = "", *,
                signal: str = "verbalized") -> Model:
    """A model for a visitor; failures become a message in the page, never a crash or a log of
    the token. A token signal needs the model's log-probabilities."""
    spec = (spec or "").strip()
    if spec.startswith(("http://", "https://")) and endpoint_model.strip() and "#" not in spec:
        spec = f"{spec}#{endpoint_model.strip()}"
    extra = {"logprobs": True} if signal in TOKEN_SIGNALS else {}
    try:
        return get_model(spec, token=token.strip() or None, **extra)
    except ModelError as error:
        raise gr.Error(str(error)) from None
    except Exception as error:  # a model that cannot be loaded must not take the app down
        raise gr.Error(f"cannot load model {spec!r}: {type(error).__name__}") from None


def bundled_trace_pairs() -> dict[str, tuple[Path, Path]]:
    """Label -> (SLM trace, LLM trace) for the default pair's committed trace tables.

    `smollm2-TASK.jsonl` pairs with `qwen-TASK.jsonl`; a variant of the SLM such as
    `smollm2-calibrated-TASK.jsonl` pairs with the same variant of the LLM where there is one
    (`smollm2-program-TASK.jsonl`, the SLM answering by program, with `qwen-program-TASK.jsonl`),
    else with the plain LLM table, labelled "TASK (calibrated)". Sampled runs
    (self-consistency material) are not offered.
    """
    pairs = {}
    for slm in sorted(BUNDLED_TRACES.glob(f"{SLM_PREFIX}*.jsonl")):
        name = slm.name.removeprefix(SLM_PREFIX).removesuffix(".jsonl")
        variant, _, task = name.partition("-")
        if variant.startswith("sample"):
            continue
        if task and _llm_table(task).is_file():  # a variant of the SLM on TASK
            llm = _llm_table(name) if _llm_table(name).is_file() else _llm_table(task)
            pairs[f"{task} ({variant})"] = (slm, llm)
        elif _llm_table(name).is_file():
            pairs[name] = (slm, _llm_table(name))
    return pairs


def _llm_table(stem: str) -> Path:
    return BUNDLED_TRACES / f"{LLM_PREFIX}{stem}.jsonl"
