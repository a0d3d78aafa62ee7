"""Token log-probabilities on llama.cpp, read as each token is sampled (corea.models.SampledLogprobs),
checked against llama-cpp-python's own `logits_all=True` path on the embedded SLM."""

import pytest

from conftest import embedded_installed
from corea.models import TOP_ALTERNATIVES, GenerationConfig, LlamaCppModel, openai_token_logprobs
from corea.protocol import build_messages

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not embedded_installed("smollm2"),
                       reason="embedded SLM not installed (bash scripts/install.sh)"),
]
TWELVE = GenerationConfig(max_new_tokens=12)
QUESTION = "Tom has 3 boxes with 5 apples each and gives away 4. How many are left?"


@pytest.fixture(scope="module")
def path():
    from corea.embedded import smollm2_gguf

    return smollm2_gguf()


def reference_llama(path):
    """A fresh llama.cpp model that keeps every position's logits: its logprobs are the
    reference (a fresh one, so that it too evaluates the prompt from an empty cache)."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=4096, verbose=False, logits_all=True)


def assert_rows_match(mine, reference):
    assert [row[0] for row in mine] == [row[0] for row in reference]
    assert [row[1] for row in mine] == pytest.approx([row[1] for row in reference], abs=1e-3)
    assert [row[2] for row in mine] == pytest.approx([row[2] for row in reference], abs=1e-3)


def test_sampled_log_probabilities_match_logits_all_whole_and_streamed(path):
    messages = build_messages(QUESTION)
    response = reference_llama(path).create_chat_completion(
        messages=messages, max_tokens=12, temperature=0.0, logprobs=True,
        top_logprobs=TOP_ALTERNATIVES)
    reference = openai_token_logprobs(response["choices"][0]["logprobs"])
    model = LlamaCppModel(path, logprobs=True)
    whole = model.generate([messages], TWELVE)[0]
    streamed = list(model.stream(messages, TWELVE))[-1]
    assert whole.text == streamed.text == response["choices"][0]["message"]["content"]
    assert len(reference) == 12 and "".join(row[0] for row in whole.token_logprobs) == whole.text
    assert_rows_match(whole.token_logprobs, reference)
    # Each step's likeliest tokens, best first, as llama.cpp's own top_logprobs lists them.
    for row, expected in zip(whole.token_logprobs, reference, strict=True):
        assert [text for text, _ in row[3]] == [text for text, _ in expected[3]]
        assert [v for _, v in row[3]] == pytest.approx([v for _, v in expected[3]], abs=1e-3)
    assert streamed.token_logprobs == whole.token_logprobs
    # Greedy: the chosen token was the most likely one, the runner-up the second.
    assert all(row[2] <= row[1] + 1e-6 for row in whole.token_logprobs)


def test_continued_reply_log_probabilities_match_logits_all(path):
    model = LlamaCppModel(path, logprobs=True)
    messages = build_messages(QUESTION)
    prefix = "Tom starts with 3 * 5 = "
    mine = model.continue_reply(messages, prefix, TWELVE)
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=model._llm.metadata["tokenizer.chat_template"],
                                    eos_token="", bos_token="")
    prompt = formatter(messages=messages).prompt + prefix
    response = reference_llama(path).create_completion(prompt, max_tokens=12, temperature=0.0,
                                                       logprobs=2)
    found = response["choices"][0]["logprobs"]
    reference = [(token, logprob, max(v for k, v in top.items() if k != token))
                 for token, logprob, top in zip(found["tokens"], found["token_logprobs"],
                                                found["top_logprobs"])]
    assert mine.text == response["choices"][0]["text"]
    assert mine.completion_tokens == len(mine.token_logprobs) == len(reference)
    assert_rows_match(mine.token_logprobs, reference)


def test_replies_end_where_the_rows_end_and_no_rows_without_the_option(path):
    model = LlamaCppModel(path, logprobs=True)
    messages = build_messages(QUESTION)
    # A stop sequence cuts the text: the rows of the tokens past it are dropped with it.
    cut = model.generate([messages], GenerationConfig(max_new_tokens=12, stop=("apples",)))[0]
    assert "".join(row[0] for row in cut.token_logprobs).startswith(cut.text)
    assert sum(len(row[0]) for row in cut.token_logprobs[:-1]) < max(len(cut.text), 1)
    plain = LlamaCppModel(path)
    assert plain.generate([messages], TWELVE)[0].token_logprobs is None
    assert plain._llm.sample.__func__ is type(plain._llm).sample


def test_a_reply_does_not_depend_on_the_calls_before_it_and_the_shared_prefix_is_reused(path):
    """The system prompt and worked examples are evaluated once and kept; every call still splits
    its prompt at the same place, so the same request gets the same tokens and log-probabilities
    whatever was asked before, whole, streamed or continued."""
    few_shot = GenerationConfig(max_new_tokens=24)
    first, other = build_messages(QUESTION, few_shot=True), build_messages(
        "A shop sells 12 pens a day. How many pens does it sell in 5 days?", few_shot=True)
    fresh = LlamaCppModel(path, logprobs=True).generate([first], few_shot)[0]
    continued_fresh = LlamaCppModel(path, logprobs=True).continue_reply(first, "Tom has ",
                                                                        few_shot)
    model = LlamaCppModel(path, logprobs=True)
    evaluated = []
    evaluate = model._llm.eval
    model._llm.eval = lambda tokens: (evaluated.append(len(tokens)), evaluate(tokens))[1]
    model.generate([other], few_shot)
    after_other = model.generate([first], few_shot)[0]
    streamed = list(model.stream(first, few_shot))[-1]
    continued = model.continue_reply(first, "Tom has ", few_shot)
    assert after_other.text == streamed.text == fresh.text
    assert after_other.token_logprobs == streamed.token_logprobs == fresh.token_logprobs
    assert continued.text == continued_fresh.text
    assert continued.token_logprobs == continued_fresh.token_logprobs
    # The prefix (over 200 tokens of worked examples) was evaluated on the first call alone; the
    # later calls evaluated only their question and reply.
    prefix_length = len(model._cached_prefix)
    assert prefix_length > 200 and evaluated[0] == prefix_length
    assert all(count < prefix_length for count in evaluated[1:])
