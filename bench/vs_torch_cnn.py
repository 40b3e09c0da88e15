"""cnn-fast epoch time: digitlab (NumPy) vs the same CNN and recipe in PyTorch (CPU, float32), each side in its
own process with its own library's settings.

    .venv/bin/pip install -e '.[bench]'          # torch==2.13.0, only a bench dependency
    .venv/bin/python bench/vs_torch_cnn.py --rounds 5 --data-dir ../shared/data/mnist
    .venv/bin/python bench/vs_torch_cnn.py --rounds 3 --mode default          # a quick check
    .venv/bin/python bench/vs_torch_cnn.py --worker torch --epochs 1          # one side alone, prints JSON

Both sides train the network of tuomaso/train_mnist_fast (its final notebook: 99.04 % mean over 30 seeds):
conv 24@5x5 -> maxpool 2 -> ReLU -> conv 32@3x3 -> maxpool 2 -> ReLU -> flatten (800) -> 256 -> ReLU -> 10,
softmax cross-entropy, Adam lr 0.01 betas (0.7, 0.9), one-cycle learning rate (PyTorch's OneCycleLR defaults,
no momentum cycling), batch 256, one shuffled pass over the 60,000 training images, inputs standardised with
(x/255 - 0.1307)/0.3081, float32, each library's default initialisation. Each reports its training time per
epoch (the steps only: data loading and evaluation are outside it) and the test accuracy at the end.
digitlab runs its real training (`train_recipe("cnn-fast")`: uint8 pixels become float batches step by step);
PyTorch gets the whole shuffled training set as one float32 NCHW tensor up front and slices it (the reference's
own fastest path). Each side first makes 20 steps on a throw-away model (thread pools, caches).

With --epochs E both sides stretch the same one-cycle schedule over E epochs (the recipe's `epochs`).
The protocol (each side in its own process with its library's defaults, alternating, medians and per-round
ratios; best settings reported separately) lives in bench/torch_compare.py, shared with bench/vs_torch.py.
Target: digitlab <= 1.0x PyTorch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch_compare

RECIPE, BATCH, LR, BETAS, WARMUP_STEPS, SEED = "cnn-fast", 256, 0.01, (0.7, 0.9), 20, 0


# ----------------------------------------------------------------------------------------------- the workers
def digitlab_worker(data_dir: str, epochs: int, threads: int) -> dict:
    """Train cnn-fast for `epochs` epochs with digitlab's own training; threads 0 = the recipe's automatic choice."""
    return torch_compare.digitlab_worker(RECIPE, data_dir, epochs, threads, WARMUP_STEPS, {"seed": SEED})


def torch_worker(data_dir: str, epochs: int, threads: int) -> dict:
    """The same network and recipe in PyTorch; threads 0 = PyTorch's default intra-op thread count."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from digitlab.data import load_dataset, normalize

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    ds = load_dataset("mnist", data_dir, quiet=True)

    def tensor(images):  # (N, 28, 28) uint8 -> (N, 1, 28, 28) standardised float32
        return torch.from_numpy(normalize(images, "standard", np.float32).reshape(-1, 1, 28, 28))

    order = torch.randperm(len(ds.train.labels))
    x = tensor(ds.train.images)[order]  # (60000, 1, 28, 28), shuffled once
    y = torch.from_numpy(ds.train.labels.astype(np.int64))[order]
    xt, yt = tensor(ds.test.images), torch.from_numpy(ds.test.labels.astype(np.int64))
    per_epoch = -(-len(y) // BATCH)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 24, 5)
            self.conv2 = torch.nn.Conv2d(24, 32, 3)
            self.fc1 = torch.nn.Linear(800, 256)
            self.fc2 = torch.nn.Linear(256, 10)

        def forward(self, v):
            v = F.relu(F.max_pool2d(self.conv1(v), 2))  # (B, 24, 12, 12)
            v = F.relu(F.max_pool2d(self.conv2(v), 2))  # (B, 32, 5, 5)
            return self.fc2(F.relu(self.fc1(torch.flatten(v, 1))))  # (B, 10)

    def network(total_steps: int):
        model = Net()
        opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=total_steps, cycle_momentum=False)
        return model, opt, sched

    def train(model, opt, sched, steps: int) -> float:
        t0 = time.perf_counter()
        for i in range(steps):
            lo = (i % per_epoch) * BATCH
            opt.zero_grad()
            loss = F.cross_entropy(model(x[lo:lo + BATCH]), y[lo:lo + BATCH])
            loss.backward()
            opt.step()
            sched.step()
        return time.perf_counter() - t0

    train(*network(WARMUP_STEPS), WARMUP_STEPS)  # throw-away model: thread pool and allocator warm
    model, opt, sched = network(per_epoch * epochs)
    seconds = [train(model, opt, sched, per_epoch) for _ in range(epochs)]
    model.eval()
    with torch.no_grad():
        accuracy = float((model(xt).argmax(1) == yt).float().mean())
    return torch_compare.torch_result(torch, seconds, accuracy, threads)


COMPARISON = torch_compare.Comparison(
    script=Path(__file__), workers={"digitlab": digitlab_worker, "torch": torch_worker},
    what="cnn-fast epoch time", target=1.0, rounds=5, epochs=1, doc=__doc__)


if __name__ == "__main__":
    sys.exit(torch_compare.main(COMPARISON))
