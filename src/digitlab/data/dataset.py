"""Data sets as arrays: loading, splits, THE normalisation function, and the mini-batch iterator.

    from digitlab.data.dataset import load, load_dataset, normalize, train_val_split, batches
    images, labels = load("mnist", split="train")          # uint8 (60000, 28, 28), uint8 (60000,)
    ds = load_dataset("fashion-mnist")                     # ds.train.images, ds.test.labels, ds.class_names
    x = normalize(images, "unit")                          # float32 (N, 28, 28) in [0, 1]
    tr, va = train_val_split(labels, val_size=5000, seed=0, stratify=True)
    rng = np.random.default_rng(0)
    for xb, yb in batches(images[tr], labels[tr], 64, rng=rng):   # float32 (64, 28, 28), int64 (64,)
        ...

Where the files come from is `digitlab.data.sources`; this module never reads environment variables itself
(`load_dataset` passes through to `sources.resolve`, which reads DIGITLAB_DATA_DIR once at the top).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from digitlab.augment import check_limits, random_affine, random_flip
from digitlab.errors import ConfigError, DataError

__all__ = [
    "Split",
    "Dataset",
    "load",
    "load_dataset",
    "normalize",
    "SCHEMES",
    "MNIST_MEAN",
    "affine",
    "MNIST_STD",
    "train_val_split",
    "sklearn_train_test_split_indices",
    "batches",
]

MNIST_MEAN = 0.1307  # on the [0, 1] scale (pytorch/examples)
MNIST_STD = 0.3081
SCHEMES = ("unit", "raw", "standard", "none")  # "none": tabular features used as given (digitlab.sklearn)
SPLITS = ("train", "test", "all")


class Split(NamedTuple):
    """One split: `images` uint8 [N, 28, 28], `labels` uint8 [N]. Unpacks as `x, y = ds.train`."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    source: Path  # folder the files were read from
    checksums: dict  # file stem -> sha256 of the uncompressed content
    class_names: list
    notice: str | None = None  # e.g. the fall-back-to-sample notice
    how: str = ""  # which resolution step found it: data_dir, DIGITLAB_DATA_DIR, cache, system, download, bundled

    def split(self, split: str = "train") -> Split:
        if split == "train":
            return self.train
        if split == "test":
            return self.test
        if split == "all":  # train then test, like fetch_openml's 70,000 rows
            return Split(
                np.concatenate([self.train.images, self.test.images]),
                np.concatenate([self.train.labels, self.test.labels]),
            )
        raise ConfigError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")


def load_dataset(
    name: str = "mnist",
    data_dir=None,
    *,
    download: bool = True,
    quiet: bool = False,
    registry: Mapping | None = None,
    **resolve_kwargs,
) -> Dataset:
    """Find, verify and read a data set (see `digitlab.data.sources.resolve` for the order of places).

    A fall-back notice (e.g. "using the bundled mnist-sample") is kept in `.notice` and printed as one
    line on stderr unless `quiet`.
    """
    from digitlab.data.sources import resolve

    resolve_kwargs.setdefault("progress", not quiet)
    found = resolve(name, data_dir, registry=registry, download=download, **resolve_kwargs)
    if found.notice and not quiet:
        print(found.notice, file=sys.stderr)
    a = found.arrays
    return Dataset(
        name=found.spec.name,
        train=Split(a["train_images"], a["train_labels"]),
        test=Split(a["test_images"], a["test_labels"]),
        source=found.source,
        checksums=dict(found.checksums),
        class_names=list(found.spec.class_names),
        notice=found.notice,
        how=found.how,
    )


def load(name: str = "mnist", split: str = "train", data_dir=None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) for split "train", "test" or "all" (train then test)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    return tuple(load_dataset(name, data_dir, **kwargs).split(split))


# --------------------------------------------------------------------------------------------- normalisation


