"""Deploy the demo as a Hugging Face Space.

    python -m space_config.deploy --repo you/corea-demo            # create the Space and upload
    python -m space_config.deploy --repo you/corea-demo --dry-run  # only assemble the folder

The folder holds app.py, the corea package, the bundled trace tables, shipped adapters, this
directory's README.md (the Space card) and requirements.txt. The token comes from HF_TOKEN or a
saved `hf auth login`; it is never printed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".DS_Store")


def assemble(target: Path) -> Path:
    """Write the exact folder that would be uploaded."""
    if target.exists() and any(target.iterdir()):
        raise SystemExit(f"error: {target} is not empty; choose an empty or new folder")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "app.py", target / "app.py")
    shutil.copytree(ROOT / "corea", target / "corea", ignore=IGNORE)
    traces = ROOT / "benchmarks" / "traces"
    if traces.is_dir():
        shutil.copytree(traces, target / "benchmarks" / "traces", ignore=IGNORE)
    adapters = ROOT / "adapters"
    if adapters.is_dir():
        shutil.copytree(adapters, target / "adapters", ignore=IGNORE)
    shutil.copy2(HERE / "README.md", target / "README.md")
    shutil.copy2(HERE / "requirements.txt", target / "requirements.txt")
    return target


def deploy(folder: Path, repo_id: str, private: bool) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    if not api.token and not _saved_token():
        raise SystemExit("error: no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    try:
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private,
                        exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="space",
                          commit_message="Deploy corea demo")
    except HfHubHTTPError as error:
        raise SystemExit(f"error: the Hub refused the upload: {str(error).splitlines()[0]}") from None
    return f"https://huggingface.co/spaces/{repo_id}"


def _saved_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m space_config.deploy",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, help="the Space id, owner/name")
    parser.add_argument("--dry-run", nargs="?", const="", metavar="DIR",
                        help="assemble the folder (in DIR, or a new temporary folder) and stop")
    parser.add_argument("--private", action="store_true", help="create the Space as private")
    args = parser.parse_args(argv)
    if args.repo.count("/") != 1:
        parser.error("--repo must be owner/name")
    if args.dry_run is not None:
        target = Path(args.dry_run) if args.dry_run else Path(tempfile.mkdtemp(prefix="corea-space-"))
        print(assemble(target))
        return 0
    with tempfile.TemporaryDirectory(prefix="corea-space-") as folder:
        print(deploy(assemble(Path(folder) / "space"), args.repo, args.private))
    return 0


if __name__ == "__main__":
    sys.exit(main())
