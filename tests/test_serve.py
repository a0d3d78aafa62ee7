"""`python -m corea serve` started for real on loopback, used through real OpenAI clients."""

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import embedded_installed, free_port
from tiny import build_tiny_model


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(process.stdout.read() if process.stdout else "exited")
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{url} did not come up")


def start_server(config: dict, folder, *extra) -> tuple[subprocess.Popen, str]:
    path = folder / f"cascade-{time.time_ns()}.json"
    path.write_text(json.dumps(config))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "corea", "serve", "--config", str(path), "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    wait_until_up(f"{base}/health", process)
    return process, base


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    slm, llm = build_tiny_model(folder / "slm"), build_tiny_model(folder / "llm", seed=1)
    # Tier 1 defers on a token signal, so the server must load it with log-probabilities.
    config = {"tiers": [{"model": str(slm), "threshold": 0.5, "signal": "first_token_margin",
                         "price": {"input": 1.0, "output": 2.0}},
                        {"model": str(llm), "price": {"input": 10.0, "output": 20.0}}],
              "generation": {"max_new_tokens": 8}}
    process, base = start_server(config, folder, "--max-tokens-limit", "64")
    yield base
    stop(process)


def post(base: str, body: bytes, content_type="application/json") -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_openai_client_non_streaming(tiny_server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{tiny_server}/v1", api_key="unused")
    response = client.chat.completions.create(
        model="corea-cascade", messages=[{"role": "user", "content": "What is 2 + 2?"}])
    assert response.object == "chat.completion"
    assert isinstance(response.choices[0].message.content, str)
    corea = response.model_extra["corea"]
    # the tiny SLM writes no answer line to score, so it defers; the LLM answers and both are paid
    assert [t["decision"] for t in corea["tiers"]] == ["deferred", "final"]
    assert [t["signal"] for t in corea["tiers"]] == ["first_token_margin", "verbalized"]
    assert corea["tiers"][0]["confidence"] is None
    assert corea["tier"] == 2 and corea["fallback"] is False
    assert response.usage.completion_tokens == 16  # 8 per tier
    assert response.usage.total_tokens == response.usage.prompt_tokens + 16
    assert corea["cost"] == pytest.approx(sum(t["cost"] for t in corea["tiers"]))


def test_openai_client_streaming(tiny_server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{tiny_server}/v1", api_key="unused")
    question = [{"role": "user", "content": "What is 3 + 3?"}]
    chunks = list(client.chat.completions.create(model="corea-cascade", messages=question,
                                                 stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = chunks[-1]
    assert final.choices[0].finish_reason == "length"  # the tiny LLM wrote all 8 tokens
    assert final.model_extra["corea"]["tier"] == 2
    assert final.usage.completion_tokens == 16
    whole = client.chat.completions.create(model="corea-cascade", messages=question)
    assert streamed == whole.choices[0].message.content


def test_inference_client_and_listing(tiny_server):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=f"{tiny_server}/v1")
    output = client.chat_completion(messages=[{"role": "user", "content": "Is ice cold?"}],
                                    max_tokens=4)
    assert output.usage.completion_tokens == 8  # 4 per tier
    with urllib.request.urlopen(f"{tiny_server}/v1/models") as response:
        assert json.load(response)["data"][0]["id"] == "corea-cascade"


@pytest.mark.parametrize("body,status,fragment", [
    (b"{not json", 400, "json"),
    (b'{"model": "x"}', 400, "messages"),
    (b'{"messages": []}', 400, "messages"),
    (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "role"),
    (b'{"messages": [{"role": "user", "content": 5}]}', 400, "content"),
    (b'{"messages": [{"role": "system", "content": "only a system prompt"}]}', 400, "user message"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400, "limit"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, "temperature"),
    (b'[1, 2, 3]', 400, ""),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 300_000}]}).encode(), 413, "bytes"),
])
def test_bad_requests_get_openai_shaped_4xx(tiny_server, body, status, fragment):
    code, payload = post(tiny_server, body)
    assert code == status
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert fragment in payload["error"]["message"].lower()
    with urllib.request.urlopen(f"{tiny_server}/health") as response:
        assert json.load(response)["status"] == "ok"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4), max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "bot", 3]),
                                           "content": json_values}), max_size=3)
