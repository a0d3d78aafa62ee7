"""GRPO rewards as plain functions: `f(completions, **columns) -> list[float]`.

Every completion is read with corea's own parser (corea.protocol), the one the cascade serves with.
Three terms, weighted in the training config:

- `format_reward`: 1 when the reply ends with a parseable answer and a confidence in [0, 1], else 0.
- `correctness_reward`: 1 when the answer is right, else 0.
- a confidence reward, one of
  - `brier_reward`: 1 - (correct - c)^2, as in RLCR (arXiv 2507.16806);
  - `group_l1_reward`: -|c - p_group|, COREA's group-level target, where p_group is the mean
    correctness of all completions of the same prompt (identified by the `id` column).

The non-format terms are 0 when the format fails, so a malformed reply can never earn them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from corea.checking import is_correct
from corea.protocol import parse_reply


@dataclass(frozen=True)
class Scored:
    format_ok: bool
    correct: bool  # right answer (whatever the format)
    confidence: float | None


def completion_text(completion) -> str:
    """The text of a completion, plain or conversational ([{"role": "assistant", ...}])."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(message.get("content") or "" for message in completion)
    if isinstance(completion, dict):
        return completion.get("content") or ""
    raise TypeError(f"cannot read a completion of type {type(completion).__name__}")


def score(completions, gold, checker) -> list[Scored]:
    scored = []
    for completion, gold_answer, kind in zip(completions, gold, checker, strict=True):
        parsed = parse_reply(completion_text(completion))
        scored.append(Scored(parsed.format_ok, is_correct(parsed.answer, gold_answer, kind),
                             parsed.confidence))
    return scored


def format_reward(completions, **_) -> list[float]:
    return [1.0 if parse_reply(completion_text(c)).format_ok else 0.0 for c in completions]


def correctness_reward(completions, gold, checker, **_) -> list[float]:
    return [1.0 if s.format_ok and s.correct else 0.0 for s in score(completions, gold, checker)]


def brier_reward(completions, gold, checker, **_) -> list[float]:
    return [1.0 - (float(s.correct) - s.confidence) ** 2 if s.format_ok else 0.0
            for s in score(completions, gold, checker)]


def group_l1_reward(completions, gold, checker, id, **_) -> list[float]:  # noqa: A002 - column name
    scored = score(completions, gold, checker)
    # The target is how often the group is right, counting a malformed reply as wrong.
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for s, prompt_id in zip(scored, id, strict=True):
        totals[prompt_id][0] += float(s.format_ok and s.correct)
        totals[prompt_id][1] += 1.0
    return [-abs(s.confidence - totals[pid][0] / totals[pid][1]) if s.format_ok else 0.0
            for s, pid in zip(scored, id, strict=True)]


CONFIDENCE_REWARDS = {"brier": brier_reward, "corea_l1": group_l1_reward}
