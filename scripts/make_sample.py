"""Build the bundled mnist-sample from the full MNIST: 1,000 train + 200 test images per class, stratified.

    .venv/bin/python scripts/make_sample.py                       # reads ../shared/data/mnist
    .venv/bin/python scripts/make_sample.py --src DIR --out DIR --seed 0

Picks, per class and with a fixed seed, images from the official training and test sets, keeps them in
their original order, and writes deterministic IDX gz files (gzip mtime 0) to src/digitlab/data/sample/.
Prints the sha256 of each uncompressed file: paste them into the "mnist-sample" entry of
src/digitlab/data/sources.py (the registry verifies the bundled copy like any other).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from digitlab.data.dataset import load_dataset
from digitlab.data.idx import idx_bytes, write_idx

REPO = Path(__file__).resolve().parents[1]


def stratified_pick(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices: `per_class` random indices of each class (all 10 classes must have that many)."""
    picks = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise SystemExit(f"class {c} has only {len(idx)} images, need {per_class}")
        picks.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO.parent / "shared" / "data" / "mnist",
                        help="folder with the full MNIST (default: ../shared/data/mnist)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "src" / "digitlab" / "data" / "sample",
                        help="output folder (default: src/digitlab/data/sample)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-class picks (default: 0)")
    parser.add_argument("--train-per-class", type=int, default=1000, help="training images per class (1000)")
    parser.add_argument("--test-per-class", type=int, default=200, help="test images per class (200)")
    parser.add_argument("--compresslevel", type=int, default=9, help="gzip level 1..9 (default: 9, as bundled)")
    args = parser.parse_args(argv)

    ds = load_dataset("mnist", data_dir=args.src, quiet=True)
    rng = np.random.default_rng(args.seed)
    tr = stratified_pick(ds.train.labels, args.train_per_class, rng)
    te = stratified_pick(ds.test.labels, args.test_per_class, rng)
    arrays = {
        "train-images-idx3-ubyte": ds.train.images[tr],
        "train-labels-idx1-ubyte": ds.train.labels[tr],
        "t10k-images-idx3-ubyte": ds.test.images[te],
        "t10k-labels-idx1-ubyte": ds.test.labels[te],
    }
    import hashlib

    total = 0
    for stem, arr in arrays.items():
        path = write_idx(args.out / f"{stem}.gz", arr, compresslevel=args.compresslevel)
        total += path.stat().st_size
        print(f'"{stem}": "{hashlib.sha256(idx_bytes(arr)).hexdigest()}",  # {arr.shape}')
    print(f"wrote {len(tr)} train + {len(te)} test images to {args.out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
