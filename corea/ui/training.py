"""The Training tab: start a short calibration run from the browser and watch its reward, accuracy
and ECE curves as they are logged; cancel it; browse the curves of finished runs.

A run trains in this process, in a background thread, through `training.grpo.train`, under
`spaces.GPU` (a no-op off Hugging Face Spaces). Only one run goes at a time. The run and the page
talk through files only: the trainer appends to OUTPUT_DIR/train_log.jsonl, which the page polls,
and a cancel request is a file the trainer looks for after every step. Files, unlike a flag in
memory, also reach the process ZeroGPU forks to run the GPU function.
"""

from __future__ import annotations

import contextvars
import json
import os
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from corea.plots import read_log, training_figure
from corea.ui.common import ADAPTERS_DIR, REPO_ROOT, gpu

LOG_FILE, RUN_FILE = "train_log.jsonl", "run.json"
# Where runs are looked for: the shipped adapters and local runs (COREA_RUNS_DIR overrides).
# Runs started from the app go here too, as app-<time>.
RUNS_DIR = Path(os.environ.get("COREA_RUNS_DIR") or REPO_ROOT / "runs")
# The configs the tab offers (COREA_TRAIN_CONFIGS_DIR points it at another folder).
CONFIGS_DIR = Path(os.environ.get("COREA_TRAIN_CONFIGS_DIR") or REPO_ROOT / "training" / "configs")
DEFAULT_CONFIG = "cpu-smoke"
CANCEL_FILE = "cancel-requested"
POLL_SECONDS = 2.0
# The GPU time a run asks ZeroGPU for; a run still going then is stopped by ZeroGPU.
GPU_SECONDS = int(os.environ.get("COREA_TRAIN_GPU_SECONDS") or 300)
ON_SPACES = bool(os.environ.get("SPACE_ID"))

# Options the browser may not change: where files are written or read, and whether code from the
# Hub runs, stay as the config says. Models and tasks are limited to the built-in ones.
FIXED_OPTIONS = {"output_dir", "trust_remote_code", "start_adapter", "resume"}
TASK_OPTIONS = {"tasks", "eval_tasks", "self_label_tasks"}


# ---- finished runs -----------------------------------------------------------------------------

def training_runs() -> dict[str, Path]:
    runs = {}
    for root in (ADAPTERS_DIR, RUNS_DIR):
        if root.is_dir():
            for log in sorted(root.glob(f"*/{LOG_FILE}")):
                runs[str(log.parent.relative_to(root.parent))] = log.parent
    return runs


def run_summary(run_dir: Path) -> str:
    path = run_dir / RUN_FILE
    if not path.is_file():
        return "_No run record yet (the run is still going, or was not started by corea)._"
    run = json.loads(path.read_text())
    config = run.get("config", {})
    lines = [f"**{run.get('base_model', '?')}**, {run.get('steps', '?')} steps, reward "
             f"{config.get('confidence_reward', '?')}, tasks {', '.join(config.get('tasks', []))}"]
    before, after = run.get("before"), run.get("after")
    if before and after:
        lines += ["", "| held-out | accuracy | ECE | AUROC | Brier |", "|---|---|---|---|---|"]
        fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        for name in after:
            b, a = before[name], after[name]
            lines.append(f"| {name} | {fmt(b['accuracy'])} → {fmt(a['accuracy'])} | "
                         f"{fmt(b['ece'])} → {fmt(a['ece'])} | {fmt(b['auroc'])} → "
                         f"{fmt(a['auroc'])} | {fmt(b['brier'])} → {fmt(a['brier'])} |")
    return "\n".join(lines)


def show_run(name: str):
    runs = training_runs()
    if name not in runs:
        raise gr.Error("choose a training run")
    log = read_log(runs[name] / LOG_FILE)
    if not log:
        raise gr.Error(f"{name} has no logged steps yet")
    return training_figure(log), run_summary(runs[name])


# ---- runs started from the app -----------------------------------------------------------------

class TrainingCancelled(RuntimeError):
    """Raised inside the trainer once a cancelled run's checkpoint is written."""


class RunInProgress(RuntimeError):
    pass


