import os
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny import build_tiny_model  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from corea.models import TransformersModel

    return TransformersModel(tiny_model_dir, name="tiny")


@pytest.fixture(scope="session")
def tiny_model_b(tmp_path_factory):
    from corea.models import TransformersModel

    return TransformersModel(build_tiny_model(tmp_path_factory.mktemp("tiny-b"), seed=1),
                             name="tiny-b")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def embedded_installed(name: str) -> bool:
    from corea import embedded

    return embedded.resolve_embedded(name).installed()
