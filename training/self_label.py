"""An optional supervised stage between the format warm-up and GRPO: confidence from the model's
own record.

After the format warm-up the model states one confidence on everything, so the GRPO groups give
the confidence reward little spread to learn from. This stage samples `self_label_samples` replies
per training problem from the warmed-up model, grades them with corea's parser and checker, and
teaches the model to state, after its *own* reasoning and answer, how often it was right on that
problem: (right + 0.5) / (samples + 1), the smoothed group accuracy that COREA's group reward aims
at. The loss covers only the confidence value: the reasoning and the answer (right or wrong) are
the model's own and are not taught. Problems come from the train splits, past the questions GRPO
and the warm-up use. Sampled replies are kept in OUTPUT_DIR, so an interrupted stage resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

from corea.checking import is_correct
from corea.protocol import build_messages, confidence_span, parse_reply
from corea.tasks import get_task

from training.adapters import model_to_train
from training.config import TrainConfig
from training.data import column_mapping, training_split

SELF_LABEL_DIR = "self-label-adapter"
REPLIES_FILE = "self-label-replies.jsonl"


def self_label_problems(config: TrainConfig) -> list[dict]:
    """Training problems for the stage: each task's train split, past the first
    `train_size + warmup_size` questions (those belong to GRPO and the warm-up)."""
    skip = config.train_size + config.warmup_size
    problems = []
    for spec in config.self_label_tasks or config.tasks:
        task = get_task(spec, column_mapping(config))
        examples = task.examples(training_split(task), skip + config.self_label_size)[skip:]
        problems += [{"id": example.id, "question": example.question, "gold": example.gold,
                      "checker": task.checker, "hint": task.hint} for example in examples]
    return problems


def target_confidence(right: int, samples: int) -> float:
    """The smoothed share of right replies: never 0 or 1 from a handful of samples."""
    return round((right + 0.5) / (samples + 1), 2)


def confidence_prefix(reply: str) -> str | None:
    """The reply up to its last confidence value (which is to be replaced); None when the reply
    has no answer and confidence to learn from."""
    span = confidence_span(reply) if parse_reply(reply).format_ok else None
    return reply[:span[0]].rstrip(" \t") if span else None


def labelled_rows(problems: list[dict], replies: dict[str, list[str]], tokenizer,
                  few_shot: bool) -> list[dict]:
    """Prompt/completion text pairs: the chat prompt plus the model's own reply up to
    `Confidence:` as the prompt, the target confidence as the completion."""
    rows = []
    for problem in problems:
        texts = replies.get(problem["id"], [])
        if not texts:
            continue
        parsed = [parse_reply(text) for text in texts]
        right = sum(reply.format_ok and is_correct(reply.answer, problem["gold"], problem["checker"])
                    for reply in parsed)
        target = target_confidence(right, len(texts))
        messages = build_messages(problem["question"], few_shot=few_shot, hint=problem["hint"])
        for text in texts:
            prefix = confidence_prefix(text)
            if prefix is None:
                continue
            prompt = tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": prefix}],
                tokenize=False, continue_final_message=True)
            rows.append({"prompt": prompt, "completion": f" {target:g}",
                         "id": problem["id"], "target": target})
    return rows


def sample_replies(config: TrainConfig, checkpoint: str, adapter: Path | None,
                   problems: list[dict], path: Path) -> dict[str, list[str]]:
    """`self_label_samples` sampled replies per problem, appended to `path` as they come (a
    finished problem is not sampled again)."""
    from tqdm.auto import tqdm

    from corea.models import GenerationConfig, TransformersModel

    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            done[record["id"]] = record["replies"]
    todo = [problem for problem in problems if problem["id"] not in done]
    if not todo:
        return done
    model = TransformersModel(checkpoint, adapter=adapter,
                              trust_remote_code=config.trust_remote_code)
    batch_size = 8
    with open(path, "a") as handle, tqdm(total=len(todo), desc="self-label samples",
                                         unit="q") as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            conversations = [build_messages(p["question"], few_shot=config.few_shot, hint=p["hint"])
                             for p in batch]
            # Each problem repeated `samples` times in one generate call: one pass per batch.
            repeated = [c for c in conversations for _ in range(config.self_label_samples)]
            generations = model.generate(repeated, GenerationConfig(
                max_new_tokens=config.self_label_max_new_tokens, temperature=config.temperature,
                seed=config.seed + start))
            for index, problem in enumerate(batch):
                chunk = generations[index * config.self_label_samples:
                                    (index + 1) * config.self_label_samples]
                done[problem["id"]] = [g.text for g in chunk]
                handle.write(json.dumps({"id": problem["id"],
                                         "replies": done[problem["id"]]}) + "\n")
            handle.flush()
            progress.update(len(batch))
    return done


def run_self_label(config: TrainConfig, checkpoint: str, output_dir: Path,
                   start_adapter: Path | None, use_cpu: bool) -> Path:
    """Sample, label and train (once; a finished adapter is reused); returns the adapter's
    directory. Training goes on from `start_adapter` (the warm-up's) when given."""
    target = output_dir / SELF_LABEL_DIR
    if (target / "adapter_config.json").is_file():
        return target
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    problems = self_label_problems(config)
    replies = sample_replies(config, checkpoint, start_adapter, problems,
                             output_dir / REPLIES_FILE)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = labelled_rows(problems, replies, tokenizer, config.few_shot)
    if not rows:
        raise ValueError("no sampled reply stated an answer and a confidence: the self-labelled "
                         "stage has nothing to learn from (is the format warm-up on?)")
    (output_dir / "self-label-targets.json").write_text(json.dumps(
        {"rows": len(rows), "problems": len(problems),
         "targets": [row["target"] for row in rows]}) + "\n")
    model, peft_config = model_to_train(config, checkpoint, start_adapter)
    args = SFTConfig(output_dir=str(output_dir / "self-label-checkpoints"),
                     num_train_epochs=config.self_label_epochs,
                     learning_rate=config.self_label_learning_rate, per_device_train_batch_size=8,
                     logging_steps=1, save_strategy="no", report_to="none", use_cpu=use_cpu,
                     bf16=config.bf16 and not use_cpu, seed=config.seed,
                     completion_only_loss=True, max_length=2048)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                         train_dataset=Dataset.from_list(
                             [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]))
    trainer.train()
    trainer.save_model(str(target))
    return target