@dataclass
class AppRun:
    config_name: str
    options: list[str]
    output_dir: Path
    max_steps: int
    owner: str  # the browser session that started it (may cancel it on a Space)
    who: str  # how others see who started it
    started: float = field(default_factory=time.time)
    finished: float | None = None
    state: str = "running"  # then done, cancelled or failed
    error: str = ""
    record: dict | None = None
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def log(self) -> list[dict]:
        return read_log(self.output_dir / LOG_FILE)

    def step(self) -> int:
        return max((entry["step"] for entry in self.log()), default=0)

    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started


_LOCK = threading.Lock()  # held while a run trains
_current: AppRun | None = None  # the latest run started here, running or finished


def current_run() -> AppRun | None:
    return _current


def training_configs() -> dict[str, Path]:
    return {path.stem: path for path in sorted(CONFIGS_DIR.glob("*.yaml"))}


def _check_value(key: str, value: str) -> None:
    from corea import embedded
    from corea.tasks import BUILTIN_TASKS

    if key in FIXED_OPTIONS:
        raise ValueError(f"--{key} cannot be set here: it stays as the config says")
    if key == "model" and embedded.resolve_embedded(value) is None:
        raise ValueError(f"--model takes an embedded model here "
                         f"({', '.join(embedded.EMBEDDED_MODELS)}), not {value!r}; train other "
                         "models with `python -m training grpo`")
    if key in TASK_OPTIONS:
        for name in (part.strip() for part in value.split(",") if part.strip()):
            if name.split(":")[0] not in BUILTIN_TASKS:
                raise ValueError(f"--{key} takes built-in tasks here ({', '.join(BUILTIN_TASKS)}), "
                                 f"not {name!r}")


def parse_options(text: str) -> list[str]:
    """`--key value` overrides typed in the tab, as `python -m training grpo` takes them."""
    try:
        items = shlex.split(text or "")
    except ValueError as error:
        raise ValueError(f"cannot read the options: {error}") from None
    from training.config import override_pairs

    overrides = []
    for name, value in override_pairs(items):
        key = name.replace("-", "_")
        _check_value(key, value)
        overrides += [f"--{key}", value]
    return overrides


def _new_output_dir() -> Path:
    base = RUNS_DIR / time.strftime("app-%Y%m%d-%H%M%S", time.gmtime())
    path, number = base, 1
    while path.exists():
        number += 1
        path = base.with_name(f"{base.name}-{number}")
    return path


