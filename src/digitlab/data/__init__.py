"""The data layer: IDX files, where data sets come from, and arrays ready for training.

    import digitlab.data as data
    images, labels = data.load("mnist", split="train")      # uint8 (60000, 28, 28), uint8 (60000,)
    ds = data.load_dataset("mnist")                         # .train / .test / .source / .checksums / .notice
    x = data.normalize(images)                              # float32 (N, 784) in [0, 1]

Submodules: `idx` (read/write IDX), `sources` (registry, mirrors, cache, resolution order),
`dataset` (load, splits, normalisation, batches). Command line: `digitlab data info|fetch|verify|show`.
"""

from digitlab.data.dataset import (
    Dataset,
    Split,
    batches,
    load,
    load_dataset,
    normalize,
    sklearn_train_test_split_indices,
    train_val_split,
)
from digitlab.data.idx import IdxFormatError, read_idx, write_idx
from digitlab.data.sources import REGISTRY, ChecksumError, DatasetNotFoundError, DatasetSpec

__all__ = [
    "ChecksumError",
    "Dataset",
    "DatasetNotFoundError",
    "DatasetSpec",
    "IdxFormatError",
    "REGISTRY",
    "Split",
    "batches",
    "load",
    "load_dataset",
    "normalize",
    "read_idx",
    "sklearn_train_test_split_indices",
    "train_val_split",
    "write_idx",
]
