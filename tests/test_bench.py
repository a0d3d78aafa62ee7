"""The benchmark's own computations, checked against numbers worked out by hand."""

import json

import numpy as np
import pytest

from corea.bench import (answered_auroc, apgr, auroc_table, calibration_test_split, holdout_check,
                         holdout_table, majority_answer, reading,
                         random_deferral_saving, signal_pairs)
from corea.metrics import TracePair, join_traces, summarize
from corea.signals import with_signal
from test_cli import corea, write_trace


def slm_row(qid, answer, correct, confidence, *, format_ok=True, probability=None, margin=None):
    return {"id": qid, "task": "svamp", "answer": answer, "correct": correct, "cost": 1.0,
            "confidence": confidence, "format_ok": format_ok,
            "answer_probability": probability, "first_token_margin": margin}


def llm_row(qid, correct):
    return {"id": qid, "task": "svamp", "answer": "x", "correct": correct, "cost": 10.0,
            "confidence": 0.9, "format_ok": True}


SLM = [slm_row("a", "4", True, 0.9, probability=0.8, margin=0.7),
       slm_row("b", "5", False, 0.7, probability=0.3, margin=0.1),
       slm_row("c", None, False, None, format_ok=False)]
LLM = [llm_row("a", True), llm_row("b", True), llm_row("c", False)]
SAMPLES = [[slm_row("a", "4.0", True, 0.5), slm_row("b", "6", False, 0.5),
            slm_row("c", "1", False, 0.5)],
           [slm_row("a", "4", True, 0.5), slm_row("b", "5", False, 0.5),
            slm_row("c", None, False, None, format_ok=False)]]


def test_each_signal_becomes_the_confidence_the_sweep_defers_on():
    pairs = signal_pairs({"slm": SLM, "llm": LLM, "samples": SAMPLES}, "numeric")
    confidences = {label: pair.confidence.tolist() for label, pair in pairs.items()}
    assert confidences == {
        "verbalized (untrained)": [0.9, 0.7, 0.0],       # format failure -> 0
        "answer token probability": [0.8, 0.3, 0.0],     # no answer tokens -> 0
        "first-token margin": [0.7, 0.1, 0.0],
        "oracle (upper bound)": [1.0, 0.0, 0.0],
        "self-consistency (k=2)": [1.0, 0.5, 0.0],       # "4.0" agrees with "4" numerically
    }
    # A table traced with the digits' alternatives also has their mean.
    with_mean = [{**row, "verbalized_mean": mean} for row, mean in zip(SLM, [0.75, 0.4, None])]
    pairs_with_mean = signal_pairs({"slm": with_mean, "llm": LLM, "samples": []}, "numeric")
    assert pairs_with_mean["stated confidence, mean over its digits"].confidence.tolist() == [
        0.75, 0.4, 0.0]
    # Self-consistency pays for its two sampled replies on every question; the others pay one.
    assert pairs["self-consistency (k=2)"].slm_cost.tolist() == [3.0, 3.0, 3.0]
    assert pairs["first-token margin"].slm_cost.tolist() == [1.0, 1.0, 1.0]


def test_signals_refuse_what_they_cannot_compute():
    with pytest.raises(ValueError, match="unknown signal"):
        with_signal(SLM, "entropy")
    with pytest.raises(ValueError, match="needs sampled trace tables"):
        with_signal(SLM, "vote_share")
    with pytest.raises(ValueError, match="missing from the sampled"):
        with_signal(SLM, "vote_share", samples=[SAMPLES[0][:2]])
    plain = [{k: v for k, v in row.items() if k != "first_token_margin"} for row in SLM]
    with pytest.raises(ValueError, match="log-probabilities"):
        with_signal(plain, "first_token_margin")


