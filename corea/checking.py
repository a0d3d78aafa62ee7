"""Answer checking: is a model's final answer the gold one?

Four kinds, each forgiving of how people write the same value and strict about the value itself:
numeric ("$1,200.00" == "1200" == "1.2e3"), yes/no, multiple choice (a letter), and exact string.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

CHECKERS = ("numeric", "yesno", "choice", "exact")

_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:\s*/\s*\d+)?")


def parse_number(text: str | float | int | None) -> float | None:
    """The number a short answer states, or None.

    Currency signs, thousands separators, units and trailing words are ignored; "3/4" is a
    fraction; a trailing % keeps its number (50% -> 50, the way GSM8K golds are written). When a
    text holds several numbers the last one counts: answers such as "x = 12" or "12 + 3 = 15" end
    with their value.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text) if math.isfinite(text) else None
    matches = _NUMBER.findall(text.replace("−", "-"))
    if not matches:
        return None
    token = matches[-1].replace(",", "").replace(" ", "")
    try:
        value = float(Fraction(token)) if "/" in token else float(token)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def numbers_match(predicted: float, gold: float) -> bool:
    return math.isclose(predicted, gold, rel_tol=1e-9, abs_tol=1e-9)


_YES = {"yes", "true", "y", "correct", "1"}
_NO = {"no", "false", "n", "incorrect", "0"}


def parse_yesno(text: str | bool | None) -> bool | None:
    if isinstance(text, bool):
        return text
    if text is None:
        return None
    word = re.sub(r"[^a-z0-9 ]", " ", str(text).lower()).split()
    if not word:
        return None
    if word[0] in _YES:
        return True
    if word[0] in _NO:
        return False
    return None


_CHOICE = re.compile(r"^\(?([A-Za-z])\)?(?:[.:)\s]|$)")


def parse_choice(text: str | None) -> str | None:
    """The option letter of an answer such as "B", "(b)", "B) Paris" or "option C"."""
    if not text:
        return None
    cleaned = re.sub(r"^(?:option|choice|answer)\s*", "", text.strip(), flags=re.I)
    match = _CHOICE.match(cleaned)
    return match.group(1).upper() if match else None


def normalize_text(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def is_correct(predicted: str | None, gold, checker: str) -> bool:
    """Whether `predicted` states `gold` under `checker` (one of CHECKERS)."""
    if predicted is None:
        return False
    if checker == "numeric":
        value, gold_value = parse_number(predicted), parse_number(gold)
        return value is not None and gold_value is not None and numbers_match(value, gold_value)
    if checker == "yesno":
        value = parse_yesno(predicted)
        return value is not None and value == parse_yesno(gold)
    if checker == "choice":
        value = parse_choice(predicted)
        return value is not None and value == parse_choice(str(gold))
    if checker == "exact":
        return normalize_text(predicted) == normalize_text(str(gold))
    raise ValueError(f"unknown checker {checker!r}; choose one of {', '.join(CHECKERS)}")
