"""The command line as a user runs it: a real `python -m corea` process."""

import json
import subprocess
import sys

import pytest

from test_metrics import LLM, SLM


def corea(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "corea", *args], capture_output=True, text=True,
                          timeout=timeout)


def write_trace(path, rows, model):
    full = [{"task": "t", "question": f"question {r['id']}", "gold": "1", "model": model,
             "output": "", "answer": None, "prompt_tokens": 1, "completion_tokens": 1,
             "latency_s": 0.0, **r} for r in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in full))
    return path


@pytest.fixture()
def traces(tmp_path):
    return (write_trace(tmp_path / "slm.jsonl", SLM, "slm"),
            write_trace(tmp_path / "llm.jsonl", LLM, "llm"))


def test_sweep_json(traces, tmp_path):
    slm, llm = traces
    plot = tmp_path / "plots" / "pareto.html"
    result = corea("sweep", "--slm", str(slm), "--llm", str(llm), "--json", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"points", "llm_only", "slm_only", "best_within_2pt", "ece", "auroc", "brier"} <= set(report)
    assert report["best_within_2pt"]["threshold"] == 0.6
    assert report["best_within_2pt"]["relative_cost"] == pytest.approx(0.35)
    assert set(report["points"][0]) >= {"threshold", "accuracy", "cost", "relative_cost", "llm_share"}
    assert report["auroc"] == pytest.approx(0.875)
    assert plot.stat().st_size > 1000 and "plotly" in plot.read_text()[:5000].lower()


def test_sweep_table(traces):
    result = corea("sweep", "--slm", str(traces[0]), "--llm", str(traces[1]))
    assert result.returncode == 0
    assert "Best within 2 points of LLM-only: threshold 0.600" in result.stdout
    assert "saving 65.0%" in result.stdout


def one_line_error(result):
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_traces_that_share_no_ids(tmp_path, traces):
    other = write_trace(tmp_path / "other.jsonl", [{"id": "zz", "correct": True, "cost": 1.0,
                                                    "confidence": None}], "llm")
    assert "share no question ids" in one_line_error(corea("sweep", "--slm", str(traces[0]),
                                                           "--llm", str(other)))


def test_trace_with_a_bad_row(tmp_path, traces):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(traces[1].read_text() + '{"id": "q9"}\n')
    assert "line 5: missing field" in one_line_error(corea("sweep", "--slm", str(traces[0]),
                                                           "--llm", str(bad)))


@pytest.mark.parametrize("question,message", [("", "empty"), ("   ", "empty"),
                                              ("x" * 5000, "limit is 4000")])
def test_ask_refuses_bad_questions(question, message):
    assert message in one_line_error(corea("ask", question))


def test_unknown_model(tmp_path):
    out = tmp_path / "t.jsonl"
    line = one_line_error(corea("trace", "--model", "no-such-model", "--task", "gsm8k",
                                "--out", str(out)))
    assert "unknown model 'no-such-model'" in line
    assert not out.exists()


def test_unknown_task_writes_nothing(tmp_path):
    out = tmp_path / "t.jsonl"
    assert "unknown task" in one_line_error(corea("trace", "--model", "smollm2", "--task", "mmlu",
                                                  "--out", str(out)))
    assert not out.exists()


def test_unreachable_endpoint_writes_nothing(tmp_path):
    out = tmp_path / "t.jsonl"
    from conftest import free_port

    line = one_line_error(corea("trace", "--model", f"http://127.0.0.1:{free_port()}/v1#m",
                                "--task", "svamp", "--limit", "1", "--out", str(out),
                                "--quiet", "--price-in", "1", "--price-out", "2"))
    assert "endpoint http://127.0.0.1" in line and "failed" in line
    assert not out.exists()


def test_help_explains_each_command():
    for command in ("ask", "trace", "sweep", "models", "tasks"):
        result = corea(command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout
    assert "resumes" in corea("trace", "--help").stdout


def test_tasks_listing():
    result = corea("tasks")
    assert result.returncode == 0
    assert all(name in result.stdout for name in ("gsm8k", "svamp", "strategyqa", "arith-3"))


def test_tune_chooses_the_threshold_the_library_does_and_exports_it(traces, tmp_path):
    from corea.cascade import CascadeConfig
    from corea.metrics import join_traces
    from corea.thresholds import choose_threshold
    from corea.traces import read_trace

    slm, llm = traces
    pair = join_traces(read_trace(slm), read_trace(llm))
    config_path = tmp_path / "cascade.json"
    result = corea("tune", "--slm", str(slm), "--llm", str(llm), "--max-drop", "0.02",
                   "--export", str(config_path), "--json")
    assert result.returncode == 0, result.stderr
    chosen = json.loads(result.stdout)
    assert chosen["threshold"] == choose_threshold(pair, "max_drop", 0.02)["threshold"] == 0.6
    assert chosen["saving"] == pytest.approx(0.65) and chosen["accuracy_lost"] == pytest.approx(0)
    config = CascadeConfig.load(config_path)
    assert [(t.model, t.threshold, t.signal) for t in config.tiers] == [
        ("slm", 0.6, "verbalized"), ("llm", None, "verbalized")]
    shared = corea("tune", "--slm", str(slm), "--llm", str(llm), "--llm-share", "0.25")
    assert shared.returncode == 0 and "threshold 0.600" in shared.stdout


def test_tune_says_when_no_threshold_meets_the_goal(traces):
    slm, llm = traces
    # Four questions cannot certify a 2% loss at 90% confidence.
    refused = corea("tune", "--slm", str(slm), "--llm", str(llm), "--max-drop", "0.02",
                    "--guarantee", "0.9")
    assert refused.returncode == 1 and "no threshold meets --max-drop 0.02 with 90% confidence" \
        in refused.stderr and "at least 114 questions" in refused.stderr
    assert "use it with --max-drop" in one_line_error(
        corea("tune", "--slm", str(slm), "--llm", str(llm), "--budget", "1", "--guarantee", "0.9"))
    assert "no answer_probability column" in one_line_error(
        corea("tune", "--slm", str(slm), "--llm", str(llm), "--max-drop", "0.02",
              "--signal", "answer_probability"))
    assert "one of the arguments" in corea("tune", "--slm", str(slm), "--llm", str(llm)).stderr
