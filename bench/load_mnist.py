"""Benchmark of the data layer: loading full MNIST and one epoch of mini-batches.

    .venv/bin/python bench/load_mnist.py                    # prints markdown lines for BENCHMARKS.md
    .venv/bin/python bench/load_mnist.py --repeats 7 --json --data-dir ../shared/data/mnist

What it times (median of --repeats runs; the machine may be shared, so quote the load — the load's CPU
time is printed too, which a busy machine inflates far less than wall time):
  load      `digitlab.data.load_dataset("mnist", data_dir=...)`: find the 4 gz files, decompress, parse,
            sha256-verify the uncompressed content, check shapes/labels -> uint8 arrays (the ≤ 1 s budget);
  batches   one shuffled epoch of `digitlab.data.dataset.batches` over the 60,000 training images at
            batch 64 (938 float32 batches, scheme "unit"), and the cost per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def time_load(data_dir: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one full load; CPU time is robust to a busy machine."""
    from digitlab.data.dataset import load_dataset

    t, c = time.perf_counter(), time.process_time()
    ds = load_dataset("mnist", data_dir=data_dir, quiet=True)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - c
    assert len(ds.train.labels) == 60000 and len(ds.test.labels) == 10000
    return elapsed, cpu


def time_epoch(images: np.ndarray, labels: np.ndarray, batch: int, seed: int) -> tuple[float, int]:
    from digitlab.data.dataset import batches

    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    n = 0
    for xb, _ in batches(images, labels, batch, rng=rng):
        n += 1
    return time.perf_counter() - t, n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mnist",
                        help="folder with the full MNIST gz files (default: ../shared/data/mnist)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement; the median is reported (5)")
    parser.add_argument("--batch", type=int, default=64, help="batch size for the epoch measurement (64)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of markdown")
    args = parser.parse_args(argv)

    from digitlab.data.dataset import load_dataset

    time_load(args.data_dir)  # warm the page cache and imports once
    loads = [time_load(args.data_dir) for _ in range(args.repeats)]
    ds = load_dataset("mnist", data_dir=args.data_dir, quiet=True)
    epochs = [time_epoch(ds.train.images, ds.train.labels, args.batch, seed) for seed in range(args.repeats)]
    epoch_s = statistics.median(e for e, _ in epochs)
    n_batches = epochs[0][1]
    result = {
        "load_s": statistics.median(w for w, _ in loads),
        "load_cpu_s": statistics.median(c for _, c in loads),
        "load_runs_s": [w for w, _ in loads],
        "epoch_batches_s": epoch_s,
        "n_batches": n_batches,
        "per_batch_us": epoch_s / n_batches * 1e6,
        "batch": args.batch,
        "loadavg": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"| data: load full MNIST (4 gz, parse + sha256 verify) | {result['load_s']:.3f} s "
              f"(CPU {result['load_cpu_s']:.3f} s) | median of {args.repeats}; load avg {result['loadavg']:.1f} on {result['cpus']} CPUs |")  # fmt: skip
        print(f"| data: one shuffled epoch of batches ({n_batches} × {args.batch}, float32) | {epoch_s:.3f} s "
              f"({result['per_batch_us']:.0f} µs/batch) | median of {args.repeats} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