def _scale_into(x: np.ndarray, scheme: str, dtype, from_unit: bool) -> np.ndarray:
    """x (uint8 0..255, or float on [0, 1] when from_unit) -> new float array in `scheme`."""
    dtype = np.dtype(dtype)
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown normalization scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    out = x.astype(dtype)  # the one new array; everything below is in place
    if scheme == "none":
        return out
    if scheme == "raw":
        if from_unit:
            out *= dtype.type(255)
        return out
    if not from_unit:
        out /= dtype.type(255)  # exactly x/255, correctly rounded in `dtype`
    if scheme == "standard":
        out -= dtype.type(MNIST_MEAN)
        out /= dtype.type(MNIST_STD)
    return out


def affine(scheme: str) -> tuple[float, float]:
    """(scale, offset) with normalize(pixels_0_255, scheme) == pixels * scale + offset (exact in real numbers);
    lets inference fold the normalisation into a model's first Linear layer."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown normalization scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    if scheme in ("raw", "none"):
        return 1.0, 0.0
    if scheme == "unit":
        return 1.0 / 255, 0.0
    return 1.0 / (255 * MNIST_STD), -MNIST_MEAN / MNIST_STD


def _check_unit(x: np.ndarray) -> None:
    """Float images must be finite and on [0, 1]; a 0..255 float array would otherwise be silently wrong."""
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        finite = x[np.isfinite(x)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (float("nan"),) * 2
        raise DataError(
            f"float images must be finite and on the [0, 1] scale, got values in [{lo:g}, {hi:g}]"
            f"{'' if finite.size == x.size else ' and non-finite values'}; pass uint8 0..255 or divide by 255 first"
        )


def normalize(images, scheme: str = "unit", dtype=np.float32) -> np.ndarray:
    """uint8 (0..255) or float on [0, 1] images of any shape [N, ...] -> float of the same shape in `scheme`.

    Schemes: "unit" (x/255), "raw" (0..255 as floats), "standard" ((x/255 - 0.1307) / 0.3081).
    THE one place normalisation lives; models record their scheme.
    """
    x = np.asarray(images)
    if x.ndim < 2:
        raise DataError(f"images must be a batch [N, ...] (e.g. [N, 28, 28]), got shape {x.shape}")
    if scheme == "none" and x.dtype.kind in "fiu":  # tabular features: any shape, values as given
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise DataError("features must be finite numbers (found NaN or infinity)")
        return _scale_into(x, scheme, dtype, from_unit=False)
    if np.dtype(dtype).kind != "f":
        raise ConfigError(f"normalize: dtype must be a float type, got {np.dtype(dtype)}")
    if x.dtype == np.uint8:
        return _scale_into(x, scheme, dtype, from_unit=False)
    if x.dtype.kind == "f":
        _check_unit(x)
        return _scale_into(x, scheme, dtype, from_unit=True)
    raise DataError(f"images must be uint8 (0..255) or float on [0, 1], got dtype {x.dtype}")


# ------------------------------------------------------------------------------------------------------- splits


def _count(size, n: int, what: str) -> int:
    if isinstance(size, (bool, np.bool_)):
        raise ConfigError(f"{what} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, (int, np.integer)):
        k = int(size)
    elif isinstance(size, (float, np.floating)) and 0.0 < size < 1.0:
        k = math.ceil(size * n)
    else:
        raise ConfigError(f"{what} must be a count in 1..{n - 1} or a fraction in (0, 1), got {size!r}")
    if not 0 < k < n:
        raise ConfigError(f"{what} = {size!r} leaves an empty split for {n} samples")
    return k


def train_val_split(labels, val_size, seed, stratify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of range(N) -> (train_idx, val_idx), both sorted int64.

    `val_size`: int count or float fraction (rounded up). `stratify=True` keeps each class's share: the
    per-class validation counts are the largest-remainder rounding of val_count * class_count / N.
    """
    labels = np.asarray(labels)
    n = len(labels)
    k = _count(val_size, n, "val_size")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    perm = rng.permutation(n)  # (N,)
    if not stratify:
        val = perm[:k]
    else:
        grouped = perm[np.argsort(labels[perm], kind="stable")]  # by class, random order inside each class
        classes, counts = np.unique(labels, return_counts=True)
        quota = counts * (k / n)  # (C,)
        take = np.floor(quota).astype(np.int64)
        order = np.lexsort((np.arange(len(counts)), -(quota - take)))  # largest remainder first, ties by class
        take[order[: k - int(take.sum())]] += 1
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (C,)
        val = np.concatenate([grouped[s : s + t] for s, t in zip(starts, take)])
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask).astype(np.int64), np.sort(val).astype(np.int64)


