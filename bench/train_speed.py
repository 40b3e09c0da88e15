"""Training throughput vs the machine's float32 matmul peak, inference time, and peak memory of a run.

    .venv/bin/python bench/train_speed.py                     # uses ../shared/data/mnist
    .venv/bin/python bench/train_speed.py --data-dir ~/mnist --repeats 5 --threads 1   # one BLAS thread

Measures, on this machine, in this order:
  1+2, alternated --train-repeats times, so that a change in the machine's load hits both alike:
  1. float32 matmul peak: best GFLOP/s of a 2048x2048 @ 2048x2048 product (NumPy's BLAS, all its threads),
     best of 5 products each time, and the best of all of them;
  2. training throughput with batch 512 (digitlab's fit(), one epoch, a fresh model each time) for two
     recipes: `seed-004-mlp-relu` (784-300-10, plain SGD: the network core) and the default `mlp` (784-144-10
     with dropout, shifted images and Adam: the whole default pipeline), as GFLOP/s of the matrix products
     each has to do (forward, weight gradients, input gradients of all but the first layer) and as a share
     of (1): the MEDIAN epoch (all epochs are printed; the fastest one is also given as a share, since the peak
     is a best-of figure too). Target >= 60 %. The BLAS thread counts are printed:
     they must be the same for the share to be fair (fit() limits BLAS to one thread only for tiny steps);
  3. inference: predict() on the 10,000 test images (uint8 in, normalisation included) with the default
     MLP, median (and best) of --repeats. Target <= 30 ms;
  4. peak memory: the maximum RSS of a child process that trains the `mlp` recipe for one epoch on full
     MNIST through train_recipe (data loading, training, evaluation, model file). Target <= 300 MB.
Prints a markdown table and the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist"


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` GFLOP/s of an n x n float32 matrix product."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)  # (n, n) @ (n, n) -> (n, n)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def mlp_flops_per_sample(widths: list[int]) -> int:
    """Matmul FLOPs per training sample: forward + weight gradients + input gradients (not of layer 0)."""
    pairs = list(zip(widths[:-1], widths[1:]))
    forward = sum(2 * i * o for i, o in pairs)
    weight_grads = forward
    input_grads = sum(2 * i * o for i, o in pairs[1:])
    return forward + weight_grads + input_grads


def blas_threads() -> int:
    """Threads the BLAS uses right now (threadpoolctl's view, so limits set by fit() show)."""
    from threadpoolctl import threadpool_info

    return max((i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"), default=0)


def training_throughput(data_dir, batch_size: int = 512, name: str = "mlp") -> tuple[float, float, list[int], int]:
    """(seconds for one epoch, achieved GFLOP/s, layer widths, BLAS threads during the epoch) for recipe
    `name` at `batch_size`, trained from scratch."""
    from digitlab.recipes import load_recipe
    from digitlab.train import Plan, TrainState, _blas_threads, _rngs, build_model, build_optimizer, fit, prepare_data

    recipe = dataclasses.replace(load_recipe(name), epochs=1, batch_size=batch_size)
    data = dataclasses.replace(prepare_data(recipe, data_dir), test=None)
    with _blas_threads(recipe, Plan.of(recipe, len(data.train.labels))):  # the limit fit() sets for the run
        threads = blas_threads()
    rngs = _rngs(0)
    model = build_model(recipe, 10, data.class_names, rngs)
    state = fit(model, build_optimizer(recipe), data, recipe, TrainState(), rngs, run_dir=None, quiet=True)
    seconds = state.history[-1]["seconds"]  # the steps of the epoch (data split and evaluation excluded)
    widths = [784, *recipe.hidden, 10]
    return seconds, mlp_flops_per_sample(widths) * len(data.train.labels) / seconds / 1e9, widths, threads


def inference_ms(data_dir, repeats: int, recipe: str = "mlp") -> tuple[float, float]:
    """(median, best) milliseconds of predict() on the 10,000 test images with a fresh `recipe` model."""
    from digitlab.data import load_dataset
    from digitlab.recipes import load_recipe
    from digitlab.train import _rngs, build_model

    images = load_dataset("mnist", data_dir, quiet=True).test.images  # uint8 (10000, 28, 28)
    model = build_model(load_recipe(recipe), 10, [str(d) for d in range(10)], _rngs(0))
    model.predict(images)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict(images)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), 1000 * min(times)


CHILD = """
import json, sys, tempfile
from digitlab.train import train_recipe
with tempfile.TemporaryDirectory() as out:
    r = train_recipe(sys.argv[2], json.loads(sys.argv[3]), out_dir=out, data_dir=sys.argv[1], quiet=True,
                     report=False)
print(json.dumps({"seconds": r.seconds, "epoch_seconds": r.epoch_seconds, "test_accuracy": r.test_accuracy}))
"""


def peak_rss_mb(data_dir, recipe: str = "mlp", overrides: dict | None = None) -> tuple[float, dict]:
    """Max RSS of a child process training `recipe` (default: one epoch of mlp) on full MNIST (ru_maxrss is in
    KiB on Linux), and the child's {seconds, epoch_seconds, test_accuracy}."""
    overrides = {"epochs": 1} if overrides is None else overrides
    done = subprocess.run([sys.executable, "-c", CHILD, str(data_dir), recipe, json.dumps(overrides)],
                          check=True, capture_output=True, text=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, json.loads(done.stdout.splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=str, default=str(DEFAULT_DATA), help="MNIST folder")
    parser.add_argument("--repeats", type=int, default=21, help="inference repeats (default: 21)")
    parser.add_argument("--batch-size", type=int, default=512, help="training batch size (default: 512)")
    parser.add_argument("--train-repeats", type=int, default=3,
                        help="training epochs (each from scratch, after a peak measurement); the median counts "
                             "(default: 3)")
    parser.add_argument("--threads", type=int, default=0,
                        help="OpenBLAS threads, set before NumPy loads (default: 0 = OpenBLAS's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)  # the child process inherits it too
    import numpy as np

    if not Path(args.data_dir).is_dir():
        print(f"train_speed: no MNIST at {args.data_dir} (pass --data-dir)", file=sys.stderr)
        return 2
    names = ("seed-004-mlp-relu", "mlp")
    peaks, runs = [], {name: [] for name in names}
    for _ in range(max(1, args.train_repeats)):  # alternated: load changes hit the peak and training alike
        peaks.append(matmul_peak())
        for name in names:
            runs[name].append(training_throughput(args.data_dir, args.batch_size, name))
    peak, peak_threads = max(peaks), blas_threads()
    infer, infer_best = inference_ms(args.data_dir, args.repeats)
    rss, _ = peak_rss_mb(args.data_dir)
    print(f"## digitlab training speed\n\n`{Path(sys.executable).name} bench/train_speed.py "
          f"{' '.join(argv or sys.argv[1:])}`, numpy {np.__version__}\n")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| float32 matmul peak (2048^3, {peak_threads} BLAS threads, best of {5 * len(peaks)}) | "
          f"{peak:.1f} GFLOP/s | |")
    for name in names:
        times = sorted(r[0] for r in runs[name])
        seconds = statistics.median(times)
        first, widths, train_threads = runs[name][0], runs[name][0][2], runs[name][0][3]
        gflops = first[1] * first[0] / seconds  # the same work every run: GFLOP per epoch / median seconds
        best = first[1] * first[0] / times[0]
        print(f"| training, batch {args.batch_size}, `{name}` ({'-'.join(map(str, widths))}), one epoch "
              f"({train_threads} BLAS threads; median of {len(times)}: {', '.join(f'{t:.2f}' for t in times)} s) "
              f"| {seconds:.2f} s = {gflops:.1f} GFLOP/s = **{100 * gflops / peak:.0f} %** of peak "
              f"(fastest epoch: {100 * best / peak:.0f} %) | >= 60 % |")
    arch = "-".join(map(str, runs["mlp"][0][2]))
    print(f"| inference, 10,000 test images, default `mlp` ({arch}), median of {args.repeats} (best) | "
          f"**{infer:.1f} ms** ({infer_best:.1f} ms) | <= 30 ms |")
    print(f"| peak RSS, `mlp` recipe, 1 epoch on full MNIST | **{rss:.0f} MB** | <= 300 MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
