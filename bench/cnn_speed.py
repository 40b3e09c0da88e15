"""The default CNN's promises on this machine: training time, peak memory, inference time.

    .venv/bin/python bench/cnn_speed.py --data-dir ../shared/data/mnist
    .venv/bin/python bench/cnn_speed.py --recipe cnn-fast --repeats 11

  1. training: a child process trains the whole recipe (default: `cnn`) on full MNIST through train_recipe;
     printed: its training seconds (the steps of every epoch; data loading and evaluation excluded), each
     epoch, the test accuracy, and the child's peak RSS (data, training, evaluation, model file). Targets
     (issue 9, `cnn`): <= 60 s, >= 99.3 %, <= 1 GB;
  2. inference: Classifier.predict on the 10,000 test images (uint8 in, normalisation included) with a model of
     the recipe's network, median (and best) of --repeats, BLAS with its own thread count. Target <= 0.5 s.
Uses bench/train_speed.py's `peak_rss_mb` and `inference_ms`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from train_speed import DEFAULT_DATA, inference_ms, peak_rss_mb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cnn", help="recipe to measure (default: cnn)")
    parser.add_argument("--data-dir", type=str, default=str(DEFAULT_DATA), help="MNIST folder")
    parser.add_argument("--repeats", type=int, default=11, help="inference repeats (default: 11)")
    args = parser.parse_args(argv)
    if not Path(args.data_dir).is_dir():
        print(f"cnn_speed: no MNIST at {args.data_dir} (pass --data-dir)", file=sys.stderr)
        return 2
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    rss, run = peak_rss_mb(args.data_dir, args.recipe, {})
    infer, infer_best = inference_ms(args.data_dir, args.repeats, args.recipe)
    print(f"## `{args.recipe}` on this machine\n\n`python bench/cnn_speed.py {' '.join(argv or sys.argv[1:])}` "
          f"(load average before: {load})\n")
    print("| measure | value |")
    print("|---|---|")
    epochs = ", ".join(f"{s:.1f}" for s in run["epoch_seconds"])
    print(f"| training, whole recipe (epochs: {epochs} s) | **{run['seconds']:.1f} s** |")
    print(f"| test accuracy after it | {100 * run['test_accuracy']:.2f} % |")
    print(f"| peak RSS of that process (load, train, evaluate, save) | {rss:.0f} MB |")
    print(f"| inference, 10,000 uint8 test images, median of {args.repeats} (best) | **{infer / 1000:.3f} s** "
          f"({infer_best / 1000:.3f} s) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
