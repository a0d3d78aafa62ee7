"""Training prompts from corea's tasks, in corea's own prompt format (corea.protocol)."""

from __future__ import annotations

import random

from corea.protocol import build_messages
from corea.tasks import ColumnMapping, Task, get_task

from training.config import TrainConfig


def column_mapping(config: TrainConfig) -> ColumnMapping:
    return ColumnMapping(config.question_field, config.answer_field, None, config.checker)


def training_split(task: Task) -> str:
    if "train" in task.splits:
        return "train"
    if task.splits == ("all",) or task.name.startswith("hub"):
        return task.default_split  # a user's own file: all of it is theirs to train on
    raise ValueError(f"task {task.name!r} has no train split (only {', '.join(task.splits)}): "
                     "training on it would leak into its evaluation")


def training_rows(config: TrainConfig) -> list[dict]:
    """One row per question: the chat prompt plus the columns the rewards read."""
    rows = []
    for spec in config.tasks:
        task = get_task(spec, column_mapping(config))
        for example in task.examples(training_split(task), config.train_size):
            rows.append({
                "prompt": build_messages(example.question, few_shot=config.few_shot, hint=task.hint),
                "gold": example.gold, "checker": task.checker, "id": example.id,
                "level": int(example.meta.get("level", 0)), "question": example.question,
            })
    if config.curriculum:
        rows.sort(key=lambda row: row["level"])  # stable: task order is kept within a level
    else:
        random.Random(config.seed).shuffle(rows)
    check_no_overlap(rows, config)
    return rows


def evaluation_sets(config: TrainConfig) -> list[tuple[Task, str]]:
    sets = []
    for spec in config.eval_tasks:
        task = get_task(spec, column_mapping(config))
        split = "test" if "test" in task.splits else ("dev" if "dev" in task.splits
                                                      else task.default_split)
        sets.append((task, split))
    return sets


def check_no_overlap(rows: list[dict], config: TrainConfig) -> None:
    """Training and evaluation questions never overlap; a config where they would is refused."""
    if not config.eval_limit:
        return
    train_questions = {row["question"] for row in rows}
    for task, split in evaluation_sets(config):
        shared = [e for e in task.examples(split, config.eval_limit) if e.question in train_questions]
        if shared:
            raise ValueError(f"{len(shared)} evaluation question(s) of {task.name}/{split} are also "
                             f"training questions (first: {shared[0].question[:60]!r})")


def to_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([{k: v for k, v in row.items() if k != "question"} for row in rows])
