"""Confidence signals other than the stated one, each a number in [0, 1] per answer:

- `answer_probability`: exp of the mean token log-probability of the final answer's tokens;
- `first_token_margin`: probability of the answer's first token minus the runner-up's
  (arXiv 2405.02134);
- `verbalized_mean`: the stated confidence read as its mean under the model's own distribution
  over the values it could have written there (the probabilities of the value's digits), not as
  the one value greedy decoding picked;
- `vote_share`: the share of k sampled replies that agree with the greedy answer
  (self-consistency, arXiv 2310.03094).

Token signals need the generation's per-token log-probabilities (`Generation.token_logprobs`).
"""

from __future__ import annotations

import math

from corea.checking import is_correct
from corea.protocol import ParsedReply, answer_span, confidence_span, parse_confidence


def _tokens_over(span: tuple[int, int] | None, token_logprobs) -> list[tuple]:
    """The generated tokens that overlap the characters of `span` (start, end)."""
    if span is None or not token_logprobs:
        return []
    start, end = span
    tokens, position = [], 0
    for token in token_logprobs:
        token_start, position = position, position + len(token[0])
        if position > start and token_start < end:
            tokens.append(token)
    return tokens


def _answer_tokens(text: str, token_logprobs) -> list[tuple]:
    """The generated tokens that overlap the final answer's characters."""
    return _tokens_over(answer_span(text), token_logprobs)


def answer_probability(text: str, token_logprobs) -> float | None:
    tokens = _answer_tokens(text, token_logprobs)
    if not tokens:
        return None
    return math.exp(sum(token[1] for token in tokens) / len(tokens))


def first_token_margin(text: str, token_logprobs) -> float | None:
    tokens = _answer_tokens(text, token_logprobs)
    if not tokens:
        return None
    best, runner_up = tokens[0][1], tokens[0][2]
    return max(0.0, math.exp(best) - (math.exp(runner_up) if runner_up is not None else 0.0))


def _digit_choices(row) -> list[tuple[str, float]] | None:
    """(digits, probability) of the alternatives at one token that are digits (spaces around them
    dropped), renormalised over those; None when the row carries no alternatives."""
    if len(row) < 4 or not row[3]:
        return None
    choices = [(text.strip(), math.exp(logprob)) for text, logprob in row[3]
               if text.strip().isdigit()]
    total = sum(probability for _, probability in choices)
    return [(digits, probability / total) for digits, probability in choices] if total else None


def verbalized_mean(text: str, token_logprobs) -> float | None:
    """The stated confidence `I.D...` as its mean under the model's distribution at the value's
    tokens: the integer digit (0 or 1) and the first decimal token. Each other decimal stands for
    the middle of its range (0.8 for 0.85); the stated decimals keep their exact value. Greedy
    decoding of a small model states the commonest value among look-alike questions, often one of
    two (0.94 or 0.12); the probabilities behind that choice rank answers far better.

    None without per-token alternatives (a trace without log-probabilities); the stated value
    itself when it is not written as a decimal (`80%`), since its digits do not read as one."""
    span = confidence_span(text)
    stated = parse_confidence(text[span[0]:span[1]]) if span else None
    if stated is None or not token_logprobs:
        return None
    start, end = span
    value = text[start:end]
    if len(token_logprobs[0]) < 4:
        return None
    if len(value) < 3 or value[0] not in "01" or value[1] != "." or not value[2:].isdigit():
        return stated
    integer_tokens = _tokens_over((start, start + 1), token_logprobs)
    decimal_tokens = _tokens_over((start + 2, start + 3), token_logprobs)
    if not decimal_tokens or integer_tokens == decimal_tokens:
        return stated  # "0." and its decimals in one token: no distribution over the digits
    decimals = _digit_choices(decimal_tokens[0])
    chosen = decimal_tokens[0][0].strip()
    # Under "1." the decimals say nothing about the values below 1: their mean is unknown there.
    below_one = 0.5
    if value[0] == "0" and decimals:
        below_one = sum(probability * (stated if digits == chosen else
                                       float("0." + digits) + 0.5 * 10.0 ** -len(digits))
                        for digits, probability in decimals)
    integers = _digit_choices(integer_tokens[0]) if integer_tokens else None
    if not integers or integer_tokens[0][0].strip() != value[0]:
        return below_one if value[0] == "0" else stated
    share = dict(integers)
    zero, one = share.get("0", 0.0), share.get("1", 0.0)
    if zero + one == 0:
        return stated
    return (one * 1.0 + zero * below_one) / (zero + one)


def program_probability(text: str, token_logprobs) -> float | None:
    """How sure a model answering by program (corea.program) was of its program: the geometric
    mean probability of the tokens inside its code block. None for a reply with no code block."""
    from corea.program import code_span

    tokens = _tokens_over(code_span(text), token_logprobs)
    if not tokens:
        return None
    return math.exp(sum(token[1] for token in tokens) / len(tokens))


def vote_share(greedy_answer: str | None, sampled_answers: list[str | None], checker: str) -> float:
    """Share of samples agreeing with the greedy answer (0 when there is no greedy answer)."""
    if greedy_answer is None or not sampled_answers:
        return 0.0
    agree = sum(is_correct(sample, greedy_answer, checker) for sample in sampled_answers)
    return agree / len(sampled_answers)