def cancel_callback(flag: Path):
    """A trainer callback that stops the run once `flag` exists: it asks for a checkpoint at the
    current step and, once that is written, ends training there, skipping the evaluation after
    training (a cancel should stop the work, and the checkpoint is what a resumed run needs)."""
    from transformers import TrainerCallback

    class CancelOnRequest(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if flag.exists():  # cancelled while the model loaded or the first evaluation ran
                raise TrainingCancelled(f"cancelled before step {state.global_step + 1}")

        def on_step_end(self, args, state, control, **kwargs):
            if flag.exists():
                control.should_training_stop = True
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            if flag.exists():
                raise TrainingCancelled(f"cancelled at step {state.global_step}")

    return CancelOnRequest()


@gpu(duration=GPU_SECONDS)
def train_on_device(config) -> dict:
    """One calibration run; on ZeroGPU this is the function that holds the GPU."""
    from training.grpo import train

    return train(config, callbacks=[cancel_callback(Path(config.output_dir) / CANCEL_FILE)])


def _work(run: AppRun, config) -> None:
    state = "failed"
    try:
        run.record = train_on_device(config)
        state = "done"
    except Exception as error:  # noqa: BLE001 - whatever stops the run is shown on the page
        # ZeroGPU hands back what the GPU function raised, possibly re-wrapped: the file tells.
        if isinstance(error, TrainingCancelled) or (run.output_dir / CANCEL_FILE).exists():
            state, run.error = "cancelled", str(error)
        else:
            run.error = f"{type(error).__name__}: {error}"
    finally:
        (run.output_dir / CANCEL_FILE).unlink(missing_ok=True)
        run.finished = time.time()
        # The lock goes first: whoever sees the run ended may start the next one at once.
        _LOCK.release()
        run.state = state


def describe(run: AppRun, session: str = "") -> str:
    who = "you" if session and session == run.owner else run.who
    return (f"`{run.config_name}` started by {who} {format_seconds(run.elapsed())} ago, "
            f"step {run.step()} of {run.max_steps}")


def start_run(config_name: str, options: str = "", session: str = "", who: str = "another visitor",
              resume: AppRun | None = None) -> AppRun:
    """Start a run (or resume `resume` in its folder) in the background; ValueError for a bad
    config or option, RunInProgress while another run trains."""
    global _current
    from training.config import load_config

    configs = training_configs()
    if config_name not in configs:
        raise ValueError(f"choose a training config: {', '.join(configs) or 'none found'}")
    overrides = parse_options(options)
    config = load_config(configs[config_name], overrides)
    output_dir = resume.output_dir if resume else _new_output_dir()
    config.output_dir = str(output_dir)
    if ON_SPACES and "--device" not in overrides:
        config.device = "auto"  # the configs name CPU; a Space's run gets the GPU it asked for
    if not _LOCK.acquire(blocking=False):
        what = describe(_current, session) if _current else "it is starting"
        raise RunInProgress(f"a run is in progress: {what}. Watch it, or start yours when it ends.")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / CANCEL_FILE).unlink(missing_ok=True)
        run = AppRun(config_name, overrides, output_dir, config.max_steps, session, who)
        # The copied context carries Gradio's request into the thread, which ZeroGPU reads to
        # know whose GPU time the run uses.
        run.thread = threading.Thread(target=contextvars.copy_context().run,
                                      args=(_work, run, config), daemon=True,
                                      name=f"training-{output_dir.name}")
        _current = run
        run.thread.start()
    except BaseException:
        _LOCK.release()
        raise
    return run


def cancel_run(session: str = "") -> str:
    run = _current
    if run is None or not run.running:
        return "No run is in progress."
    if ON_SPACES and session != run.owner:
        raise ValueError("only who started the run can cancel it; it ends by itself at step "
                         f"{run.max_steps}")
    (run.output_dir / CANCEL_FILE).touch()
    return (f"Cancelling `{run.config_name}`: it stops after the step it is on, keeping a "
            "checkpoint.")


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _phase(run: AppRun, log: list[dict]) -> str:
    if not log:
        return "preparing: loading the model and scoring it before training"
    if "train_runtime" in log[-1]:
        return "saving the adapter and scoring it after training"
    return "training"


def _shown(path: Path) -> str:
    """A path as typed from the repository root, where the commands shown are run."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def run_status(run: AppRun | None, session: str = "") -> str:
    if run is None:
        return "_No run started from this page yet._"
    log = run.log()
    step = max((entry["step"] for entry in log), default=0)
    head = (f"**{run.state}** · `{run.config_name}` · step {step} of {run.max_steps} · "
            f"{format_seconds(run.elapsed())} · `{_shown(run.output_dir)}`")
    if run.running:
        who = "" if session and session == run.owner else f" · started by {run.who}"
        return f"{head}{who}\n\n{_phase(run, log)}"
    command = ["python", "-m", "training", "grpo", "--config", _shown(training_configs().get(
        run.config_name, CONFIGS_DIR / f"{run.config_name}.yaml")), *run.options,
        "--output_dir", _shown(run.output_dir)]
    resume_hint = f"Resume continues it from its last checkpoint, as does `{shlex.join(command)}`"
    if run.state == "cancelled":
        return f"{head}\n\n{run.error[:1].upper()}{run.error[1:]}. {resume_hint}"
    if run.state == "failed":
        return f"{head}\n\n**Error:** {run.error}\n\n{resume_hint}"
    return f"{head}\n\n{run_summary(run.output_dir)}"


def run_plot(run: AppRun | None):
    log = run.log() if run else []
    return training_figure(log) if log else None


# ---- the tab's handlers ------------------------------------------------------------------------

def _visitor(request: gr.Request | None) -> tuple[str, str]:
    if request is None:
        return "", "another visitor"
    return request.session_hash or "", getattr(request, "username", None) or "another visitor"


def start(config_name: str, options: str, request: gr.Request = None) -> str:
    session, who = _visitor(request)
    try:
        run = start_run(config_name, options, session, who)
    except (ValueError, RunInProgress) as error:
        raise gr.Error(str(error)) from None
    return run_status(run, session)


def resume(request: gr.Request = None) -> str:
    """Continue the latest cancelled or failed run in its folder (the same config and options)."""
    session, who = _visitor(request)
    run = _current
    if run is None or run.state not in ("cancelled", "failed"):
        raise gr.Error("there is no cancelled or failed run to resume")
    try:
        run = start_run(run.config_name, shlex.join(run.options), session, who, resume=run)
    except (ValueError, RunInProgress) as error:
        raise gr.Error(str(error)) from None
    return run_status(run, session)


def cancel(request: gr.Request = None) -> str:
    session, _ = _visitor(request)
    try:
        return cancel_run(session)
    except ValueError as error:
        raise gr.Error(str(error)) from None


def watch(request: gr.Request = None):
    """Stream the current run's status and curves every POLL_SECONDS until it ends."""
    session, _ = _visitor(request)
    run, sent = _current, -1
    while run is not None and run.running:
        logged = len(run.log())
        # The figure is sent again only when the log grew: redrawing it unchanged makes it flicker.
        yield run_status(run, session), run_plot(run) if logged != sent else gr.skip()
        sent = logged
        time.sleep(POLL_SECONDS)
    yield run_status(run, session), run_plot(run)


