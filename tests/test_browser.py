"""The real app in a real headless Chromium: load the page, move the slider, see it follow."""

import shutil
from pathlib import Path

import pytest

from conftest import free_port
from test_app import start_app
from test_cli import write_trace

ARTIFACTS = Path(__file__).parent / "artifacts"
pytestmark = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                reason="Debian chromium and chromium-driver are not installed")


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--window-size=1400,2200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


@pytest.fixture()
def app_with_traces(tmp_path, monkeypatch):
    rows = [{"id": f"q{i}", "correct": i >= 8, "cost": 1.0, "confidence": i / 20}
            for i in range(20)]
    write_trace(tmp_path / "smollm2-demo.jsonl", rows, "smollm2-135m")
    write_trace(tmp_path / "qwen-demo.jsonl",
                [{**r, "correct": i % 5 != 0, "cost": 10.0, "confidence": None}
                 for i, r in enumerate(rows)], "qwen2.5-coder-1.5b")
    monkeypatch.setenv("COREA_TRACES_DIR", str(tmp_path))
    port = free_port()
    process = start_app(port)
    yield f"http://127.0.0.1:{port}/"
    process.terminate()
    process.wait(timeout=30)


def test_moving_the_slider_updates_plot_and_numbers(browser, app_with_traces):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(app_with_traces)
    tab = wait.until(lambda d: next((b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                                     if "Tune the threshold" in b.text), None))
    tab.click()
    numbers = wait.until(lambda d: d.find_element(By.ID, "tune-numbers"))
    wait.until(lambda d: "Threshold 0.80" in numbers.text and "20 questions" in numbers.text)
    before = numbers.text
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tune-pareto .js-plotly-plot"))
    markers_before = browser.execute_script(
        "const p = document.querySelector('#tune-pareto .js-plotly-plot');"
        "return p.data.map(t => t.name).join('|');")
    assert "threshold 0.80" in markers_before and "Pareto frontier" in markers_before

    slider = browser.find_element(By.CSS_SELECTOR, "#tune-threshold input[type=range]")
    browser.execute_script(
        "arguments[0].value = 0.3;"
        "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));"
        "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));", slider)
    wait.until(lambda d: "Threshold 0.30" in numbers.text)
    assert numbers.text != before
    # At 0.3 the SLM keeps q6..q19 (confidence >= 0.3): 6 of 20 deferred.
    assert "30.0%" in numbers.text
    wait.until(lambda d: "threshold 0.30" in d.execute_script(
        "return document.querySelector('#tune-pareto .js-plotly-plot').data"
        ".map(t => t.name).join('|');"))
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "tune.png"))
    assert (ARTIFACTS / "tune.png").stat().st_size > 10_000
