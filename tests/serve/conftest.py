"""Fixtures for the viewer tests: a tiny trained checkpoint, a viewer over 64 images, an in-process client and
a real uvicorn server on a free loopback port."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from serve_testing import N_IMAGES, TEST_PORT, LiveServer


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """Every test in this folder runs on one thread (the fixture is in tests/conftest.py)."""
    return one_thread


@pytest.fixture(scope="session")
def serve_checkpoint(tmp_path_factory) -> Path:
    """A ResNet-20 with (4, 4, 8) channels trained for one epoch on 96 images of the Fashion-MNIST sample."""
    from netvis.train import TrainConfig, train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(TrainConfig(
            model="resnet20_cifar", data="fashion-mnist-sample", epochs=1, limit_train=96, limit_test=32,
            model_options={"stage_channels": (4, 4, 8)}, progress=False, device="cpu",
            out=str(tmp_path_factory.mktemp("serve-run")),
        ))
    finally:
        torch.set_num_threads(before)
    return Path(result.checkpoint)


@pytest.fixture(scope="session")
def viewer(serve_checkpoint, tmp_path_factory):
    """A viewer over the first 64 test images of the sample, with its cache in a temporary folder."""
    from netvis.app.serve import Viewer

    v = Viewer(serve_checkpoint, data="fashion-mnist-sample", split="test", limit=N_IMAGES,
               cache=tmp_path_factory.mktemp("serve-cache"), workers=2)
    yield v
    v.close()


@pytest.fixture
def client(viewer):
    """An in-process test client whose requests carry ``Host: 127.0.0.1:8000``."""
    from starlette.testclient import TestClient

    from netvis.app.serve import create_app

    with TestClient(create_app(viewer, port=TEST_PORT), base_url=f"http://127.0.0.1:{TEST_PORT}") as c:
        yield c


@pytest.fixture(scope="module")
def live_server(viewer):
    server = LiveServer(viewer)
    yield server
    server.stop()
