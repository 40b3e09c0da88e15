"""Fixtures shared by the whole suite."""

from __future__ import annotations

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
    """The default `mlp` recipe trained in full on full MNIST (≈15–30 s), shared by train/predict/plot/web tests."""
    from digitlab.train import train_recipe

    out = tmp_path_factory.mktemp("run-mlp")
    return train_recipe("mlp", out_dir=out / "run", data_dir=mnist_dir, quiet=True)
