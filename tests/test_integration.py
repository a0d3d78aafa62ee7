"""The embedded pretrained models and a real OpenAI-compatible server on 127.0.0.1."""

import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace

import pytest

from conftest import embedded_installed, free_port
from corea import embedded
from corea.models import EndpointModel, GenerationConfig, ModelError, get_model, load_model
from corea.protocol import build_messages
from corea.tasks import get_task
from corea.traces import read_trace, run_trace

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not embedded_installed("smollm2"),
                       reason="embedded SLM not installed (bash scripts/install.sh)"),
]
SHORT = GenerationConfig(max_new_tokens=48)


def test_embedded_slm_answers_real_questions(tmp_path):
    model = get_model("smollm2")
    assert model.name == "smollm2-135m"
    out = tmp_path / "slm.jsonl"
    run_trace(model, get_task("arith-1"), out, limit=4, batch_size=2, config=SHORT, progress=False,
              price=__import__("corea.costs", fromlist=["x"]).resolve_price(model.name))
    rows = read_trace(out)
    assert len(rows) == 4
    for row in rows:
        assert row["output"].strip()  # a pretrained model writes words, not nothing
        assert 0 < row["completion_tokens"] <= 48 and row["prompt_tokens"] > 150
        assert row["cost"] > 0
    # Greedy decoding is deterministic: the same question gives the same reply again.
    again = model.generate([build_messages(rows[0]["question"],
                                           hint="Give the final answer as a number.")], SHORT)[0]
    assert again.text == rows[0]["output"]


def test_embedded_slm_streams_what_it_generates():
    model = get_model("smollm2")
    messages = build_messages("What is 7 + 5?")
    snapshots = list(model.stream(messages, SHORT))
    assert len(snapshots) > 2 and not snapshots[0].done and snapshots[-1].done
    whole = model.generate([messages], SHORT)[0]
    assert snapshots[-1].text == whole.text
    assert snapshots[-1].completion_tokens == pytest.approx(whole.completion_tokens, abs=1)
    assert snapshots[-1].prompt_tokens == whole.prompt_tokens


def test_embedded_slm_log_probabilities_stream_and_whole_agree():
    model = get_model("smollm2", logprobs=True)
    messages = build_messages("What is 7 + 5?", hint="Give the final answer as a number.")
    whole = model.generate([messages], SHORT)[0]
    streamed = list(model.stream(messages, SHORT))[-1]
    assert whole.token_logprobs and "".join(t[0] for t in whole.token_logprobs) == whole.text
    assert streamed.token_logprobs == whole.token_logprobs
    assert all(t[1] <= 0 and (t[2] is None or t[2] <= t[1] + 1e-6) for t in whole.token_logprobs)


def test_embedded_slm_answers_do_not_depend_on_what_was_asked_before():
    # The same prompt asked twice in a row used to be re-evaluated from llama.cpp's cache, its
    # last token alone, which moved this prompt's next-token logits by up to 0.87.
    model = get_model("smollm2", logprobs=True)
    question, other = build_messages("What is 12 * 3?"), build_messages("Is snow cold?")
    first = model.generate([question], SHORT)[0]
    again = model.generate([question], SHORT)[0]
    model.generate([other], SHORT)
    after_other = list(model.stream(question, SHORT))[-1]
    assert first.text == again.text == after_other.text
    assert first.token_logprobs == again.token_logprobs == after_other.token_logprobs


def test_embedded_slm_stops_after_its_confidence_line():
    model = get_model("smollm2")
    messages = build_messages("Sara has 5 pens and buys 3 more. How many pens does she have?",
                              hint="Give the final answer as a number.")
    config = GenerationConfig(max_new_tokens=160)
    plain = model.generate([messages], config)[0]
    done = model.generate([messages], replace(config, stop_when_done=True))[0]
    streamed = list(model.stream(messages, replace(config, stop_when_done=True)))[-1]
    # The rule only cuts: the reply with it is the reply without it, up to where it ended.
    assert done.text == streamed.text and plain.text.startswith(done.text)
    assert done.completion_tokens <= plain.completion_tokens
    if done.text != plain.text and done.finish_reason == "stop":
        assert done.text.rstrip().splitlines()[-1].lower().startswith("confidence")


@pytest.fixture(scope="module")
def llama_server():
    from corea.embedded import smollm2_gguf

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()),
         "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                json.load(response)
            break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("the llama.cpp server did not start")
            time.sleep(0.5)
    yield process, base_url
    process.terminate()
    process.wait(timeout=30)


