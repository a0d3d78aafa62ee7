"""Token log-probabilities from the transformers backend, checked against a plain forward pass."""

import pytest
import torch

from corea.models import (TOP_ALTERNATIVES, GenerationConfig, TransformersModel,
                          openai_token_logprobs)
from corea.protocol import build_messages

EIGHT = GenerationConfig(max_new_tokens=8)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return TransformersModel(tiny_model_dir, name="tiny-logprobs", logprobs=True)


def test_batched_log_probabilities_match_a_forward_pass_of_each_reply(model):
    # Two prompts of different lengths: the shorter is left-padded in the batch.
    conversations = [build_messages("What is 2 + 2?"),
                     build_messages("Tom has 3 boxes with 4 apples in each box. How many apples?")]
    generations = model.generate(conversations, EIGHT)
    for messages, generation in zip(conversations, generations):
        tokens = generation.token_logprobs
        assert tokens and "".join(t[0] for t in tokens) == generation.text
        prompt = model._encode([messages])["input_ids"][0].tolist()
        completion = model.tokenizer(generation.text, add_special_tokens=False)["input_ids"]
        assert len(completion) == len(tokens)
        with torch.inference_mode():
            logits = model.model(torch.tensor([prompt + completion])).logits[0]
        expected = torch.log_softmax(logits[len(prompt) - 1:-1].float(), dim=-1)
        for step, (token_id, (_, chosen, runner_up, top)) in enumerate(zip(completion, tokens)):
            assert chosen == pytest.approx(float(expected[step, token_id]), abs=1e-3)
            # Greedy decoding took the most likely token, so the runner-up is the second best.
            assert runner_up == pytest.approx(float(expected[step].topk(2).values[1]), abs=1e-3)
            assert chosen >= runner_up - 1e-6
            # The alternatives are the step's likeliest tokens, best first, the chosen one first.
            likeliest = expected[step].topk(TOP_ALTERNATIVES)
            assert [value for _, value in top] == pytest.approx(likeliest.values.tolist(), abs=1e-3)
            assert [text for text, _ in top] == [model.tokenizer.decode([i])
                                                 for i in likeliest.indices.tolist()]


def test_streaming_gives_the_same_log_probabilities(model):
    messages = build_messages("What is 2 + 2?")
    streamed = list(model.stream(messages, EIGHT))[-1].token_logprobs
    whole = model.generate([messages], EIGHT)[0].token_logprobs
    assert [t[0] for t in streamed] == [t[0] for t in whole]
    assert [t[1] for t in streamed] == pytest.approx([t[1] for t in whole], abs=1e-4)


def test_without_the_option_no_log_probabilities_are_kept(tiny_model):
    assert tiny_model.generate([build_messages("What is 2 + 2?")], EIGHT)[0].token_logprobs is None


def test_openai_shaped_log_probabilities_from_dicts_and_objects():
    class Item:  # the attribute-style objects huggingface_hub returns
        def __init__(self, **fields):
            self.__dict__.update(fields)

    content = [{"token": " 5", "logprob": -0.2,
                "top_logprobs": [{"token": " 5", "logprob": -0.2}, {"token": " 6", "logprob": -1.9}]},
               {"token": "\n", "logprob": -0.01, "top_logprobs": []}]
    expected = ((" 5", -0.2, -1.9, ((" 5", -0.2), (" 6", -1.9))), ("\n", -0.01, None, ()))
    assert openai_token_logprobs({"content": content}) == expected
    as_objects = Item(content=[Item(token=c["token"], logprob=c["logprob"],
                                    top_logprobs=[Item(**t) for t in c["top_logprobs"]])
                               for c in content])
    assert openai_token_logprobs(as_objects) == expected
    assert openai_token_logprobs(None) is None and openai_token_logprobs({"content": []}) is None
