import subprocess
import sys

import gradio
import pytest
from huggingface_hub import RepoCard

from space_config import deploy

ZEROGPU_TORCH = {"2.8.0", "2.9.1", "2.10.0", "2.11.0"}


def test_dry_run_assembles_a_valid_space(tmp_path):
    folder = tmp_path / "space"
    result = subprocess.run([sys.executable, "-m", "space_config.deploy", "--repo", "me/corea",
                             "--dry-run", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    card = RepoCard.load(folder / "README.md").data
    assert card.sdk == "gradio" and card.sdk_version == gradio.__version__
    assert card.python_version == "3.12"
    assert (folder / card.app_file).is_file()
    assert card.suggested_hardware.startswith("zero-")
    assert card.models and card.license == "apache-2.0"
    assert (folder / "corea" / "ui" / "__init__.py").is_file()
    assert (folder / "corea" / "data" / "gsm8k" / "LICENSE").is_file()
    assert not list(folder.rglob("__pycache__"))
    requirements = (folder / "requirements.txt").read_text().splitlines()
    torch_pin = next(line for line in requirements if line.startswith("torch=="))
    assert torch_pin.split("==")[1] in ZEROGPU_TORCH  # a CUDA build ZeroGPU runs, not the CPU pin
    assert any(line.startswith("spaces") for line in requirements)


def test_dry_run_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        deploy.assemble(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_deploy_without_a_token_stops_before_any_upload(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(SystemExit, match="no Hugging Face token"):
        deploy.main(["--repo", "me/corea"])
