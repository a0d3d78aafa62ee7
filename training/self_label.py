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
import time
from pathlib import Path

from corea.checking import is_correct
from corea.protocol import build_messages, confidence_span, parse_reply
from corea.tasks import get_task

from training.adapters import model_to_train, write_serving
from training.config import TrainConfig
from training.data import column_mapping, training_split
from training.records import save_run, timed

SELF_LABEL_DIR = "self-label-adapter"
REPLIES_FILE = "self-label-replies.jsonl"


def self_label_problems(config: TrainConfig) -> list[dict]:
    """Training problems for the stage: each task's train split, past the first
    `train_size + warmup_size` questions (those belong to GRPO and the warm-up). A task named
    `name:N` gives N problems instead of `self_label_size`."""
    skip = config.train_size + config.warmup_size
    problems = []
    for spec in config.self_label_tasks or config.tasks:
        name, _, count = spec.partition(":")
        size = int(count) if count else config.self_label_size
        task = get_task(name, column_mapping(config))
        examples = task.examples(training_split(task), skip + size)[skip:]
        problems += [{"id": example.id, "question": example.question, "gold": example.gold,
                      "checker": task.checker, "hint": task.hint,
                      "group": f"{name}:{example.meta.get('level', '')}"}
                     for example in examples]
    return problems


def target_confidence(right: int, samples: int, group_share: float | None = None,
                      pool_weight: float = 0.0) -> float:
    """The smoothed share of right replies: never 0 or 1 from a handful of samples.

    With `pool_weight` > 0 the problem's own replies are pooled with that many pseudo-replies
    right at `group_share` (the share right over every sampled reply of problems of the same task
    and level): an empirical-Bayes estimate. A handful of samples per problem is noisy, and a
    model taught noisy values for look-alike questions states the commonest of them (greedy
    decoding takes the mode), not their mean."""
    if pool_weight > 0 and group_share is not None:
        return round((right + pool_weight * group_share) / (samples + pool_weight), 2)
    return round((right + 0.5) / (samples + 1), 2)


def graded(problem: dict, texts: list[str]) -> int:
    """How many of the replies give the problem's right answer."""
    return sum(reply.answer is not None
               and is_correct(reply.answer, problem["gold"], problem["checker"])
               for reply in map(parse_reply, texts))


def group_shares(problems: list[dict], right: dict[str, int],
                 samples: dict[str, int]) -> dict[str, float]:
    """Share of right replies per problem group (task and level), over all sampled replies;
    `right` and `samples` count each problem's right and sampled replies."""
    hits: dict[str, int] = {}
    total: dict[str, int] = {}
    for problem in problems:
        group = problem.get("group", "")
        hits[group] = hits.get(group, 0) + right.get(problem["id"], 0)
        total[group] = total.get(group, 0) + samples.get(problem["id"], 0)
    return {group: hits[group] / total[group] for group in total if total[group]}


def confidence_prefix(reply: str) -> tuple[str, str] | None:
    """(prefix, lead): the reply up to where the confidence goes, and what the model must write
    there before the value. A reply that states a confidence is cut before its last value (which
    is to be replaced; lead ""); one that stops after its answer (a model fine-tuned on answers
    only) is kept whole and the model is taught to write the line itself (lead
    "\nConfidence:"). None when the reply gives no answer to be confident about."""
    parsed = parse_reply(reply)
    if parsed.answer is None:
        return None
    span = confidence_span(reply) if parsed.format_ok else None
    if span:
        return reply[:span[0]].rstrip(" \t"), ""
    return reply.rstrip(), "\nConfidence:"


def balanced(rows: list[dict], seed: int = 0) -> list[dict]:
    """The rows, with the larger of the low (< 0.5) and high (>= 0.5) confidence targets cut to
    twice the smaller: a model mostly wrong (or mostly right) would otherwise learn one number.
    Which rows go is seeded; the order is kept."""
    import random

    low = [i for i, row in enumerate(rows) if row["target"] < 0.5]
    high = [i for i, row in enumerate(rows) if row["target"] >= 0.5]
    if not low or not high:
        return rows
    cap = 2 * min(len(low), len(high))
    rng = random.Random(seed)
    kept = set(rng.sample(low, min(cap, len(low)))) | set(rng.sample(high, min(cap, len(high))))
    return [row for i, row in enumerate(rows) if i in kept]


