import pytest

from training.rewards import (brier_reward, completion_text, correctness_reward, format_reward,
                              group_l1_reward)

RIGHT_SURE = "4 * 3 = 12\nAnswer: 12\nConfidence: 0.9"
WRONG_SURE = "Answer: 11\nConfidence: 0.8"
RIGHT_UNSURE = "Answer: 12\nConfidence: 0.25"
NO_CONFIDENCE = "Answer: 12"              # right answer, broken format
OUT_OF_RANGE = "Answer: 12\nConfidence: 1.5"
COMPLETIONS = [RIGHT_SURE, WRONG_SURE, RIGHT_UNSURE, NO_CONFIDENCE, OUT_OF_RANGE]
COLUMNS = {"gold": ["12"] * 5, "checker": ["numeric"] * 5}


def test_format():
    assert format_reward(COMPLETIONS) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_correctness_is_zero_when_the_format_fails():
    assert correctness_reward(COMPLETIONS, **COLUMNS) == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_brier_exact_values():
    # 1 - (1 - 0.9)^2 = 0.99; 1 - (0 - 0.8)^2 = 0.36; 1 - (1 - 0.25)^2 = 0.4375
    assert brier_reward(COMPLETIONS, **COLUMNS) == pytest.approx([0.99, 0.36, 0.4375, 0.0, 0.0])


def test_group_l1_exact_values():
    ids = ["a", "a", "a", "b", "b"]
    # group a: 2 of 3 right -> p = 2/3; group b: none well-formed and right -> p = 0
    expected = [-abs(0.9 - 2 / 3), -abs(0.8 - 2 / 3), -abs(0.25 - 2 / 3), 0.0, 0.0]
    assert group_l1_reward(COMPLETIONS, id=ids, **COLUMNS) == pytest.approx(expected)


def test_group_l1_groups_by_id_not_position():
    completions = [RIGHT_SURE, WRONG_SURE, RIGHT_SURE, WRONG_SURE]
    ids = ["a", "b", "a", "b"]  # a: always right, b: always wrong
    assert group_l1_reward(completions, id=ids, gold=["12"] * 4, checker=["numeric"] * 4) == \
        pytest.approx([-0.1, -0.8, -0.1, -0.8])


def test_conversational_completions_and_extra_columns():
    conversational = [[{"role": "assistant", "content": RIGHT_SURE}]]
    assert completion_text(conversational[0]) == RIGHT_SURE
    # TRL passes every dataset column and its own keywords; the rewards ignore what they don't use
    assert brier_reward(conversational, gold=["12"], checker=["numeric"], level=[1],
                        trainer_state=None, log_metric=print) == pytest.approx([0.99])


def test_yes_no_tasks():
    assert correctness_reward(["Answer: Yes\nConfidence: 0.7"], gold=["yes"],
                              checker=["yesno"]) == [1.0]
