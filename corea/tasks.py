"""Tasks: a data set, a prompt hint and an answer checker, nothing more.

Built in (shipped inside the package, no network needed): `gsm8k`, `svamp`, `strategyqa`, and the
generated `arith-1` .. `arith-5`, `arith` (levels 1-3 mixed) and `arith-mix` (levels 1-5 in equal
shares, with a fixed committed test split). Any local JSONL/JSON/CSV file or
Hub data set (`hub:owner/name`) becomes a task with a column mapping.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from corea import arithmetic
from corea.checking import CHECKERS

HINTS = {
    "numeric": "Give the final answer as a number.",
    # Without the reminder of the two closing lines, instruction-tuned models answer a yes/no
    # question with a bare "Yes, ..." sentence (Qwen2.5-Coder-1.5B: 0 of 16 well-formed; with it
    # 12 of 16).
    "yesno": "Reason briefly, then end with the two lines Answer: yes or no, and Confidence: a "
             "number from 0 to 1.",
    "choice": "Answer with the letter of the correct option.",
    "exact": None,
}
GENERATED_SIZE = 1000  # problems per level and split when no limit is given


@dataclass(frozen=True)
class Example:
    id: str  # stable across models and runs: trace tables are joined on it
    question: str
    gold: str
    meta: dict = field(default_factory=dict)


@dataclass
class Task:
    name: str
    checker: str
    splits: tuple[str, ...]
    default_split: str
    load: Callable[[str, int | None], list[Example]]
    description: str = ""

    @property
    def hint(self) -> str | None:
        return HINTS[self.checker]

    def examples(self, split: str | None = None, limit: int | None = None) -> list[Example]:
        split = split or self.default_split
        if split not in self.splits:
            raise ValueError(
                f"task {self.name!r} has no split {split!r}; choose one of {', '.join(self.splits)}"
            )
        if limit is not None and limit < 1:
            raise ValueError(f"--limit must be a positive number, not {limit}")
        rows = self.load(split, limit)
        return rows[:limit] if limit else rows


def _data_file(*parts: str) -> Path:
    return Path(str(resources.files("corea").joinpath("data", *parts)))


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def gsm8k_rows(split: str) -> list[dict]:
    """GSM8K as shipped: `question` and the worked `answer` ending with `#### N`."""
    return _read_jsonl(_data_file("gsm8k", f"{split}.jsonl"))


def _gsm8k(split: str, limit: int | None) -> list[Example]:
    rows = gsm8k_rows(split)
    return [
        Example(id=f"gsm8k-{split}-{i:05d}", question=row["question"],
                gold=row["answer"].rsplit("####", 1)[1].strip().replace(",", ""))
        for i, row in enumerate(rows)
    ]


def _svamp(split: str, limit: int | None) -> list[Example]:
    rows = json.loads(_data_file("svamp", "SVAMP.json").read_text(encoding="utf-8"))
    return [
        Example(id=f"svamp-{row['ID']}", question=f"{row['Body'].strip()} {row['Question'].strip()}",
                gold=f"{row['Answer']:g}", meta={"type": row["Type"]})
        for row in rows
    ]


def _strategyqa(split: str, limit: int | None) -> list[Example]:
    rows = _read_jsonl(_data_file("strategyqa", f"{split}.jsonl"))
    return [
        Example(id=f"strategyqa-{row['qid']}", question=row["question"],
                gold="yes" if row["answer"] else "no")
        for row in rows
    ]


def _arithmetic(levels: tuple[int, ...]) -> Callable[[str, int | None], list[Example]]:
    def load(split: str, limit: int | None) -> list[Example]:
        per_level = -(-(limit or GENERATED_SIZE * len(levels)) // len(levels))
        by_level = [arithmetic.generate(level, split, per_level) for level in levels]
        examples = []
        for index in range(per_level):  # interleave levels so any prefix is balanced
            for level, problems in zip(levels, by_level):
                problem = problems[index]
                examples.append(Example(
                    id=f"arith{level}-{split}-{index:05d}", question=problem.question,
                    gold=str(problem.answer), meta={"level": level},
                ))
        return examples
    return load


ARITH_MIX_LEVELS = (1, 2, 3, 4, 5)
ARITH_MIX_TEST_SIZE = 300


def _arith_mix(split: str, limit: int | None) -> list[Example]:
    """Levels 1-5 interleaved. The test split is read from the committed file (a fixed benchmark
    that a change to the generator cannot silently move); training questions are generated on
    demand, as many as asked."""
    if split == "train":
        rows = _arithmetic(ARITH_MIX_LEVELS)(split, limit)
        return [Example(id=f"arith-mix-{e.id}", question=e.question, gold=e.gold, meta=e.meta)
                for e in rows]
    rows = _read_jsonl(_data_file("arith-mix", "test.jsonl"))
    return [Example(id=row["id"], question=row["question"], gold=row["gold"],
                    meta={"level": row["level"]}) for row in rows]


def _arith_mix_reworded(split: str, limit: int | None) -> list[Example]:
    """The arith-mix test questions with their operations told in other words
    (corea.arithmetic.OTHER_WORDS): same numbers, same answers."""
    return [Example(id=f"{e.id}-reworded", question=arithmetic.in_other_words(e.question),
                    gold=e.gold, meta=e.meta) for e in _arith_mix(split, limit)]


def arith_mix_test_rows(size: int = ARITH_MIX_TEST_SIZE) -> list[dict]:
    """The rows of the committed arith-mix test split, as the generator makes them."""
    return [{"id": f"arith-mix-{e.id}", "question": e.question, "gold": e.gold,
             "level": e.meta["level"]}
            for e in _arithmetic(ARITH_MIX_LEVELS)("test", size)]


BUILTIN_TASKS: dict[str, Task] = {
    "gsm8k": Task("gsm8k", "numeric", ("train", "test"), "test", _gsm8k,
                  "grade-school math word problems (OpenAI, MIT)"),
    "svamp": Task("svamp", "numeric", ("test",), "test", _svamp,
                  "one-unknown arithmetic word problems, 1,000 questions (MIT)"),
    "strategyqa": Task("strategyqa", "yesno", ("train", "dev"), "dev", _strategyqa,
                       "yes/no questions needing implicit multi-step reasoning (MIT)"),
    "arith": Task("arith", "numeric", ("train", "test"), "test", _arithmetic((1, 2, 3)),
                  "generated arithmetic word problems, levels 1-3 interleaved"),
    "arith-mix": Task("arith-mix", "numeric", ("train", "test"), "test", _arith_mix,
                      "generated arithmetic word problems, levels 1-5 in equal shares; "
                      f"{ARITH_MIX_TEST_SIZE} fixed test questions"),
    "arith-mix-reworded": Task("arith-mix-reworded", "numeric", ("test",), "test",
                               _arith_mix_reworded,
                               "the arith-mix test questions with each operation told in words "
                               "no training data uses; same numbers and answers"),
}
for _level in arithmetic.LEVELS:
    BUILTIN_TASKS[f"arith-{_level}"] = Task(
        f"arith-{_level}", "numeric", ("train", "test"), "test", _arithmetic((_level,)),
        f"generated arithmetic word problems with {_level} operation(s), "
        f"numbers up to {arithmetic.MAX_VALUE[_level]}",
    )


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns of a user's data set hold the question, the gold answer and (optionally) an id."""

    question: str = "question"
    answer: str = "answer"
    id: str | None = None
    checker: str = "numeric"

    def __post_init__(self):
        if self.checker not in CHECKERS:
            raise ValueError(f"unknown checker {self.checker!r}; choose one of {', '.join(CHECKERS)}")


