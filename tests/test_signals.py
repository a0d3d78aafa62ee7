import math

import pytest

from corea.protocol import answer_span, parse_reply
from corea.signals import (answer_probability, check_runtime_signal, first_token_margin,
                           generation_confidence, verbalized_mean, vote_share)

TEXT = "2 + 3 = 5\nAnswer: 5\nConfidence: 0.9"
# Tokens as a backend returns them: text pieces that join to the reply, with log-probabilities.
TOKENS = (("2", -0.1, -3.0), (" + 3 = 5", -0.2, -2.0), ("\nAnswer:", -0.05, -4.0),
          (" 5", math.log(0.8), math.log(0.15)), ("\nConfidence: 0.9", -0.3, -1.5))


def test_answer_span_points_at_the_value():
    start, end = answer_span(TEXT)
    assert TEXT[start:end] == "5"
    assert answer_span("no answer here") is None
    assert answer_span("Answer:\nConfidence: 1") is None


def test_token_signals_read_the_answer_tokens():
    assert answer_probability(TEXT, TOKENS) == pytest.approx(0.8)
    assert first_token_margin(TEXT, TOKENS) == pytest.approx(0.8 - 0.15)


def test_an_answer_over_several_tokens_averages_their_log_probabilities():
    text = "Answer: 12\nConfidence: 0.5"
    tokens = (("Answer:", -0.1, None), (" 1", math.log(0.5), math.log(0.4)),
              ("2", math.log(0.8), None), ("\nConfidence: 0.5", -0.1, None))
    assert answer_probability(text, tokens) == pytest.approx(math.sqrt(0.5 * 0.8))
    assert first_token_margin(text, tokens) == pytest.approx(0.1)


def test_no_answer_or_no_tokens_means_no_signal():
    assert answer_probability("I do not know", TOKENS) is None
    assert first_token_margin(TEXT, None) is None


def _confidence_tokens(integer: dict[str, float], decimal: dict[str, float], stated: str):
    """Rows for "Answer: 5\nConfidence: <stated>" as SmolLM2 writes them (one token per digit),
    with the given probabilities among the alternatives at the integer and first decimal digit."""
    def row(text, alternatives):
        top = tuple((t, math.log(p)) for t, p in alternatives.items())
        return (text, math.log(alternatives.get(text, 1.0)), None, top)

    return (row("Answer:", {}), row(" 5", {" 5": 1.0}), row("\nConfidence:", {}), row(" ", {}),
            row(stated[0], integer), row(".", {".": 1.0}), row(stated[2], decimal),
            *(row(digit, {digit: 1.0}) for digit in stated[3:]))


def test_stated_confidence_mean_weights_each_value_the_model_could_have_written():
    text = "Answer: 5\nConfidence: 0.94"
    # 0.94 with probability 0.6, 0.1x (read as 0.15) with 0.3, 1.0 with 0.1 of the integer digit;
    # a non-digit alternative ("\n") does not count.
    tokens = _confidence_tokens({"0": 0.9, "1": 0.1 * 0.9, "\n": 0.01},
                                {"9": 0.6, "1": 0.3, " ": 0.1}, "0.94")
    below_one = (0.6 * 0.94 + 0.3 * 0.15) / 0.9
    assert verbalized_mean(text, tokens) == pytest.approx((0.09 * 1.0 + 0.9 * below_one) / 0.99)
    parsed = parse_reply(text)
    assert generation_confidence("verbalized_mean", parsed, text, tokens) == pytest.approx(
        verbalized_mean(text, tokens))
    # One digit certain at both places: the stated value itself.
    sure = _confidence_tokens({"0": 1.0}, {"9": 1.0}, "0.94")
    assert verbalized_mean(text, sure) == pytest.approx(0.94)


def test_stated_confidence_mean_needs_the_alternatives_and_a_decimal_value():
    text = "Answer: 5\nConfidence: 0.94"
    assert verbalized_mean(text, None) is None
    # Rows without alternatives (an older backend): unreadable, and the cascade defers.
    assert verbalized_mean(text, tuple(row[:3] for row in _confidence_tokens(
        {"0": 1.0}, {"9": 1.0}, "0.94"))) is None
    # Percentages and other forms read as what was stated.
    percent = "Answer: 5\nConfidence: 80%"
    assert verbalized_mean(percent, (("Answer: 5\nConfidence: 80%", -0.1, None, ()),)) == 0.8
    assert verbalized_mean("Answer: 5", TOKENS) is None
    # Stated as 1.0: the values below 1 are unknown there, so they count as their middle, 0.5.
    one = "Answer: 5\nConfidence: 1.0"
    tokens = _confidence_tokens({"1": 0.8, "0": 0.2}, {"0": 1.0}, "1.0")
    assert verbalized_mean(one, tokens) == pytest.approx(0.8 + 0.2 * 0.5)


def test_vote_share():
    assert vote_share("12", ["12", "12.0", "$12", "13"], "numeric") == 0.75
    assert vote_share(None, ["12"], "numeric") == 0.0
    assert vote_share("yes", [], "yesno") == 0.0


def test_runtime_confidence_of_each_signal():
    parsed = parse_reply(TEXT)
    assert generation_confidence("verbalized", parsed, TEXT, None) == 0.9
    assert generation_confidence("answer_probability", parsed, TEXT, TOKENS) == pytest.approx(0.8)
    assert generation_confidence("first_token_margin", parsed, TEXT, TOKENS) == pytest.approx(0.65)
    # A reply without the format has no stated confidence; without tokens, no token signal.
    unformatted = parse_reply("it is 5")
    assert generation_confidence("verbalized", unformatted, "it is 5", TOKENS) is None
    assert generation_confidence("answer_probability", parsed, TEXT, None) is None


def test_only_single_generation_signals_run_in_a_cascade():
    assert check_runtime_signal("first_token_margin") == "first_token_margin"
    for signal in ("vote_share", "oracle", "entropy"):
        with pytest.raises(ValueError, match="cannot defer on"):
            check_runtime_signal(signal)
