"""The Training tab's live runs: a tiny model trained in the app's process, watched, refused a
second start, cancelled, resumed; and the same through the real app on loopback, with gradio_client
and in headless Chromium."""

import json
import math
import shutil
import time

import pytest
from gradio_client import Client

from conftest import free_port
from test_app import start_app
from test_browser import ARTIFACTS, browser  # noqa: F401 - the headless Chromium fixture

import corea.ui.training as tab

# Keys whose curves the tab shows: the reward, the batch's accuracy and its ECE.
CURVE_KEYS = ("reward", "calibration/accuracy", "calibration/ece")


def tiny_config(model_dir, max_steps: int, eval_limit: int = 0, model=None) -> str:
    return "\n".join([
        f"model: {model or model_dir}", "tasks: [arith-1]", "train_size: 4",
        f"max_steps: {max_steps}", "per_device_train_batch_size: 4", "num_generations: 2",
        "max_completion_length: 8", "save_steps: 100", f"eval_limit: {eval_limit}",
        "eval_tasks: [arith-1]", "eval_max_new_tokens: 4", "device: cpu", ""])


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory):
    """A configs folder of tiny runs and an empty runs folder, as the app reads them."""
    root = tmp_path_factory.mktemp("training-tab")
    configs = root / "configs"
    configs.mkdir()
    (configs / "tiny-long.yaml").write_text(tiny_config(tiny_model_dir, 200))
    (configs / "tiny-short.yaml").write_text(tiny_config(tiny_model_dir, 2, eval_limit=2))
    (configs / "broken.yaml").write_text(tiny_config(tiny_model_dir, 2,
                                                     model=root / "no-model-here"))
    return configs, root / "runs"


@pytest.fixture
def local_tab(folders, monkeypatch):
    configs, runs = folders
    monkeypatch.setattr(tab, "CONFIGS_DIR", configs)
    monkeypatch.setattr(tab, "RUNS_DIR", runs)
    monkeypatch.setattr(tab, "POLL_SECONDS", 0.2)
    yield tab
    run = tab.current_run()
    if run is not None and run.running:  # a failed assertion must not leave a run training
        tab.cancel_run()
        run.thread.join(120)
    assert not tab._LOCK.locked()


