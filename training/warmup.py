"""An optional supervised warm-up before GRPO: teaches the reply format, not calibration.

A model that rarely writes `Answer:` / `Confidence:` gives GRPO groups in which every reward is 0,
so nothing is learned. The warm-up fine-tunes the LoRA adapter for a few steps on worked solutions
of generated training problems (the generator knows each operation), all ending with the *same*
confidence (`warmup_confidence`, 0.5 by default): the format and the arithmetic are taught, while
whatever link between confidence and correctness the model ends with is learned by GRPO alone.
"""

from __future__ import annotations

from pathlib import Path

from corea import arithmetic
from corea.protocol import build_messages, format_reply
from corea.tasks import HINTS

from training.adapters import lora_config
from training.config import TrainConfig

WARMUP_DIR = "warmup-adapter"


def warmup_rows(config: TrainConfig) -> list[dict]:
    """Prompt/completion pairs from the generated tasks among `config.tasks` (train split)."""
    levels = [int(spec.split("-")[1]) for spec in config.tasks
              if spec.startswith("arith-") and spec.split("-")[1].isdigit()]
    if not levels:
        raise ValueError("warmup_steps needs a generated task (arith-1 .. arith-5) among tasks: "
                         "only those come with worked solutions")
    per_level = -(-config.warmup_size // len(levels))
    rows = []
    for level in levels:
        # Past the questions GRPO trains on, so the two stages see different problems.
        problems = arithmetic.generate(level, "train", config.train_size + per_level)
        for problem in problems[config.train_size:]:
            rows.append({
                "prompt": build_messages(problem.question, few_shot=config.few_shot,
                                         hint=HINTS["numeric"]),
                "completion": [{"role": "assistant", "content": format_reply(
                    problem.worked_solution(), str(problem.answer), config.warmup_confidence)}],
            })
    return rows


def run_warmup(config: TrainConfig, checkpoint: str, output_dir: Path, use_cpu: bool) -> Path:
    """Train the warm-up adapter (once; a finished one is reused) and return its directory."""
    target = output_dir / WARMUP_DIR
    if (target / "adapter_config.json").is_file():
        return target
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = SFTConfig(output_dir=str(output_dir / "warmup-checkpoints"), max_steps=config.warmup_steps,
                     learning_rate=config.warmup_learning_rate, per_device_train_batch_size=8,
                     logging_steps=1, save_strategy="no", report_to="none", use_cpu=use_cpu,
                     bf16=config.bf16 and not use_cpu, seed=config.seed, completion_only_loss=True,
                     max_length=1024)
    trainer = SFTTrainer(model=checkpoint, args=args, train_dataset=Dataset.from_list(warmup_rows(config)),
                         processing_class=tokenizer, peft_config=lora_config(config))
    trainer.train()
    trainer.save_model(str(target))
    return target
