"""Micro-benchmark of digitlab's network core on the seed-004 shapes (784-300(ReLU)-10, softmax-CE, SGD).

    .venv/bin/python bench/nn_micro.py                 # epoch time vs its matrix products, batch-512 vs peak
    .venv/bin/python bench/nn_micro.py --repeats 5 --json
    .venv/bin/python bench/nn_micro.py --threads 1       # BLAS limited to one thread (threadpoolctl)

What it times (float32, MNIST already in memory as a float32 (60000, 784) array, no shuffling):
  epoch     one training epoch with digitlab's layers: forward, loss, backward, SGD step for each of the 938
            batches of 64 (the last one has 32) — the seed-004 recipe's inner loop without bookkeeping;
  matmuls   only the five matrix products of the same steps (x@W1, h@W2, h.T@d2, d2@W2.T, x.T@d1) written
            into preallocated arrays: the floor any implementation on this BLAS pays;
  ratio     epoch / matmuls (1.0 would mean zero overhead);
  folded    the same epoch with lr folded into the loss gradient and SGD stepping at lr=1.0;
  batch512  one epoch at batch 512, in GFLOP/s of useful work (2*MACs of the five products), as a fraction
            of this machine's float32 matmul peak (the best rate of a 2048^2 sgemm seen during the run), next
            to the same fraction for the bare products at those shapes (what BLAS itself reaches there);
  infer     Classifier.predict_proba on the 10,000 uint8 test images (normalisation included), for
            784-300-10 and the default recipe's 784-512-10.
Each figure is the median of --repeats runs. The machine may be shared: quote figures with the load you saw.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def _net(rng, hidden=300, dtype=np.float32):
    from digitlab.nn import build_mlp

    return build_mlp(784, [hidden], 10, activation="relu", init=["he_normal", "normal:0.13912166872805"],
                     rng=rng, dtype=dtype)


def train_epoch(net, x, y, batch, lr=0.1, fold_lr=False) -> float:
    """Seconds for one epoch of forward / loss / backward / SGD step over x in order.

    fold_lr: scale the loss gradient by lr and step with lr=1.0 (one pass per weight array instead of two).
    """
    from digitlab.nn import SGD, get_loss

    loss, opt = get_loss("softmax_ce"), SGD()
    params, grads = net.parameters(), net.grads()
    step_lr = 1.0 if fold_lr else lr
    t0 = time.perf_counter()
    for i in range(0, x.shape[0], batch):
        scores = net.forward(x[i:i + batch])                 # (B, 784) -> (B, 10)
        _, dscores = loss(scores, y[i:i + batch], out=scores)
        if fold_lr:
            dscores *= lr                                    # (B, 10): every gradient comes out lr-scaled
        net.backward(dscores)
        opt.step(params, grads, step_lr)
    return time.perf_counter() - t0


def matmul_epoch(x, batch, hidden=300, classes=10) -> float:
    """Seconds for only the five matrix products of an epoch, into preallocated outputs."""
    rng = np.random.default_rng(1)
    W1 = rng.standard_normal((x.shape[1], hidden), dtype=np.float32)
    W2 = rng.standard_normal((hidden, classes), dtype=np.float32)
    dW1, dW2 = np.empty_like(W1), np.empty_like(W2)
    bufs = {}
    t0 = time.perf_counter()
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch]
        n = xb.shape[0]
        if n not in bufs:
            bufs[n] = (np.empty((n, hidden), np.float32), np.empty((n, classes), np.float32),
                       np.empty((n, hidden), np.float32))
        h, s, dh = bufs[n]
        np.matmul(xb, W1, out=h)              # (B, 784) @ (784, 300) -> (B, 300)
        np.matmul(h, W2, out=s)               # (B, 300) @ (300, 10) -> (B, 10)
        np.matmul(h.T, s, out=dW2)            # (300, B) @ (B, 10) -> (300, 10)
        np.matmul(s, W2.T, out=dh)            # (B, 10) @ (10, 300) -> (B, 300)
        np.matmul(xb.T, dh, out=dW1)          # (784, B) @ (B, 300) -> (784, 300)
    return time.perf_counter() - t0


def epoch_flops(n, d=784, hidden=300, classes=10) -> float:
    """Useful floating-point operations of one epoch's five products (2 per multiply-add)."""
    return 2.0 * n * (2 * d * hidden + 3 * hidden * classes)


