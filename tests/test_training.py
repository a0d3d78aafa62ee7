import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import embedded_installed
from training.config import TrainConfig, load_config
from training.data import training_rows

CONFIGS = sorted(Path("training/configs").glob("*.yaml"))


def tiny_overrides(model_dir, output_dir, steps=2):
    return ["--model", str(model_dir), "--tasks", "arith-1", "--train_size", "4",
            "--max_steps", str(steps), "--per_device_train_batch_size", "4",
            "--num_generations", "2", "--max_completion_length", "8", "--eval_limit", "2",
            "--eval_tasks", "arith-1", "--eval_max_new_tokens", "4", "--output_dir",
            str(output_dir), "--save_steps", "1", "--device", "cpu", "--warmup_steps", "1",
            "--warmup_size", "4", "--self_label_size", "2", "--self_label_samples", "2",
            "--self_label_max_new_tokens", "8"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), TrainConfig)


def test_unknown_key_names_the_closest_option(tmp_path):
    with pytest.raises(ValueError, match="unknown option 'max_step'.*did you mean max_steps"):
        load_config(None, ["--max_step", "3"])
    path = tmp_path / "c.yaml"
    path.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="did you mean learning_rate"):
        load_config(path)


@pytest.mark.parametrize("args,message", [
    (["--max_steps", "many"], "takes a int"),
    (["--curriculum", "maybe"], "true or false"),
    (["--per_device_train_batch_size", "6", "--num_generations", "4"], "multiple of"),
    (["--confidence_reward", "kl"], "confidence_reward must be"),
    (["--num_generations", "1", "--per_device_train_batch_size", "2"], "at least 2"),
])
def test_bad_values_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, args)


def test_overrides_accept_both_spellings_and_lists():
    config = load_config(None, ["--max-steps=7", "--tasks", "arith-1,gsm8k"])
    assert config.max_steps == 7 and config.tasks == ["arith-1", "gsm8k"]


def test_training_and_evaluation_never_share_questions():
    config = load_config(None, ["--tasks", "arith-1,arith-2,gsm8k", "--train_size", "300",
                                "--eval_tasks", "arith-1,arith-2,gsm8k", "--eval_limit", "300"])
    rows = training_rows(config)  # raises if any evaluation question were a training question
    assert [r["level"] for r in rows] == sorted(r["level"] for r in rows)  # easy first
    assert all(r["id"].startswith(("arith1-train", "arith2-train", "gsm8k-train")) for r in rows)


def test_warmup_solutions_state_one_confidence_and_the_right_answer():
    from corea.protocol import parse_reply
    from training.warmup import warmup_rows

    config = load_config(None, ["--tasks", "arith-1,arith-2", "--train_size", "10",
                                "--warmup_size", "6"])
    rows = warmup_rows(config)
    assert len(rows) == 6
    train_questions = {r["question"] for r in training_rows(config)}
    for row in rows:
        reply = parse_reply(row["completion"][0]["content"])
        assert reply.format_ok and reply.confidence == 0.5
        question = row["prompt"][-1]["content"]
        assert question.split("\n")[0] not in train_questions  # GRPO sees other problems
        # the worked solution's last equation gives the answer it states
        assert row["completion"][0]["content"].split("=")[-1].split(".")[0].strip() == reply.answer


def test_self_labelled_problems_are_new_to_every_other_stage():
    from training.self_label import self_label_problems
    from training.warmup import warmup_rows

    config = load_config(None, ["--tasks", "arith-1,arith-2", "--train_size", "10",
                                "--warmup_size", "6", "--self_label_size", "5",
                                "--eval_tasks", "arith-1,arith-2", "--eval_limit", "40"])
    problems = self_label_problems(config)
    assert len(problems) == 10
    questions = {p["question"] for p in problems}
    assert not questions & {r["question"] for r in training_rows(config)}
    assert not questions & {r["prompt"][-1]["content"].split("\n")[0] for r in warmup_rows(config)}
    from training.data import evaluation_sets

    for task, split in evaluation_sets(config):
        assert not questions & {e.question for e in task.examples(split, 40)}


