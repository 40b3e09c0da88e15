"""seed-004 epoch time: digitlab (NumPy) vs the same model and recipe in PyTorch (CPU, float32), each side in its
own process with its own library's settings.

    .venv/bin/pip install -e '.[bench]'          # torch==2.13.0, only a bench dependency
    .venv/bin/python bench/vs_torch.py --rounds 7 --epochs 2 --data-dir ../shared/data/mnist
    .venv/bin/python bench/vs_torch.py --rounds 5 --epochs 1 --mode default      # a quick check
    .venv/bin/python bench/vs_torch.py --worker torch --epochs 1                 # one side alone, prints JSON

Both sides train 784-300(ReLU)-10 with softmax cross-entropy, plain SGD lr 0.1, batch 64, the 60,000 training
images in order (no shuffling), float32, He-normal / N(0, sqrt(6/310)) init, zero biases, for --epochs epochs,
and report each epoch's training time (the steps only: data loading and evaluation are outside it) and the
test accuracy at the end. digitlab runs its real training (`train_recipe("seed-004-mlp-relu")`, which turns
uint8 pixels into floats batch by batch); PyTorch gets the whole training set as one float32 tensor up front
and slices it (its fastest path). Each side first makes 20 steps on a throw-away model (thread pools, caches).

The protocol (each side in its own process with its library's defaults, alternating, medians and per-round
ratios; best settings reported separately) lives in bench/torch_compare.py, shared with bench/vs_torch_cnn.py.
Target: digitlab <= 0.6x PyTorch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch_compare

BATCH, LR, WARMUP_STEPS = 64, 0.1, 20


# ----------------------------------------------------------------------------------------------- the workers
def digitlab_worker(data_dir: str, epochs: int, threads: int) -> dict:
    """Train seed-004 for `epochs` epochs with digitlab's own training; threads 0 = the recipe's automatic choice."""
    return torch_compare.digitlab_worker("seed-004-mlp-relu", data_dir, epochs, threads, WARMUP_STEPS)


def torch_worker(data_dir: str, epochs: int, threads: int) -> dict:
    """The same network and SGD in PyTorch; threads 0 = PyTorch's default intra-op thread count."""
    import numpy as np
    import torch

    from digitlab.data import load_dataset, normalize

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    ds = load_dataset("mnist", data_dir, quiet=True)
    x = torch.from_numpy(normalize(ds.train.images, "unit", np.float32).reshape(-1, 784))  # (60000, 784)
    y = torch.from_numpy(ds.train.labels.astype(np.int64))  # (60000,)
    xt = torch.from_numpy(normalize(ds.test.images, "unit", np.float32).reshape(-1, 784))  # (10000, 784)
    yt = torch.from_numpy(ds.test.labels.astype(np.int64))

    def network():
        model = torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(), torch.nn.Linear(300, 10))
        with torch.no_grad():
            torch.nn.init.kaiming_normal_(model[0].weight, nonlinearity="relu")
            torch.nn.init.normal_(model[2].weight, std=(6 / 310) ** 0.5)
            model[0].bias.zero_()
            model[2].bias.zero_()
        return model, torch.optim.SGD(model.parameters(), lr=LR)

    loss_fn = torch.nn.CrossEntropyLoss()

    def train(model, opt, stop: int) -> float:
        t0 = time.perf_counter()
        for lo in range(0, stop, BATCH):
            opt.zero_grad(set_to_none=False)
            loss = loss_fn(model(x[lo:lo + BATCH]), y[lo:lo + BATCH])
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    train(*network(), WARMUP_STEPS * BATCH)  # throw-away model: thread pool and allocator warm
    model, opt = network()
    seconds = [train(model, opt, len(y)) for _ in range(epochs)]
    with torch.no_grad():
        accuracy = float((model(xt).argmax(1) == yt).float().mean())
    return torch_compare.torch_result(torch, seconds, accuracy, threads)


COMPARISON = torch_compare.Comparison(
    script=Path(__file__), workers={"digitlab": digitlab_worker, "torch": torch_worker},
    what="seed-004 epoch time", target=0.6, rounds=7, epochs=2, doc=__doc__)


if __name__ == "__main__":
    sys.exit(torch_compare.main(COMPARISON))
