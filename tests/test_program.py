import pytest

from conftest import embedded_installed
from corea.costs import default_price
from corea.models import GenerationConfig, load_model
from corea.program import (PROGRAM_SYSTEM_PROMPT, ProgramAidedModel, ProgramError, extract_code,
                           finish_reply, one_line, program_messages, run_program)
from corea.protocol import SYSTEM_PROMPT, build_messages, parse_reply

NOTEBOOK_REPLY = """```python
pencils = 83
pencils += 30
pencils -= 17
pencils -= 66
pencils += 41
print(pencils)
# Confidence: 0.95
```
```output
41
```
The final answer is 41."""


def test_a_program_runs_step_by_step():
    assert run_program("eggs = 108\neggs //= 3\neggs -= 33\neggs *= 2\nprint(eggs)") == 6
    assert run_program("a = 3 * 4\nb = a - 2") == 10  # no print: the last assignment
    assert run_program("x = round(7 / 2)\ny = max(x, 10) % 4\nprint(-y + abs(-1))") == -1
    assert run_program('"""the total"""\nx = y = 2\nprint(x + y)') == 4


def test_the_reply_reads_the_programs_answer_not_the_models_own_arithmetic():
    # The model's invented output block says 41; the program computes 71.
    assert extract_code(NOTEBOOK_REPLY).startswith("pencils = 83")
    parsed = parse_reply(finish_reply(NOTEBOOK_REPLY))
    assert (parsed.answer, parsed.confidence, parsed.format_ok) == ("71", 0.95, True)
    # A bare program with its Confidence line outside any block runs too.
    assert parse_reply(finish_reply("x = 2.5 * 4\nprint(x)\nConfidence: 0.8")).answer == "10"


def test_a_program_block_the_reply_left_open_still_runs():
    # A small model often stops after its last statement without closing the block.
    reply = "I will count.\n```python\nbooks = 12\nbooks -= 7\nprint(books)\n# Confidence: 0.9"
    assert extract_code(reply).startswith("books = 12")
    assert parse_reply(finish_reply(reply)).answer == "5"


def test_a_program_quoted_on_one_line_keeps_its_statements_and_drops_its_comments():
    line = one_line(extract_code(NOTEBOOK_REPLY))
    assert line == ("pencils = 83; pencils += 30; pencils -= 17; pencils -= 66; "
                    "pencils += 41; print(pencils)")
    assert run_program(line) == 71


def test_program_probability_reads_the_programs_tokens_only():
    import math

    from corea.signals import program_probability

    reply = "Sure.\n```python\nx = 4\nprint(x)\n```"
    pieces = [("Sure.\n", -3.0), ("```python\n", -0.1), ("x = 4\n", math.log(0.5)),
              ("print(x)\n", math.log(0.5)), ("```", -0.1)]
    rows = tuple((text, logprob, None, ()) for text, logprob in pieces)
    # Neither the lead-in sentence nor the fences are the program: only its two lines count.
    assert program_probability(finish_reply(reply), rows) == pytest.approx(0.5)
    assert program_probability("7 + 1 = 8.\nAnswer: 8", rows) is None


@pytest.mark.parametrize("code, reason", [
    ("import os\nprint(1)", "only assignments and print"),
    ("x = __import__('os').system('true')", "does not run"),
    ("x = (1).__class__", "does not run"),
    ("x = 2 ** 10", "does not run"),
    ("x = 10 ** 3", "does not run"),
    ("x = 9\nx *= x\nx *= x\nx *= x\nx *= x\nx *= x", "bound"),
    ("x = 1 / 0", "division by zero"),
    ("x = 4\nx //= 0", "division by zero"),
    ("print(y)", "before it is set"),
    ("x = 'text'", "does not run"),
    ("x = min(3)", "min"),
    ("def f():\n    return 1", "only assignments and print"),
    ("x = [1, 2]", "does not run"),
    ("", "computes nothing"),
    ("x = (", "not a program"),
    ("x.y = 2", "only plain variables"),
])
def test_the_sandbox_refuses_what_is_not_arithmetic(code, reason):
    with pytest.raises(ProgramError, match=reason):
        run_program(code)


def test_a_reply_whose_program_fails_keeps_no_answer_of_its_own_making():
    reply = "```python\nimport os\nprint(4)\n```\nConfidence: 0.9"
    assert finish_reply(reply) == reply
    assert parse_reply(finish_reply(reply)).format_ok is False


def test_the_program_prompt_replaces_coreas_prompt_and_its_examples():
    messages = program_messages(build_messages("What is 2 + 3?", hint="Give a number."))
    assert messages[0] == {"role": "system", "content": PROGRAM_SYSTEM_PROMPT}
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[-1]["content"] == "What is 2 + 3?\nGive a number."
    assert SYSTEM_PROMPT not in str(messages)