TOKEN_SIGNAL_READERS = {"answer_probability": answer_probability,
                        "first_token_margin": first_token_margin,
                        "verbalized_mean": verbalized_mean,
                        "program_probability": program_probability}

# Signals a cascade can defer on at run time, each read from a single generation (vote_share needs k
# extra samples per question and the oracle needs the gold answer: they are for sweeps only).
TOKEN_SIGNALS = tuple(TOKEN_SIGNAL_READERS)
RUNTIME_SIGNALS = ("verbalized", *TOKEN_SIGNALS)


def check_runtime_signal(signal: str) -> str:
    if signal not in RUNTIME_SIGNALS:
        raise ValueError(f"a cascade cannot defer on {signal!r} at run time; choose one of "
                         f"{', '.join(RUNTIME_SIGNALS)}")
    return signal


def generation_confidence(signal: str, parsed: ParsedReply, text: str,
                          token_logprobs) -> float | None:
    """`signal`'s value for one reply; None when it cannot be read (no stated confidence, no
    answer, no log-probabilities), which the cascade treats as 0 and defers."""
    if check_runtime_signal(signal) == "verbalized":
        return parsed.confidence if parsed.format_ok else None
    return TOKEN_SIGNAL_READERS[signal](text, token_logprobs)


# The deferral signals a trace table can be swept on. Token signals are columns of tables traced
# with log-probabilities; `vote_share` needs sampled tables of the same questions; `oracle`
# (1 when the SLM is right) is the upper bound no real signal can pass.
SIGNALS = ("verbalized", "verbalized_mean", "answer_probability", "first_token_margin",
           "program_probability", "probe", "vote_share", "oracle")
# Signals that are a column of the SLM's trace table, and how to get that column.
COLUMN_SIGNALS = {
    "answer_probability": "trace the SLM with token log-probabilities (--logprobs)",
    "first_token_margin": "trace the SLM with token log-probabilities (--logprobs)",
    "verbalized_mean": "trace the SLM with token log-probabilities (--logprobs)",
    "program_probability": "trace the SLM answering by program (program:<model>) with token "
                           "log-probabilities (--logprobs)",
    "probe": "score the table with `python -m corea probe score` (the hidden-state probe)",
}


def has_column(rows: list[dict], signal: str) -> bool:
    """Whether a table can be read by `signal`: a column signal needs its column in some row
    (tables traced before it existed lack it)."""
    return signal not in COLUMN_SIGNALS or any(signal in row for row in rows)


def with_signal(rows: list[dict], signal: str, *, samples: list[list[dict]] = (),
                checker: str = "exact", mapped: bool = True, platt=None) -> list[dict]:
    """`rows` with their confidence replaced by `signal`, so any sweep defers on it.

    A row the signal cannot score (no answer, no log-probabilities) gets 0: the cascade defers it,
    as it does a reply without a stated confidence. Under `vote_share` each row also pays for its
    k sampled replies: self-consistency runs the SLM k more times on every question. A shipped
    model that declares a Platt map for `signal` (corea.calibration) is read through it, as the
    cascade reads it live, unless `mapped` is False; `platt` gives the map instead (a model whose
    rows name no shipped adapter, or a map fitted elsewhere).
    """
    read = _read_signal(rows, signal, samples, checker)
    if not mapped or signal in ("vote_share", "oracle"):
        return read
    from corea.calibration import model_map

    maps = {name: platt if platt is not None else model_map(name)
            for name in {row.get("model", "") for row in read}}
    return [{**row, "confidence": found(row["confidence"])}
            if (found := maps[row.get("model", "")]) is not None and found.signal == signal
            else row for row in read]


def _read_signal(rows: list[dict], signal: str, samples, checker: str) -> list[dict]:
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; choose one of {', '.join(SIGNALS)}")
    if signal == "verbalized":
        return rows
    if rows and not has_column(rows, signal):
        raise ValueError(f"the trace has no {signal} column: {COLUMN_SIGNALS[signal]}")
    if signal == "vote_share":
        if not samples:
            raise ValueError("vote_share needs sampled trace tables of the same questions")
        by_id = [{row["id"]: row for row in sample} for sample in samples]
        missing = sum(row["id"] not in sample for row in rows for sample in by_id)
        if missing:
            raise ValueError(f"{missing} (question, sample) pairs are missing from the sampled "
                             "tables: trace every sample over the same questions")
        values = [vote_share(row["answer"], [sample[row["id"]]["answer"] for sample in by_id],
                             checker) for row in rows]
        return [{**row, "confidence": float(value), "format_ok": True,
                 "cost": row["cost"] + sum(sample[row["id"]]["cost"] for sample in by_id)}
                for row, value in zip(rows, values)]
    elif signal == "oracle":
        values = [1.0 if row["correct"] else 0.0 for row in rows]
    else:
        values = [row.get(signal) or 0.0 for row in rows]
    return [{**row, "confidence": float(value), "format_ok": True}
            for row, value in zip(rows, values)]
