"""GSM8K train solutions as programs, for the SLM that answers by program.

A GSM8K solution marks each calculation with a calculator note, `48/2 = <<48/2=24>>24 clips`.
Each note becomes one assignment, named after the word its result counts (`clips = 48 / 2`); a
number that an earlier note computed is written as that note's variable, so the program says
where each value comes from, as a program model is asked to (one statement per step, then print
the answer). A solution is kept only when its program runs in corea's sandbox to the solution's
own answer: a solution whose steps are not all in notes, or whose notes use anything but
arithmetic, gives none.
"""

from __future__ import annotations

import keyword
import re

from corea.program import ProgramError, run_program

_NOTE = re.compile(r"<<([^=<>]+)=([^<>]+)>>([^\n]*)")
_NUMBER = re.compile(r"(?<![\w.])(\d+\.?\d*|\.\d+)")
_ARITHMETIC = re.compile(r"[\d.+\-*/() ]+")
_WORD = re.compile(r"[A-Za-z]+")
# Words after a result that name no quantity ("24 in May", "$308 total" is fine: "total").
_NOT_NAMES = {"a", "an", "and", "are", "as", "at", "by", "each", "for", "from", "in", "is", "it",
              "more", "of", "on", "or", "per", "so", "than", "that", "the", "then", "this", "to",
              "was", "which", "with", "x"}


def _value(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def _name(after: str, taken: set[str]) -> str:
    """A variable name from the words after a note's result, unique among `taken`."""
    words = [w.lower() for w in _WORD.findall(after)[:2]]
    base = next((w for w in words if w not in _NOT_NAMES and not keyword.iskeyword(w)), "step")
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def gsm8k_program(solution: str) -> str | None:
    """The program of a GSM8K train solution (`... #### N`), or None where it cannot be made:
    a note that is not plain arithmetic, or a program that does not compute the answer."""
    reasoning, _, answer = solution.rpartition("####")
    gold = _value(answer)
    notes = _NOTE.findall(reasoning)
    if gold is None or not notes:
        return None
    computed: list[tuple[float, str]] = []  # (value, variable), in order
    lines = []
    for expression, result, after in notes:
        value = _value(result)
        if value is None or not _ARITHMETIC.fullmatch(expression.strip()):
            return None

        def earlier(match: re.Match) -> str:
            number = float(match.group(1))
            return next((name for v, name in reversed(computed) if v == number), match.group(1))

        statement = _NUMBER.sub(earlier, expression.strip())
        statement = re.sub(r"\s*([+\-*/])\s*", r" \1 ", statement).strip()
        name = _name(after, {name for _, name in computed})
        lines.append(f"{name} = {statement}")
        computed.append((value, name))
    lines.append(f"print({computed[-1][1]})")
    program = "\n".join(lines)
    try:
        if abs(run_program(program) - gold) > 1e-6:
            return None
    except (ProgramError, ArithmeticError, SyntaxError):
        return None
    return program