bodies = st.one_of(json_values, st.fixed_dictionaries(
    {"messages": messages}, optional={"max_tokens": json_values, "stream": json_values,
                                      "temperature": json_values, "top_p": json_values}))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies)
def test_fuzzed_requests_never_get_a_5xx(tiny_server, body):
    code, _ = post(tiny_server, json.dumps(body).encode())
    assert code < 500


@pytest.mark.integration
@pytest.mark.skipif(not embedded_installed("smollm2"), reason="embedded SLM not installed")
def test_a_failing_upstream_falls_back_and_cools_down(tmp_path):
    from corea.embedded import smollm2_gguf

    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host",
         "127.0.0.1", "--port", str(port), "--n_threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}/v1/models", upstream)
    slm = build_tiny_model(tmp_path / "slm")
    config = {"tiers": [{"model": str(slm), "threshold": 0.5},
                        {"model": f"http://127.0.0.1:{port}/v1#smollm2",
                         "price": {"input": 1, "output": 1}}],
              "generation": {"max_new_tokens": 16}}
    server, base = start_server(config, tmp_path, "--retries", "1", "--backoff", "0.05",
                                "--cooldown", "60")
    question = json.dumps({"messages": [{"role": "user", "content": "What is 2 + 5?"}]}).encode()
    try:
        code, healthy = post(base, question)
        assert code == 200 and healthy["corea"]["tier"] == 2 and not healthy["corea"]["fallback"]
        stop(upstream)  # the upstream goes away mid-run
        for _ in range(2):
            code, answer = post(base, question)
            assert code == 200  # never dropped
            assert answer["corea"]["fallback"] is True and answer["corea"]["failed_tiers"] == [2]
            assert answer["corea"]["answered_by"] == "slm"
        with urllib.request.urlopen(f"{base}/health") as response:
            tiers = json.load(response)["tiers"]
        assert tiers[1]["cooling_down_s"] > 0  # repeated failures put the tier in cool-down
        started = time.time()
        code, cooled = post(base, question)
        assert code == 200 and cooled["corea"]["fallback"] and time.time() - started < 5
    finally:
        stop(server)
        if upstream.poll() is None:
            stop(upstream)


# ----------------------------------------------------------------- OpenAI compatibility, field by field

def openai_client(base: str, api_key: str = "unused"):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0)


def test_text_parts_are_a_question_as_a_string_is(tiny_server):
    client = openai_client(tiny_server)
    plain = client.chat.completions.create(
        model="corea-cascade", messages=[{"role": "user", "content": "What is 2 + 2?"}])
    parts = client.chat.completions.create(model="corea-cascade", messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"}]}])
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens


def test_n_gives_n_choices(tiny_server):
    client = openai_client(tiny_server)
    question = [{"role": "user", "content": "What is 4 + 1?"}]
    one = client.chat.completions.create(model="corea-cascade", messages=question)
    three = client.chat.completions.create(model="corea-cascade", messages=question, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    # greedy: every choice is the one reply, and each was generated (and is counted)
    assert {c.message.content for c in three.choices} == {one.choices[0].message.content}
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    streamed = list(client.chat.completions.create(model="corea-cascade", messages=question, n=2,
                                                   stream=True))
    texts = ["".join(c.choices[0].delta.content or "" for c in streamed
                     if c.choices and c.choices[0].index == i) for i in range(2)]
    assert texts == [one.choices[0].message.content] * 2
    assert streamed[-1].usage.completion_tokens == 2 * one.usage.completion_tokens


def test_stop_ends_the_reply_before_the_sequence(tiny_server):
    client = openai_client(tiny_server)
    question = [{"role": "user", "content": "Is ice cold?"}]
    whole = client.chat.completions.create(model="corea-cascade", messages=question)
    text = whole.choices[0].message.content
    assert len(text) > 4
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = client.chat.completions.create(model="corea-cascade", messages=question, stop=[stop])
    assert cut.choices[0].message.content == text[:text.find(stop)]
    assert stop not in cut.choices[0].message.content
    streamed = client.chat.completions.create(model="corea-cascade", messages=question, stop=stop,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) \
        == text[:text.find(stop)]


def test_max_tokens_caps_each_tier_and_says_length(tiny_server):
    reply = openai_client(tiny_server).chat.completions.create(
        model="corea-cascade", messages=[{"role": "user", "content": "Count to ten."}],
        max_tokens=3)
    assert reply.usage.completion_tokens == 6  # 3 per tier, both tiers called
    assert reply.choices[0].finish_reason == "length"


def test_the_same_seed_and_temperature_give_the_same_text_streamed_or_not(tiny_server):
    client = openai_client(tiny_server)
    question = [{"role": "user", "content": "Name a color."}]
    sampled = [client.chat.completions.create(model="corea-cascade", messages=question,
                                              temperature=1.0, seed=7).choices[0].message.content
               for _ in range(2)]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="corea-cascade", messages=question, temperature=1.0, seed=7, stream=True)
        if c.choices)
    assert sampled[0] == sampled[1] == streamed


