"""The one prompt and output format of corea, and its parser.

The cascade serves models with these messages and reads their replies with `parse_reply`; the
training rewards import the same two functions, so a model is trained on exactly what it is
served with.

A well-formed reply ends with two lines::

    Answer: <final answer>
    Confidence: <a number from 0 to 1>

Anything before them is reasoning. The *last* `Answer:` and `Confidence:` lines count, so a model
that revises itself is read at its final word. A missing answer, a missing confidence or one outside
[0, 1] is a format failure: the reply is still data (its answer may even be right), but its
confidence is taken as 0 so the cascade defers it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SYSTEM_PROMPT = (
    "You are a careful problem solver. Think step by step in a few short sentences, then finish "
    "with exactly two lines:\n"
    "Answer: <your final answer only>\n"
    "Confidence: <a number from 0 to 1: the probability that your answer is correct>\n"
    "Be honest about confidence: use a low number when you are unsure."
)

# Two worked examples taught as chat turns. Small models copy the examples' confidences, so the
# two differ widely (one sure and right, one unsure) instead of both sitting at a "safe" 0.7.
FEW_SHOT: tuple[tuple[str, str], ...] = (
    (
        "Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many apples are left?",
        "3 boxes with 4 apples is 3 * 4 = 12 apples. After eating 2, 12 - 2 = 10 are left.\n"
        "Answer: 10\nConfidence: 0.95",
    ),
    (
        "Is the Eiffel Tower taller than the Great Pyramid of Giza?",
        "The Eiffel Tower is about 300 m tall. The Great Pyramid was about 146 m. I am fairly "
        "sure of the tower and less sure of the pyramid.\n"
        "Answer: yes\nConfidence: 0.6",
    ),
)

MAX_QUESTION_CHARS = 4000


@dataclass(frozen=True)
class ParsedReply:
    """What a reply says: the final answer, the stated confidence, whether the format held."""

    answer: str | None
    confidence: float | None
    format_ok: bool

    @property
    def deferral_confidence(self) -> float:
        """The confidence the cascade compares with its threshold: 0 when the format failed."""
        return self.confidence if self.format_ok and self.confidence is not None else 0.0


def build_messages(question: str, *, few_shot: bool = True, hint: str | None = None) -> list[dict]:
    """Chat messages asking `question` in corea's format.

    `hint` is a line appended to the question (a task's answer-format hint, or retrieved context).
    """
    question = validate_question(question)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    if few_shot:
        for example_question, example_reply in FEW_SHOT:
            messages.append({"role": "user", "content": example_question})
            messages.append({"role": "assistant", "content": example_reply})
    content = question if not hint else f"{question}\n{hint}"
    messages.append({"role": "user", "content": content})
    return messages


def validate_question(question: str) -> str:
    """The question stripped, or a ValueError that says what is wrong with it."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty: give the text of a question")
    question = question.strip()
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(
            f"the question is {len(question)} characters long; the limit is {MAX_QUESTION_CHARS}"
        )
    return question


# Horizontal whitespace only: an empty "Answer:" line must not swallow the next line.
_ANSWER_LINE = re.compile(r"^[ \t>*#_-]*(?:final[ \t]+)?answer[ \t]*[:：][ \t]*(.*?)[ \t]*$",
                          re.I | re.M)
_CONFIDENCE_LINE = re.compile(
    r"^[ \t>*#_-]*confidence(?:[ \t]+level)?[ \t]*[:：][ \t]*(.*?)[ \t]*$", re.I | re.M)
_NUMBER = re.compile(r"^[*_`\s]*([0-9]*\.?[0-9]+)\s*(%?)[*_`\s.]*$")


def parse_confidence(text: str) -> float | None:
    """A confidence written as `0.8`, `.8`, `80%` or `1`; None if it is not one number in [0, 1]."""
    match = _NUMBER.match(text)
    if not match:
        return None
    value = float(match.group(1))
    if match.group(2):
        value /= 100.0
    return value if 0.0 <= value <= 1.0 else None


def _strip_markup(answer: str) -> str:
    return answer.strip().strip("*_`").strip()


def parse_reply(text: str) -> ParsedReply:
    """Read the last answer and last confidence of a reply."""
    answers = _ANSWER_LINE.findall(text or "")
    confidences = _CONFIDENCE_LINE.findall(text or "")
    answer = _strip_markup(answers[-1]) if answers else None
    answer = answer or None
    confidence = parse_confidence(confidences[-1]) if confidences else None
    return ParsedReply(
        answer=answer,
        confidence=confidence,
        format_ok=answer is not None and confidence is not None,
    )


def without_confidence(text: str) -> str:
    """`text` with its Confidence lines emptied (a reply shown as an example, or read as code)."""
    return _CONFIDENCE_LINE.sub("", text or "")


def answer_span(text: str) -> tuple[int, int] | None:
    """Where the final answer's value stands in `text` (start, end), for token-level signals."""
    matches = list(_ANSWER_LINE.finditer(text or ""))
    if not matches or not matches[-1].group(1).strip("*_` \t"):
        return None
    return matches[-1].span(1)


def confidence_span(text: str) -> tuple[int, int] | None:
    """Where the final confidence's value stands in `text` (start, end)."""
    matches = list(_CONFIDENCE_LINE.finditer(text or ""))
    return matches[-1].span(1) if matches else None


def format_reply(reasoning: str, answer: str, confidence: float) -> str:
    """A reply in corea's format; the inverse of `parse_reply` (used by tests and warm-up data)."""
    body = reasoning.strip()
    tail = f"Answer: {answer}\nConfidence: {round(confidence, 4):g}"
    return f"{body}\n{tail}" if body else tail
