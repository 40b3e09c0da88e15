"""Where a seed-004 epoch's time goes, next to the floor set by its matrix products.

    .venv/bin/python bench/profile_epoch.py --data-dir ../shared/data/mnist --repeats 3
    .venv/bin/python bench/profile_epoch.py --clock wall --threads 0     # wall time, BLAS's own thread count

Clocks: by default every figure is CPU time of this process (time.process_time) with BLAS on one thread, so a
machine busy with other work inflates it far less than wall time (on a loaded 2-core machine a two-thread BLAS
spends most of its wall time waiting for its second thread); `--clock wall` times what a user waits for.

Two views, each the median of --repeats, alternated so that a change in the machine's load hits both alike:
  fit       the real `digitlab.train.fit` on the seed-004 recipe for one epoch, with timers wrapped around
            each layer's forward / backward, the loss, the optimizer step and the batch iterator (a few
            hundred ns of wrapper per call); "fit loop" is what is left: the correct-count argmax, the
            schedule, the learning-rate fold, the bookkeeping;
  ops       every operation of a training step on its own, 938 times at the seed-004 shapes (batch 64) on
            the same arrays: the five matrix products (the floor any implementation on this BLAS pays), the
            two bias-gradient products, the bias adds, ReLU's mask and multiplies, the loss, the argmax, the
            four SGD updates and the uint8 -> float batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist"
BATCH = 64


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _timed(fn, acc: dict, key: str, clock):
    def wrapper(*args, **kwargs):
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[key] += clock() - t0
    return wrapper


def profile_fit(data_dir, clock, recipe_name: str = "seed-004-mlp-relu", steps: int = 0) -> dict:
    """{part: seconds} of one instrumented epoch (or `steps` steps) of the real fit() (fresh model), plus
    "epoch"; bench/profile_cnn.py uses it for the CNN recipes."""
    import digitlab.train as train

    recipe = dataclasses.replace(train.load_recipe(recipe_name), epochs=1, steps=steps)
    data = dataclasses.replace(train.prepare_data(recipe, data_dir), test=None)
    rngs = train._rngs(recipe.seed)
    model = train.build_model(recipe, 10, data.class_names, rngs)
    optimizer = train.build_optimizer(recipe, model.net, train.Plan.of(recipe, len(data.train.labels)).total)
    acc: dict = defaultdict(float)
    for i, layer in enumerate(model.net.layers):
        name = f"{i}:{type(layer).__name__}"
        layer.forward = _timed(layer.forward, acc, f"{name} forward", clock)
        layer.backward = _timed(layer.backward, acc, f"{name} backward", clock)
    real_get_loss = train.get_loss  # fit() takes its training loss from get_loss

    def timed_get_loss(*args, **kwargs):
        loss = real_get_loss(*args, **kwargs)
        return dataclasses.replace(loss, fn=_timed(loss.fn, acc, "loss", clock))

    optimizer.step = _timed(optimizer.step, acc, "optimizer step", clock)
    real_batches = train.batches

    def timed_batches(*args, **kwargs):
        it = real_batches(*args, **kwargs)
        while True:
            t0 = clock()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                acc["batches (uint8 -> float, augmentation)"] += clock() - t0
            yield item

    train.batches, train.get_loss = timed_batches, timed_get_loss
    t0 = clock()
    try:
        train.fit(model, optimizer, data, recipe, train.TrainState(), rngs, run_dir=None, quiet=True)
    finally:
        train.batches, train.get_loss = real_batches, real_get_loss
    acc["epoch"] = clock() - t0
    acc["fit loop (rest)"] = acc["epoch"] - sum(v for k, v in acc.items() if k != "epoch")
    return dict(acc)


def profile_ops(x_u8: np.ndarray, y: np.ndarray, steps: int, clock) -> dict:
    """{op: seconds for `steps` calls} of each operation of a training step, at batch 64."""
    from digitlab.data.dataset import batches
    from digitlab.nn.losses import softmax_cross_entropy

    rng = np.random.default_rng(0)
    f32 = np.float32
    W1 = (rng.standard_normal((784, 300)) * 0.05).astype(f32)
    W2 = (rng.standard_normal((300, 10)) * 0.14).astype(f32)
    b1, b2 = np.zeros(300, f32), np.zeros(10, f32)
    dW1, dW2, db1, db2 = np.empty_like(W1), np.empty_like(W2), np.empty_like(b1), np.empty_like(b2)
    x = x_u8[:BATCH].reshape(BATCH, 784).astype(f32) / f32(255)  # (64, 784)
    y64 = y[:BATCH].astype(np.int64)
    h, s, dh = np.empty((BATCH, 300), f32), np.empty((BATCH, 10), f32), np.empty((BATCH, 300), f32)
    mask = np.empty((BATCH, 300), bool)
    ones = np.ones(BATCH, f32)
    np.matmul(x, W1, out=h)
    np.maximum(h, 0, out=h)
    scores = h @ W2

    def loss():
        s[...] = scores
        softmax_cross_entropy(s, y64, out=s)

    ops = {
        "matmul x@W1 (64x784 @ 784x300)": lambda: np.matmul(x, W1, out=h),
        "matmul h@W2 (64x300 @ 300x10)": lambda: np.matmul(h, W2, out=s),
        "matmul dW2 = h.T@ds (300x64 @ 64x10)": lambda: np.matmul(h.T, s, out=dW2),
        "matmul dh = ds@W2.T (64x10 @ 10x300)": lambda: np.matmul(s, W2.T, out=dh),
        "matmul dW1 = x.T@dh (784x64 @ 64x300)": lambda: np.matmul(x.T, dh, out=dW1),
        "db1 = ones@dh, db2 = ones@ds": lambda: (np.matmul(ones, dh, out=db1), np.matmul(ones, s, out=db2)),
        "bias adds (64x300, 64x10)": lambda: (np.add(h, b1, out=h), np.add(s, b2, out=s)),
        "ReLU forward: mask + multiply": lambda: (np.greater(h, 0, out=mask), np.multiply(h, mask, out=h)),
        "ReLU backward: multiply": lambda: np.multiply(dh, mask, out=dh),
        "argmax + correct count": lambda: int(np.count_nonzero(s.argmax(axis=1) == y64)),
        "loss (copy of 64x10 + softmax-CE)": loss,
        "SGD updates W1, b1, W2, b2 (p -= g)": lambda: (np.subtract(W1, dW1, out=dW1), np.subtract(b1, db1, out=db1),
                                                        np.subtract(W2, dW2, out=dW2), np.subtract(b2, db2, out=db2)),
    }
    out = {}
    for name, fn in ops.items():
        fn()
        t0 = clock()
        for _ in range(steps):
            fn()
        out[name] = clock() - t0
    t0 = clock()
    for _ in batches(x_u8[:steps * BATCH], y[:steps * BATCH], BATCH, order="sequential"):
        pass
    out["batches: uint8 -> float32 (sequential)"] = clock() - t0
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=str, default=str(DEFAULT_DATA), help="MNIST folder")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each view; medians (default: 3)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="cpu (default) or wall time")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default: 1; 0 = BLAS's own)")
    args = parser.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(args.threads, user_api="blas"):
            return _run(args, argv)
    return _run(args, argv)


def _run(args, argv) -> int:
    clock = CLOCKS[args.clock]
    from digitlab.data import load_dataset

    ds = load_dataset("mnist", args.data_dir, quiet=True)
    steps = -(-len(ds.train.labels) // BATCH)
    fits, opss = [], []
    for _ in range(args.repeats):
        fits.append(profile_fit(args.data_dir, clock))
        opss.append(profile_ops(ds.train.images, ds.train.labels, steps, clock))
    fit_med = {k: statistics.median(f[k] for f in fits) for k in fits[0]}
    ops_med = {k: statistics.median(o[k] for o in opss) for k in opss[0]}
    epoch = fit_med.pop("epoch")
    print(f"## seed-004 epoch profile (batch {BATCH}, {steps} steps), {args.clock} seconds, BLAS threads "
          f"{args.threads or 'default'}, median of {args.repeats}\n")
    print(f"`python bench/profile_epoch.py {' '.join(argv or sys.argv[1:])}`\n")
    epochs = ", ".join(f"{f['epoch']:.3f}" for f in fits)
    print(f"### the real fit(): {epoch:.3f} s per epoch (epochs: {epochs})\n")
    print("| part | s/epoch | share |")
    print("|---|---|---|")
    for k, v in sorted(fit_med.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.3f} | {100 * v / epoch:.0f} % |")
    products = sum(v for k, v in ops_med.items() if k.startswith("matmul"))
    total = sum(ops_med.values())
    print(f"\n### each operation alone, {steps} times: {total:.3f} s in all; the five products {products:.3f} s "
          f"(the floor), i.e. fit() is {epoch / products:.2f}x its products\n")
    print("| operation | s/epoch | µs/step |")
    print("|---|---|---|")
    for k, v in ops_med.items():
        print(f"| {k} | {v:.3f} | {1e6 * v / steps:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