def test_self_labelled_rows_teach_the_share_of_right_replies(tmp_path):
    from tiny import build_tiny_model
    from transformers import AutoTokenizer

    from training.self_label import labelled_rows

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "model"))
    problem = {"id": "p1", "question": "What is 2 + 3?", "gold": "5", "checker": "numeric",
               "hint": None}
    replies = {"p1": ["2 + 3 = 5.\nAnswer: 5\nConfidence: 0.2",
                      "2 + 3 = 6.\nAnswer: 6\nConfidence: 0.99",
                      "Answer: 5\nConfidence: 1",
                      "no answer at all"]}
    rows = labelled_rows([problem], replies, tokenizer, few_shot=False)
    # 2 right of 4 sampled (the unformatted one counts as wrong and teaches nothing itself)
    assert [row["completion"] for row in rows] == [" 0.5"] * 3
    first = rows[0]["prompt"]
    assert first.endswith("2 + 3 = 5.\nAnswer: 5\nConfidence:")
    assert "What is 2 + 3?" in first and "0.2" not in first
    assert labelled_rows([problem], {"p1": ["no answer at all"] * 3}, tokenizer, False) == []


def test_tasks_without_a_train_split_are_refused():
    with pytest.raises(ValueError, match="no train split"):
        training_rows(load_config(None, ["--tasks", "svamp", "--eval_limit", "0"]))


def test_a_file_without_the_needed_columns_is_refused(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "2+2?", "answer": 4}) + "\n")
    with pytest.raises(ValueError, match="no column 'question'"):
        training_rows(load_config(None, ["--tasks", str(path), "--eval_limit", "0"]))


def run_training(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_a_model_that_cannot_be_trained_fails_before_training(tmp_path):
    result = run_training("grpo", "--model", str(tmp_path / "nothing-here"), "--output_dir",
                          str(tmp_path / "run"), "--eval_limit", "0")
    assert result.returncode == 2 and "cannot train" in result.stderr
    assert not (tmp_path / "run" / "train_log.jsonl").exists()


def test_a_sample_only_self_label_run_keeps_its_replies_and_trains_nothing(tmp_path):
    """Sampling from one model, training from another: the first run samples and stops."""
    from tiny import build_tiny_model

    from training.self_label import REPLIES_FILE

    model = build_tiny_model(tmp_path / "model")
    overrides = ["--model", str(model), "--tasks", "arith-1", "--train_size", "1",
                 "--warmup_size", "0", "--self_label_size", "3", "--self_label_samples", "2",
                 "--self_label_max_new_tokens", "4", "--self_label_sample_only", "true",
                 "--device", "cpu", "--output_dir", str(tmp_path / "run")]
    result = run_training("self-label", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / REPLIES_FILE).open()]
    assert len(records) == 3 and all(len(r["replies"]) == 2 for r in records)
    assert not (tmp_path / "run" / "adapter").exists()
    assert not (tmp_path / "run" / "self-label-adapter").exists()
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["self_label_sampled"] == run["self_label_planned"] == 3
    # Inside the GRPO pipeline it would leave GRPO nothing to start from: refused up front.
    result = run_training("grpo", *overrides, "--output_dir", str(tmp_path / "grpo"))
    assert result.returncode == 2 and "self_label_sample_only" in result.stderr
    assert not (tmp_path / "grpo").exists()


def write_sampled_replies(overrides: list[str], run_dir) -> None:
    """The tiny model's random replies never state an answer, so the self-labelled stage gets
    sampled replies as an interrupted stage leaves them (one right and one wrong per problem)."""
    from training.self_label import REPLIES_FILE, self_label_problems

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / REPLIES_FILE, "w") as handle:
        for problem in self_label_problems(load_config(None, overrides)):
            handle.write(json.dumps({"id": problem["id"], "replies": [
                f"Answer: {problem['gold']}\nConfidence: 0.9",
                "Answer: -1\nConfidence: 0.9"]}) + "\n")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("grpo")
    model = build_tiny_model(folder / "model")
    overrides = tiny_overrides(model, folder / "run")
    write_sampled_replies(overrides, folder / "run")
    result = run_training("grpo", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_grpo_smoke_writes_an_adapter_and_finite_logs(tiny_run):
    run_dir = tiny_run / "run"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    steps = [entry for entry in log if "reward" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    for entry in steps:
        for key in ("reward", "rewards/format_reward/mean", "rewards/brier_reward/mean",
                    "calibration/ece", "completions/mean_length"):
            assert math.isfinite(entry[key]), key
    run = json.loads((run_dir / "run.json").read_text())
    assert run["steps"] == 2 and run["log_finite"]
    assert (set(run["before"]) == set(run["after"]) == set(run["after_warmup"])
            == set(run["after_self_label"]) == {"arith-1", "all"})
    # Each stage went on training the previous stage's adapter rather than a new one
    assert (run_dir / "warmup-adapter" / "adapter_model.safetensors").is_file()
    assert (run_dir / "self-label-adapter" / "adapter_model.safetensors").is_file()
    targets = json.loads((run_dir / "self-label-targets.json").read_text())
    assert targets["rows"] == 4 and set(targets["targets"]) == {0.5}
    assert (run_dir / "training_curves.html").stat().st_size > 1000


def test_an_interrupted_run_resumes_from_its_checkpoint(tiny_run):
    result = run_training("grpo", *tiny_overrides(tiny_run / "model", tiny_run / "run", steps=3))
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tiny_run / "run" / "run.json").read_text())
    assert run["steps"] == 3 and run["resumed_from"].endswith("checkpoint-2")


