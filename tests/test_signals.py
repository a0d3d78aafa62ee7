import math

import pytest

from corea.protocol import answer_span, parse_reply
from corea.signals import (answer_probability, check_runtime_signal, first_token_margin,
                           generation_confidence, vote_share)

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