def sklearn_train_test_split_indices(n: int, test_size=0.2, random_state: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """The (train_idx, test_idx) that scikit-learn's `train_test_split(..., test_size, random_state)` picks.

    Same algorithm as sklearn's ShuffleSplit, without depending on scikit-learn: a legacy
    `np.random.RandomState(random_state).permutation(n)`; the first ceil(test_size * n) indices (or
    `test_size` when it is an int) are the test set, the next n - n_test the training set, in that order.
    """
    if isinstance(test_size, (float, np.floating)):
        if not 0.0 < test_size < 1.0:
            raise ConfigError(f"test_size fraction must be in (0, 1), got {test_size!r}")
        n_test = math.ceil(test_size * n)
    else:
        n_test = int(test_size)
    n_train = n - n_test
    if n_test <= 0 or n_train <= 0:
        raise ConfigError(f"test_size = {test_size!r} leaves an empty split for {n} samples")
    perm = np.random.RandomState(random_state).permutation(n)  # noqa: NPY002 - reproducing sklearn exactly
    return perm[n_test : n_test + n_train], perm[:n_test]


# ------------------------------------------------------------------------------------------------------ batches

ORDERS = ("shuffle", "sequential", "replacement")


def random_shift(images, max_shift: int, rng: np.random.Generator, padded=None) -> np.ndarray:
    """Move each image (B, H, W) by its own random offset (dy, dx), each in [-max_shift, max_shift]; pixels
    moved in from outside are 0 (background). Vectorised: one gather from a sliding-window view.

    `padded`: optional scratch array (B, H+2s, W+2s) of the images' dtype whose border is 0 (only its centre is
    written, so the border stays 0): reusing one across batches halves the cost (no fresh pages each time).
    """
    if not isinstance(max_shift, (int, np.integer)) or isinstance(max_shift, bool) or max_shift < 0:
        raise ConfigError(f"max_shift must be a non-negative integer number of pixels, got {max_shift!r}")
    if np.ndim(images) != 3:
        raise DataError(f"random_shift needs a batch of images (B, H, W), got shape {np.shape(images)}")
    b, h, w = images.shape
    s = int(max_shift)
    if padded is None or padded.shape != (b, h + 2 * s, w + 2 * s) or padded.dtype != images.dtype:
        padded = np.zeros((b, h + 2 * s, w + 2 * s), dtype=images.dtype)    # (B, H+2s, W+2s), zero border
    padded[:, s:s + h, s:s + w] = images
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))  # (B, 2s+1, 2s+1, H, W)
    oy, ox = rng.integers(0, 2 * s + 1, size=(2, b))                         # window corner = offset + s
    return windows[np.arange(b), oy, ox]                                     # (B, H, W), a new array


