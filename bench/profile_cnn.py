"""Where a CNN epoch's time goes (im2col, GEMM, col2im, pooling, augmentation), next to its GEMM floor.

    .venv/bin/python bench/profile_cnn.py --data-dir ../shared/data/mnist                 # cnn-fast, 1 epoch
    .venv/bin/python bench/profile_cnn.py --recipe cnn --steps 100 --clock wall --threads 0

Two views (CPU time of this process and one BLAS thread by default, like bench/profile_epoch.py: on a loaded
machine wall time mostly measures the neighbours):
  fit     the real `digitlab.train.fit` on the recipe, one epoch (or --steps steps), with timers around each
          layer's forward / backward, the optimizer step and the batch iterator (uint8 -> float and the
          recipe's augmentation), via bench/profile_epoch.py's `profile_fit`;
  gemm    each matrix product of a training step alone at the recipe's shapes, as many times as fit made
          steps: Conv2D forward cols @ W, dW = cols^T @ dY, dX blocks = dY @ W^T per kernel offset (not for the
          first layer), Linear's three products. Their sum is the floor any im2col implementation on this BLAS
          pays; a conv layer's time minus its products is its im2col copy + bias (forward) or col2im + bias
          gradient (backward). Pooling, ReLU and Flatten make no products at all.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from profile_epoch import CLOCKS, DEFAULT_DATA, profile_fit


def gemm_floor(net, batch: int, steps: int, clock) -> dict:
    """{"i:Layer forward|backward": seconds} of the layer's matrix products alone, `steps` times each."""
    from digitlab.nn.layers import Conv2D, Linear

    rng = np.random.default_rng(0)
    first = next(i for i, layer in enumerate(net.layers) if layer.param_names)
    out = {}
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Conv2D):
            k, c, f = layer.kernel, layer.W.shape[2], layer.filters
            m = batch * layer.output_shape[0] * layer.output_shape[1]
            cols, w = rng.random((m, k * k * c), np.float32), rng.random((k * k * c, f), np.float32)
            dy, dcols = rng.random((m, f), np.float32), np.empty((k * k, m, c), np.float32)
            wk = w.reshape(k * k, c, f).transpose(0, 2, 1)                          # (kk, F, C)
            fwd = [lambda: np.matmul(cols, w)]                                       # (M, kkC) @ (kkC, F)
            bwd = [lambda: np.matmul(cols.T, dy)]                                    # (kkC, M) @ (M, F)
            if i != first:
                bwd.append(lambda: np.matmul(dy, wk, out=dcols))                     # (M, F) @ (kk, F, C)
        elif isinstance(layer, Linear):
            n_in, n_out = layer.W.shape
            x, w, dy = (rng.random(s, np.float32) for s in ((batch, n_in), (n_in, n_out), (batch, n_out)))
            fwd = [lambda: np.matmul(x, w)]
            bwd = [lambda: np.matmul(x.T, dy)] + ([lambda: np.matmul(dy, w.T)] if i != first else [])
        else:
            continue
        for what, products in (("forward", fwd), ("backward", bwd)):
            for p in products:
                p()  # warm
            t0 = clock()
            for _ in range(steps):
                for p in products:
                    p()
            out[f"{i}:{type(layer).__name__} {what}"] = clock() - t0
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cnn-fast", help="a CNN recipe (default: cnn-fast)")
    parser.add_argument("--steps", type=int, default=0, help="steps to profile (default: 0 = one epoch)")
    parser.add_argument("--data-dir", type=str, default=str(DEFAULT_DATA), help="MNIST folder")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="cpu (default) or wall time")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default: 1; 0 = BLAS's own)")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from digitlab.recipes import load_recipe
    from digitlab.train import Plan, _rngs, build_model

    recipe = load_recipe(args.recipe, {"threads": args.threads} if args.threads else {})
    plan = Plan.of(recipe, 60000)
    steps = args.steps or plan.per_epoch
    clock = CLOCKS[args.clock]
    with threadpool_limits(args.threads or None, user_api="blas"):
        fit = profile_fit(args.data_dir, clock, args.recipe, steps)
        net = build_model(recipe, 10, [str(c) for c in range(10)], _rngs(0)).net
        floor = gemm_floor(net, plan.batch_size, steps, clock)
    total, products = fit.pop("epoch"), sum(floor.values())
    per_epoch = plan.per_epoch / steps
    macs = net.macs()
    print(f"## {args.recipe}: where the time of a training epoch goes ({args.clock} seconds, BLAS threads "
          f"{args.threads or 'default'}, {steps} steps of {plan.batch_size}, scaled to one epoch of "
          f"{plan.per_epoch})\n")
    print(f"`python bench/profile_cnn.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
    print(f"{macs / 1e6:.3f} M multiply-adds per image forward; a training epoch makes about "
          f"{6 * macs * 60000 / 1e12:.2f} TFLOP (forward + two backward products per layer)\n")
    print("| part | s/epoch | share | of which matrix products | rest (im2col / col2im / bias / masks) |")
    print("|---|---|---|---|---|")
    for key, seconds in sorted(fit.items(), key=lambda kv: -kv[1]):
        gemm = floor.get(key)  # "i:Layer forward" / "i:Layer backward", as profile_fit names them
        cells = (f"{gemm * per_epoch:.2f}", f"{(seconds - gemm) * per_epoch:.2f}") if gemm is not None else ("", "")
        print(f"| {key} | {seconds * per_epoch:.2f} | {100 * seconds / total:.0f} % | {cells[0]} | {cells[1]} |")
    print(f"| **epoch** | **{total * per_epoch:.2f}** | 100 % | **{products * per_epoch:.2f}** (the GEMM floor, "
          f"{6 * macs * 60000 / (products * per_epoch) / 1e9:.0f} GFLOP/s) | {(total - products) * per_epoch:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
