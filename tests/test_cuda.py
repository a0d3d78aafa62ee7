"""The training stages on CUDA: the same `python -m training` commands as on the CPU, in bf16, on
a tiny model built from a config. Skipped where torch sees no CUDA device (CI and the CPU machine);
on a GPU machine, `python -m pytest -m cuda`."""

from __future__ import annotations

import json
import math

import pytest
from test_training import run_training, tiny_overrides, write_sampled_replies
from tiny import build_tiny_model

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def on_cuda(overrides: list[str]) -> list[str]:
    at = overrides.index("--device")
    return [*overrides[:at], "--device", "cuda", *overrides[at + 2:], "--bf16", "true"]


def ran_on_the_gpu(run_dir) -> dict:
    run = json.loads((run_dir / "run.json").read_text())
    assert run["config"]["device"] == "cuda" and run["config"]["bf16"]
    assert run["machine"].split(", ")[-1] == torch.cuda.get_device_name(0)
    return run


def test_the_grpo_pipeline_trains_on_cuda(tmp_path):
    model = build_tiny_model(tmp_path / "model")
    overrides = on_cuda(tiny_overrides(model, tmp_path / "run"))
    write_sampled_replies(overrides, tmp_path / "run")
    result = run_training("grpo", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    run = ran_on_the_gpu(tmp_path / "run")
    assert run["steps"] == 2 and run["log_finite"]
    for stage in ("warmup-adapter", "self-label-adapter", "adapter"):
        assert (tmp_path / "run" / stage / "adapter_model.safetensors").is_file(), stage
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").open()]
    rewards = [entry["reward"] for entry in log if "reward" in entry]
    assert len(rewards) == 2 and all(math.isfinite(r) for r in rewards)
    # Killed and started again with more steps, it goes on from its last checkpoint.
    more = on_cuda(tiny_overrides(model, tmp_path / "run", steps=3))
    result = run_training("grpo", *more)
    assert result.returncode == 0, result.stderr[-3000:]
    run = ran_on_the_gpu(tmp_path / "run")
    assert run["steps"] == 3 and run["resumed_from"].endswith("checkpoint-2")


def test_the_competence_stage_trains_on_cuda(tmp_path):
    model = build_tiny_model(tmp_path / "model")
    result = run_training(
        "sft", "--model", str(model), "--sft_arith_per_level", "2", "--sft_gsm8k", "2",
        "--eval_tasks", "arith-1", "--eval_limit", "2", "--eval_max_new_tokens", "4",
        "--output_dir", str(tmp_path / "sft"), "--device", "cuda", "--bf16", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    run = ran_on_the_gpu(tmp_path / "sft")
    assert (tmp_path / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    assert run["stage"] == "sft" and run["train_seconds"] > 0