def test_apgr_is_the_area_under_the_recovered_gap():
    report = {"slm_only": {"accuracy": 0.2}, "llm_only": {"accuracy": 0.6},
              "points": [{"llm_share": 0.0, "accuracy": 0.2}, {"llm_share": 0.5, "accuracy": 0.5},
                         {"llm_share": 1.0, "accuracy": 0.6}]}
    # Gap recovered: 0 at share 0, 0.75 at 0.5, 1 at 1 -> trapezoids 0.1875 + 0.4375.
    assert apgr(report) == pytest.approx(0.625)
    assert apgr({**report, "llm_only": {"accuracy": 0.2}}) is None  # no gap to recover


def pair_of(confidence, slm_correct, llm_correct, slm_cost=1.0, llm_cost=10.0):
    n = len(confidence)
    return TracePair(np.array([f"q{i}" for i in range(n)]), np.array(confidence, float),
                     np.array(slm_correct, bool), np.full(n, slm_cost),
                     np.array(llm_correct, bool), np.full(n, llm_cost))


def test_random_deferral_saving_in_expectation():
    # SLM right half the time, LLM always: staying within 2 points needs 96% deferred, which
    # costs 1 + 0.96 * 10 = 10.6 against 10: a saving of -6%.
    pair = pair_of([0.5] * 4, [True, False, True, False], [True] * 4)
    assert random_deferral_saving(pair) == pytest.approx(-0.06)


def test_calibration_and_test_splits_are_disjoint_two_thirds_and_one_third():
    pair = pair_of(np.linspace(0, 1, 9), [True] * 9, [True] * 9)
    calibration, test = calibration_test_split(pair)
    assert len(calibration) == 6 and len(test) == 3
    assert not set(calibration.ids) & set(test.ids)


def test_a_perfectly_calibrated_slm_gets_a_certified_threshold_that_holds():
    # 300 questions: the SLM says 0.9 when right (every other question) and 0.1 when wrong; the
    # LLM is always right. Keeping exactly the 0.9 answers loses nothing: 200 calibration
    # questions with none lost give p = 0.98^200 = 0.018 < 0.1, so it is certified.
    right = [i % 2 == 0 for i in range(300)]
    pair = pair_of([0.9 if r else 0.1 for r in right], right, [True] * 300)
    check = holdout_check(pair)
    assert check["guaranteed"]["threshold"] == 0.9
    assert check["guaranteed"]["test_loss"] == 0.0
    # Test third: half kept at cost 1, half deferred at 1 + 10 -> mean 6 against 10.
    assert check["guaranteed"]["test_saving"] == pytest.approx(0.4)


def test_too_few_calibration_questions_certify_nothing():
    # 150 questions -> 100 calibrate; even losing nothing, 0.98^100 = 0.13 > 0.1.
    right = [i % 2 == 0 for i in range(150)]
    pair = pair_of([0.9 if r else 0.1 for r in right], right, [True] * 150)
    check = holdout_check(pair)
    assert check["guaranteed"] is None
    assert check["empirical"]["threshold"] == 0.9
    table = "\n".join(holdout_table({"verbalized (untrained)": pair}))
    assert "none certified" in table and "114 calibration questions" in table


def test_reading_says_when_the_slm_is_too_weak_to_save_anything():
    pair = join_traces(with_signal(SLM, "oracle"), LLM)
    weak = summarize(pair_of([0.0] * 20, [False] * 20, [True] * 20))
    text = reading("gsm8k", {"verbalized (untrained)": weak, "oracle (upper bound)": weak},
                   ("18", 0.05))
    assert "rarely right" in text and "LLM alone" in text and "always answering" not in text
    strong = summarize(pair)
    text = reading("svamp", {"oracle (upper bound)": strong, "first-token margin": strong},
                   ("3", 0.1))
    assert "Best real signal within 2 points: first-token margin" in text
    assert "`--signal first_token_margin`" in text  # the winner can be deployed as it is
    assert "best separates right from wrong SLM answers is first-token margin (AUROC 1.000" in text
    backwards = summarize(pair_of([0.1, 0.9, 0.2, 0.8], [True, False, True, False], [True] * 4))
    text = reading("svamp", {"oracle (upper bound)": strong, "verbalized (untrained)": backwards},
                   ("3", 0.1))
    assert "Worse than chance at it (AUROC below 0.5): verbalized (untrained) (0.000)" in text


