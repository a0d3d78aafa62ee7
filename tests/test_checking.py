import pytest
from hypothesis import given, strategies as st

from corea.checking import is_correct, parse_choice, parse_number, parse_yesno


@pytest.mark.parametrize("text", ["$1,200.00", "1200", "1.2e3", "1200 dollars", "x = 1200",
                                  "1,200", "The answer is 1200."])
def test_numeric_forms(text):
    assert is_correct(text, "1200", "numeric")


@pytest.mark.parametrize("text,gold", [("3/4", "0.75"), ("-5", "-5"), ("50%", "50"), ("0.5", ".5"),
                                       ("12 + 3 = 15", "15")])
def test_numeric_values(text, gold):
    assert is_correct(text, gold, "numeric")


@pytest.mark.parametrize("text", ["1201", "120", "twelve hundred", "", None, "1/0"])
def test_numeric_mismatches(text):
    assert not is_correct(text, "1200", "numeric")


@given(st.integers(-10**9, 10**9))
def test_any_integer_matches_its_written_forms(n):
    for written in (str(n), f"{n:,}", f"${n:,}.00" if n >= 0 else f"-${-n:,}.00", f"{n / 1000}e3"):
        value = parse_number(written.replace("-$", "-"))
        assert value is not None and abs(value - n) <= max(1e-6 * abs(n), 1e-6), written
        assert is_correct(written.replace("-$", "-"), str(n), "numeric")


@given(st.integers(0, 10**6), st.integers(1, 10**6))
def test_different_integers_never_match(a, offset):
    assert not is_correct(str(a), str(a + offset), "numeric")


@pytest.mark.parametrize("text,value", [("yes", True), ("Yes.", True), ("TRUE", True), ("no", False),
                                        ("No, it is not", False), ("maybe", None), ("", None)])
def test_yesno(text, value):
    assert parse_yesno(text) is value


def test_yesno_checking():
    assert is_correct("Yes, because...", "yes", "yesno")
    assert not is_correct("no", "yes", "yesno")
    assert not is_correct("perhaps", "no", "yesno")


@pytest.mark.parametrize("text,letter", [("B", "B"), ("(c)", "C"), ("D) Paris", "D"),
                                         ("option a", "A"), ("Paris", None)])
def test_choice(text, letter):
    assert parse_choice(text) == letter


def test_exact_ignores_case_articles_and_punctuation():
    assert is_correct("The Eiffel Tower.", "eiffel tower", "exact")
    assert not is_correct("Big Ben", "eiffel tower", "exact")


def test_unknown_checker():
    with pytest.raises(ValueError, match="unknown checker"):
        is_correct("1", "1", "fuzzy")