def build_training_tab() -> None:
    """The tab's components and events (inside a gr.Blocks context)."""
    configs = list(training_configs())
    gr.Markdown("Start a short calibration run (`python -m training grpo`) and watch its reward, "
                "accuracy and ECE as it learns. One run at a time; Cancel stops it after the "
                "current step and keeps a checkpoint that Resume continues; Watch follows a run "
                "started before this page was opened.")
    with gr.Row():
        config = gr.Dropdown(configs, label="Config (training/configs)",
                             value=DEFAULT_CONFIG if DEFAULT_CONFIG in configs else
                             (configs[0] if configs else None))
        options = gr.Textbox(label="Options", placeholder="--max_steps 5 --learning_rate 1e-4",
                             info="overrides, as `python -m training grpo` takes them")
    with gr.Row():
        start_button = gr.Button("Start training", variant="primary")
        cancel_button = gr.Button("Cancel", variant="stop")
        resume_button = gr.Button("Resume")
        watch_button = gr.Button("Watch")
    # Callables: each page load shows the run as it is then, not as it was when the app started.
    status = gr.Markdown(lambda: run_status(current_run()), elem_id="training-status")
    live = gr.Plot(lambda: run_plot(current_run()), label="Live curves", elem_id="training-live")

    gr.Markdown("### Finished runs\nShipped adapters and local runs under `runs/`.")
    names = list(training_runs())
    with gr.Row():
        run = gr.Dropdown(names, value=names[0] if names else None, label="Training run")
        refresh = gr.Button("Refresh")
    summary = gr.Markdown()
    curves = gr.Plot(label="Training curves")
    run.change(show_run, run, [curves, summary], api_name="training_run")
    list_runs = dict(fn=lambda: gr.update(choices=list(training_runs())), inputs=None, outputs=run,
                     api_visibility="private")
    refresh.click(**list_runs)

    # Starting is quick, watching long: many may watch at once, and a Start made while someone
    # watches is answered (and refused) at once rather than queued behind the watcher. A run
    # that ended joins the finished runs.
    watching = dict(fn=watch, inputs=None, outputs=[status, live], concurrency_limit=None,
                    api_visibility="private")
    start_button.click(start, [config, options], status, api_name="training_start",
                       concurrency_limit=None).success(**watching).then(**list_runs)
    resume_button.click(resume, None, status, api_name="training_resume",
                        concurrency_limit=None).success(**watching).then(**list_runs)
    cancel_button.click(cancel, None, status, api_name="training_cancel", concurrency_limit=None)
    watch_button.click(watch, None, [status, live], api_name="training_watch",
                       concurrency_limit=None).then(**list_runs)
