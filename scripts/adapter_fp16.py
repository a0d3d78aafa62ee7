"""Copy a trained adapter folder with its weights stored in fp16 (half the size to ship).

    python scripts/adapter_fp16.py runs/program-sft-made-up/adapter adapters/smollm2-135m-program

Only the adapter's own files are copied (its config, weights, corea.json and model card); the
tokenizer and trainer files of a run folder stay behind. fp16 changes a model's replies a little,
so every figure of a shipped adapter is measured with the fp16 file itself.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

KEPT = ("adapter_config.json", "corea.json", "README.md")
WEIGHTS = "adapter_model.safetensors"


def to_fp16(source: Path, target: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    if not (source / WEIGHTS).is_file():
        raise SystemExit(f"{source}: no {WEIGHTS}: not an adapter folder")
    target.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    tensors = load_file(source / WEIGHTS)
    save_file({key: value.to(torch.float16).contiguous() if value.is_floating_point() else value
               for key, value in tensors.items()}, target / WEIGHTS, metadata={"format": "pt"})
    return target / WEIGHTS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the trained adapter folder")
    parser.add_argument("target", type=Path, help="where the fp16 copy goes")
    args = parser.parse_args(argv)
    written = to_fp16(args.source, args.target)
    print(f"{written}: {written.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
