"""The real app on a loopback port, driven through gradio_client like a visitor's browser would."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from conftest import free_port
from corea.cascade import CascadeConfig
from corea.metrics import evaluate_threshold, join_traces, summarize
from corea.signals import with_signal
from corea.thresholds import choose_threshold
from corea.traces import read_trace
from test_cli import write_trace
from test_metrics import LLM, SLM
from tiny import build_tiny_model

REPO = Path(__file__).resolve().parents[1]


def start_app(port: int, **extra_env) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", **extra_env}
    process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(process.stdout.read())
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the app did not start")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """A training run's log and record in the format `python -m training grpo` writes them."""
    run = tmp_path_factory.mktemp("runs") / "runs" / "demo"
    run.mkdir(parents=True)
    entries = [{"step": s, "reward": 0.2 * s, "rewards/format_reward/mean": 0.3 + 0.1 * s,
                "rewards/brier_reward/mean": 0.5, "calibration/ece": 0.4 - 0.05 * s,
                "completions/mean_length": 60 - s} for s in (1, 2, 3)]
    (run / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    scores = {"n": 10, "accuracy": 0.3, "format_rate": 0.5, "ece": 0.4, "auroc": 0.6, "brier": 0.3}
    (run / "run.json").write_text(json.dumps({
        "base_model": "smollm2", "steps": 3, "config": {"confidence_reward": "brier",
                                                        "tasks": ["arith-1"]},
        "before": {"all": scores}, "after": {"all": {**scores, "ece": 0.1}}}))
    return run.parent


@pytest.fixture(scope="module")
def app_url(runs_dir):
    port = free_port()
    process = start_app(port, COREA_RUNS_DIR=str(runs_dir))
    yield f"http://127.0.0.1:{port}/"
    process.terminate()
    output, _ = process.communicate(timeout=30)
    # Tokens typed into the UI never reach the logs.
    assert "sk-test-secret-token" not in output


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return (str(build_tiny_model(tmp_path_factory.mktemp("app-slm"))),
            str(build_tiny_model(tmp_path_factory.mktemp("app-llm"), seed=1)))


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("traces")
    return (write_trace(folder / "slm.jsonl", SLM, "smollm2-135m"),
            write_trace(folder / "llm.jsonl", LLM, "qwen2.5-coder-1.5b"))


def test_tuning_matches_the_sweep(client, uploaded):
    slm, llm = uploaded
    pair = join_traces(read_trace(slm), read_trace(llm))
    report = summarize(pair)
    result = client.predict(None, handle_file(str(slm)), handle_file(str(llm)), 0.6,
                            api_name="/tune_load")
    point = result[2]
    assert point == pytest.approx(evaluate_threshold(pair, 0.6))
    assert "75.0%" in result[1] and "4 questions" in result[1]
    for threshold in (0.0, 0.9, 0.95):
        _, text, point, _ = client.predict(threshold, api_name="/tune_threshold")
        assert point == pytest.approx(evaluate_threshold(pair, threshold))
    assert report["best_within_2pt"]["threshold"] == 0.6


def test_goals_propose_the_same_threshold_as_the_library(client, uploaded):
    slm, llm = uploaded
    client.predict(None, handle_file(str(slm)), handle_file(str(llm)), 0.5, api_name="/tune_load")
    pair = join_traces(read_trace(slm), read_trace(llm))
    value, text = client.predict("Send at most Z% of questions to the LLM", 25,
                                 api_name="/tune_propose")
    assert value == choose_threshold(pair, "llm_share", 0.25)["threshold"] == 0.6
    assert "0.600" in text
    value, _ = client.predict("Lose at most X points of accuracy", 25, api_name="/tune_propose")
    assert value == choose_threshold(pair, "max_drop", 0.25)["threshold"]
    # Four questions can certify nothing; the message says how many would be needed.
    value, text = client.predict("Lose at most X points of accuracy", 2, True,
                                 api_name="/tune_propose")
    assert "certified at 90% confidence" in text and "at least 114 questions" in text
    with pytest.raises(Exception, match="choose the first goal"):
        client.predict("Send at most Z% of questions to the LLM", 25, True,
                       api_name="/tune_propose")
    path = client.predict(0.6, api_name="/tune_export")
    config = CascadeConfig.load(path)
    assert [t.model for t in config.tiers] == ["smollm2-135m", "qwen2.5-coder-1.5b"]
    assert config.tiers[0].threshold == 0.6 and config.tiers[0].price is not None


def test_tuning_on_a_token_signal_exports_it(client, uploaded, tmp_path):
    # The same SLM rows with an answer-probability column that ranks them the other way round.
    probabilities = {"q1": 0.95, "q2": 0.2, "q3": 0.7, "q4": 0.1}
    slm = write_trace(tmp_path / "slm-logprobs.jsonl",
                      [{**r, "answer_probability": probabilities[r["id"]]} for r in SLM],
                      "smollm2-135m")
    pair = join_traces(with_signal(read_trace(slm), "answer_probability"), read_trace(uploaded[1]))
    point = client.predict(None, handle_file(str(slm)), handle_file(str(uploaded[1])), 0.5,
                           "answer token probability", api_name="/tune_load")[2]
    assert point == pytest.approx(evaluate_threshold(pair, 0.5))
    assert point != pytest.approx(evaluate_threshold(join_traces(read_trace(slm),
                                                                 read_trace(uploaded[1])), 0.5))
    config = CascadeConfig.load(client.predict(0.5, api_name="/tune_export"))
    assert config.tiers[0].signal == "answer_probability" and config.tiers[0].threshold == 0.5
    with pytest.raises(Exception, match="no answer_probability column"):
        client.predict(None, handle_file(str(uploaded[0])), handle_file(str(uploaded[1])), 0.5,
                       "answer token probability", api_name="/tune_load")


@pytest.mark.parametrize("content,message", [
    ("this is not json\n", "not valid JSON"),
    ('{"id": "q1"}\n', "missing field"),
    ("", "no rows"),
])
def test_bad_uploads_get_a_message_and_the_app_keeps_serving(client, uploaded, tmp_path,
                                                             content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(Exception, match=message):
        client.predict(None, handle_file(str(bad)), handle_file(str(uploaded[1])), 0.5,
                       api_name="/tune_load")
    assert client.predict(None, handle_file(str(uploaded[0])), handle_file(str(uploaded[1])), 0.5,
                          api_name="/tune_load")[2]["accuracy"] == 0.75


def test_one_upload_alone_is_refused(client, uploaded):
    with pytest.raises(Exception, match="upload both"):
        client.predict(None, handle_file(str(uploaded[0])), None, 0.5, api_name="/tune_load")


def test_ask_streams_both_tiers(client, tiny_dirs):
    slm, llm = tiny_dirs
    job = client.submit("What is 2 + 2?", slm, llm, "", "", 0.5, "a number", api_name="/ask")
    job.result(timeout=300)
    outputs = job.outputs()
    final = outputs[-1]
    assert len(outputs) >= 2  # streamed, not one final answer
    slm_text, bar, decision, llm_text, steps, routed = final
    assert "Deferred" in decision and 'data-confidence="0.0000"' in bar
    assert [row[4] for row in steps["data"]] == ["deferred", "final"]
    assert all(row[6] > 0 for row in steps["data"])  # completion tokens counted


def test_ask_on_a_token_signal_scores_the_slm_by_its_tokens(client, tiny_dirs):
    slm_text, bar, decision, _, steps, _ = client.predict(
        "What is 2 + 2?", *tiny_dirs, "", "", 0.5, "a number", "answer token probability",
        api_name="/ask")
    # Random weights write no "Answer:" line, so there are no answer tokens to score: deferred.
    assert "no answer to take the answer token probability of" in bar
    assert "Deferred" in decision and steps["data"][0][3] == "—"


@pytest.mark.parametrize("question", ["", "   "])
def test_an_empty_question_is_a_message(client, tiny_dirs, question):
    with pytest.raises(Exception, match="empty"):
        client.predict(question, *tiny_dirs, "", "", 0.5, "a number", api_name="/ask")


def test_unloadable_model_and_unreachable_endpoint_are_messages(client, tiny_dirs):
    with pytest.raises(Exception, match="unknown model"):
        client.predict("What is 1+1?", "not-a-model", tiny_dirs[1], "", "", 0.5, "a number",
                       api_name="/ask")
    with pytest.raises(Exception, match="endpoint http://127.0.0.1"):
        client.predict("What is 1+1?", tiny_dirs[0], f"http://127.0.0.1:{free_port()}/v1", "m",
                       "sk-test-secret-token", 0.5, "a number", api_name="/ask")


@pytest.mark.parametrize("signal", ["stated confidence", "first-token margin"])
def test_batch_runs_live(client, tiny_dirs, signal):
    job = client.submit("arith", 3, *tiny_dirs, "", "", 0.5, signal, api_name="/run_batch")
    job.result(timeout=300)
    outputs = job.outputs()
    table, _, summary = outputs[-1]
    assert len(table["data"]) == 3 and "3/3" in summary
    assert len(outputs) >= 3  # one update per question


def test_visitors_do_not_share_tuning_state(app_url, uploaded, tmp_path):
    first, second = Client(app_url, verbose=False), Client(app_url, verbose=False)
    first.predict(None, handle_file(str(uploaded[0])), handle_file(str(uploaded[1])), 0.5,
                  api_name="/tune_load")
    rows = [{"id": f"x{i}", "correct": i % 2 == 0, "cost": 1.0, "confidence": i / 10}
            for i in range(10)]
    other = (write_trace(tmp_path / "a.jsonl", rows, "a"),
             write_trace(tmp_path / "b.jsonl", [{**r, "correct": True, "cost": 5.0} for r in rows], "b"))
    second.predict(None, handle_file(str(other[0])), handle_file(str(other[1])), 0.5,
                   api_name="/tune_load")
    assert "4 questions" in first.predict(0.5, api_name="/tune_threshold")[1]
    assert "10 questions" in second.predict(0.5, api_name="/tune_threshold")[1]


def test_training_curves_from_a_run_log(client):
    figure, summary = client.predict("runs/demo", api_name="/training_run")
    assert "3 steps" in summary and "0.400 → 0.100" in summary
    plotted = json.loads(figure["plot"]) if isinstance(figure, dict) else figure
    names = {trace["name"] for trace in plotted["data"]}
    assert {"reward", "calibration/ece", "completions/mean_length"} <= names


def test_the_tabs_start_from_how_the_chosen_slm_is_served():
    from corea import embedded
    from corea.ui.common import SIGNAL_CHOICES, serving_for_ui, slm_choices

    # The shipped default is read as its adapter declares; the untrained model as it states.
    label, threshold = serving_for_ui(slm_choices()[0])
    signal, served = embedded.serving_defaults(embedded.default_slm())
    assert (SIGNAL_CHOICES[label], threshold) == (signal, served)
    assert serving_for_ui("smollm2") == ("stated confidence", 0.8)
    # Every shipped SLM is offered with the signal it declares (the one answering by program
    # defers on how probable its program was).
    for slm in slm_choices():
        assert SIGNAL_CHOICES[serving_for_ui(slm)[0]] == embedded.serving_defaults(slm)[0]
    assert serving_for_ui("smollm2-135m-program")[0] == "program token probability"


def test_a_bundled_slm_variant_pairs_with_the_same_variant_of_the_llm():
    from corea.ui.common import bundled_trace_pairs

    pairs = {label: (slm.name, llm.name) for label, (slm, llm) in bundled_trace_pairs().items()}
    assert pairs["arith-mix (program)"] == ("smollm2-program-arith-mix.jsonl",
                                            "qwen-program-arith-mix.jsonl")
    assert pairs["arith-mix (calibrated)"] == ("smollm2-calibrated-arith-mix.jsonl",
                                               "qwen-arith-mix.jsonl")
    assert pairs["arith-mix"] == ("smollm2-arith-mix.jsonl", "qwen-arith-mix.jsonl")