def test_reading_warns_when_the_llm_is_no_better_than_the_commonest_answer():
    report = summarize(pair_of([0.9, 0.1, 0.9, 0.1], [True, False, True, False],
                               [True, False, False, True]))  # the LLM is right on half
    text = reading("strategyqa", {"oracle (upper bound)": report,
                                  "verbalized (calibrated)": report},
                   majority_answer([{"gold": "no"}, {"gold": "no"}, {"gold": "yes"},
                                    {"gold": "no"}]))
    assert "no better than always answering “no” (right on 75.0%)" in text
    assert "The calibrated SLM is right on 50.0%" in text


def test_sweep_cli_defers_on_the_chosen_signal(tmp_path):
    paths = {name: write_trace(tmp_path / f"{name}.jsonl", rows, "m")
             for name, rows in (("slm", SLM), ("llm", LLM), ("s1", SAMPLES[0]), ("s2", SAMPLES[1]))}

    def sweep(*extra):
        return corea("sweep", "--slm", str(paths["slm"]), "--llm", str(paths["llm"]), *extra)

    margin = json.loads(sweep("--json", "--signal", "first_token_margin").stdout)
    expected = summarize(join_traces(with_signal(SLM, "first_token_margin"), LLM))
    assert [p["threshold"] for p in margin["points"]] == \
        [p["threshold"] for p in expected["points"]]
    assert margin["aiq"] == pytest.approx(expected["aiq"])
    votes = json.loads(sweep("--json", "--signal", "vote_share", "--samples", str(paths["s1"]),
                             str(paths["s2"])).stdout)
    assert sorted(p["threshold"] for p in votes["points"])[:3] == [0.0, 0.5, 1.0]
    refused = sweep("--signal", "vote_share")
    assert refused.returncode != 0 and "sampled trace tables" in refused.stderr


def test_auroc_table_has_a_row_per_set_and_a_column_per_signal():
    lines = auroc_table({"gsm8k": {"verbalized (untrained)": (0.519, 0.38),
                                   "first-token margin": (None, None)},
                         "svamp": {"verbalized (untrained)": (0.5574, 0.5)}})
    assert "| data set | verbalized (untrained) | first-token margin |" in lines
    assert "| gsm8k | 0.519 · 0.380 | — · — |" in lines and "| svamp | 0.557 · 0.500 | — |" in lines


def test_answered_auroc_leaves_out_replies_without_an_answer():
    # a: right, 0.9; b: wrong, 0.7; c: no answer (wrong, 0). Over all three the ranking is
    # perfect; over the two answers too. Swap a's and b's confidences and it is 0 on answers,
    # yet still 0.5 over all, where c sits below both.
    pair = join_traces(with_signal(SLM, "verbalized"), LLM)
    assert answered_auroc(pair, {"a", "b"}) == 1.0
    swapped = join_traces([{**SLM[0], "confidence": 0.7}, {**SLM[1], "confidence": 0.9}, SLM[2]],
                          LLM)
    assert answered_auroc(swapped, {"a", "b"}) == 0.0
    assert summarize(swapped)["auroc"] == 0.5
    assert answered_auroc(pair, set()) is None


