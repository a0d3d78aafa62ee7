"""A LoRA adapter merged into a GGUF model, so a fine-tuned small model runs on llama.cpp.

The adapter was trained on transformers' copy of the GGUF weights. Merging writes a new GGUF: the
base file's metadata and tokenizer copied as they are, every tensor the adapter touches replaced by
`W + (alpha / r) * B @ A`, re-quantized to Q8_0 (a LoRA delta is far smaller than a 4-bit
quantization step, so writing it back at the base's Q4_1 would round most of it away), every other
tensor copied byte for byte. No weights go to the repository: the merged file is built once, on
first use, from the embedded base and the shipped adapter, and cached.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

MERGED_TYPE_NAME = "Q8_0"


def _permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's layout of a query/key projection: the rotary halves of each head interleaved,
    as its converter writes them (and as transformers undoes when it reads a GGUF)."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def lora_deltas(adapter_dir: Path) -> dict[str, np.ndarray]:
    """Each adapted module's weight change in transformers' layout, keyed by its weight name
    (`model.layers.0.self_attn.q_proj.weight`)."""
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{adapter_dir} is a {config.get('peft_type')} adapter; only LoRA merges")
    rank, alpha = config["r"], config["lora_alpha"]
    scale = alpha / (rank ** 0.5 if config.get("use_rslora") else rank)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    deltas = {}
    for key, lora_a in tensors.items():
        if ".lora_A." not in key:
            continue
        lora_b = tensors[key.replace(".lora_A.", ".lora_B.")]
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        deltas[f"{module}.weight"] = scale * (lora_b.astype(np.float32) @ lora_a.astype(np.float32))
    if not deltas:
        raise ValueError(f"{adapter_dir} holds no LoRA weights")
    return deltas


def merge_lora_into_gguf(base: Path, adapter_dir: Path, out: Path) -> Path:
    """Write `out`: the GGUF `base` with the LoRA adapter in `adapter_dir` merged in."""
    import gguf

    reader = gguf.GGUFReader(str(base))
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    arch_ids = {name: arch_id for arch_id, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in arch_ids:
        raise ValueError(f"{base}: unknown architecture {arch!r}")
    blocks = reader.get_field(f"{arch}.block_count").contents()
    n_head = reader.get_field(f"{arch}.attention.head_count").contents()
    kv_field = reader.get_field(f"{arch}.attention.head_count_kv")
    n_head_kv = kv_field.contents() if kv_field else n_head
    names = gguf.get_tensor_name_map(arch_ids[arch], blocks)

    merged = {}
    for hf_name, delta in lora_deltas(adapter_dir).items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"{adapter_dir}: no {arch} tensor matches {hf_name}")
        if arch in ("llama",) and hf_name.endswith("q_proj.weight"):
            delta = _permute_rows(delta, n_head)
        elif arch in ("llama",) and hf_name.endswith("k_proj.weight"):
            delta = _permute_rows(delta, n_head_kv)
        merged[gguf_name] = delta

    out.parent.mkdir(parents=True, exist_ok=True)
    # One partial file per process: two processes merging at once never write the same file.
    partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(str(partial), arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)

    target_type = gguf.GGMLQuantizationType[MERGED_TYPE_NAME]
    data = []
    for tensor in reader.tensors:
        if tensor.name in merged:
            weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            delta = merged.pop(tensor.name)
            if weight.shape != delta.shape:
                raise ValueError(f"{tensor.name}: adapter shape {delta.shape} does not fit the "
                                 f"base's {weight.shape}")
            raw = gguf.quants.quantize((weight + delta).astype(np.float32), target_type)
            writer.add_tensor_info(tensor.name, raw.shape, raw.dtype, raw.nbytes, target_type)
            data.append(raw)
        else:
            writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype,
                                   tensor.data.nbytes, tensor.tensor_type)
            data.append(tensor.data)
    if merged:
        raise ValueError(f"{adapter_dir}: tensors not found in {base}: {', '.join(sorted(merged))}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for array in data:
        writer.write_tensor_data(array, tensor_endianess=reader.endianess)
    writer.close()
    partial.replace(out)  # a cut-short write never leaves a file that looks finished
    return out
