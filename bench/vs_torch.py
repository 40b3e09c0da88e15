"""seed-004 epoch time: digitlab (NumPy) vs the same model and recipe in PyTorch (CPU, float32).

    .venv/bin/pip install -e '.[bench]'          # torch==2.13.0, only a bench dependency
    .venv/bin/python bench/vs_torch.py            # 5 alternating rounds on ../shared/data/mnist
    .venv/bin/python bench/vs_torch.py --rounds 7 --data-dir ~/mnist --threads 1   # both sides single-threaded

Both sides train 784-300(ReLU)-10 with softmax cross-entropy, plain SGD lr 0.1, batch 64, the training set in
order (no shuffling), float32, He-normal / N(0, sqrt(6/310)) init, zero biases, the same number of BLAS /
intra-op threads (--threads; digitlab on its own would use BLAS's default for this recipe, 2 here). digitlab runs its real
training loop (`digitlab.train.fit`, which turns uint8 pixels into floats batch by batch); PyTorch gets the
whole training set as one float32 tensor up front and slices it (its fastest path). The two alternate, one
epoch at a time, and the table reports each epoch's training time and the median ratio. Target: <= 0.6x.

OpenMP wait policy: PyTorch's OpenMP worker threads busy-wait after each parallel region by default, and in
a process where the two libraries alternate those spinning threads take the cores from whatever runs next.
The bench therefore sets OMP_WAIT_POLICY=PASSIVE (override with --omp-wait-policy). This does not slow
PyTorch down: PyTorch alone, 5 epochs each, measured 2.39 / 2.10 s per epoch with the default policy and
2.22 / 1.92 s with PASSIVE (two pairs of runs, 2026-11-25).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist"


def digitlab_epoch_runner(data_dir, threads: int):
    """A function that trains one more seed-004 epoch with digitlab's fit() and returns its seconds."""
    from digitlab.recipes import load_recipe
    from digitlab.train import TrainState, _rngs, build_model, build_optimizer, evaluate, fit, prepare_data

    recipe = dataclasses.replace(load_recipe("seed-004-mlp-relu"), epochs=1, threads=threads)
    data = prepare_data(recipe, data_dir)
    data = dataclasses.replace(data, test=None)  # time training only
    rngs = _rngs(recipe.seed)
    model = build_model(recipe, 10, data.class_names, rngs)
    optimizer = build_optimizer(recipe)
    test_images, test_labels = prepare_data(recipe, data_dir).test

    def run() -> float:
        state = fit(model, optimizer, data, recipe, TrainState(), rngs, run_dir=None, quiet=True)
        return state.history[-1]["seconds"]

    return run, lambda: evaluate(model, test_images, test_labels)["accuracy"]


def torch_epoch_runner(data_dir, threads: int):
    import numpy as np
    import torch

    from digitlab.data import load_dataset, normalize

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ds = load_dataset("mnist", data_dir, quiet=True)
    x = torch.from_numpy(normalize(ds.train.images, "unit", np.float32))  # (60000, 784)
    y = torch.from_numpy(ds.train.labels.astype(np.int64))  # (60000,)
    xt = torch.from_numpy(normalize(ds.test.images, "unit", np.float32))
    yt = torch.from_numpy(ds.test.labels.astype(np.int64))
    model = torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(), torch.nn.Linear(300, 10))
    with torch.no_grad():
        torch.nn.init.kaiming_normal_(model[0].weight, nonlinearity="relu")
        torch.nn.init.normal_(model[2].weight, std=(6 / 310) ** 0.5)
        model[0].bias.zero_()
        model[2].bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()

    def run() -> float:
        t0 = time.perf_counter()
        for lo in range(0, len(y), 64):
            opt.zero_grad(set_to_none=False)
            loss = loss_fn(model(x[lo:lo + 64]), y[lo:lo + 64])
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    def accuracy() -> float:
        with torch.no_grad():
            return float((model(xt).argmax(1) == yt).float().mean())

    return run, accuracy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating epochs per side (default: 5)")
    parser.add_argument("--data-dir", type=str, default=str(DEFAULT_DATA), help="MNIST folder")
    parser.add_argument("--threads", type=int, default=2,
                        help="BLAS threads for NumPy (OpenBLAS) and PyTorch intra-op threads (default: 2)")
    parser.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE", "keep"], default="PASSIVE",
                        help="OMP_WAIT_POLICY for PyTorch's OpenMP threads; 'keep' leaves the environment's "
                             "(default: PASSIVE, see the module docstring)")
    args = parser.parse_args(argv)
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)  # before NumPy is imported: the bench's own setting
    if args.omp_wait_policy != "keep":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # before torch (and its OpenMP) is loaded
    import numpy as np

    if not Path(args.data_dir).is_dir():
        print(f"vs_torch: no MNIST at {args.data_dir} (pass --data-dir)", file=sys.stderr)
        return 2
    try:
        import torch
    except ModuleNotFoundError:
        print("vs_torch: PyTorch is not installed; run: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return 2
    dl_run, dl_acc = digitlab_epoch_runner(args.data_dir, args.threads)
    th_run, th_acc = torch_epoch_runner(args.data_dir, args.threads)
    rows = []
    for i in range(args.rounds):
        rows.append((i + 1, dl_run(), th_run()))
    dl = statistics.median(r[1] for r in rows)
    th = statistics.median(r[2] for r in rows)
    print(f"## seed-004 epoch time, digitlab vs PyTorch {torch.__version__} (CPU float32)\n")
    print(f"`{' '.join([Path(sys.executable).name, 'bench/vs_torch.py', *(argv or sys.argv[1:])])}` on "
          f"{platform.processor() or platform.machine()}, numpy {np.__version__}, {args.threads} thread(s) each, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}\n")
    print("| epoch | digitlab s | PyTorch s | ratio |")
    print("|---|---|---|---|")
    for i, d, t in rows:
        print(f"| {i} | {d:.3f} | {t:.3f} | {d / t:.2f}x |")
    paired = statistics.median(d / t for _, d, t in rows)
    print(f"| **median** | **{dl:.3f}** | **{th:.3f}** | **{dl / th:.2f}x** (target <= 0.60x) |")
    print(f"\nmedian of the per-round ratios: {paired:.2f}x (each round runs both sides back to back)")
    print(f"\ntest accuracy after {args.rounds} epochs: digitlab {100 * dl_acc():.2f} %, "
          f"PyTorch {100 * th_acc():.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