@pytest.mark.parametrize("extra,field", [
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"n": 9}, "n"),
    ({"n": 0}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"seed": -1}, "seed"),
    ({"top_p": 0}, "top_p"),
    ({"stream_options": {"include_usage": "maybe"}}, "stream_options"),
])
def test_unsupported_or_invalid_fields_are_refused_by_name(tiny_server, extra, field):
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    code, payload = post(tiny_server, json.dumps(body).encode())
    assert code == 400
    assert field in payload["error"]["message"] and field in (payload["error"]["param"] or "")


@pytest.mark.parametrize("message,field", [
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "type"),
    ({"role": "user", "content": [{"type": "text"}]}, "text"),
    ({"role": "user", "content": "hi", "tool_calls": []}, "tool_calls"),
])
def test_malformed_messages_name_the_field(tiny_server, message, field):
    code, payload = post(tiny_server, json.dumps({"messages": [message]}).encode())
    assert code == 400 and field in payload["error"]["message"]


def test_fields_at_their_neutral_values_are_accepted(tiny_server):
    reply = openai_client(tiny_server).chat.completions.create(
        model="any-name", messages=[{"role": "user", "content": "What is 1 + 1?", "name": "ann"}],
        logprobs=False, frequency_penalty=0, presence_penalty=0, user="u-1",
        response_format={"type": "text"}, stream_options=None)
    assert reply.choices[0].message.content is not None


def test_no_api_key_reaches_the_log(tmp_path):
    slm, llm = build_tiny_model(tmp_path / "slm"), build_tiny_model(tmp_path / "llm", seed=1)
    config = {"tiers": [{"model": str(slm), "threshold": 0.5}, {"model": str(llm)}],
              "generation": {"max_new_tokens": 4}}
    process, base = start_server(config, tmp_path)
    key = "sk-corea-test-6b1f0e77d2"
    try:
        client = openai_client(base, api_key=key)
        client.chat.completions.create(model="corea-cascade",
                                       messages=[{"role": "user", "content": "hi"}])
        for bad in ({"messages": []}, {"messages": [{"role": "user", "content": 1}]}):
            request = urllib.request.Request(
                f"{base}/v1/chat/completions", data=json.dumps(bad).encode(), method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(request, timeout=60)
    finally:
        stop(process)
    log = process.stdout.read()
    assert "POST /v1/chat/completions" in log  # the log is there, and it was read
    assert key not in log and "Bearer" not in log


@pytest.mark.integration
@pytest.mark.skipif(not (embedded_installed("smollm2") and embedded_installed("qwen")),
                    reason="embedded models not installed")
def test_serve_without_a_config_runs_the_embedded_defaults():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "corea", "serve", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process, seconds=300)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as response:
            tiers = json.load(response)["tiers"]
    finally:
        stop(process)
    from corea import embedded

    # the default SLM (corea.embedded.default_slm) in front of the embedded LLM, served as its
    # adapter declares
    slm = embedded.default_slm()
    assert [t["model"] for t in tiers] == [embedded.served_name(slm), "qwen2.5-coder-1.5b"]
    signal, threshold = embedded.serving_defaults(slm)
    assert (tiers[0]["signal"], tiers[0]["threshold"]) == (signal, threshold)
    assert "embedded defaults" in process.stdout.read()
