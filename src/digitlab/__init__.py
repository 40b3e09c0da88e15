"""digitlab: handwritten-digit classifiers written from scratch in NumPy.

    >>> import digitlab
    >>> images, labels = digitlab.data.load("mnist", split="test")
    >>> model = digitlab.load("runs/mlp/model.safetensors")
    >>> model.predict(images[:5])
"""

__version__ = "0.1.0"

from digitlab.errors import (  # noqa: E402
    ConfigError,
    DataError,
    DigitlabError,
    ImageError,
    ModelFileError,
    TrainingError,
)

__all__ = [
    "__version__",
    "ConfigError",
    "DataError",
    "DigitlabError",
    "ImageError",
    "ModelFileError",
    "TrainingError",
    "load",
]


def load(path):
    """Load a model file written by digitlab (see `digitlab.nn.model.load`)."""
    from digitlab.nn.model import load as _load

    return _load(path)


def __getattr__(name):  # lazy subpackages: `digitlab.data` without importing everything up front
    if name in ("data", "nn", "train", "images", "plots", "recipes"):
        import importlib

        return importlib.import_module(f"digitlab.{name}")
    raise AttributeError(f"module 'digitlab' has no attribute {name!r}")
