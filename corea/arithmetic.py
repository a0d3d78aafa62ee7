"""A generated arithmetic word-problem task with difficulty levels.

Level L is a story of L operations on whole numbers, whose size grows with the level, so the
embedded small model is right often on level 1 and rarely beyond level 3: a task where calibration
can be learned and measured. Generation is seeded; a problem's split is decided by a hash of its
text, so train and test never share a question whatever the sizes asked for.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

LEVELS = (1, 2, 3, 4, 5)
# The largest starting quantity and operand at each level.
MAX_VALUE = {1: 20, 2: 30, 3: 50, 4: 100, 5: 200}
TEST_BUCKET = 5  # one question in five goes to the test split

NAMES = ("Ava", "Ben", "Chloe", "Dan", "Ella", "Finn", "Grace", "Hugo", "Iris", "Jack", "Kim",
         "Leo", "Maya", "Nina", "Omar", "Pia", "Ravi", "Sara", "Tom", "Uma", "Vic", "Wen", "Zoe")
ITEMS = ("apples", "stickers", "marbles", "coins", "books", "pencils", "cookies", "shells",
         "cards", "stamps", "beads", "eggs")
CONTAINERS = ("boxes", "bags", "packs", "jars", "crates")


@dataclass(frozen=True)
class ArithmeticProblem:
    question: str
    answer: int
    steps: int
    working: tuple[str, ...] = ()  # one equation per operation, e.g. "12 + 5 = 17"
    statements: tuple[str, ...] = ()  # the same as a program, one statement per sentence

    def worked_solution(self) -> str:
        """The reasoning a careful solver writes: each operation as an equation."""
        return " ".join(f"{equation}." for equation in self.working)

    def program(self) -> str:
        """The problem as a program (corea.program runs it): one statement per sentence, then
        the answer printed."""
        variable = self.statements[0].split(" ")[0] if self.statements else "answer"
        return "\n".join((*self.statements, f"print({variable})"))


def _step(rng: random.Random, name: str, item: str, value: int,
          max_value: int) -> tuple[str, int, str, str]:
    """One operation on the current quantity: the sentence that tells it, the new quantity, the
    equation that computes it, and the program statement that does (the item is the variable)."""
    choices = ["gain", "buy_packs", "double"]
    if value > 1:
        choices.append("lose")
    divisors = [d for d in range(2, 7) if value % d == 0 and value // d > 0]
    if divisors:
        choices.append("share")
    kind = rng.choice(choices)
    if kind == "gain":
        k = rng.randint(1, max_value)
        return (f"Then {name} finds {k} more {item}.", value + k, f"{value} + {k} = {value + k}",
                f"{item} += {k}")
    if kind == "lose":
        k = rng.randint(1, value - 1)
        return (f"Then {name} gives away {k} {item}.", value - k, f"{value} - {k} = {value - k}",
                f"{item} -= {k}")
    if kind == "buy_packs":
        packs, per_pack = rng.randint(2, 5), rng.randint(2, max(2, max_value // 5))
        container = rng.choice(CONTAINERS)
        return (f"Then {name} buys {packs} {container} with {per_pack} {item} in each.",
                value + packs * per_pack,
                f"{packs} * {per_pack} = {packs * per_pack}, and {value} + {packs * per_pack} = "
                f"{value + packs * per_pack}", f"{item} += {packs} * {per_pack}")
    if kind == "double":
        return (f"Then the number of {item} {name} has doubles.", value * 2,
                f"{value} * 2 = {value * 2}", f"{item} *= 2")
    d = rng.choice(divisors)
    return (f"Then {name} splits the {item} equally into {d} groups and keeps one group.",
            value // d, f"{value} / {d} = {value // d}", f"{item} //= {d}")


def generate_problem(rng: random.Random, steps: int) -> ArithmeticProblem:
    max_value = MAX_VALUE[steps]
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, max_value)
    sentences, working, statements = [f"{name} has {value} {item}."], [], [f"{item} = {value}"]
    for _ in range(steps):
        sentence, value, equation, statement = _step(rng, name, item, value, max_value)
        sentences.append(sentence)
        working.append(equation)
        statements.append(statement)
    sentences.append(f"How many {item} does {name} have now?")
    return ArithmeticProblem(question=" ".join(sentences), answer=value, steps=steps,
                             working=tuple(working), statements=tuple(statements))


def split_of(question: str) -> str:
    bucket = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) % TEST_BUCKET
    return "test" if bucket == 0 else "train"


def generate(steps: int, split: str, count: int, seed: int = 0) -> list[ArithmeticProblem]:
    """The first `count` distinct problems of `split` for a level; same arguments, same list."""
    if steps not in MAX_VALUE:
        raise ValueError(f"level {steps} is not one of {LEVELS}")
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: the generated task has 'train' and 'test'")
    rng = random.Random(f"corea-arith/{steps}/{seed}")
    problems, seen = [], set()
    attempts = 0
    while len(problems) < count:
        attempts += 1
        if attempts > 200 * (count + 10):
            raise ValueError(f"level {steps} cannot produce {count} distinct {split} problems")
        problem = generate_problem(rng, steps)
        if problem.question in seen or split_of(problem.question) != split:
            continue
        seen.add(problem.question)
        problems.append(problem)
    return problems


# Each operation's sentence as _step writes it, its numbers and words captured in order, so that
# the same problem can be told in other words (here, and in training/made_up_words.py and
# training/phrasings.py).
OPERATION_SENTENCES = {
    "gain": re.compile(r"\bfinds (\d+) more (\w+)"),
    "lose": re.compile(r"\bgives away (\d+) (\w+)"),
    "packs": re.compile(r"\bbuys (\d+) (\w+) with (\d+) (\w+) in each"),
    "double": re.compile(r"\bthe number of (\w+) (\w+) has doubles"),
    "share": re.compile(r"\b(\w+) splits the (\w+) equally into (\d+) groups and keeps one group"),
}


def retell(question: str, replacements: dict[str, str]) -> str:
    """A generated problem with each operation's sentence replaced by `replacements[name]` (a
    regular-expression replacement of OPERATION_SENTENCES[name])."""
    for name, pattern in OPERATION_SENTENCES.items():
        question = pattern.sub(replacements[name], question)
    return question


# Each operation told in other words than the generator's, with the same numbers and answer. No
# training data of corea's uses these words (training/phrasings.py keeps its own apart), so
# `arith-mix-reworded` asks whether a model holds up on wording it was not trained on.
OTHER_WORDS = {
    "gain": r"is given another \1 \2",
    "lose": r"donates \1 \2",
    "packs": r"orders \1 \2 holding \3 \4 apiece",
    "double": r"\2's \1 grow to twice as many",
    "share": r"\1 keeps only one of \3 equal shares of the \2",
}


def in_other_words(question: str) -> str:
    """A generated problem with each operation told in OTHER_WORDS."""
    return retell(question, OTHER_WORDS)
