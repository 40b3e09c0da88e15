"""Gradient checks: analytic gradients vs central differences, in float64.

    import numpy as np
    from digitlab.nn.gradcheck import check_layer, check_loss, check_model
    rng = np.random.default_rng(0)
    err = check_layer(Linear(5, 3, rng=rng, dtype=np.float64), rng.standard_normal((4, 5)))
    err = check_loss("softmax_ce", rng.standard_normal((4, 10)), np.array([1, 2, 3, 4]))
    err = check_model(net, "softmax_ce", x, y)     # net of any dtype; checked as a float64 copy

Each returns the largest relative error over the arrays checked, where an array's relative error is
||analytic - numeric|| / max(||analytic|| + ||numeric||, 1e-12) (norm-wise, so near-zero entries do not
dominate). Below 1e-6 means the backward pass is right. Dropout layers are checked with a fixed mask.
Large arrays are checked at `max_entries` random positions (drawn from `rng`) to keep it fast.
"""

from __future__ import annotations

import numpy as np

from digitlab.nn.layers import Dropout, Sequential
from digitlab.nn.losses import get_loss


def relative_error(analytic, numeric) -> float:
    a, n = np.asarray(analytic, np.float64).ravel(), np.asarray(numeric, np.float64).ravel()
    return float(np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), 1e-12))


def _numeric(f, arr, idx, eps):
    """Central differences of scalar f() w.r.t. arr at flat positions idx (arr is perturbed in place)."""
    flat = arr.reshape(-1)
    out = np.empty(len(idx))
    for k, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        out[k] = (plus - minus) / (2 * eps)
    return out


def _positions(arr, max_entries, rng):
    if max_entries is None or arr.size <= max_entries:
        return np.arange(arr.size)
    return rng.choice(arr.size, size=max_entries, replace=False)


def _compare(f, pairs, eps, max_entries, rng) -> float:
    """pairs: (array that f reads, analytic gradient of f w.r.t. it)."""
    worst = 0.0
    for arr, grad in pairs:
        idx = _positions(arr, max_entries, rng)
        worst = max(worst, relative_error(np.asarray(grad).reshape(-1)[idx], _numeric(f, arr, idx, eps)))
    return worst


def _hold_masks(layers):
    for layer in layers:
        if isinstance(layer, Dropout):
            layer.hold_mask = True


def check_layer(layer, x, rng=None, eps: float = 1e-6, max_entries: int | None = None) -> float:
    """Max relative error of d(sum(forward(x) * G))/d(x and every parameter), G random. Use float64 layers."""
    rng = rng if rng is not None else np.random.default_rng(0)
    if any(p.dtype != np.float64 for p in layer.parameters()):
        raise ValueError("check_layer needs a float64 layer (build it with dtype=np.float64)")
    x = np.array(x, dtype=np.float64)
    _hold_masks([layer])
    y = layer.forward(x, train=True)
    g = rng.standard_normal(y.shape)
    dx = np.array(layer.backward(g.copy(), need_dx=True))
    grads = [np.array(gr) for gr in layer.grads()]

    def f():
        return float((layer.forward(x, train=True) * g).sum())

    return _compare(f, [(x, dx), *zip(layer.parameters(), grads)], eps, max_entries, rng)


def check_loss(loss, scores, labels, eps: float = 1e-6) -> float:
    """Max relative error of the loss's d loss / d scores (float64)."""
    loss = get_loss(loss) if isinstance(loss, str) else loss
    scores = np.array(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    _, grad = loss(scores.copy(), labels)
    return _compare(lambda: loss(scores.copy(), labels)[0], [(scores, grad)], eps, None, None)


def check_model(net: Sequential, loss, x, y, rng=None, eps: float = 1e-6, max_entries: int | None = 30) -> float:
    """Max relative error over the input and every parameter of loss(net(x), y), on a float64 copy of net."""
    rng = rng if rng is not None else np.random.default_rng(0)
    loss = get_loss(loss) if isinstance(loss, str) else loss
    net64 = net.astype(np.float64)
    _hold_masks(net64.layers)
    x = np.array(x, dtype=np.float64)                    # (N, *net.input_shape)
    y = np.asarray(y, dtype=np.int64)
    _, dscores = loss(net64.forward(x, train=True).copy(), y)
    dx = np.array(net64.backward(dscores, input_grad=True))
    grads = [np.array(g) for g in net64.grads()]

    def f():
        return loss(net64.forward(x, train=True).copy(), y)[0]

    return _compare(f, [(x, dx), *zip(net64.parameters(), grads)], eps, max_entries, rng)
