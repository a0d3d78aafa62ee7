import pytest
from hypothesis import given, strategies as st

from corea.protocol import (FEW_SHOT, MAX_QUESTION_CHARS, build_messages, format_reply,
                            parse_confidence, parse_reply)


def test_reads_answer_and_confidence():
    parsed = parse_reply("3 * 4 = 12, minus 2 is 10.\nAnswer: 10\nConfidence: 0.9")
    assert (parsed.answer, parsed.confidence, parsed.format_ok) == ("10", 0.9, True)
    assert parsed.deferral_confidence == 0.9


def test_last_answer_and_confidence_count():
    text = "Answer: 5\nConfidence: 0.2\nWait, I made a mistake.\nAnswer: 7\nConfidence: 0.8"
    parsed = parse_reply(text)
    assert parsed.answer == "7" and parsed.confidence == 0.8


@pytest.mark.parametrize("written,value", [("0.75", 0.75), (".5", 0.5), ("80%", 0.8), ("1", 1.0),
                                           ("0", 0.0), ("**0.3**", 0.3)])
def test_confidence_forms(written, value):
    assert parse_confidence(written) == pytest.approx(value)


@pytest.mark.parametrize("text", [
    "Answer: 12",                                  # no confidence
    "Confidence: 0.9",                             # no answer
    "Answer: 12\nConfidence: 1.5",                 # out of range
    "Answer: 12\nConfidence: high",                # not a number
    "Answer: 12\nConfidence: 120%",                # out of range as a percentage
    "Answer:\nConfidence: 0.9",                    # empty answer
    "",
])
def test_format_failures_defer(text):
    parsed = parse_reply(text)
    assert not parsed.format_ok
    assert parsed.deferral_confidence == 0.0


def test_a_format_failure_keeps_its_answer():
    assert parse_reply("so it is 12\nAnswer: 12").answer == "12"


answers = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
                  min_size=1, max_size=30).map(str.strip).filter(lambda s: s.strip("*_`"))


@given(reasoning=st.text(max_size=200).filter(lambda s: "answer" not in s.lower()
                                              and "confidence" not in s.lower()),
       answer=answers.filter(lambda s: s == s.strip("*_`").strip()),
       confidence=st.floats(0, 1))
def test_format_then_parse_round_trips(reasoning, answer, confidence):
    parsed = parse_reply(format_reply(reasoning, answer, confidence))
    assert parsed.format_ok
    assert parsed.answer == answer
    assert parsed.confidence == pytest.approx(round(confidence, 4))


@given(st.text(max_size=500))
def test_parser_never_raises_and_confidence_is_in_range(text):
    parsed = parse_reply(text)
    assert 0.0 <= parsed.deferral_confidence <= 1.0
    assert parsed.format_ok == (parsed.answer is not None and parsed.confidence is not None)


def test_messages_carry_few_shot_and_hint():
    messages = build_messages("  What is 2+2?  ", hint="Give the final answer as a number.")
    assert messages[0]["role"] == "system"
    assert len(messages) == 2 + 2 * len(FEW_SHOT)
    assert messages[-1] == {"role": "user",
                            "content": "What is 2+2?\nGive the final answer as a number."}
    # the examples teach the format the parser reads
    for _, reply in FEW_SHOT:
        assert parse_reply(reply).format_ok
    assert len(build_messages("q", few_shot=False)) == 2


@pytest.mark.parametrize("question", ["", "   ", "x" * (MAX_QUESTION_CHARS + 1)])
def test_bad_questions_are_refused(question):
    with pytest.raises(ValueError):
        build_messages(question)
