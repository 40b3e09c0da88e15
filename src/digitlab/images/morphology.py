"""Whole-array grey-level morphology and region labelling on NumPy arrays (no per-pixel Python loops)."""

from __future__ import annotations

import math

import numpy as np


def shift_max(a: np.ndarray, offsets) -> np.ndarray:
    """Maximum of `a` over the given (dy, dx) offsets (a flat structuring element); outside counts as 0."""
    h, w = a.shape
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    p = np.zeros((h + 2 * r, w + 2 * r), dtype=a.dtype)  # (h + 2r, w + 2r)
    p[r : r + h, r : r + w] = a
    out = np.full_like(a, np.finfo(a.dtype).min if a.dtype.kind == "f" else np.iinfo(a.dtype).min)
    for dy, dx in offsets:
        np.maximum(out, p[r + dy : r + dy + h, r + dx : r + dx + w], out=out)
    return out


SQUARE = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def pool(a: np.ndarray, f: int) -> np.ndarray:
    """f x f block maximum (the array is zero-padded up to a multiple of f)."""
    h, w = a.shape
    p = np.zeros((-(-h // f) * f, -(-w // f) * f), dtype=a.dtype)
    p[:h, :w] = a
    return p.reshape(p.shape[0] // f, f, p.shape[1] // f, f).max(axis=(1, 3))  # (h/f, w/f)


def _run_max(labels: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Every horizontal run of True cells in `grid` takes the largest label found in it (2-D arrays)."""
    h, w = grid.shape
    g = np.zeros((h, w + 1), dtype=bool)  # a False column ends each row's last run
    g[:, :w] = grid
    lab = np.zeros((h, w + 1), dtype=labels.dtype)
    lab[:, :w] = labels
    g, lab = g.ravel(), lab.ravel()
    starts = g & ~np.concatenate(([False], g[:-1]))
    run = np.cumsum(starts) * g  # (h * (w + 1),) run number, 0 off the runs
    best = np.zeros(int(run.max()) + 1, dtype=labels.dtype)
    np.maximum.at(best, run, lab)
    best[0] = 0
    return best[run].reshape(h, w + 1)[:, :w]


def label_regions(grid: np.ndarray) -> np.ndarray:
    """int32 labels (0 = background) of the 4-connected True regions of a bool grid: every cell starts with its
    own label, and the largest spreads along whole row and column runs until nothing changes."""
    labels = np.where(grid, np.arange(1, grid.size + 1, dtype=np.int32).reshape(grid.shape), 0)
    for _ in range(grid.size):
        new = _run_max(_run_max(labels, grid).T, grid.T).T  # spread along rows, then along columns
        if np.array_equal(new, labels):
            break
        labels = new
    return labels



def disc(radius: int):
    r = int(radius)
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r + r]


def morph(a: np.ndarray, radius: float, grow: bool) -> np.ndarray:
    """Grey dilation (grow) or erosion with a disc of fractional radius, blending the two integer radii."""
    if radius <= 0:
        return a
    lo = int(math.floor(radius))
    frac = radius - lo

    def once(r: int) -> np.ndarray:
        if r == 0:
            return a
        return shift_max(a, disc(r)) if grow else -shift_max(-a, disc(r))

    out = once(lo)
    if frac > 1e-3:
        out = (1.0 - frac) * out + frac * once(lo + 1)
    return out.astype(np.float32)


def ink_box(a: np.ndarray, level: float = 0.1):
    ys, xs = np.nonzero(a > level)
    if ys.size == 0:
        return None
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def stroke_width(a: np.ndarray) -> float:
    """Mean stroke width of a soft ink image (float, ink ~1), in pixels: 2 x ink area / boundary length."""
    gy, gx = np.gradient(a.astype(np.float64))  # (h, w) each
    perimeter = float(np.hypot(gy, gx).sum())
    return 2.0 * float(a.sum()) / perimeter if perimeter > 0 else 0.0
