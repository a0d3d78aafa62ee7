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


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
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
    assert final.choices[0].finish_reason == "stop"
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
