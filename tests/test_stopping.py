"""When a reply is over: stop sequences, the protocol's last line, replies that loop."""

import pytest

from corea.cascade import Cascade, Tier
from corea.costs import Price
from corea.models import Generation, GenerationConfig
from corea.protocol import build_messages
from corea.stopping import cut_reply, find_stop

DONE = GenerationConfig(stop_when_done=True)


def test_a_reply_ends_once_its_confidence_line_is_complete():
    written = "3 * 4 = 12.\nAnswer: 12\nConfidence: 0.9"
    assert find_stop(written, stop_when_done=True) is None  # "0.9" may yet become "0.95"
    stop = find_stop(written + "\nAnd then", stop_when_done=True)
    assert stop.reason == "stop" and (written + "\nAnd then")[:stop.cut] == written
    # A confidence line before any answer, or one that is not a number, does not end it.
    assert find_stop("Confidence: 0.5\nso", stop_when_done=True) is None
    assert find_stop("Answer: 3\nConfidence: high\n", stop_when_done=True) is None
    # Without the rule nothing ends a reply but its stop sequences.
    assert find_stop(written + "\nmore") is None


def test_a_repeated_line_is_cut_where_the_repetition_starts():
    text = "Let me add.\n2 + 2 = 4\n2 + 2 = 4\n2 + 2 = 4\n2 + 2"
    stop = find_stop(text, stop_when_done=True)
    assert stop.reason == "repetition" and text[:stop.cut] == "Let me add.\n2 + 2 = 4\n"
    # Twice is not a loop.
    assert find_stop("x = 1\nx = 1\nso x is 1", stop_when_done=True) is None


def test_a_pattern_looping_within_a_line_is_cut_after_its_first_copy():
    text = "The total is 5 + " + "5 + " * 20
    stop = find_stop(text, stop_when_done=True)
    assert stop.reason == "repetition"
    assert text[:stop.cut] in ("The total is 5 + ", "The total is 5 +")
    # Ordinary prose, numbers and short repeats are not loops.
    assert find_stop("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17",
                     stop_when_done=True) is None
    assert find_stop("ha ha ha, that is 10", stop_when_done=True) is None


def test_stop_sequences_end_the_reply_before_the_first_one():
    assert find_stop("one two three", stop=("three", "two")).cut == len("one ")
    assert cut_reply("one two three", GenerationConfig(stop=("two",))) == ("one ", "stop")
    assert cut_reply("one two", GenerationConfig()) == ("one two", None)
    with pytest.raises(ValueError, match="non-empty"):
        GenerationConfig(stop=("",))


def test_a_whole_reply_is_cut_as_it_would_have_been_while_written():
    # The loop starts before the confidence line: the loop is what ends it.
    text = "Hmm.\nHmm.\nHmm.\nAnswer: 1\nConfidence: 0.9\n"
    assert cut_reply(text, DONE) == ("Hmm.\n", "repetition")
    text = "Answer: 1\nConfidence: 0.9\nAnswer: 2\nConfidence: 0.1\n"
    assert cut_reply(text, DONE) == ("Answer: 1\nConfidence: 0.9", "stop")


def test_a_looping_reply_is_a_format_failure_in_the_cascade(tiny_model, tiny_model_b):
    cascade = Cascade([Tier(tiny_model, 0.5, Price(1, 1)), Tier(tiny_model_b, None, Price(1, 1))])
    stated = "Answer: 4\nConfidence: 0.9"
    kept = cascade.decide(0, Generation(stated, 10, 5, 0.1, finish_reason="stop"))
    looped = cascade.decide(0, Generation(stated, 10, 5, 0.1, finish_reason="repetition"))
    assert kept.decision == "kept" and kept.parsed.format_ok
    assert looped.decision == "deferred" and not looped.parsed.format_ok
    assert looped.confidence is None and looped.parsed.answer == "4"


def test_the_transformers_backend_honours_stop_sequences_streamed_or_not(tiny_model):
    messages = build_messages("What is 2 + 2?")
    whole = tiny_model.generate([messages], GenerationConfig(max_new_tokens=24))[0].text
    assert len(whole) > 6
    stop = whole[len(whole) // 2:len(whole) // 2 + 2]
    config = GenerationConfig(max_new_tokens=24, stop=(stop,))
    cut = tiny_model.generate([messages, build_messages("Is ice cold?")], config)[0]
    assert cut.text == whole[:whole.find(stop)] and cut.finish_reason == "stop"
    assert cut.completion_tokens < 24  # it stopped generating, not only cut the text
    assert list(tiny_model.stream(messages, config))[-1].text == cut.text


def test_a_tier_budget_caps_that_tier_only(tiny_model, tiny_model_b):
    cascade = Cascade([Tier(tiny_model, 1.0, Price(1, 1), max_new_tokens=3),
                       Tier(tiny_model_b, None, Price(1, 1))], GenerationConfig(max_new_tokens=7))
    result = cascade.answer("What is 2 + 2?")
    assert [s.generation.completion_tokens for s in result.steps] == [3, 7]
    events = list(cascade.events("What is 2 + 2?"))
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert [s.generation.completion_tokens for s in steps] == [3, 7]
