"""The training ablation's held-out saving: chosen on one seeded half, applied to the other."""

import numpy as np

from corea.ablation import held_out_saving, seeded_halves
from corea.metrics import TracePair


def _pair(n, slm_right, confidence):
    return TracePair(np.array([f"q{i}" for i in range(n)]), np.asarray(confidence, float),
                     np.asarray(slm_right, bool), np.full(n, 0.1), np.ones(n, bool),
                     np.full(n, 1.0))


def test_halves_are_disjoint_seeded_and_cover_every_question():
    pair = _pair(11, [True] * 11, [0.5] * 11)
    first, second = seeded_halves(pair)
    assert len(first) == 5 and len(second) == 6
    assert not set(first.ids) & set(second.ids)
    assert list(seeded_halves(pair)[0].ids) == list(first.ids)


def test_a_signal_that_knows_the_right_answers_saves_on_the_other_half():
    right = np.arange(200) % 2 == 0  # the SLM is right on half; the LLM on all
    saving = held_out_saving(_pair(200, right, np.where(right, 0.9, 0.1)))
    # keeps exactly its right answers: saves the LLM call on them, pays 0.1 everywhere
    test_right = seeded_halves(_pair(200, right, right))[1].slm_correct.mean()
    assert saving["loss"] == 0.0 and saving["n_test"] == 100
    assert abs(saving["saving"] - (1 - (0.1 + (1 - test_right)))) < 1e-9
    # a signal that says nothing keeps nothing within 2 points: every question is deferred
    blind = held_out_saving(_pair(200, right, np.full(200, 0.5)))
    assert blind["llm_share"] == 1.0 and blind["saving"] < 0


def _table(path, model, rows):
    import json

    path.write_text("".join(json.dumps({
        "id": f"arith-mix-{i}", "task": "arith-mix", "split": "test", "question": f"q{i}",
        "gold": "1", "model": model, "output": "Answer: 1", "answer": "1", "confidence": conf,
        "format_ok": conf is not None, "correct": right, "prompt_tokens": tokens,
        "completion_tokens": 10, "cost": cost, "latency_s": 0.1,
        "meta": {"level": 1 + i % 5}, **extra}) + "\n"
        for i, (right, conf, tokens, cost, *more) in enumerate(rows)
        for extra in [more[0] if more else {}]))


def test_the_shipped_adapters_card_states_its_measured_figures_both_ways(tmp_path):
    import json

    from corea.ablation import write_model_card

    traces, runs, adapter = tmp_path / "traces", tmp_path / "runs", tmp_path / "adapter"
    for folder in (traces, runs, adapter):
        folder.mkdir()
    levels_right = [i % 5 < 2 for i in range(200)]  # right on levels 1 and 2 only
    _table(traces / "smollm2-arith-mix.jsonl", "smollm2",
           [(False, None, 290, 7e-6)] * 200)
    # The shipped model states 0.9 on every question; the mean over its digits tells them apart.
    _table(traces / "smollm2-calibrated-arith-mix.jsonl", "smollm2+adapter",
           [(right, 0.9, 140, 3e-6, {"verbalized_mean": 0.8 if right else 0.3})
            for right in levels_right])
    _table(traces / "qwen-arith-mix.jsonl", "qwen", [(True, 0.9, 270, 7e-5)] * 200)
    # The card's recipe follows each stage back to the one it started from.
    (runs / "mix-sft.json").write_text(json.dumps(
        {"stage": "sft", "examples": 2000, "steps": 175, "train_seconds": 3180}))
    (runs / "mix-sft-conf.json").write_text(json.dumps(
        {"stage": "sft", "examples": 1350, "steps": 169, "train_seconds": 2045.7,
         "config": {"start_adapter": "runs/mix-sft/adapter"}}))
    (runs / "mix-self-label-level.json").write_text(json.dumps({"stage": "self-label"}))
    (adapter / "adapter_config.json").write_text("{}")
    assert write_model_card(adapter, traces, runs) is None  # corea.json names no stage
    (adapter / "corea.json").write_text(json.dumps(
        {"few_shot": False, "stage": "mix-sft-conf", "signal": "verbalized_mean",
         "threshold": 0.6}))
    card = write_model_card(adapter, traces, runs).read_text()
    assert "| accuracy | 0.0% → 40.0% |" in card
    assert "| AUROC of the stated confidence | — → 0.500 |" in card
    assert "| AUROC of the verbalized_mean | — → 1.000 |" in card
    assert "as served" not in card  # no Platt map declared
    assert "defers to the large model below\n0.60" in card
    assert "L1 100.0% · L2 100.0% · L3 0.0%" in card
    recipe = card.split("## How it was trained")[1].split("## Measured")[0]
    assert recipe.index("**SFT (competence)** (2000 ex. · 175 steps · 53 min)") \
        < recipe.index("**SFT, measured confidence line** (1350 ex. · 169 steps · 34 min)")
    assert "level share" not in recipe  # a stage it did not go on from
    assert "140 prompt" in card and "290 and" in card


def test_the_speed_paragraph_reports_the_measured_ratio_and_nothing_without_a_result(tmp_path):
    import json

    from corea.ablation import speed_paragraph

    assert speed_paragraph(tmp_path / "missing.json") == []
    arm = {"model": "m", "tokens_per_second": 20.0, "mean_seconds_per_question": 4.0,
           "mean_prompt_tokens": 300, "mean_completion_tokens": 120}
    result = {"command": "python benchmarks/trained_slm_speed.py --adapter A", "date": "d",
              "task": "arith-mix", "questions": 20,
              "machine": {"cores": 2, "threads": "1", "load_average_before": [1.0, 1, 1]},
              "arms": {"untrained": arm, "trained": {**arm, "model": "t",
                                                    "tokens_per_second": 15.0,
                                                    "tokens_per_second_ratio": 0.75}}}
    path = tmp_path / "speed.json"
    path.write_text(json.dumps(result))
    text = speed_paragraph(path)[0]
    assert "**0.75x**" in text and "15.0 tokens/s" in text and "--adapter A" in text


def test_a_grpo_stage_counts_the_questions_it_sampled_and_all_its_runs_time():
    from corea.ablation import _cost_cell

    record = {"train_questions": 400, "steps": 71, "grpo_seconds": 3684, "train_seconds": 97,
              "config": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                         "num_generations": 4}}
    assert _cost_cell(record) == "142 questions · 71 steps · 61 min"
    assert _cost_cell({"examples": 320, "steps": 40, "train_seconds": 660}) \
        == "320 ex. · 40 steps · 11 min"


def test_splice_section_replaces_only_its_own_part():
    from corea.ablation import splice_section

    text = "# R\n\n## A\nold a\n## B\nb\n"
    replaced = splice_section(text, "## A", "## B", ["## A", "new a"])
    assert replaced == "# R\n\n## A\nnew a\n## B\nb\n"
    # No end heading: to the end of the report; not there yet: appended after a blank line.
    assert splice_section(text, "## B", None, ["## B", "c"]) == "# R\n\n## A\nold a\n## B\nc\n"
    assert splice_section(text, "## C", None, ["## C", "x"]) == text + "\n## C\nx\n"
    # Not there yet but its end is: placed just before it.
    assert splice_section(text, "## Z", "## B", ["## Z"]) == "# R\n\n## A\nold a\n## Z\n## B\nb\n"
    assert splice_section("", "## C", None, ["## C"]) == "## C\n"
