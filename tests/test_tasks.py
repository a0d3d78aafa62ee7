import json

import pytest

from corea import arithmetic
from corea.checking import is_correct
from corea.tasks import BUILTIN_TASKS, ColumnMapping, get_task


@pytest.mark.parametrize("name,split,count", [("gsm8k", "test", 1319), ("gsm8k", "train", 7473),
                                              ("svamp", "test", 1000), ("strategyqa", "dev", 229),
                                              ("strategyqa", "train", 2061)])
def test_bundled_data_sets_are_complete(name, split, count):
    examples = get_task(name).examples(split)
    assert len(examples) == count
    assert len({e.id for e in examples}) == count  # ids are unique


def test_bundled_golds_are_checkable():
    gsm = get_task("gsm8k").examples("test", 1)[0]
    assert gsm.id == "gsm8k-test-00000" and gsm.gold == "18"
    assert is_correct("$18", gsm.gold, "numeric")
    svamp = get_task("svamp").examples(limit=1)[0]
    assert svamp.gold == "51" and svamp.question.endswith("buy each pack?")
    qa = get_task("strategyqa").examples("dev", 1)[0]
    assert qa.gold == "no" and get_task("strategyqa").checker == "yesno"


def test_gsm8k_golds_have_no_thousands_separator():
    golds = [e.gold for e in get_task("gsm8k").examples("train")]
    assert all("," not in gold for gold in golds)
    assert all(is_correct(gold, gold, "numeric") for gold in golds)


def test_generated_task_is_reproducible_and_levelled():
    first = get_task("arith").examples("test", 30)
    again = get_task("arith").examples("test", 30)
    assert [(e.id, e.question, e.gold) for e in first] == [(e.id, e.question, e.gold) for e in again]
    assert [e.meta["level"] for e in first[:6]] == [1, 2, 3, 1, 2, 3]
    # a prefix of a longer list is the shorter list: limits never reshuffle questions
    assert [e.id for e in get_task("arith").examples("test", 60)[:30]] == [e.id for e in first]


@pytest.mark.parametrize("level", arithmetic.LEVELS)
def test_generated_train_and_test_never_share_a_question(level):
    train = {p.question for p in arithmetic.generate(level, "train", 400)}
    test = {p.question for p in arithmetic.generate(level, "test", 100)}
    assert not train & test
    problems = arithmetic.generate(level, "test", 100)
    assert all(p.steps == level and p.answer >= 0 for p in problems)
    assert all(p.question.count("Then ") == level for p in problems)


def test_generated_answers_follow_the_story():
    rng = __import__("random").Random(7)
    problem = arithmetic.generate_problem(rng, 1)
    # Replay the one step by reading its numbers back out of the text.
    import re
    start = int(re.search(r"has (\d+)", problem.question).group(1))
    sentence = problem.question.split("Then ")[1]
    numbers = [int(x) for x in re.findall(r"\d+", sentence)]
    if "finds" in sentence:
        expected = start + numbers[0]
    elif "gives away" in sentence:
        expected = start - numbers[0]
    elif "buys" in sentence:
        expected = start + numbers[0] * numbers[1]
    elif "doubles" in sentence:
        expected = start * 2
    else:
        expected = start // numbers[0]
    assert problem.answer == expected


def test_file_task_with_column_mapping(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps({"q": f"What is {i}+1?", "a": i + 1, "key": f"k{i}"})
                              for i in range(5)))
    task = get_task(str(path), ColumnMapping(question="q", answer="a", id="key"))
    examples = task.examples(limit=3)
    assert [e.id for e in examples] == ["mine-k0", "mine-k1", "mine-k2"]
    assert examples[2].gold == "3"


def test_csv_task_and_hash_ids(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nIs ice cold?,yes\nIs fire cold?,no\n")
    examples = get_task(str(path), ColumnMapping(checker="yesno")).examples()
    assert [e.gold for e in examples] == ["yes", "no"]
    assert examples[0].id != examples[1].id and examples[0].id.startswith("qa-")


def test_missing_column_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "x", "answer": 1}) + "\n")
    with pytest.raises(ValueError, match="no column 'question'.*--question-field"):
        get_task(str(path)).examples()


def test_unknown_task_split_and_limit():
    with pytest.raises(ValueError, match="unknown task"):
        get_task("mmlu")
    with pytest.raises(ValueError, match="no split 'validation'"):
        get_task("gsm8k").examples("validation")
    with pytest.raises(ValueError, match="positive"):
        get_task("gsm8k").examples(limit=0)


def test_every_builtin_task_loads():
    for name, task in BUILTIN_TASKS.items():
        assert task.examples(limit=3), name


def test_reworded_arith_mix_keeps_numbers_and_answers_in_other_words():
    import re

    plain = get_task("arith-mix").examples("test")
    reworded = get_task("arith-mix-reworded").examples("test")
    assert [e.id + "-reworded" for e in plain] == [e.id for e in reworded]
    assert [e.gold for e in plain] == [e.gold for e in reworded]
    generator_words = ("finds", "gives away", "buys", "doubles", "splits")
    for before, after in zip(plain, reworded):
        assert before.question != after.question
        assert not any(word in after.question for word in generator_words)
        # The same numbers in the same order, each sentence kept.
        assert re.findall(r"\d+", before.question) == re.findall(r"\d+", after.question)
        assert before.question.count("Then ") == after.question.count("Then ")
    assert arithmetic.in_other_words("Then Ann donates 3 pens.") == "Then Ann donates 3 pens."
