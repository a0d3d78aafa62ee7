import json

import pytest

from corea.costs import Price
from corea.models import GenerationConfig
from corea.tasks import get_task
from corea.traces import REQUIRED_FIELDS, TraceError, read_trace, run_trace

SHORT = GenerationConfig(max_new_tokens=6)
PRICE = Price(1.0, 2.0)


def test_trace_rows_have_every_field(tiny_model, tmp_path):
    out = tmp_path / "t.jsonl"
    summary = run_trace(tiny_model, get_task("arith"), out, limit=5, batch_size=2, config=SHORT,
                        price=PRICE, progress=False)
    rows = read_trace(out)
    assert summary.rows == summary.new_rows == len(rows) == 5
    assert [r["id"] for r in rows] == [e.id for e in get_task("arith").examples("test", 5)]
    for row in rows:
        assert set(REQUIRED_FIELDS) <= set(row)
        assert row["model"] == "tiny" and row["task"] == "arith"
        assert row["completion_tokens"] == 6 and row["prompt_tokens"] > 100
        assert row["cost"] == pytest.approx((row["prompt_tokens"] * 1 + 6 * 2) / 1e6)
        assert row["correct"] is False and row["confidence"] is None  # random weights


def test_a_second_run_resumes(tiny_model, tmp_path):
    out = tmp_path / "t.jsonl"
    run_trace(tiny_model, get_task("svamp"), out, limit=3, config=SHORT, progress=False)
    before = out.read_text()
    summary = run_trace(tiny_model, get_task("svamp"), out, limit=5, config=SHORT, progress=False)
    assert summary.new_rows == 2 and summary.rows == 5
    assert out.read_text().startswith(before)  # rows already written are untouched
    assert run_trace(tiny_model, get_task("svamp"), out, limit=5, config=SHORT,
                     progress=False).new_rows == 0


def test_a_line_cut_by_a_crash_is_redone(tiny_model, tmp_path):
    out = tmp_path / "t.jsonl"
    run_trace(tiny_model, get_task("svamp"), out, limit=3, config=SHORT, progress=False)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # crash mid-write
    summary = run_trace(tiny_model, get_task("svamp"), out, limit=3, config=SHORT, progress=False)
    assert summary.new_rows == 1
    assert len(read_trace(out)) == 3


def test_resuming_into_another_models_trace_is_refused(tiny_model, tiny_model_b, tmp_path):
    out = tmp_path / "t.jsonl"
    run_trace(tiny_model, get_task("svamp"), out, limit=1, config=SHORT, progress=False)
    with pytest.raises(TraceError, match="choose another --out"):
        run_trace(tiny_model_b, get_task("svamp"), out, limit=1, config=SHORT, progress=False)


def test_resuming_under_other_decoding_or_without_few_shot_is_refused(tiny_model, tmp_path):
    out = tmp_path / "t.jsonl"
    run_trace(tiny_model, get_task("svamp"), out, limit=1, config=SHORT, progress=False)
    sampled = GenerationConfig(max_new_tokens=6, temperature=0.7, seed=1)
    with pytest.raises(TraceError, match="another prompt or decoding settings"):
        run_trace(tiny_model, get_task("svamp"), out, limit=2, config=sampled, progress=False)
    with pytest.raises(TraceError, match="another prompt or decoding settings"):
        run_trace(tiny_model, get_task("svamp"), out, limit=2, config=SHORT, few_shot=False,
                  progress=False)
    assert len(read_trace(out)) == 1  # nothing was added to the refused file


def test_rows_from_before_fingerprints_are_resumed(tiny_model, tmp_path):
    out = tmp_path / "t.jsonl"
    run_trace(tiny_model, get_task("svamp"), out, limit=1, config=SHORT, progress=False)
    old = [{k: v for k, v in row.items() if k != "setup"} for row in read_trace(out)]
    out.write_text("".join(json.dumps(row) + "\n" for row in old))
    assert run_trace(tiny_model, get_task("svamp"), out, limit=2, config=SHORT,
                     progress=False).new_rows == 1


def _valid_row(**changes):
    row = {"id": "a", "task": "t", "question": "q", "gold": "1", "model": "m", "output": "o",
           "answer": None, "confidence": None, "correct": False, "prompt_tokens": 1,
           "completion_tokens": 1, "cost": 0.0, "latency_s": 0.1}
    row.update(changes)
    return row


@pytest.mark.parametrize("bad,message", [
    ("{not json", "line 2: not valid JSON"),
    (json.dumps({"id": "b"}), "line 2: missing field 'task'"),
    (json.dumps(_valid_row(id="b", confidence=1.5)), "line 2: confidence 1.5 is outside"),
    (json.dumps(_valid_row(id="b", prompt_tokens=True)), "line 2: field 'prompt_tokens'"),
    (json.dumps(_valid_row(id="a")), "line 2: id 'a' appears twice"),
])
def test_bad_rows_name_their_line(tmp_path, bad, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_valid_row()) + "\n" + bad + "\n")
    with pytest.raises(TraceError, match=message):
        read_trace(path)