def spread_over_targets(rows: list[dict], limit: int, seed: int = 0) -> list[dict]:
    """At most `limit` rows, taken round-robin over the distinct targets (each target's rows in a
    seeded order), so a cut keeps every confidence level; the order of `rows` is kept."""
    import random

    rng = random.Random(seed)
    limit = min(limit, len(rows))
    by_target: dict[float, list[int]] = {}
    for index, row in enumerate(rows):
        by_target.setdefault(row["target"], []).append(index)
    for indices in by_target.values():
        rng.shuffle(indices)
    chosen: set[int] = set()
    while len(chosen) < limit:
        for indices in by_target.values():
            if indices and len(chosen) < limit:
                chosen.add(indices.pop())
    return [row for index, row in enumerate(rows) if index in chosen]


def labelled_rows(problems: list[dict], replies: dict[str, list[str]], tokenizer,
                  few_shot: bool, per_problem: int | None = None,
                  full_reply: bool = False, pool_weight: float = 0.0,
                  value_rows: bool = False) -> list[dict]:
    """Prompt/completion text pairs: the chat prompt plus the model's own reply up to
    `Confidence:` as the prompt, the target confidence as the completion. Every sampled reply is
    graded; `per_problem` limits how many of them become rows. `pool_weight`: see
    `target_confidence`. `value_rows` (with `full_reply`): each reply also gives a row whose
    loss covers the value alone, its reply in the prompt; in a whole-reply row the value is two
    or three tokens of forty, too small a share of the loss to be learned."""
    right = {p["id"]: graded(p, replies[p["id"]]) for p in problems if replies.get(p["id"])}
    samples = {p["id"]: len(replies[p["id"]]) for p in problems if p["id"] in right}
    shares = group_shares(problems, right, samples) if pool_weight > 0 else {}
    rows = []
    for problem in problems:
        if problem["id"] not in right:
            continue
        texts = replies[problem["id"]]
        target = target_confidence(right[problem["id"]], len(texts),
                                   shares.get(problem.get("group", "")), pool_weight)
        messages = build_messages(problem["question"], few_shot=few_shot, hint=problem["hint"])
        prefixes = [p for p in map(confidence_prefix, texts) if p is not None]
        for prefix, lead in prefixes[:per_problem or None]:
            if full_reply:  # the whole reply is the target; the prompt is the question alone
                prompt = tokenizer.apply_chat_template(messages, tokenize=False,
                                                       add_generation_prompt=True)
                rows.append({"prompt": prompt, "completion": f"{prefix}{lead} {target:g}",
                             "id": problem["id"], "target": target})
            if not full_reply or value_rows:
                prompt = tokenizer.apply_chat_template(
                    messages + [{"role": "assistant", "content": prefix}],
                    tokenize=False, continue_final_message=True)
                rows.append({"prompt": prompt, "completion": f"{lead} {target:g}",
                             "id": problem["id"], "target": target})
    return rows


def sampling_order(problems: list[dict], block: int, seed: int = 0) -> list[dict]:
    """The order problems are sampled in: seeded-shuffled, so that a stage stopped by its time
    limit has sampled every task and level alike, then sorted by question length within blocks
    of `block`: question length tracks reply length, and a batch runs until its longest reply
    ends, so similar lengths together waste less of each batch."""
    import random

    shuffled = list(problems)
    random.Random(seed).shuffle(shuffled)
    return [problem for start in range(0, len(shuffled), block)
            for problem in sorted(shuffled[start:start + block],
                                  key=lambda problem: len(problem["question"]))]