def batches(
    images,
    labels,
    batch_size: int,
    *,
    order: str = "shuffle",
    rng: np.random.Generator | int | None = None,
    scheme: str = "unit",
    dtype=np.float32,
    steps: int | None = None,
    drop_last: bool = False,
    shift: int = 0,
    rotate: float = 0.0,
    scale: float = 0.0,
    translate: float = 0.0,
    flip: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x float [B, *image shape] in `scheme`, y int64 [B]) mini-batches (images keep their shape).

    order: "shuffle" (a fresh permutation each epoch), "sequential" (slices in order), or "replacement"
    (B indices drawn with replacement per step; needs `steps`). `steps=None` is one epoch; a number gives
    exactly that many batches, starting new epochs as needed. Never copies the whole data set: each batch
    is one `np.take` plus one scaling into float.
    shift > 0: data augmentation, each image of a batch moved by its own random offset of up to `shift`
    pixels in each direction (see `random_shift`), drawn from `rng` after the batch's indices.
    rotate / scale / translate > 0: random affine augmentation (`digitlab.augment.random_affine`), each image
    turned by up to +-rotate degrees, zoomed by 1 +- scale and moved by up to +-translate pixels (sub-pixel,
    bilinear), applied to the 0..255 pixels after `shift` and before normalising (so the background stays the
    normalised 0 pixel); its 4 numbers per image are drawn from `rng` after the shift's. All zero: no draws.
    flip: each image mirrored left-right with probability 1/2 (`digitlab.augment.random_flip`), applied last,
    before normalising; its one number per image is drawn from `rng` after the affine's. False: no draws.
    """
    x = np.asarray(images)
    n = len(x)
    side = x.shape[1] if x.ndim == 3 and x.shape[1] == x.shape[2] else 0
    y = np.asarray(labels)
    if len(y) != n:
        raise DataError(f"batches: {n} images but {len(y)} labels")
    if n == 0:
        raise DataError("batches: empty data set")
    if order not in ORDERS:
        raise ConfigError(f"unknown batch order {order!r} (choose from {', '.join(ORDERS)})")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 0):
        raise ConfigError(f"steps must be a non-negative integer, got {steps!r}")
    if order == "replacement" and steps is None:
        raise ConfigError("order='replacement' needs steps= (there is no natural epoch end)")
    if not isinstance(shift, (int, np.integer)) or shift < 0:
        raise ConfigError(f"shift must be a non-negative integer number of pixels, got {shift!r}")
    check_limits(rotate, scale, translate)
    if not isinstance(flip, (bool, np.bool_)):
        raise ConfigError(f"flip must be True or False, got {flip!r}")
    warping = bool(rotate or scale or translate)
    augmenting = bool(shift or warping or flip)
    if augmenting and not side:
        what = f"shift={shift}" if shift else "affine augmentation" if warping else "flip"
        raise ConfigError(f"{what} needs square images, got images of shape {tuple(np.shape(images)[1:])}")
    if shift and shift >= side:
        raise ConfigError(f"shift={shift} must be smaller than the image side ({side} pixels)")
    if order != "sequential" or augmenting:
        if rng is None:
            raise ConfigError(f"order={order!r}{' with augmentation' if augmenting else ''} needs rng= "
                              f"(a numpy.random.Generator or an int seed)")
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
    y64 = y.astype(np.int64, copy=False)  # (N,) labels once, ~8 bytes per sample
    from_unit = x.dtype.kind == "f"
    if from_unit and scheme != "none":
        _check_unit(x)  # once, not per batch
    _scale_into(x[:1], scheme, dtype, from_unit)  # validates the scheme before the loop

    pads: dict = {}  # batch size -> zero-bordered scratch for random_shift

    def scaled(xb):  # (B, H, W) pixels -> (B, H, W) float in `scheme`, moved first when augmenting
        if shift:
            pad = pads.get(len(xb))
            if pad is None:
                pad = pads[len(xb)] = np.zeros((len(xb), side + 2 * shift, side + 2 * shift), x.dtype)
            xb = random_shift(xb, shift, rng, pad)
        if warping:  # (B, side, side) float pixels on the input's scale, background 0
            xb = random_affine(xb, rng, rotate=rotate, scale=scale, translate=translate)
        if flip:  # a new array: a sequential batch is a view of the caller's images
            xb = random_flip(xb, rng)
        return _scale_into(xb, scheme, dtype, from_unit)

    def one(idx):  # (B,) indices -> (B, H, W) float, (B,) int64
        return scaled(np.take(x, idx, axis=0)), np.take(y64, idx)

    bs = int(batch_size)
    per_epoch = n // bs if drop_last else -(-n // bs)
    if per_epoch == 0:
        raise ConfigError(f"batch_size {bs} > {n} samples with drop_last=True yields no batches")
    total = per_epoch if steps is None else int(steps)
    if order == "replacement":
        for _ in range(total):
            yield one(rng.integers(0, n, size=bs))
        return
    done = 0
    while done < total:
        perm = rng.permutation(n) if order == "shuffle" else None  # (N,) int64
        for b in range(per_epoch):
            if done >= total:
                return
            lo, hi = b * bs, min((b + 1) * bs, n)
            if perm is None:  # sequential: slicing is a view, no gather needed
                yield scaled(x[lo:hi]), y64[lo:hi]
            else:
                yield one(perm[lo:hi])
            done += 1
