"""A stage's record on disk (OUTPUT_DIR/run.json): its config, data sizes, wall time, results.

Every stage of `python -m training` keeps one; a stage resumed after an interruption adds the wall
time of each invocation, so the record states the whole cost of the stage.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from contextlib import contextmanager
from pathlib import Path

RUN_FILE = "run.json"
HEARTBEAT_S = 60.0  # how often a running stage saves its wall time so far
_SAVING = threading.Lock()


def load_run(output_dir: Path) -> dict:
    path = Path(output_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def save_run(output_dir: Path, run: dict) -> None:
    """Written whole or not at all (a temporary file renamed over the record), one writer at a
    time: a stage's wall-time heartbeat saves from a thread of its own."""
    path = Path(output_dir) / RUN_FILE
    with _SAVING:
        text = json.dumps(run, indent=2) + "\n"
        partial = path.with_name(RUN_FILE + ".partial")
        partial.write_text(text)
        partial.replace(path)


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}"


@contextmanager
def timed(run: dict, key: str, output_dir: Path, heartbeat_s: float = HEARTBEAT_S):
    """Adds the block's wall time to run[key] (seconds, summed over resumed invocations) and saves
    the record, also when the block is interrupted, and every `heartbeat_s` while it runs: a
    process killed outright (SIGKILL, a machine that goes away) keeps all but the last beat."""
    before, start = run.get(key, 0.0), time.perf_counter()
    done = threading.Event()

    def record() -> None:
        run[key] = round(before + time.perf_counter() - start, 1)
        save_run(output_dir, run)

    def beat() -> None:
        while not done.wait(heartbeat_s):
            try:
                record()
            except RuntimeError:  # the stage changed the record mid-copy: the next beat saves
                continue

    heart = threading.Thread(target=beat, name=f"{key} heartbeat", daemon=True)
    heart.start()
    try:
        yield
    finally:
        done.set()
        heart.join()
        record()


def begin_stage(config, **fields) -> tuple[Path, str, dict]:
    """What every stage does first, before any training: check its inputs, make OUTPUT_DIR, find
    a trainable checkpoint of the model (a clear error if there is none), and update and save the
    run record with the config, the machine and `fields`. Returns (output_dir, checkpoint, run)."""
    from training.grpo import check_trainable, trainable_checkpoint

    config.check_inputs()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = trainable_checkpoint(config.model)
    check_trainable(checkpoint, config.trust_remote_code)
    run = load_run(output_dir)
    run.update({"config": config.to_dict(), "base_model": config.model, "machine": machine(),
                **fields})
    save_run(output_dir, run)
    return output_dir, checkpoint, run