def test_push_dry_run_writes_adapter_and_card(tiny_run, tmp_path):
    out = tmp_path / "push"
    result = run_training("push", "--adapter", str(tiny_run / "run" / "adapter"), "--repo",
                          "me/tiny-calibrated", "--dry-run", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "adapter_model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "library_name: peft" in card
    assert "accuracy before → after" in card and "| arith-1 | 2 |" in card
    assert "Brier, 1 − (correct − c)²" in card
    assert "**Format warm-up**: 1 supervised steps" in card
    assert "**Self-labelled confidence**: 2 training problems of each of arith-1" in card


def test_push_dry_run_merged(tiny_run, tmp_path):
    out = tmp_path / "merged"
    result = run_training("push", "--adapter", str(tiny_run / "run" / "adapter"), "--repo",
                          "me/tiny", "--merge", "--dry-run", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert "library_name: transformers" in (out / "README.md").read_text()


def test_push_without_a_token_stops_before_any_work(tiny_run, tmp_path, monkeypatch):
    env_home = tmp_path / "hf"
    result = subprocess.run(
        [sys.executable, "-m", "training", "push", "--adapter", str(tiny_run / "run" / "adapter"),
         "--repo", "me/tiny"], capture_output=True, text=True, timeout=300,
        env={**{k: v for k, v in __import__("os").environ.items() if k != "HF_TOKEN"},
             "HF_HOME": str(env_home)})
    assert result.returncode == 2 and "no Hugging Face token" in result.stderr


@pytest.mark.integration
@pytest.mark.skipif(not embedded_installed("smollm2"), reason="embedded SLM not installed")
def test_cpu_smoke_config_on_the_embedded_slm(tmp_path):
    result = run_training("grpo", "--config", "training/configs/cpu-smoke.yaml", "--output_dir",
                          str(tmp_path / "smoke"), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "smoke" / "run.json").read_text())
    assert run["steps"] == 3 and run["log_finite"]
    assert run["after"]["all"]["n"] == 4


def test_an_adapter_trained_to_answer_by_program_is_served_by_program(tiny_run, tmp_path):
    from corea.models import load_model
    from corea.program import ProgramAidedModel
    from training.adapters import write_serving
    from training.config import load_config

    adapter = tmp_path / "program-adapter"
    shutil.copytree(tiny_run / "run" / "adapter", adapter)
    write_serving(adapter, load_config("training/configs/cpu-program-sft-made-up.yaml"))
    assert json.loads((adapter / "corea.json").read_text()) == {"few_shot": False,
                                                                 "program": True}
    model = load_model(str(adapter))
    assert isinstance(model, ProgramAidedModel) and not isinstance(model.inner, ProgramAidedModel)
    assert model.few_shot is False and model.name.startswith("program:")
    # Named with the prefix too, it is wrapped once.
    assert load_model(f"program:{adapter}").name == model.name


def test_an_adapter_copied_in_fp16_keeps_its_files_and_halves_its_weights(tiny_run, tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    from adapter_fp16 import to_fp16
    from safetensors.torch import load_file

    source = tiny_run / "run" / "adapter"
    written = to_fp16(source, tmp_path / "shipped")
    before, after = load_file(source / written.name), load_file(written)
    assert before.keys() == after.keys()
    assert {str(t.dtype) for t in after.values()} == {"torch.float16"}
    for key, tensor in before.items():
        assert (after[key].float() - tensor.float()).abs().max() <= 1e-3 * (1 + tensor.abs().max())
    assert (tmp_path / "shipped" / "adapter_config.json").read_text() == \
        (source / "adapter_config.json").read_text()
    assert not (tmp_path / "shipped" / "training_args.bin").exists()
