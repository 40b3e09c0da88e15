"""Cost of the affine augmentation: per batch of 256, and per 60,000-image epoch of `batches`.

    .venv/bin/python bench/augment_speed.py                    # uses ../shared/data/mnist (else the sample, tiled)
    .venv/bin/python bench/augment_speed.py --rounds 7 --rotate 12 --scale 0.1 --translate 2

Measures, alternating plain and augmented in each round so that a change in the machine's load hits both alike:
  1. `random_affine` on one uint8 batch (256, 28, 28): median over 50 calls per round;
  2. one full epoch of `batches(..., 256, scheme="standard")` over the 60,000 training images without and with
     the augmentation (gather + warp + normalise; no training), and the difference.
Prints medians over the rounds and the per-round figures. One thread of NumPy work (no BLAS inside).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from digitlab.augment import random_affine
from digitlab.data.dataset import batches, load

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist"


def _epoch(images, labels, **aug) -> float:
    t0 = time.perf_counter()
    for _ in batches(images, labels, 256, rng=np.random.default_rng(0), scheme="standard", **aug):
        pass
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rotate", type=float, default=12.0)
    p.add_argument("--scale", type=float, default=0.1)
    p.add_argument("--translate", type=float, default=2.0)
    args = p.parse_args()
    aug = {"rotate": args.rotate, "scale": args.scale, "translate": args.translate}
    if args.data_dir.is_dir():
        images, labels = load("mnist", "train", data_dir=args.data_dir, quiet=True)
    else:
        images, labels = load("mnist-sample", "train", quiet=True)
        images, labels = np.tile(images, (6, 1, 1)), np.tile(labels, 6)  # 60,000 like MNIST's training set
    rng = np.random.default_rng(0)
    batch = images[:256]
    per_batch, plain, augmented = [], [], []
    for r in range(args.rounds):
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            random_affine(batch, rng, **aug)
            times.append(time.perf_counter() - t0)
        per_batch.append(statistics.median(times))
        plain.append(_epoch(images, labels))
        augmented.append(_epoch(images, labels, **aug))
        print(f"round {r + 1}: batch {1e3 * per_batch[-1]:.2f} ms, epoch plain {plain[-1]:.3f} s, "
              f"augmented {augmented[-1]:.3f} s")
    print(f"\n{len(images)} images, {aug}")
    print(f"random_affine, 256 images: median {1e3 * statistics.median(per_batch):.2f} ms")
    print(f"batches() epoch: plain {statistics.median(plain):.3f} s, augmented {statistics.median(augmented):.3f} s, "
          f"augmentation {statistics.median(a - b for a, b in zip(augmented, plain)):.3f} s per epoch (median)")


if __name__ == "__main__":
    main()