def test_endpoint_backend_against_a_real_server(llama_server):
    process, base_url = llama_server
    model = load_model(f"{base_url}#smollm2")
    assert isinstance(model, EndpointModel)
    local = get_model("smollm2")
    messages = [build_messages("What is 2 + 3?"), build_messages("Is snow cold?")]
    remote_gens = model.generate(messages, SHORT)
    assert len(remote_gens) == 2
    for remote, mine in zip(remote_gens, local.generate(messages, SHORT)):
        # The same weights and template, counted by the server: the same token counts.
        assert remote.prompt_tokens == mine.prompt_tokens
        assert remote.completion_tokens > 0 and remote.text.strip()
    # llama.cpp's server (unlike corea's own llama.cpp backend) keeps its cache between requests
    # and re-evaluates a prompt it has just answered from its last token alone, which moves
    # greedy logits (see LlamaCppModel._prepare). The two concurrent requests finish in either
    # order, so another question goes in between: the stream's prompt is then evaluated in a
    # multi-token batch, as the whole reply's was (those give the same logits, measured), and
    # the streamed reply must be the same text.
    model.generate(messages[1:], SHORT)
    snapshots = list(model.stream(messages[0], SHORT))
    assert snapshots[-1].done and snapshots[-1].completion_tokens > 0
    assert snapshots[-1].text == remote_gens[0].text
    # Token log-probabilities come over the wire too, so token signals work on endpoints.
    remote = load_model(f"{base_url}#smollm2", logprobs=True).generate(messages[:1], SHORT)[0]
    mine = get_model("smollm2", logprobs=True).generate(messages[:1], SHORT)[0]
    assert [t[0] for t in remote.token_logprobs] == [t[0] for t in mine.token_logprobs]
    assert [t[1] for t in remote.token_logprobs] == pytest.approx(
        [t[1] for t in mine.token_logprobs], abs=1e-2)


def test_endpoint_that_goes_away_is_a_clear_error(llama_server):
    process, base_url = llama_server
    model = load_model(f"{base_url}#smollm2")
    process.terminate()
    process.wait(timeout=30)
    with pytest.raises(ModelError, match=f"endpoint {base_url}"):
        model.generate([build_messages("What is 2 + 3?")], SHORT)


@pytest.mark.skipif(not embedded_installed("qwen"), reason="embedded LLM not installed")
def test_ask_through_the_embedded_cascade():
    result = subprocess.run(
        [sys.executable, "-m", "corea", "ask", "Tom has 3 boxes with 5 apples in each. He gives "
         "away 4 apples. How many apples does he have?", "--checker", "numeric", "--threshold",
         "1.0", "--max-new-tokens", "96", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # threshold 1.0: the SLM keeps only answers it is certain of; otherwise both tiers are paid
    steps = report["steps"]
    assert steps[0]["model"] == embedded.served_name(embedded.default_slm())
    assert steps[0]["signal"] == embedded.serving_defaults(embedded.default_slm())[0]
    if steps[0]["decision"] == "deferred":
        assert steps[1]["model"] == "qwen2.5-coder-1.5b" and steps[1]["decision"] == "final"
        assert report["cost"] == pytest.approx(steps[0]["cost"] + steps[1]["cost"])
    else:
        assert steps[0]["confidence"] == 1.0
    assert report["answer"] == steps[-1]["answer"]


def test_ask_defers_on_a_token_signal_from_the_command_line():
    def first_step(question):
        result = subprocess.run(
            [sys.executable, "-m", "corea", "ask", question, "--checker", "numeric",
             "--model", "smollm2", "--model", "smollm2", "--threshold", "0.5",
             "--signal", "answer_probability", "--max-new-tokens", "160", "--json"],
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["steps"][0]

    # Greedy replies are fixed: SmolLM2 answers this one (8), with its answer token ~0.8 likely.
    answered = first_step("Sara has 5 pens and buys 3 more. How many pens does she have?")
    assert answered["signal"] == "answer_probability" and answered["answer"] == "8"
    assert 0.5 <= answered["confidence"] <= 1 and answered["decision"] == "kept"
    # and writes no "Answer:" line for this one: nothing to score, so it is deferred.
    unanswered = first_step("What is 7 + 5?")
    assert unanswered["answer"] is None and unanswered["confidence"] is None
    assert unanswered["decision"] == "deferred"