def wait_for(condition, timeout=120.0, every=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def finite_curves(log: list[dict]) -> bool:
    steps = [entry for entry in log if "reward" in entry]
    return bool(steps) and all(isinstance(entry.get(key), (int, float))
                               and math.isfinite(entry[key])
                               for entry in steps for key in CURVE_KEYS)


def plotted_names(figure) -> set[str]:
    return {trace.name for trace in figure.data}


def test_a_run_streams_is_exclusive_and_cancels_before_its_last_step(local_tab):
    run = local_tab.start_run("tiny-long")
    assert run.running and local_tab._LOCK.locked()
    with pytest.raises(local_tab.RunInProgress, match=r"in progress: `tiny-long` started by .* "
                                                      r"step \d+ of 200"):
        local_tab.start_run("tiny-short")
    with pytest.raises(Exception, match="in progress"):  # the button's message on the page
        local_tab.start("tiny-short", "")

    # The watcher streams the curves as the log grows; cancel once a step is logged.
    shown, cancelled = [], False
    for status, figure in local_tab.watch():
        shown.append((status, figure))
        if hasattr(figure, "data") and not cancelled:  # a figure, not "no change"
            assert set(CURVE_KEYS) <= plotted_names(figure)
            assert "Cancelling" in local_tab.cancel()
            cancelled = True
    assert shown[0][0].startswith("**running**") and shown[-1][0].startswith("**cancelled**")
    assert any(hasattr(figure, "data") for _, figure in shown[:-1])  # curves before the end

    assert run.state == "cancelled" and not local_tab._LOCK.locked()
    step = run.step()
    assert 1 <= step < 200
    assert finite_curves(run.log())
    # The checkpoint of the step it stopped at stays, to resume from; no evaluation ran after.
    assert (run.output_dir / f"checkpoint-{step}").is_dir()
    assert not (run.output_dir / "adapter").exists()
    assert not (run.output_dir / local_tab.CANCEL_FILE).exists()
    assert "Resume continues it" in local_tab.run_status(run)
    assert local_tab.cancel() == "No run is in progress."


def test_a_failing_run_shows_its_error_and_releases_the_lock(local_tab):
    run = local_tab.start_run("broken")
    wait_for(lambda: not run.running)
    assert run.state == "failed" and "cannot train" in run.error
    assert not local_tab._LOCK.locked()
    status = local_tab.run_status(run)
    assert status.startswith("**failed**") and "cannot train" in status


@pytest.mark.parametrize("options,message", [
    ("--output_dir /etc", "cannot be set here"),
    ("--trust_remote_code true", "cannot be set here"),
    ("--model /tmp/some-model", "embedded model"),
    ("--tasks arith-1,/etc/passwd", "built-in tasks"),
    ("--max_steps", "needs a value"),
    ("max_steps 3", "--key value"),
    ("--max_step 3", "did you mean max_steps"),
    ("--max_steps many", "takes a int"),
    ("--learning_rate 'oops", "cannot read the options"),
])
def test_bad_options_are_refused_before_anything_starts(local_tab, options, message):
    with pytest.raises(ValueError, match=message):
        local_tab.start_run("tiny-short", options)
    assert local_tab.current_run() is None or not local_tab.current_run().running
    assert not local_tab._LOCK.locked()


def test_unknown_config_names_the_shipped_ones(local_tab):
    with pytest.raises(ValueError, match="choose a training config: broken, tiny-long, tiny-short"):
        local_tab.start_run("gpu-7b")


def test_the_shipped_configs_are_offered_with_cpu_smoke_first_choice():
    assert tab.DEFAULT_CONFIG in tab.training_configs()
    assert tab.parse_options("--max-steps=5 --tasks arith-1,arith-2:10 --model smollm2") == [
        "--max_steps", "5", "--tasks", "arith-1,arith-2:10", "--model", "smollm2"]


@pytest.mark.slow
def test_a_finished_run_is_summarized_and_a_cancelled_one_resumes(local_tab):
    run = local_tab.start_run("tiny-short", "--max_steps 3")
    wait_for(lambda: not run.running)
    assert run.state == "done", run.error
    assert run.record["steps"] == 3 and run.record["log_finite"]
    status = local_tab.run_status(run)
    assert status.startswith("**done**") and "| arith-1 |" in status
    assert f"runs/{run.output_dir.name}" in local_tab.training_runs()

    first = local_tab.start_run("tiny-long")
    wait_for(lambda: first.step() >= 1)
    local_tab.cancel_run()
    wait_for(lambda: not first.running)
    stopped = first.step()
    assert first.state == "cancelled" and stopped < 200
    again = local_tab.start_run("tiny-long", resume=first)
    assert again.output_dir == first.output_dir
    wait_for(lambda: again.step() > stopped)  # it went on from the checkpoint, not from step 1
    local_tab.cancel_run()
    wait_for(lambda: not again.running)
    steps = [entry["step"] for entry in again.log() if "reward" in entry]
    assert steps == list(range(1, steps[-1] + 1))
    assert json.loads((again.output_dir / "run.json").read_text())["config"]["max_steps"] == 200


@pytest.fixture(scope="module")
def training_app(folders):
    configs, runs = folders
    port = free_port()
    process = start_app(port, COREA_TRAIN_CONFIGS_DIR=str(configs), COREA_RUNS_DIR=str(runs))
    yield f"http://127.0.0.1:{port}/"
    process.terminate()
    process.communicate(timeout=60)


@pytest.mark.slow
def test_the_app_trains_streams_refuses_a_second_start_and_cancels(training_app):
    visitor, other = Client(training_app, verbose=False), Client(training_app, verbose=False)
    status = visitor.predict("tiny-long", "--learning_rate 1e-4", api_name="/training_start")
    assert status.startswith("**running**") and "tiny-long" in status
    with pytest.raises(Exception, match="a run is in progress: `tiny-long` started by another "
                                        "visitor"):
        other.predict("tiny-short", "", api_name="/training_start")

    job = visitor.submit(api_name="/training_watch")
    figure = None
    for status, plot in job:
        if isinstance(plot, dict) and "plot" in plot:  # a figure, not "no change"
            figure = json.loads(plot["plot"])
            break
    names = {trace["name"] for trace in figure["data"]}
    assert set(CURVE_KEYS) <= names
    for trace in figure["data"]:
        assert all(math.isfinite(y) for y in trace["y"])
    assert "Cancelling" in other.predict(api_name="/training_cancel")
    final_status, _ = visitor.predict(api_name="/training_watch")
    assert final_status.startswith("**cancelled**")
    step = int(final_status.split("step ")[1].split(" of")[0])
    assert 1 <= step < 200
    # The lock is released: the next run starts.
    status = other.predict("tiny-short", "", api_name="/training_start")
    assert status.startswith("**running**")
    final_status, plot = other.predict(api_name="/training_watch")
    assert final_status.startswith("**done**") and "step 2 of 2" in final_status



@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="Debian chromium and chromium-driver are not installed")
def test_the_page_starts_streams_and_cancels_a_run(browser, tiny_model_dir, tmp_path):
    """In headless Chromium: Start chains to the live curves, and Cancel stops the run."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "tiny-long.yaml").write_text(tiny_config(tiny_model_dir, 200))
    port = free_port()
    process = start_app(port, COREA_TRAIN_CONFIGS_DIR=str(configs),
                        COREA_RUNS_DIR=str(tmp_path / "runs"))
    try:
        wait = WebDriverWait(browser, 120)
        browser.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: next((b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                                   if b.text.strip() == "Training"), None)).click()

        def button(label):
            return next((b for b in browser.find_elements(By.TAG_NAME, "button")
                         if b.text.strip() == label and b.is_displayed()), None)

        wait.until(lambda d: button("Start training")).click()
        names = ("const p = document.querySelector('#training-live .js-plotly-plot');"
                 "return p ? p.data.map(t => t.name).join('|') : '';")
        wait.until(lambda d: "calibration/ece" in d.execute_script(names))
        status = browser.find_element(By.ID, "training-status")
        assert "running" in status.text and "tiny-long" in status.text
        button("Cancel").click()
        wait.until(lambda d: "cancelled" in d.find_element(By.ID, "training-status").text)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "training.png"))
        text = browser.find_element(By.ID, "training-status").text
        assert 1 <= int(text.split("step ")[1].split()[0]) < 200
    finally:
        process.terminate()
        process.communicate(timeout=60)