def sample_replies(config: TrainConfig, checkpoint: str, adapter: Path | None,
                   problems: list[dict], path: Path, spent_s: float = 0.0) -> dict[str, list[str]]:
    """`self_label_samples` sampled replies per problem, appended to `path` as they come (a
    finished problem is not sampled again)."""
    from tqdm.auto import tqdm

    from corea.models import GenerationConfig, TransformersModel

    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            done[record["id"]] = record["replies"]
    todo = sampling_order([problem for problem in problems if problem["id"] not in done],
                          8 * config.self_label_batch_size, config.seed)
    if not todo:
        return done
    model = TransformersModel(checkpoint, adapter=adapter,
                              trust_remote_code=config.trust_remote_code)
    if adapter is not None:  # sampling only: the merged weights run faster than base + LoRA
        model.model = model.model.merge_and_unload()
    batch_size = config.self_label_batch_size
    with open(path, "a") as handle, tqdm(total=len(todo), desc="self-label samples",
                                         unit="q") as progress:
        began = time.perf_counter() - spent_s
        for start in range(0, len(todo), batch_size):
            if config.self_label_max_minutes and \
                    time.perf_counter() - began > 60 * config.self_label_max_minutes:
                break  # the time limit: train on what is sampled; a later run goes on
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
                   start_adapter: Path | None, use_cpu: bool, run: dict) -> Path | None:
    """Sample, label and train (once; a finished adapter is reused); returns the adapter's
    directory, or None after sampling alone (`self_label_sample_only`). Training goes on from
    `start_adapter` (an earlier stage's) when given. Sampled replies and training checkpoints are
    kept, so an interrupted stage resumes."""
    target = output_dir / SELF_LABEL_DIR
    if (target / "adapter_config.json").is_file():
        return target
    from datasets import Dataset
    from transformers import AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer

    problems = self_label_problems(config)
    with timed(run, "sample_seconds", output_dir):
        replies = sample_replies(config, checkpoint, start_adapter, problems,
                                 output_dir / REPLIES_FILE, run.get("sample_seconds", 0.0))
    planned = len(problems)
    problems = [problem for problem in problems if problem["id"] in replies]
    run.update({"self_label_planned": planned, "self_label_sampled": len(problems)})
    if config.self_label_sample_only:
        save_run(output_dir, run)
        return None
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = labelled_rows(problems, replies, tokenizer, config.few_shot,
                         config.self_label_replies_trained or None, config.self_label_full_reply,
                         config.self_label_pool_weight, config.self_label_value_rows)
    if not rows:
        raise ValueError("no sampled reply stated an answer: the self-labelled stage has nothing "
                         "to learn from (train the competence or format stage first)")
    labelled = len(rows)
    if config.self_label_balance:
        rows = balanced(rows, config.seed)
    if config.self_label_max_rows and len(rows) > config.self_label_max_rows:
        rows = spread_over_targets(rows, config.self_label_max_rows, config.seed)
    (output_dir / "self-label-targets.json").write_text(json.dumps(
        {"problems": len(problems), "labelled": labelled, "rows": len(rows),
         "targets": [row["target"] for row in rows]}) + "\n")
    run["self_label_rows"] = len(rows)
    model, peft_config = model_to_train(config, checkpoint, start_adapter)
    checkpoints = output_dir / "self-label-checkpoints"
    args = SFTConfig(output_dir=str(checkpoints), num_train_epochs=config.self_label_epochs,
                     learning_rate=config.self_label_learning_rate, per_device_train_batch_size=8,
                     logging_steps=1, save_strategy="steps", save_steps=config.save_steps,
                     save_total_limit=2, report_to="none", use_cpu=use_cpu,
                     bf16=config.bf16 and not use_cpu, seed=config.seed,
                     completion_only_loss=True, gradient_checkpointing=False,
                     max_length=2048)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                         train_dataset=Dataset.from_list(
                             [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]))
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() and config.resume else None
    with timed(run, "train_seconds", output_dir):
        trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(target))
    run["self_label_steps"] = trainer.state.global_step
    save_run(output_dir, run)
    return target


def run_self_label_stage(config: TrainConfig) -> dict:
    """`python -m training self-label`: the stage on its own, going on from `start_adapter`
    (the competence stage's adapter); its adapter is OUTPUT_DIR/adapter."""
    import shutil

    from training.grpo import _on_cuda, embedded_name, point_adapter_at_base
    from training.records import begin_stage

    output_dir, checkpoint, run = begin_stage(config, stage="self-label")
    start = Path(config.start_adapter) if config.start_adapter else None
    trained = run_self_label(config, checkpoint, output_dir, start, not _on_cuda(config), run)
    if trained is None:
        print(f"sampled {run['self_label_sampled']} of {run['self_label_planned']} problems "
              f"into {output_dir / REPLIES_FILE} (self_label_sample_only: nothing trained)")
        return run
    adapter_dir = output_dir / "adapter"
    shutil.copytree(trained, adapter_dir, dirs_exist_ok=True)
    point_adapter_at_base(adapter_dir, embedded_name(config.model))
    write_serving(adapter_dir, config)
    run["adapter"] = str(adapter_dir)
    save_run(output_dir, run)
    return run