def test_program_specs_load_wrapped_and_cost_their_models_price(tiny_model_dir):
    model = load_model(f"program:{tiny_model_dir}")
    assert isinstance(model, ProgramAidedModel)
    assert model.name == f"program:{model.inner.name}"
    generation = model.generate([build_messages("What is 2 + 3?")],
                                GenerationConfig(max_new_tokens=4))[0]
    assert generation.completion_tokens > 0 and generation.token_logprobs is None
    assert default_price("program:qwen2.5-coder-1.5b") == default_price("qwen2.5-coder-1.5b")


def test_requests_that_are_not_questions_reach_the_model_unchanged(tiny_model):
    # The memory asks the large model for a strategy in prose: no program prompt, no answer line.
    request = [{"role": "user", "content": "Write a general strategy for sharing problems."}]
    config = GenerationConfig(max_new_tokens=6)
    wrapped = ProgramAidedModel(tiny_model).generate([request], config)[0]
    assert wrapped.text == tiny_model.generate([request], config)[0].text


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not embedded_installed("smollm2"), reason="embedded SLM not installed")
def test_the_shipped_program_slm_answers_by_program_and_says_how_sure():
    from corea.cascade import Cascade, Tier
    from corea.costs import Price

    model = load_model("smollm2-135m-program", logprobs=True)
    assert isinstance(model, ProgramAidedModel)
    assert model.confidence_map is not None and model.confidence_map.signal == \
        "program_probability"
    question = "Kim has 14 shells. Then Kim gives away 10 shells. How many shells does Kim have now?"
    cascade = Cascade([Tier(model, 0.5, Price(1.0, 1.0), "program_probability"),
                       Tier(model, None, Price(1.0, 1.0))], GenerationConfig(max_new_tokens=80))
    step = cascade.answer(question, hint="Give the final answer as a number.").steps[0]
    assert "```python" in step.generation.text and step.parsed.answer == "4"
    assert 0.5 <= step.confidence <= 1.0 and step.decision == "kept"


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not embedded_installed("qwen"), reason="embedded LLM not installed")
def test_the_embedded_llm_answers_by_program():
    model = load_model("program:qwen", backend="llama.cpp")
    question = ("Chloe has 83 pencils. Then Chloe finds 30 more pencils. Then Chloe gives away 17 "
                "pencils. Then Chloe gives away 66 pencils. Then Chloe finds 41 more pencils. How "
                "many pencils does Chloe have now?")
    reply = model.generate([build_messages(question, hint="Give the final answer as a number.")],
                           GenerationConfig(max_new_tokens=200))[0]
    assert "```output" not in reply.text
    assert parse_reply(reply.text).answer == "71", reply.text


def test_a_program_llm_takes_over_a_step_routed_reply_as_if_asked_afresh(tiny_model_dir,
                                                                         tmp_path):
    from corea.costs import Price
    from corea.models import TransformersModel
    from corea.steps import StepConfig, StepRouter, Writer, replay_handoff
    from tiny import build_tiny_model

    class KeepFirst:  # keeps the SLM's first step and refuses the next
        kind = "fixed"

        def score(self, features):
            return 1.0 if features["index"] == 0 else 0.0

    slm = TransformersModel(tiny_model_dir, name="tiny-slm", logprobs=True)
    llm = ProgramAidedModel(TransformersModel(build_tiny_model(tmp_path / "llm", seed=1),
                                              name="tiny-llm"))
    config = GenerationConfig(max_new_tokens=40, temperature=1.0, seed=0)
    messages = build_messages("What is 17 * 3?", few_shot=False)
    reply = StepRouter(Writer(slm, Price(1.0, 3.0)), Writer(llm, Price(10.0, 30.0)), 0.5,
                       StepConfig(delimiters=(" ",)), config, router=KeepFirst()).run(messages)
    assert reply.switches == 1 and reply.steps[0]["model"] == "tiny-slm"
    kept = reply.calls[0]["completion_tokens"]
    alone = llm.generate([messages], GenerationConfig(max_new_tokens=40 - kept,
                                                      temperature=1.0, seed=0))[0]
    # The LLM's part is its answer to the question alone, billed as that call.
    assert reply.text == reply.steps[0]["text"] + alone.text
    assert reply.calls[-1]["prompt_tokens"] == alone.prompt_tokens
    row = {"id": "q", "task": "t", "split": "test", "question": "What is 17 * 3?", "gold": "51",
           "model": "tiny-slm", "steps": reply.steps[:1] + [{"text": "x", "confidence": 0.0}],
           "calls": reply.calls[:2]}
    replayed = replay_handoff(row, 1, {"text": alone.text, "prompt_tokens": alone.prompt_tokens,
                                       "completion_tokens": alone.completion_tokens,
                                       "latency_s": 0.0},
                              llm_name=llm.name, llm_price=Price(10.0, 30.0), llm_params=None)
    assert replayed["output"] == reply.text
    assert replayed["cost"] == pytest.approx(reply.totals()["cost"])
