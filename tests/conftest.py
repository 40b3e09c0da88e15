"""Fixtures shared by the whole suite.

`mnist_dir` is the full MNIST beside the repo (tests that need it skip without it); `sample_model` is a tiny
model trained in seconds on the bundled mnist-sample, for tests that need *a* trained model but not a good one.
DIGITLAB_TEST_NO_MNIST=1 makes `mnist_dir` skip as if ../shared were absent (to count what still runs).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The full canonical MNIST beside the repo (../shared/data/mnist); skips when it is absent."""
    if os.environ.get("DIGITLAB_TEST_NO_MNIST"):
        pytest.skip("DIGITLAB_TEST_NO_MNIST is set: behaving as if full MNIST were absent")
    missing = [f for f in MNIST_FILES if not (SHARED_MNIST / f).is_file()]
    if missing:
        pytest.skip(f"full MNIST not found in {SHARED_MNIST} (missing {', '.join(missing)})")
    return SHARED_MNIST


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real cache or data dir."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.delenv("DIGITLAB_DATA_DIR", raising=False)


@pytest.fixture(scope="session")
def trained_mlp(tmp_path_factory, mnist_dir):
    """The `mlp` recipe (the default before the CNN) trained in full on full MNIST (≈15–30 s), shared by the
    train/predict/plot/web tests that need a good MLP."""
    from digitlab.train import train_recipe

    out = tmp_path_factory.mktemp("run-mlp")
    return train_recipe("mlp", out_dir=out / "run", data_dir=mnist_dir, quiet=True)


@pytest.fixture(scope="session")
def trained_cnn(tmp_path_factory, mnist_dir):
    """The default `cnn` recipe trained in full on full MNIST, for tests where the default model matters."""
    from digitlab.train import train_recipe

    out = tmp_path_factory.mktemp("run-cnn")
    return train_recipe("cnn", out_dir=out / "run", data_dir=mnist_dir, quiet=True)


# The recipe of `sample_cnn`: two small conv layers, ~95 % on the sample's test images in a few seconds.
SAMPLE_CNN = {"dataset": "mnist-sample", "epochs": 3, "batch_size": 64, "optimizer": "adam", "lr": 0.003,
              "schedule": "constant", "seed": 0, "shift": 0, "rotate": 0.0, "scale": 0.0, "translate": 0.0,
              "architecture": [{"type": "Conv2D", "filters": 8, "kernel": 5}, {"type": "MaxPool2D", "pool": 2},
                               {"type": "ReLU"}, {"type": "Conv2D", "filters": 16, "kernel": 3},
                               {"type": "MaxPool2D", "pool": 2}, {"type": "ReLU"}, {"type": "Flatten"},
                               {"type": "Linear", "out": 10}]}


@pytest.fixture(scope="session")
def sample_cnn(tmp_path_factory):
    """A small CNN run on the bundled mnist-sample (with its report), for tests that need any trained CNN."""
    from digitlab.train import train_recipe

    out = tmp_path_factory.mktemp("run-sample-cnn")
    return train_recipe("cnn", overrides=SAMPLE_CNN, out_dir=out / "run", quiet=True)


# The recipe of `sample_model`: big enough to recognise most sample digits (~90 % test), small enough for ~2 s.
SAMPLE_RECIPE = {"dataset": "mnist-sample", "hidden": (32,), "epochs": 2, "batch_size": 100, "dropout": 0.0,
                 "shift": 0, "optimizer": "adam", "lr": 0.003, "schedule": "constant", "seed": 0}


@pytest.fixture(scope="session")
def sample_model(tmp_path_factory):
    """A tiny `mlp` run on the bundled mnist-sample (with its report), for tests that need any trained model."""
    from digitlab.train import train_recipe

    out = tmp_path_factory.mktemp("run-sample")
    return train_recipe("mlp", overrides=SAMPLE_RECIPE, out_dir=out / "run", quiet=True)