def peak_gflops(size=2048, repeats=5) -> float:
    """This machine's float32 matmul rate on a large square product (best of `repeats`)."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((size, size), dtype=np.float32), rng.standard_normal((size, size), dtype=np.float32)
    c = np.empty_like(a)
    np.matmul(a, b, out=c)
    best = min(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(repeats))
    return 2.0 * size ** 3 / best / 1e9


def inference_seconds(hidden, images) -> float:
    """Seconds for predict_proba on uint8 images (normalisation included) with a 784-hidden-10 MLP."""
    from digitlab.nn import Classifier, build_mlp

    model = Classifier(build_mlp(784, [hidden], 10, rng=np.random.default_rng(0)), "softmax_ce")
    model.predict_proba(images[:10])
    return _timed(lambda: model.predict_proba(images))


def _data(data_dir, n):
    """The first n MNIST training images as float32 [0, 1] (real data: its ReLU sparsity and confident
    late-training scores are part of the cost), and int64 labels."""
    from digitlab.data.dataset import load, normalize

    images, labels = load("mnist", split="train", data_dir=data_dir)
    test_images, _ = load("mnist", split="test", data_dir=data_dir)
    return normalize(images[:n], "unit", np.float32), labels[:n].astype(np.int64), test_images


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument("--n", type=int, default=60000, help="training images per epoch")
    parser.add_argument("--data-dir", type=str, default=None,
                        help="folder with the MNIST files (default: digitlab's usual lookup)")
    parser.add_argument("--threads", type=int, default=0,
                        help="BLAS threads for the whole run (0: leave the BLAS default, all cores)")
    parser.add_argument("--json", action="store_true", default=False, help="print one JSON object")
    args = parser.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(args.threads, user_api="blas"):
            return _run(args)
    return _run(args)


def _run(args) -> dict:

    x, y, test_images = _data(args.data_dir, args.n)
    net = _net(np.random.default_rng(0))
    train_epoch(net, x[:6400], y[:6400], 64)                   # warm-up: buffers, BLAS threads
    rows = {"epoch_s": [], "epoch_folded_lr_s": [], "matmul_s": [], "epoch512_s": [], "matmul512_s": [], "infer10k_300_s": [], "infer10k_512_s": [],
            "peak_gflops": []}
    for _ in range(args.repeats):                              # interleaved, so load changes hit all alike
        rows["epoch_s"].append(train_epoch(net, x, y, 64))
        rows["epoch_folded_lr_s"].append(train_epoch(net, x, y, 64, fold_lr=True))
        rows["matmul_s"].append(matmul_epoch(x, 64))
        rows["epoch512_s"].append(train_epoch(net, x, y, 512))
        rows["matmul512_s"].append(matmul_epoch(x, 512))
        rows["infer10k_300_s"].append(inference_seconds(300, test_images))
        rows["infer10k_512_s"].append(inference_seconds(512, test_images))
        rows["peak_gflops"].append(peak_gflops(repeats=3))
    med = {k: statistics.median(v) for k, v in rows.items() if k != "peak_gflops"}
    peak = max(rows["peak_gflops"])                            # the best the machine showed
    gflops512 = epoch_flops(args.n) / med["epoch512_s"] / 1e9
    result = {
        **{k: round(v, 4) for k, v in med.items()},
        "ratio_epoch_to_matmul": round(med["epoch_s"] / med["matmul_s"], 3),
        "batch512_gflops": round(gflops512, 1),
        "peak_gflops": round(peak, 1),
        "batch512_fraction_of_peak": round(gflops512 / peak, 3),
        "matmul512_fraction_of_peak": round(epoch_flops(args.n) / med["matmul512_s"] / 1e9 / peak, 3),
        "blas_threads": args.threads or "default",
        "runs": {k: [round(t, 4) for t in v] for k, v in rows.items()},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"seed-004 epoch (batch 64, {args.n} images): {med['epoch_s']:.3f} s   "
              f"matmuls alone: {med['matmul_s']:.3f} s   ratio {result['ratio_epoch_to_matmul']:.2f}   "
              f"(lr folded into the gradient: {med['epoch_folded_lr_s']:.3f} s)")
        print(f"batch-512 epoch: {med['epoch512_s']:.3f} s = {gflops512:.0f} GFLOP/s, "
              f"{100 * gflops512 / peak:.0f}% of the {peak:.0f} GFLOP/s float32 matmul peak "
              f"(its matrix products alone: {100 * result['matmul512_fraction_of_peak']:.0f}%)")
        print(f"inference, 10,000 uint8 test images: 784-300-10 {1000 * med['infer10k_300_s']:.1f} ms, "
              f"784-512-10 {1000 * med['infer10k_512_s']:.1f} ms")
    return result


if __name__ == "__main__":
    main()
