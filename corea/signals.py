"""Confidence signals other than the stated one, each a number in [0, 1] per answer:

- `answer_probability`: exp of the mean token log-probability of the final answer's tokens;
- `first_token_margin`: probability of the answer's first token minus the runner-up's
  (arXiv 2405.02134);
- `vote_share`: the share of k sampled replies that agree with the greedy answer
  (self-consistency, arXiv 2310.03094).

Token signals need the generation's per-token log-probabilities (`Generation.token_logprobs`).
"""

from __future__ import annotations

import math

from corea.checking import is_correct
from corea.protocol import answer_span


def _answer_tokens(text: str, token_logprobs) -> list[tuple[str, float, float | None]]:
    """The generated tokens that overlap the final answer's characters."""
    span = answer_span(text)
    if span is None or not token_logprobs:
        return []
    start, end = span
    tokens, position = [], 0
    for token in token_logprobs:
        token_start, position = position, position + len(token[0])
        if position > start and token_start < end:
            tokens.append(token)
    return tokens


def answer_probability(text: str, token_logprobs) -> float | None:
    tokens = _answer_tokens(text, token_logprobs)
    if not tokens:
        return None
    return math.exp(sum(token[1] for token in tokens) / len(tokens))


def first_token_margin(text: str, token_logprobs) -> float | None:
    tokens = _answer_tokens(text, token_logprobs)
    if not tokens:
        return None
    _, best, runner_up = tokens[0]
    return max(0.0, math.exp(best) - (math.exp(runner_up) if runner_up is not None else 0.0))


def vote_share(greedy_answer: str | None, sampled_answers: list[str | None], checker: str) -> float:
    """Share of samples agreeing with the greedy answer (0 when there is no greedy answer)."""
    if greedy_answer is None or not sampled_answers:
        return 0.0
    agree = sum(is_correct(sample, greedy_answer, checker) for sample in sampled_answers)
    return agree / len(sampled_answers)
