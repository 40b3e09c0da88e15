"""Data-parallel training steps: each batch is cut into `n` parts, each part runs forward and backward in its own
thread on its own replica of the network, and the parts' gradients are added in a fixed order.

    with Shards(net, 2) as shards:
        loss, correct = shards.step(x, y, loss_fn)   # net's gradients now hold the whole batch's gradient
        optimizer.step(net.parameters(), net.grads(), lr)

Why: NumPy's loops and the BLAS products release the GIL, so two shards with one BLAS thread each keep two cores
busy through the element-wise work (im2col copies, pooling masks, col2im) that one multi-threaded BLAS call per
layer leaves on a single core.

Replicas (`Sequential.replica`) share the parameters and buffers and own their gradients, caches and workspace.
Each part's loss is the mean over its own samples, so its gradient is scaled by (part size / batch size); the sum
is the gradient of the batch mean: the same math as one pass, rounded differently. The result therefore depends
on the number of shards but not on the machine or on thread timing, which is why `shards` is a recipe setting.
Layers that mix the samples of a batch (BatchNorm) or draw random numbers in batch order (Dropout) are refused.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor, wait
from itertools import accumulate

import numpy as np

from digitlab.errors import ConfigError


class Shards:
    """`n` replicas of `net` (the first is `net` itself) and the threads that run all but the first."""

    def __init__(self, net, n: int = 1):
        check_shardable(net, n)
        self.nets = [net] + [net.replica() for _ in range(int(n) - 1)]
        self._pool = ThreadPoolExecutor(n - 1, thread_name_prefix="digitlab-shard") if n > 1 else None

    def __len__(self) -> int:
        return len(self.nets)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "Shards":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def step(self, x, y, loss_fn, scale: float = 1.0) -> tuple[float, int]:
        """Forward, loss and backward of the batch (x (B, ...), y (B,)); the first network's gradients end up
        holding `scale` times the gradient of the batch's mean loss. Returns (mean loss, correct predictions)."""
        if len(self.nets) == 1:                         # one shard: the plain step, no threads
            return _forward_backward(self.nets[0], x, y, loss_fn, scale)
        b = len(y)
        sizes = [b // len(self.nets) + (k < b % len(self.nets)) for k in range(len(self.nets))]  # first ones larger
        edges = [0, *accumulate(sizes)]
        parts = [(net, lo, hi) for net, lo, hi in zip(self.nets, edges[:-1], edges[1:]) if hi > lo]

        def run(net, lo, hi):
            return _forward_backward(net, x[lo:hi], y[lo:hi], loss_fn, scale * (hi - lo) / b)

        futures = [self._pool.submit(run, *part) for part in parts[1:]]
        try:
            first = run(*parts[0])
        finally:
            wait(futures)                               # every thread done before anything reads the gradients
        results = [first] + [f.result() for f in futures]   # a part's error is raised as itself
        for net, _, _ in parts[1:]:                     # fixed order: the sum does not depend on thread timing
            for layer, other in zip(self.nets[0].layers, net.layers):
                layer.add_grads(other)
        loss = math.fsum(value * (hi - lo) for (value, _), (_, lo, hi) in zip(results, parts)) / b
        return loss, sum(correct for _, correct in results)


def check_shardable(net, n: int) -> None:
    """ConfigError unless `net` can be trained in `n` shards."""
    if int(n) < 1:
        raise ConfigError(f"shards must be >= 1, got {n}")
    blocked = [f"layer {i} ({type(layer).__name__}: {layer.not_shardable})"
               for i, layer in enumerate(net.layers) if layer.not_shardable]
    if n > 1 and blocked:
        raise ConfigError(f"shards = {n} needs layers that treat each sample on its own, not "
                          f"{'; '.join(blocked)}: set shards = 1")


def _forward_backward(net, x, y, loss_fn, scale: float) -> tuple[float, int]:
    """One part: (mean loss, correct); the gradient of `scale` * mean loss lands in net's gradients."""
    scores = net.forward(x)                                   # (b, *input_shape) -> (b, C)
    correct = int(np.count_nonzero(scores.argmax(axis=1) == y))
    loss, dscores = loss_fn(scores, y, out=scores)            # the gradient written over the scores
    if not math.isfinite(loss):                               # the caller stops; nothing to back-propagate
        return loss, correct
    if scale != 1.0:
        dscores *= scale
    net.backward(dscores)
    return loss, correct