def test_serving_lines_read_the_speed_scripts_results(tmp_path):
    from corea.bench import serving_lines

    assert serving_lines(tmp_path) == []
    machine = {"machine": "x86_64", "cores": 2, "threads": "1", "load_average_before": [3.2, 3, 3]}
    (tmp_path / "token_signal_cost.json").write_text(json.dumps({
        "command": "python benchmarks/token_signal_cost.py --limit 2", "date": "2025-01-01 10:00",
        "machine": machine, "questions": 2, "task": "svamp", "model": "smollm2-135m",
        "same_text": 2, "max_logprob_difference_vs_logits_all": 0.0,
        "arms": {"plain": {"mean_seconds_per_question": 2.0, "ratio_to_plain": 1.0},
                 "token signals": {"mean_seconds_per_question": 2.1, "ratio_to_plain": 1.05},
                 "token signals via logits_all (before)": {"mean_seconds_per_question": 7.2,
                                                           "ratio_to_plain": 3.6}}}))
    (tmp_path / "ask_latency.json").write_text(json.dumps({
        "command": "python benchmarks/ask_latency.py", "date": "2025-01-01 10:05",
        "machine": machine, "questions": [{"deferred": True}, {"deferred": False}],
        "first_token_s": {"median": 0.4, "max": 0.6}, "final_answer_s": {"median": 3.0, "max": 9.5}}))
    cost, _, latency, _ = serving_lines(tmp_path)
    assert "**1.05x** plain" in cost and "3.60x" in cost and "load average 3.2" in cost
    assert "2 of 2 questions" in cost and "--limit 2" in cost
    assert "median 0.40 s (max 0.60 s)" in latency and "1 deferred" in latency


def test_step_routing_section_reads_the_step_report_results(tmp_path):
    from benchmarks.step_report import LOSSES, _loss_header, cheapest_of, cheapest_within, \
        summary_point

    from corea.bench import STEP_SECTION, step_routing_lines

    assert step_routing_lines(tmp_path) == []
    llm_accuracy, llm_cost = 0.5, 10.0
    methods = {"step: learned": [{"threshold": 0.3, "accuracy": 0.7, "cost": 8.0}],
               "question: verbalized": [{"threshold": 0.0, "accuracy": 0.52, "cost": 1.0}]}
    chosen = {name: [cheapest_within(points, llm_accuracy, loss) for loss in LOSSES]
              for name, points in methods.items()}
    (tmp_path / "step_routing.json").write_text(json.dumps({
        "command": "python benchmarks/step_routing.py report --task arith-mix",
        "date": "2025-01-01",
        "machine": "x86_64, 2 CPU cores", "tasks": [{
            "task": "arith-mix", "questions": 200, "slm_accuracy": 0.52, "llm_accuracy": 0.5,
            "best": {_loss_header(loss): {kind: summary_point(cheapest_of(chosen, kind, loss),
                                                              llm_cost)
                                          for kind in ("step", "question")}
                     for loss in LOSSES}}]}))
    lines = step_routing_lines(tmp_path)
    assert lines[0] == STEP_SECTION and "--task arith-mix" in lines[2]
    step_row = next(line for line in lines if "| step level |" in line)
    question_row = next(line for line in lines if "| question level |" in line)
    header = next(line for line in lines if line.startswith("| set |"))
    columns = [cell.strip() for cell in header.split("|")[5:-1]]
    assert columns[0] == "gain ≥ 10 pts" and "loss ≤ 2 pts" in columns
    step_cells = [cell.strip() for cell in step_row.split("|")[5:-1]]
    question_cells = [cell.strip() for cell in question_row.split("|")[5:-1]]
    assert step_cells[0] == "20.0% (learned, acc 70.0%)" and question_cells[0] == "none"
    at_two = columns.index("loss ≤ 2 pts")
    assert question_cells[at_two] == "90.0% (verbalized, acc 52.0%)"


def test_slm_comparison_reads_each_model_as_served(tmp_path, monkeypatch):
    import benchmarks.compare_slms as compare_slms

    def table(name, rows):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def row(i, correct, confidence):
        return {"id": f"q{i}", "task": "t", "question": f"q{i}?", "gold": "1", "model": "m",
                "output": "Answer: 1", "answer": "1", "confidence": confidence,
                "format_ok": True, "correct": correct, "prompt_tokens": 1,
                "completion_tokens": 1, "cost": 1.0, "latency_s": 0.1}

    table("a-t", [row(i, i < 6, 0.9 if i < 6 else 0.2) for i in range(10)])
    table("qwen-t", [row(i, True, 0.9) for i in range(10)])
    monkeypatch.setattr(compare_slms, "TRACES", tmp_path)
    result = compare_slms.compare([("a", "a", "verbalized", None)], ["t"], 0.8)["a"]["t"]
    assert result["accuracy"] == 0.6 and result["auroc"] == 1.0
    assert result["cascade_at_0.8"] == {"accuracy": 1.0, "llm_accuracy": 1.0, "kept": 6,
                                        "kept_right": 6, "deferred_share": 0.4}
    with pytest.raises(Exception, match="LABEL=PREFIX:SIGNAL"):
        compare_slms.parse_slm("no-prefix")


