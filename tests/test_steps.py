"""Step-level routing: splitting, the routers, the step loop's costs and faults, the cascade's
"routing": "step", and replay on traces matching the live loop. Tiny models built from a config
(random weights: the tests check plumbing and accounting, not answers), and the embedded SLM on
llama.cpp where the backend itself is under test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from corea.cascade import Cascade, CascadeConfig, Tier
from corea.costs import Price
from corea.models import GenerationConfig, TransformersModel
from corea.protocol import build_messages
from corea.steps import (LEARNED_FEATURES, StepConfig, StepRouter, ThresholdRouter, Writer,
                         equation_check, handoff_step, load_router, read_step_trace,
                         replay_handoff, run_step_trace, split_steps, step_end, step_features)
from corea.tasks import ColumnMapping, get_task
from tiny import build_tiny_model
from conftest import embedded_installed, free_port

SLM_PRICE, LLM_PRICE = Price(1.0, 3.0), Price(10.0, 30.0)
# Greedy, the random tiny models write nothing but newlines; seeded sampling gives them varied
# text with full stops and line ends, so steps end at delimiters as well as at budgets.
SAMPLED = GenerationConfig(max_new_tokens=40, temperature=1.0, seed=0)
WORDS = (" ",)  # sampled gibberish has few full stops: a step per word in these tests
QUESTION = "Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many are left?"


class Scored:
    """A router that scores each draft with a fixed number: decisions independent of the random
    weights, so a test can ask for "keep all" or "keep none"."""

    kind = "fixed"

    def __init__(self, value: float):
        self.value = value

    def score(self, features: dict) -> float:
        return self.value


@pytest.fixture(scope="module")
def slm(tiny_model_dir):
    return TransformersModel(tiny_model_dir, name="tiny-slm", logprobs=True)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return TransformersModel(build_tiny_model(tmp_path_factory.mktemp("tiny-llm"), seed=1),
                             name="tiny-llm")


def routed(slm, llm, score: float, threshold: float = 0.5, **options) -> StepRouter:
    options.setdefault("delimiters", WORDS)
    return StepRouter(Writer(slm, SLM_PRICE), Writer(llm, LLM_PRICE), threshold,
                      StepConfig(**options), SAMPLED,
                      router=Scored(score))


# ------------------------------------------------------------------------------------ splitting

def test_steps_split_at_lines_and_full_stops_and_join_back():
    text = "He has 3.5 kg. Then 3 * 4 = 12.\nAnswer: 12\nConfidence: 0.9"
    steps = split_steps(text)
    assert steps == ["He has 3.5 kg.", " Then 3 * 4 = 12.\n", "Answer: 12\n", "Confidence: 0.9"]
    assert "".join(steps) == text
    assert step_end("\n\nFirst line\nsecond") == len("\n\nFirst line\n")  # leading blanks
    assert step_end("no end yet") is None


def test_equation_check_is_a_calculator():
    assert equation_check("3 boxes of 4 is 3 * 4 = 12 apples") == 1.0
    assert equation_check("27 * 3 = 74 groups") == 0.0
    assert equation_check("he has $1,200 + $300 = $1,500") == 1.0
    assert equation_check("no arithmetic here") == 0.5


def test_step_features_read_token_statistics():
    rows = (("3", -0.1, -2.5), (" *", -1.0, -1.2), (" 4", -0.2, None))
    features = step_features("3 * 4", rows, index=2, cut=False, previous="3 * 4 before")
    assert features["mean_prob"] == pytest.approx(np.exp(-1.3 / 3))
    assert features["min_prob"] == pytest.approx(np.exp(-1.0))
    assert features["min_margin"] == pytest.approx(np.exp(-1.0) - np.exp(-1.2))
    assert features["tokens"] == 3 and features["repeat"] is True
    assert step_features("", None, index=0, cut=False)["mean_prob"] is None
    assert set(LEARNED_FEATURES) <= set(features)


# --------------------------------------------------------------------------------------- config

def test_cascade_config_routing_round_trips_and_refuses_bad_input(tmp_path):
    data = {"tiers": [{"model": "smollm2", "threshold": 0.6}, {"model": "qwen"}],
            "routing": "step", "step": {"router": "learned", "max_switches": 2, "llm_steps": 1}}
    config = CascadeConfig.from_dict(data)
    assert config.routing == "step" and config.step.max_switches == 2
    config.save(tmp_path / "c.json")
    assert CascadeConfig.load(tmp_path / "c.json") == config
    plain = CascadeConfig.from_dict({"tiers": data["tiers"]})
    assert plain.routing == "question" and "routing" not in plain.to_dict()
    bad = [({"routing": "token"}, "unknown routing"),
           ({"step": {"router": "learned"}}, "needs \"routing\""),
           ({"routing": "step", "step": {"max_switchs": 1}}, "unknown step option"),
           ({"routing": "step", "step": {"max_switches": -1}}, "max_switches"),
           ({"routing": "step", "step": {"router": "oracle"}}, "unknown step router"),
           ({"routing": "step", "step": {"delimiters": []}}, "delimiters")]
    for extra, message in bad:
        with pytest.raises(ValueError, match=message):
            CascadeConfig.from_dict({"tiers": data["tiers"], **extra})
    three = [{"model": "a", "threshold": 0.5}, {"model": "b", "threshold": 0.5}, {"model": "c"}]
    with pytest.raises(ValueError, match="two tiers"):
        CascadeConfig.from_dict({"tiers": three, "routing": "step"})


def test_fitted_router_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="python -m training router"):
        load_router("learned", path=tmp_path / "missing.json")
    (tmp_path / "r.json").write_text(json.dumps({"kind": "gmm"}))
    with pytest.raises(ValueError, match="not 'learned'"):
        load_router("learned", path=tmp_path / "r.json")


# ------------------------------------------------------------------------------------- the loop

def test_slm_keeping_every_step_reads_its_prompt_once(slm, llm):
    reply = routed(slm, llm, score=1.0).run(build_messages(QUESTION))
    assert reply.steps and all(step["model"] == "tiny-slm" for step in reply.steps)
    assert reply.switches == 0 and "".join(s["text"] for s in reply.steps) == reply.text
    billed = [call["billed_prompt_tokens"] for call in reply.calls]
    assert billed[0] == reply.calls[0]["prompt_tokens"] > 0 and not any(billed[1:])
    assert reply.totals()["cost"] == pytest.approx(sum(
        SLM_PRICE.cost(c["billed_prompt_tokens"], c["completion_tokens"]) for c in reply.calls))


def test_a_refused_draft_hands_the_rest_to_the_llm_at_the_full_prefix_price(slm, llm):
    reply = routed(slm, llm, score=0.0).run(build_messages(QUESTION))
    assert reply.switches == 1
    first_llm = next(step for step in reply.steps if step["model"] == "tiny-llm")
    assert "draft" in first_llm and first_llm["draft_confidence"] == 0.0
    llm_calls = [c for c in reply.calls if c["model"] == "tiny-llm"]
    assert len(llm_calls) == 1 and llm_calls[0]["billed_prompt_tokens"] == \
        llm_calls[0]["prompt_tokens"] > 0
    thrown = [c for c in reply.calls if c.get("kept") is False]
    assert len(thrown) == 1 and thrown[0]["model"] == "tiny-slm"  # the draft is paid for
    by_model = reply.totals()["by_model"]
    assert set(by_model) == {"tiny-slm", "tiny-llm"} and reply.step_shares()["tiny-llm"] > 0


def test_each_writer_reads_its_own_prompt(slm, llm, monkeypatch):
    """A zero-shot SLM (a trained adapter) drafts without the worked examples; the LLM it hands
    over to still reads them."""
    few = routed(slm, llm, score=0.0).answer(QUESTION)
    monkeypatch.setattr(slm, "few_shot", False)
    zero = routed(slm, llm, score=0.0).answer(QUESTION)

    def first_prompt(reply, model):
        return next(c["prompt_tokens"] for c in reply.calls if c["model"] == model)

    zero_shot_tokens = len(slm.tokenizer.apply_chat_template(
        build_messages(QUESTION, few_shot=False), add_generation_prompt=True,
        return_dict=True)["input_ids"])
    assert first_prompt(zero, "tiny-slm") == zero_shot_tokens < first_prompt(few, "tiny-slm")
    # Handed over at the first step, the LLM reads its few-shot prompt alone, both times.
    assert first_prompt(zero, "tiny-llm") == first_prompt(few, "tiny-llm") > zero_shot_tokens


def test_steer_shape_pays_the_prefix_at_every_switch_and_stops_at_the_limit(slm, llm):
    reply = routed(slm, llm, score=0.0, llm_steps=1, max_switches=3,
                   step_max_tokens=3).run(build_messages(QUESTION))
    assert 1 <= reply.switches <= 3
    llm_calls = [c for c in reply.calls if c["model"] == "tiny-llm"]
    assert len(llm_calls) == reply.switches  # one call per switch: the limit bounds the loop
    # After each LLM step the SLM drafts again and must read everything written so far.
    slm_after_llm = [b for a, b in zip(reply.calls, reply.calls[1:])
                     if a["model"] == "tiny-llm" and b["model"] == "tiny-slm"]
    assert all(c["billed_prompt_tokens"] == c["prompt_tokens"] for c in slm_after_llm + llm_calls)
    if reply.switches >= 2:
        assert llm_calls[1]["prompt_tokens"] > llm_calls[0]["prompt_tokens"]


def test_a_step_without_delimiter_is_cut_at_its_budget_and_counted(slm, llm):
    reply = routed(slm, llm, score=1.0, step_max_tokens=2, max_steps=6,
                   delimiters=("\n",)).run(
        build_messages(QUESTION))
    cut = [step for step in reply.steps if step.get("cut")]
    assert reply.cut_steps == len(cut) > 0
    kept_calls = [c for c in reply.calls if c.get("kept", True)]
    assert all(c["completion_tokens"] <= 2 for c in kept_calls)
    assert len(reply.steps) <= 6


def test_llm_failure_mid_question_falls_back_to_the_slm(slm):
    from corea.models import EndpointModel

    dead = EndpointModel(f"http://127.0.0.1:{free_port()}/v1", "nothing-here", timeout_s=5)
    reply = StepRouter(Writer(slm, SLM_PRICE), Writer(dead, LLM_PRICE), 0.5,
                       StepConfig(delimiters=WORDS),
                       SAMPLED, router=Scored(0.0)).run(
        build_messages(QUESTION))
    assert reply.fallback and "failed" in reply.error
    assert reply.steps and reply.steps[-1]["model"] == "tiny-slm"
    assert all(call["model"] == "tiny-slm" for call in reply.calls)


def test_step_routing_needs_the_slms_token_probabilities(tiny_model, llm):
    with pytest.raises(ValueError, match="logprobs=True"):
        StepRouter(Writer(tiny_model, SLM_PRICE), Writer(llm, LLM_PRICE), 0.5, StepConfig())


def test_the_cascade_consults_step_routing(slm, llm):
    cascade = Cascade([Tier(slm, 0.5, SLM_PRICE), Tier(llm, None, LLM_PRICE)],
                      SAMPLED, step=StepConfig(router="threshold", statistic="mean_prob",
                                               delimiters=WORDS))
    result = cascade.answer_batch([QUESTION], golds=["10"])[0]
    reply = result.routed
    assert reply is not None and result.cost == pytest.approx(reply.totals()["cost"])
    assert result.steps[0].generation.text == reply.text and result.correct is not None
    # A draft is kept exactly when its mean token probability reaches the tier's threshold.
    for step in reply.steps:
        if step["model"] == "tiny-slm" and "features" in step:
            assert step["confidence"] >= 0.5 or reply.switches == 1
        if "draft_confidence" in step:
            assert step["draft_confidence"] < 0.5
    events = list(cascade.events(QUESTION))
    streamed = [e for e in events if e["type"] == "route_step"]
    assert streamed and streamed[-1]["text"] == events[-1]["result"].routed.text
    assert events[-1]["type"] == "done" and events[-2]["type"] == "step"


# ----------------------------------------------------------------------------- replay on traces

def test_replay_on_traces_matches_the_live_one_switch_run(slm, llm, tmp_path):
    data = tmp_path / "qs.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": a}) + "\n"
                            for i, (q, a) in enumerate([(QUESTION, "10"),
                                                        ("What is 17 * 3?", "51")])))
    task = get_task(str(data), ColumnMapping(id="id"))
    generation = SAMPLED
    rows = run_step_trace(Writer(slm, SLM_PRICE), task, tmp_path / "slm.jsonl",
                          generation=generation, delimiters=WORDS, progress=None)
    assert read_step_trace(tmp_path / "slm.jsonl") == rows and len(rows) == 2
    router = ThresholdRouter("mean_prob")
    for row in rows:
        scores = sorted({router.score(s["features"]) for s in row["steps"] if s["text"].strip()})
        assert len(scores) >= 2
        # Halfway between two scores, far from both: the same decision live, where the
        # probabilities are computed again and may differ in their last digits.
        threshold = (scores[0] + scores[1]) / 2
        k = handoff_step(row["steps"], router, threshold)
        assert k is not None
        prefix = "".join(step["text"] for step in row["steps"][:k])
        kept = sum(call["completion_tokens"] for call in row["calls"][:k])
        messages = build_messages(row["question"], hint=task.hint)  # as the trace asked it
        continuation = llm.continue_reply(messages, prefix,
                                          GenerationConfig(max_new_tokens=40 - kept,
                                                           temperature=1.0, seed=0))
        replayed = replay_handoff(
            row, k, {"text": continuation.text, "prompt_tokens": continuation.prompt_tokens,
                     "completion_tokens": continuation.completion_tokens, "latency_s": 0.0},
            llm_name="tiny-llm", llm_price=LLM_PRICE, llm_params=None)
        live = StepRouter(Writer(slm, SLM_PRICE), Writer(llm, LLM_PRICE), threshold,
                          StepConfig(delimiters=WORDS), generation, router=router).run(messages)
        assert replayed["output"] == live.text
        assert replayed["cost"] == pytest.approx(live.totals()["cost"])
        assert [s["model"] for s in replayed["steps"]][:k] == ["tiny-slm"] * k


# -------------------------------------------------------------------------------- fitted routers

def test_router_fitting_labels_steps_against_the_reference_and_learns():
    from corea import arithmetic
    from training.router import fit_mixture, fit_policy, step_labels

    problem = arithmetic.generate(2, "train", 1)[0]
    right = problem.working[0].rsplit("=", 1)[1].strip()
    row = {"id": "arith-mix-arith2-train-00000", "question": problem.question,
           "gold": str(problem.answer), "steps": [
               {"text": f"First, {problem.working[0]}.", "features": {"equation_check": 1.0}},
               {"text": " Then 2 + 2 = 5.", "features": {"equation_check": 0.0}},
               {"text": f"\nAnswer: {problem.answer}\n",
                "features": {"answer_line": True}},
               {"text": "Confidence: 0.9", "features": {}}]}
    assert right in row["steps"][0]["text"]
    # once off track, the solution stays off track; the confidence line is no reasoning
    assert step_labels(row) == [1, 0, 0, None]

    rng = np.random.default_rng(0)
    features, labels = [], []
    for label in (0, 1) * 60:
        p = float(np.clip(rng.normal(0.85 if label else 0.35, 0.08), 0.01, 0.99))
        features.append({"mean_prob": p, "min_prob": p / 2, "mean_margin": p, "min_margin": p / 3,
                         "tokens": 10, "index": 1, "cut": False, "numbers": 2,
                         "equation_check": float(label), "answer_line": False, "repeat": False})
        labels.append(label)
    policy = fit_policy(features, np.array(labels))
    assert policy.score(features[1]) > 0.8 > 0.2 > policy.score(features[0])
    mixture = fit_mixture(features)
    confident = [mixture.score(f) for f, y in zip(features, labels) if y]
    unsure = [mixture.score(f) for f, y in zip(features, labels) if not y]
    assert np.mean(confident) > 0.8 and np.mean(unsure) < 0.2
    with pytest.raises(ValueError, match="both"):
        fit_policy(features[:1], np.array(labels[:1]))


# ------------------------------------------------------------------------ the real llama.cpp SLM

@pytest.mark.skipif(not embedded_installed("smollm2"), reason="embedded SmolLM2 not installed")
def test_llama_cpp_continues_a_prefix_and_stops_at_the_step_end():
    pytest.importorskip("llama_cpp")
    from corea.models import get_model

    model = get_model("smollm2", logprobs=True)
    messages = build_messages("Maya has 9 shells. Then the number of shells Maya has doubles. "
                              "How many shells does Maya have now?")
    first = model.continue_reply(messages, "", GenerationConfig(max_new_tokens=48), step_end)
    assert first.text.strip() and step_end(first.text + " x") is not None
    assert len(first.token_logprobs) <= first.completion_tokens
    assert "".join(row[0] for row in first.token_logprobs) == first.text
    second = model.continue_reply(messages, first.text, GenerationConfig(max_new_tokens=48),
                                  step_end)
    assert second.prompt_tokens > first.prompt_tokens  # the prefix is read as prompt


@pytest.mark.skipif(not embedded_installed("smollm2"), reason="embedded SmolLM2 not installed")
def test_a_step_trace_carries_the_stated_confidence_signal_of_its_reply(tmp_path):
    # The served question-level signal (verbalized_mean), read off the confidence step, is the
    # one the whole reply gives when it is written in one go: the same text, and the same
    # distribution over the digits up to llama.cpp's arithmetic (a paused generation evaluates
    # the prefix in other batches; about 0.01 apart here).
    pytest.importorskip("llama_cpp")
    from corea.models import get_model
    from corea.signals import verbalized_mean

    model = get_model("smollm2-135m-calibrated", logprobs=True)  # it states a confidence
    data = tmp_path / "qs.jsonl"
    question = "Maya has 9 shells. Then the number of shells Maya has doubles. How many now?"
    data.write_text(json.dumps({"id": "q0", "question": question, "answer": "18"}) + "\n")
    task = get_task(str(data), ColumnMapping(id="id"))
    row = run_step_trace(Writer(model, SLM_PRICE), task, tmp_path / "slm.jsonl", progress=None)[0]
    whole = model.generate([build_messages(row["question"], hint=task.hint,
                                           few_shot=model.few_shot)])[0]
    assert whole.text.startswith(row["output"].rstrip())
    assert row["verbalized_mean"] is not None
    assert row["verbalized_mean"] == pytest.approx(
        verbalized_mean(whole.text, whole.token_logprobs), abs=0.05)


# --------------------------------------------------------------------------------- the Ask tab

def test_ask_tab_colours_each_step_by_its_writer(tiny_model_dir, tmp_path):
    from corea.ui.ask import ask
    from corea.ui.steps_view import routed_html

    llm_dir = build_tiny_model(tmp_path / "llm", seed=1)
    outputs = list(ask(QUESTION, str(tiny_model_dir), str(llm_dir), "", "", 1.0, "a number",
                       "stated confidence", False, "", "default", "per step", 12))
    slm_text, _, decision, _, rows, routed = outputs[-1]
    # Threshold 1: no draft scores that high, so the LLM writes after the first draft.
    assert 'data-writer="llm"' in routed and "Routed per step" in decision
    assert len(rows) == 1 and slm_text
    html_steps = routed_html([{"model": "s", "text": "a <b>", "confidence": 0.9},
                              {"model": "l", "text": " c", "confidence": None,
                               "draft_confidence": 0.1, "cut": True}], "s", "l")
    assert html_steps.count('data-writer="slm"') == 1 and "&lt;b&gt;" in html_steps
    assert "replaced a draft scored 0.10" in html_steps and "cut" in html_steps


def test_training_router_command_fits_loadable_routers(tmp_path):
    from corea import arithmetic
    from training.__main__ import main

    rows = []
    for index, problem in enumerate(arithmetic.generate(1, "train", 12)):
        right = index % 2 == 0
        answer = problem.answer if right else problem.answer + 1
        left, value = problem.working[0].rsplit("=", 1)[0], int(problem.working[0].rsplit("=")[-1])
        base = {"equation_check": 0.5, "tokens": 8, "index": 0, "cut": False, "numbers": 1,
                "repeat": False, "answer_line": False}
        sure, unsure = (0.9, 0.6, 0.8, 0.3), (0.5, 0.1, 0.3, 0.02)
        stats = dict(zip(("mean_prob", "min_prob", "mean_margin", "min_margin"),
                         sure if right else unsure))
        rows.append({"id": f"arith-mix-arith1-train-{index:05d}", "task": "arith-mix",
                     "model": "tiny-slm", "question": problem.question, "gold": str(problem.answer), "steps": [
                         {"text": f"{left}= {value if right else value + 1}.\n",
                          "features": {**base, **stats, "equation_check": float(right)}},
                         {"text": f"Answer: {answer}\n",
                          "features": {**base, **stats, "answer_line": True, "index": 1}}]})
    traces = tmp_path / "train.jsonl"
    traces.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["router", "--traces", str(traces), "--out", str(tmp_path / "r")]) == 0
    fit = json.loads((tmp_path / "r" / "fit.json").read_text())
    assert fit["questions"] == 12 and fit["steps"] == 24 and fit["model"] == "tiny-slm"
    assert fit["auroc_in_sample"]["learned"] > 0.9
    learned = load_router("learned", path=tmp_path / "r" / "learned.json")
    gmm = load_router("gmm", path=tmp_path / "r" / "gmm.json")
    assert learned.score(rows[0]["steps"][1]["features"]) > learned.score(
        rows[1]["steps"][1]["features"])
    assert 0.0 <= gmm.score(rows[0]["steps"][0]["features"]) <= 1.0
    assert main(["router"]) == 2  # neither --task nor --traces: a clear error, no traceback


def test_step_report_separates_methods_by_their_gain_over_the_llm():
    # Where the SLM alone beats the LLM alone, every method's cheapest point within a loss is
    # the SLM alone; only the points above the LLM tell step and question routing apart.
    from benchmarks.step_report import LOSSES, cheapest_of, cheapest_within

    llm_accuracy = 0.50
    step = [{"accuracy": 0.55, "cost": 1.0}, {"accuracy": 0.70, "cost": 8.0}]
    question = [{"accuracy": 0.55, "cost": 1.0}, {"accuracy": 0.58, "cost": 4.0}]
    chosen = {f"{kind}: x": [cheapest_within(points, llm_accuracy, loss) for loss in LOSSES]
              for kind, points in (("step", step), ("question", question))}
    assert cheapest_of(chosen, "step", 0.02) == {**step[0], "method": "step: x"}
    assert cheapest_of(chosen, "question", 0.02) == {**question[0], "method": "question: x"}
    assert cheapest_of(chosen, "step", -0.10)["cost"] == 8.0
    assert cheapest_of(chosen, "question", -0.10) is None
    assert cheapest_of(chosen, "question", -0.05)["cost"] == 1.0


def test_a_program_llms_handoffs_are_read_from_its_own_table(tmp_path, monkeypatch):
    # A program LLM is asked the question afresh after any handoff: the same greedy call as its
    # plain table's row, wherever that reply fits in the budget the SLM's kept steps leave.
    import benchmarks.step_routing as bench

    committed = bench.TRACES
    slm_rows = bench.read_jsonl(committed / "step-slm-arith-mix.jsonl")[:3]
    alone = {row["id"]: row for row in bench.read_jsonl(committed / "qwen-program-arith-mix.jsonl")}
    alone = [alone[row["id"]] for row in slm_rows]
    alone[2] = {**alone[2], "completion_tokens": bench.MAX_NEW_TOKENS}  # fits only with no steps
    for name, rows in (("step-slm-arith-mix.jsonl", slm_rows),
                       ("qwen-program-arith-mix.jsonl", alone)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(bench, "TRACES", tmp_path)
    bench.run_llm("arith-mix", 3, minutes=0, points=3, llm="program:qwen")  # no model runs
    written = bench.read_jsonl(tmp_path / "step-llm-program-arith-mix.jsonl")
    needed = set(bench.needed_handoffs(slm_rows, 3))
    assert {(r["id"], r["k"]) for r in written} == {
        (i, k) for i, k in needed if i != slm_rows[2]["id"] or k == 0}
    by_id = {row["id"]: row for row in alone}
    assert all(r["text"] == by_id[r["id"]]["output"] and r["from"] == "qwen-program-arith-mix.jsonl"
               for r in written)
    assert any(k > 0 for _, k in needed)


def test_the_confidence_step_can_be_kept_on_the_stated_confidence_as_served():
    from corea.calibration import PlattMap
    from corea.steps import answer_step_score, keeps

    steps = [{"text": "9 * 2 = 18.", "features": {"index": 0}},
             {"text": "\nAnswer: 18\n", "features": {"index": 1, "answer_line": True}},
             {"text": "Confidence: 0.9", "features": {"index": 2, "verbalized_mean": 0.5}}]
    keep_all = Scored(1.0)
    assert handoff_step(steps, keep_all, 0.5) is None  # routed like any step
    assert handoff_step(steps, keep_all, 0.5, answer_threshold=0.6) == 2
    assert handoff_step(steps, keep_all, 0.5, answer_threshold=0.4) is None
    assert handoff_step(steps, Scored(0.0), 0.5, answer_threshold=0.0) == 0  # routers still act
    # Read through the SLM's Platt map, as the question-level cascade reads it.
    platt = PlattMap("verbalized_mean", slope=1.0, intercept=2.0)
    assert answer_step_score(steps[2]["features"], platt) == pytest.approx(platt(0.5))
    assert handoff_step(steps, keep_all, 0.5, answer_threshold=0.6, confidence_map=platt) is None
    assert keeps({"verbalized_mean": None}, keep_all, 0.5, 0.1) == (False, 0.0)
    assert StepConfig.from_dict({"answer_threshold": 0.7}).answer_threshold == 0.7
    with pytest.raises(ValueError, match="answer_threshold"):
        StepConfig(answer_threshold=1.5)


def test_held_out_thresholds_are_chosen_without_the_questions_they_answer():
    from benchmarks.step_routing import _held_out

    llm_correct, llm_cost = [True] * 6, [10.0] * 6
    # Threshold "a" keeps the SLM on every question but the last, which it gets wrong; "b"
    # defers everything. Folds: {0, 3}, {1, 4}, {2, 5}.
    outcomes = {"m": [([True] * 5 + [False], [1.0] * 6, "a"), ([True] * 6, [11.0] * 6, "b")]}
    checks = _held_out(outcomes, llm_correct, llm_cost)["methods"]["m"]["0"]
    # Only the fold holding question 5 is answered at "a" (chosen on the others, all right).
    assert checks["thresholds"] == ["b", "b", "a"]
    assert checks["loss"] == pytest.approx(1 / 6)
    assert checks["saving"] == pytest.approx(1 - (4 * 11.0 + 2 * 1.0) / 60.0)


def test_a_cascade_picks_the_routers_fitted_on_its_own_slm():
    from corea.steps import DEFAULT_ROUTER_DIR, fitted_router_dir

    shipped = "smollm2-135m+smollm2-135m-calibrated"
    folder = fitted_router_dir(shipped)
    assert folder.name == "step-router-calibrated"
    assert json.loads((folder / "fit.json").read_text())["model"] == shipped
    assert fitted_router_dir("some-other-model") == DEFAULT_ROUTER_DIR
    learned = load_router("learned", model_name=shipped)
    assert learned.to_dict() == json.loads((folder / "learned.json").read_text())
    assert StepConfig(router="learned").load_router("some-other-model").to_dict() == \
        json.loads((DEFAULT_ROUTER_DIR / "learned.json").read_text())
