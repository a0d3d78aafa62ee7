"""The LoRA adapter every training stage works on: a fresh one, or the previous stage's."""

from __future__ import annotations

from pathlib import Path

from training.config import TrainConfig


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, task_type="CAUSAL_LM")


def model_to_train(config: TrainConfig, checkpoint: str, adapter: Path | None):
    """(model, peft_config) for a TRL trainer: the checkpoint and a fresh LoRA config, or, to go on
    training an earlier stage's adapter, the base with that adapter made trainable and no config."""
    if adapter is None:
        return checkpoint, lora_config(config)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(checkpoint,
                                                trust_remote_code=config.trust_remote_code)
    return PeftModel.from_pretrained(base, str(adapter), is_trainable=True), None


def write_serving(adapter_dir: Path, config: TrainConfig) -> None:
    """corea.json beside the adapter: how it is to be served (corea.embedded.adapter_serving),
    so a model trained zero-shot is asked zero-shot, and one trained to answer by program is
    asked for programs, wherever it is loaded."""
    import json

    serving = {"few_shot": config.few_shot}
    if config.sft_programs:  # it answers by program, so it is served as program:<adapter>
        serving["program"] = True
    (Path(adapter_dir) / "corea.json").write_text(json.dumps(serving, indent=2) + "\n")