def _gold_text(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    # GSM8K-style worked solutions end with "#### <answer>".
    return text.rsplit("####", 1)[1].strip() if "####" in text else text.strip()


def examples_from_rows(rows: list[dict], prefix: str, mapping: ColumnMapping) -> list[Example]:
    """Examples from plain dict rows; a clear error if a needed column is missing."""
    examples = []
    for index, row in enumerate(rows):
        missing = [c for c in (mapping.question, mapping.answer, mapping.id) if c and c not in row]
        if missing:
            raise ValueError(
                f"row {index + 1} has no column {missing[0]!r} (columns: {', '.join(map(str, row))});"
                " map the columns with --question-field/--answer-field/--id-field"
            )
        question = str(row[mapping.question])
        row_id = row[mapping.id] if mapping.id else hashlib.sha256(question.encode()).hexdigest()[:12]
        examples.append(Example(id=f"{prefix}-{row_id}", question=question,
                                gold=_gold_text(row[mapping.answer])))
    return examples


def _read_table(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise ValueError(f"{path}: a .json data set must be one array of objects")
            return data
        return _read_jsonl(path)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def file_task(path: str | Path, mapping: ColumnMapping) -> Task:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {path} does not exist")
    name = re.sub(r"[^\w.-]", "_", path.stem)
    return Task(name, mapping.checker, ("all",), "all",
                lambda split, limit: examples_from_rows(_read_table(path), name, mapping),
                f"local file {path}")


def hub_task(dataset_id: str, mapping: ColumnMapping, config: str | None = None,
             split: str = "test") -> Task:
    """A data set on the Hugging Face Hub (downloaded by `datasets`; needs network)."""
    name = dataset_id.replace("/", "__")

    def load(split_name: str, limit: int | None) -> list[Example]:
        import datasets

        hub_split = split_name if limit is None else f"{split_name}[:{limit}]"
        rows = datasets.load_dataset(dataset_id, config, split=hub_split)
        return examples_from_rows(list(rows), name, mapping)

    return Task(name, mapping.checker, (split,), split, load, f"Hub data set {dataset_id}")


def builtin_checker(task_name: str) -> str | None:
    """The answer checker of a built-in task; None for a file or Hub task (its mapping says)."""
    task = BUILTIN_TASKS.get(task_name)
    return task.checker if task else None


def get_task(spec: str, mapping: ColumnMapping | None = None, *, hub_config: str | None = None,
             hub_split: str = "test") -> Task:
    """A task by built-in name, local file path, or `hub:owner/name`."""
    if spec in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec]
    if spec.startswith("hub:"):
        return hub_task(spec[4:], mapping or ColumnMapping(), hub_config, hub_split)
    if Path(spec).suffix.lower() in (".jsonl", ".json", ".csv"):
        return file_task(spec, mapping or ColumnMapping())
    raise ValueError(
        f"unknown task {spec!r}: use one of {', '.join(BUILTIN_TASKS)}, a .jsonl/.json/.csv file, "
        "or hub:owner/name"
    )