def test_program_llm_section_measures_both_llms_on_the_same_questions(tmp_path, monkeypatch):
    import benchmarks.program_llm as program_llm

    from corea.bench import PROGRAM_SECTION, program_llm_lines

    def table(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def row(i, model, correct, cost, confidence=1.0):
        return {"id": f"q{i}", "task": "t", "question": f"q{i}?", "gold": "1", "model": model,
                "output": "Answer: 1", "answer": "1", "confidence": confidence,
                "format_ok": True, "correct": correct, "prompt_tokens": 1,
                "completion_tokens": 1, "cost": cost, "latency_s": 0.1}

    # The SLM is sure and right on q0-q5, unsure and wrong on q6-q11; the plain LLM is right on
    # half, the program LLM on all; q12 is missing from the program table and is left out.
    table("smollm2-calibrated-t.jsonl", [row(i, "slm", i < 6, 1.0, 0.9 if i < 6 else 0.1)
                                         for i in range(13)])
    table("qwen-t.jsonl", [row(i, "qwen", i % 2 == 0, 10.0) for i in range(13)])
    table("qwen-program-t.jsonl", [row(i, "program:qwen", True, 8.0) for i in range(12)])
    measured = program_llm.measure("t", program_llm.SLM_TABLES[0], traces=tmp_path)
    assert measured["questions"] == 12 and measured["signal"] == "verbalized"
    assert (measured["plain"]["accuracy"], measured["program"]["accuracy"]) == (0.5, 1.0)
    assert measured["program_cost_vs_plain"] == pytest.approx(0.8)
    # Keeping the six sure answers loses nothing against the program LLM and skips half its
    # calls: (12 x 1 + 6 x 8) / (12 x 8) of its cost.
    best = measured["program"]["best_within_2pt"]
    assert best["accuracy"] == 1.0 and best["saving"] == pytest.approx(1 - 60 / 96)
    assert program_llm.measure("missing", program_llm.SLM_TABLES[0], traces=tmp_path) is None
    # An SLM without its table on the set is left out, not an error.
    assert program_llm.measure("t", program_llm.SLM_TABLES[1], traces=tmp_path) is None

    (tmp_path / "program_llm.json").write_text(json.dumps({
        "command": "python benchmarks/program_llm.py --task t", "date": "2025-01-01",
        "machine": "x86_64, 2 CPU cores", "tasks": [measured]}))
    lines = program_llm_lines(tmp_path)
    assert lines[0] == PROGRAM_SECTION
    program_row = next(line for line in lines if "| program |" in line)
    assert "37.5% (acc 100.0%, 50.0% to the LLM)" in program_row
    assert "| slm (verbalized) | 50.0% |" in program_row
    assert program_llm_lines(tmp_path / "none") == []
    # A set the plain LLM was not traced on is measured against the program LLM alone.
    (tmp_path / "qwen-t.jsonl").unlink()
    alone = program_llm.measure("t", program_llm.SLM_TABLES[0], traces=tmp_path)
    assert "plain" not in alone and alone["program"]["best_within_2pt"] == best
    (tmp_path / "program_llm.json").write_text(json.dumps({
        "command": "python benchmarks/program_llm.py --task t", "date": "2025-01-01",
        "machine": "x86_64, 2 CPU cores", "tasks": [alone]}))
    rows = [line for line in program_llm_lines(tmp_path) if line.startswith("| t |")]
    assert len(rows) == 1 and "| — · 100.0% | program |" in rows[0]
