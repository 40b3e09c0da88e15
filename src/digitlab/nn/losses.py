"""Losses on raw scores: small functions returning (mean loss over the batch, d loss / d scores).

    from digitlab.nn.losses import get_loss
    loss = get_loss("softmax_ce")              # or "softmax_mse", "sigmoid_bce"
    smooth = get_loss("softmax_ce", label_smoothing=0.1)   # targets (1 - 0.1) Y + 0.1 / C
    value, dscores = loss(scores, labels)      # scores (N, C) float, labels (N,) integer class indices
    probs = loss.probabilities(scores)         # (N, C), rows sum to 1 (for predict_proba)

Labels are integer class indices; a one-hot matrix exists only inside a loss. The returned loss is a Python
float (the mean over the batch); the gradient has the dtype of `scores`. Pass `out=` to have the gradient
written into an existing (N, C) array (it may be `scores` itself — the fast path of a training step).

  softmax_ce   softmax + cross-entropy fused, max-subtracted log-sum-exp: finite for logits of +-1e4.
               gradient (softmax(z) - Y) / N. With label smoothing e the target is Q = (1 - e) Y + e / C
               (Szegedy et al. 2016; PyTorch's CrossEntropyLoss(label_smoothing=e)): loss -sum Q log softmax(z),
               gradient (softmax(z) - Q) / N.
  softmax_mse  per-example SUM over classes of (softmax(z) - Y)^2, MEAN over the batch; the gradient goes
               back through the true softmax Jacobian: p * (g - sum(g * p)), g = 2 (p - Y) / N.
  sigmoid_bce  one-vs-rest: per-example SUM over classes of the binary cross-entropy of sigmoid(z) against
               Y, MEAN over the batch, so the gradient is (sigmoid(z) - Y) / N — the seed-003 notebook's
               X^T (sigmoid(Xw) - Y) / N once it reaches the weights. Its probabilities are the ten
               sigmoids renormalised to sum to 1 (computed in log space, so never 0/0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from digitlab.errors import ConfigError
from digitlab.nn.backend import array_module


def _check(scores, labels):
    """Shapes (N, C) and (N,), labels in 0..C-1: a bad label must never index a neighbouring row."""
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (N, C) and labels (N,), got {scores.shape} and {labels.shape}")
    as_unsigned = labels.view(f"u{labels.itemsize}") if labels.dtype.kind == "i" else labels  # -1 -> huge
    if labels.dtype.kind not in "iu" or (labels.size and as_unsigned.max() >= scores.shape[1]):
        raise ValueError(f"labels must be class indices 0..{scores.shape[1] - 1}")


def softmax(scores, out=None):
    """Row-wise softmax, max-subtracted: (N, C) -> (N, C)."""
    xp = array_module(scores)
    p = xp.subtract(scores, scores.max(axis=1, keepdims=True), out=out)   # (N, C) - (N, 1), all <= 0
    xp.exp(p, out=p)
    p /= p.sum(axis=1, keepdims=True)                                       # (N, C) / (N, 1)
    return p


def softmax_cross_entropy(scores, labels, out=None, label_smoothing: float = 0.0):
    """Mean cross-entropy of softmax(scores) against integer labels, and its gradient (softmax - Y) / N;
    with label_smoothing e against Q = (1 - e) Y + e / C, gradient (softmax - Q) / N.

    Written for small (N, C) batches, where the per-call cost of NumPy dominates: the row maxima come from
    argmax (much faster than max over a short axis) and the label entries are addressed by flat index.
    """
    _check(scores, labels)
    xp = array_module(scores)
    n, c = scores.shape
    rows = xp.arange(0, n * c, c)                                          # (N,) flat start of each row
    rowmax = scores.reshape(-1)[rows + scores.argmax(axis=1)]              # (N,) row maxima
    if out is not None and not out.flags.c_contiguous:
        raise ValueError("softmax_cross_entropy needs a C-contiguous out= array")
    z = xp.subtract(scores, rowmax[:, None], out=out)                      # (N, C), max-subtracted, <= 0
    eps = float(label_smoothing)
    zsum = z.sum(axis=1, dtype=xp.float64) if eps else None                # (N,) sum_k z_k for the uniform part
    flat = z.reshape(-1)                                                   # a view: z is C-contiguous
    target = rows + labels                                                 # (N,) flat index of z_y
    correct = flat[target]                                                 # (N,) z_y (a copy)
    xp.exp(z, out=z)                                                       # (N, C) e^z in (0, 1]
    total = z.sum(axis=1)                                                  # (N,) >= 1
    log_total = xp.log(total)                                              # (N,)
    correct -= log_total                                                   # (N,) log softmax(z)_y
    loss = -float(correct.sum()) / n
    if eps:  # -(1-e) log p_y - e/C sum_k log p_k, with sum_k log p_k = sum_k z_k - C log(total)
        loss = (1.0 - eps) * loss - eps * float((zsum / c - log_total).sum()) / n
    total *= n
    z /= total[:, None]                                                    # (N, C) softmax / N
    flat[target] -= z.dtype.type((1.0 - eps) / n)                          # (N, C) (softmax - (1-e) Y) / N
    if eps:
        z -= z.dtype.type(eps / (c * n))                                   # (N, C) (softmax - Q) / N
    return loss, z


def softmax_mse(scores, labels, out=None):
    """Mean over the batch of sum over classes (softmax(z) - Y)^2; gradient through the softmax Jacobian."""
    _check(scores, labels)
    xp = array_module(scores)
    n = scores.shape[0]
    rows = xp.arange(n)
    p = softmax(scores, out=out)                                           # (N, C)
    g = p.copy()
    g[rows, labels] -= 1.0                                                 # (N, C) p - Y
    loss = float((g.astype(xp.float64) ** 2).sum()) / n
    g *= 2.0 / n                                                           # (N, C) dL/dp
    dot = (g * p).sum(axis=1, keepdims=True)                               # (N, 1) sum_k g_k p_k
    g -= dot
    p *= g                                                                 # (N, C) p * (g - g.p)
    return loss, p


def _log_sigmoid(z):
    """log(sigmoid(z)) = -softplus(-z), stable for any z."""
    xp = array_module(z)
    return xp.minimum(z, 0) - xp.log1p(xp.exp(-xp.abs(z)))


def sigmoid_bce(scores, labels, out=None):
    """One-vs-rest: mean over the batch of sum over classes of BCE(sigmoid(z), Y); gradient (sigmoid(z) - Y)/N.

    Per entry BCE = softplus(z) - y z with softplus(z) = max(z, 0) + log1p(exp(-|z|)); the same exp(-|z|)
    gives the stable sigmoid, so the loss costs a few extra passes over the scores, not a second sigmoid.
    """
    _check(scores, labels)
    xp = array_module(scores)
    n = scores.shape[0]
    rows = xp.arange(n)
    correct = float(scores[rows, labels].sum(dtype=xp.float64))          # sum of z_y
    e = xp.abs(scores)                                                     # (N, C) |z|
    xp.negative(e, out=e)
    xp.exp(e, out=e)                                                       # exp(-|z|) in (0, 1], no overflow
    softplus = xp.log1p(e)                                                 # (N, C)
    softplus += xp.maximum(scores, 0)                                      # softplus(z)
    loss = (float(softplus.sum(dtype=xp.float64)) - correct) / n
    num = xp.where(scores >= 0, 1.0, e).astype(scores.dtype, copy=False)   # read scores before out= overwrites
    e += 1.0
    g = xp.divide(num, e, out=out)                                         # (N, C) sigmoid(z)
    g[rows, labels] -= 1.0                                                 # (N, C) sigmoid(z) - Y
    g *= 1.0 / n
    return loss, g


def ovr_probabilities(scores):
    """The C sigmoids renormalised to sum to 1, via a softmax of log-sigmoids (no 0/0 when all are tiny)."""
    xp = array_module(scores)
    return softmax(_log_sigmoid(scores.astype(xp.float64))).astype(scores.dtype)


def softmax_probabilities(scores):
    return softmax(scores.astype(scores.dtype, copy=True))


@dataclass(frozen=True)
class Loss:
    """A named loss: `loss(scores, labels, out=None) -> (mean loss, dscores)` plus `probabilities(scores)`.
    `label_smoothing` (softmax_ce only) changes the training targets, not the probabilities."""

    name: str
    fn: Callable
    probabilities: Callable
    label_smoothing: float = 0.0

    def __call__(self, scores, labels, out=None):
        if self.label_smoothing:
            return self.fn(scores, labels, out=out, label_smoothing=self.label_smoothing)
        return self.fn(scores, labels, out=out)


LOSSES = {
    "softmax_ce": Loss("softmax_ce", softmax_cross_entropy, softmax_probabilities),
    "softmax_mse": Loss("softmax_mse", softmax_mse, softmax_probabilities),
    "sigmoid_bce": Loss("sigmoid_bce", sigmoid_bce, ovr_probabilities),
}
ALIASES = {"softmax_cross_entropy": "softmax_ce", "cross_entropy": "softmax_ce", "mse": "softmax_mse",
           "ovr": "sigmoid_bce", "one_vs_rest": "sigmoid_bce"}


SMOOTHABLE = ("softmax_ce",)


def get_loss(name: str, label_smoothing: float = 0.0) -> Loss:
    """The Loss registered under `name` (or an alias), with label smoothing in [0, 1) where it applies
    (softmax_ce); ConfigError for unknown names or a smoothing the loss cannot take."""
    key = ALIASES.get(name, name)
    if key not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if not label_smoothing:
        return LOSSES[key]
    if not 0.0 < label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if key not in SMOOTHABLE:
        raise ConfigError(f"label smoothing needs loss {' or '.join(SMOOTHABLE)}, not {key!r}")
    return dataclasses.replace(LOSSES[key], label_smoothing=float(label_smoothing))
