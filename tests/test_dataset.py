"""Dataset API: real MNIST, the bundled sample, normalisation, splits and the batch iterator."""

from __future__ import annotations

import gzip
import tracemalloc

import numpy as np
import pytest

from digitlab.data import REGISTRY, load, load_dataset
from digitlab.data.dataset import (
    MNIST_MEAN,
    MNIST_STD,
    batches,
    normalize,
    random_shift,
    sklearn_train_test_split_indices,
    train_val_split,
)
from digitlab.errors import ConfigError, DataError

# Per-class counts of the official MNIST files (a property of the data set, see the MNIST page).
MNIST_TRAIN_PER_CLASS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_PER_CLASS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_dataset("mnist", data_dir=mnist_dir)


@pytest.fixture(scope="module")
def sample():
    return load_dataset("mnist-sample")


def test_real_mnist(mnist, mnist_dir):
    assert mnist.name == "mnist" and mnist.notice is None and mnist.how == "data_dir"
    assert mnist.source == mnist_dir
    assert mnist.checksums == dict(REGISTRY["mnist"].checksums)
    assert mnist.train.images.shape == (60000, 28, 28) and mnist.train.images.dtype == np.uint8
    assert mnist.test.images.shape == (10000, 28, 28) and mnist.test.labels.dtype == np.uint8
    assert np.bincount(mnist.train.labels).tolist() == MNIST_TRAIN_PER_CLASS
    assert np.bincount(mnist.test.labels).tolist() == MNIST_TEST_PER_CLASS
    assert mnist.train.labels[0] == 5 and mnist.test.labels[0] == 7  # the famous first digits
    assert mnist.class_names == [str(d) for d in range(10)]
    assert mnist.train.images.max() == 255 and mnist.train.images[:, 0, 0].max() == 0  # ink on black borders


def test_load_splits(mnist_dir, mnist):
    x, y = load("mnist", split="all", data_dir=mnist_dir)
    assert x.shape == (70000, 28, 28) and y.shape == (70000,)
    np.testing.assert_array_equal(y[:60000], mnist.train.labels)
    np.testing.assert_array_equal(x[60000:], mnist.test.images)
    with pytest.raises(ConfigError, match="unknown split 'val'"):
        load("mnist", split="val", data_dir=mnist_dir)


def test_sample_is_stratified_subset_of_mnist(sample, mnist):
    assert sample.name == "mnist-sample" and sample.how == "bundled"
    assert np.bincount(sample.train.labels).tolist() == [1000] * 10
    assert np.bincount(sample.test.labels).tolist() == [200] * 10
    for part in ("train", "test"):
        full, sub = getattr(mnist, part), getattr(sample, part)
        index = {img.tobytes(): lab for img, lab in zip(full.images.reshape(len(full.images), -1), full.labels)}
        flat = sub.images.reshape(len(sub.images), -1)
        assert all(index.get(img.tobytes()) == lab for img, lab in zip(flat, sub.labels))


def test_sample_files_are_small_and_licensed():
    folder = REGISTRY["mnist-sample"].bundled
    size = sum(p.stat().st_size for p in folder.glob("*.gz"))
    assert 1_000_000 < size < 2_500_000
    text = (folder / "LICENSE").read_text()
    assert "LeCun" in text and "CC BY-SA 3.0" in text
    legal = (folder / "LICENSE.cc-by-sa-3.0.txt").read_text()
    assert legal.startswith("Creative Commons Legal Code\n\nAttribution-ShareAlike 3.0 Unported")


# ---------------------------------------------------------------------------------------------- normalize


def test_normalize_schemes(sample):
    x = sample.train.images[:100]
    unit = normalize(x)
    assert unit.shape == (100, 28, 28) and unit.dtype == np.float32   # images keep their shape
    np.testing.assert_array_equal(unit, x.astype(np.float32) / np.float32(255))
    raw = normalize(x.reshape(100, 784), "raw")
    np.testing.assert_array_equal(raw, x.reshape(100, 784).astype(np.float32))
    std = normalize(x, "standard", dtype=np.float64)
    assert std.dtype == np.float64
    np.testing.assert_allclose(std, (x / 255.0 - MNIST_MEAN) / MNIST_STD, rtol=1e-12)


def test_standard_scheme_centres_real_data(mnist):
    z = normalize(mnist.train.images[:20000], "standard")
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1.0) < 0.01


@pytest.mark.parametrize("scheme", ["unit", "raw", "standard"])
def test_normalize_accepts_unit_floats(sample, scheme):
    x = sample.test.images[:50]
    from_float = normalize(x.astype(np.float64) / 255.0, scheme)
    np.testing.assert_allclose(from_float, normalize(x, scheme), rtol=1e-6, atol=1e-5)


def test_normalize_rejects_bad_input():
    with pytest.raises(DataError, match=r"float images must be finite and on the \[0, 1\] scale, got values in \[0, 255\]"):
        normalize(np.linspace(0, 255, 784 * 2).reshape(2, 784))
    with pytest.raises(DataError, match="non-finite"):
        normalize(np.full((1, 784), np.nan))
    with pytest.raises(DataError, match=r"images must be a batch \[N, ...\] .*got shape \(10,\)"):
        normalize(np.zeros(10, np.uint8))
    with pytest.raises(DataError, match="got dtype int32"):
        normalize(np.zeros((1, 784), np.int32))
    with pytest.raises(ConfigError, match="unknown normalization scheme 'zscore'"):
        normalize(np.zeros((1, 784), np.uint8), "zscore")


# -------------------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("stratify", [False, True])
def test_train_val_split_is_a_deterministic_partition(sample, stratify):
    y = sample.train.labels
    tr, va = train_val_split(y, 0.1, seed=3, stratify=stratify)
    tr2, va2 = train_val_split(y, 1000, seed=3, stratify=stratify)
    np.testing.assert_array_equal(va, va2)  # 0.1 of 10,000 == 1,000
    np.testing.assert_array_equal(tr, tr2)
    assert len(va) == 1000 and len(tr) == 9000
    assert np.intersect1d(tr, va).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(y)))
    other = train_val_split(y, 0.1, seed=4, stratify=stratify)[1]
    assert not np.array_equal(va, other)


def test_stratified_split_keeps_class_shares():
    y = np.repeat(np.arange(10), [50, 150, 100, 100, 100, 100, 100, 100, 100, 100]).astype(np.uint8)
    _, va = train_val_split(y, 0.2, seed=0, stratify=True)
    assert np.bincount(y[va], minlength=10).tolist() == [10, 30, 20, 20, 20, 20, 20, 20, 20, 20]
    _, va = train_val_split(y, 7, seed=0, stratify=True)  # shares round: largest remainders get the extras
    counts = np.bincount(y[va], minlength=10)
    assert counts.sum() == 7 and counts.max() == 1


@pytest.mark.parametrize("bad", [0, 100, 1.0, 0.0, -0.1, True, "10"])
def test_train_val_split_rejects_bad_sizes(bad):
    with pytest.raises(ConfigError):
        train_val_split(np.zeros(100), bad, seed=0)


def test_sklearn_split_matches_documented_example():
    # scikit-learn's own docstring example: X = np.arange(10).reshape((5, 2)), test_size=0.33, random_state=42
    # gives y_train = [2, 0, 3] and y_test = [1, 4].
    tr, te = sklearn_train_test_split_indices(5, test_size=0.33, random_state=42)
    assert tr.tolist() == [2, 0, 3] and te.tolist() == [1, 4]


def test_sklearn_split_shape_of_openml_mnist():
    tr, te = sklearn_train_test_split_indices(70000)
    assert len(te) == 14000 and len(tr) == 56000
    perm = np.random.RandomState(42).permutation(70000)
    np.testing.assert_array_equal(np.concatenate([te, tr]), perm)
    tr, te = sklearn_train_test_split_indices(10, test_size=3, random_state=0)
    assert len(te) == 3 and len(tr) == 7


def test_sklearn_split_against_scikit_learn():
    from sklearn import model_selection as sk  # a dev extra: the cross-check always runs in make test
    idx = np.arange(1001)
    for test_size, seed in [(0.2, 42), (0.25, 0), (100, 7)]:
        tr_ref, te_ref = sk.train_test_split(idx, test_size=test_size, random_state=seed)
        tr, te = sklearn_train_test_split_indices(1001, test_size=test_size, random_state=seed)
        np.testing.assert_array_equal(tr, tr_ref)
        np.testing.assert_array_equal(te, te_ref)


# ------------------------------------------------------------------------------------------------- batches


def toy(n=103):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), np.arange(n)


def test_shuffle_covers_every_sample_once_per_epoch():
    x, ids = toy()
    seen = []
    for xb, yb in batches(x, ids, 10, rng=np.random.default_rng(1)):
        assert xb.dtype == np.float32 and yb.dtype == np.int64 and xb.shape == (len(yb), 28, 28)
        np.testing.assert_array_equal(xb, normalize(x[yb]))
        seen.append(yb)
    assert [len(b) for b in seen] == [10] * 10 + [3]
    order = np.concatenate(seen)
    assert sorted(order.tolist()) == list(range(103)) and order.tolist() != list(range(103))


def test_shuffle_is_reproducible_and_differs_per_epoch():
    x, ids = toy()
    a = [yb for _, yb in batches(x, ids, 16, rng=np.random.default_rng(5), steps=14)]
    b = [yb for _, yb in batches(x, ids, 16, rng=5, steps=14)]
    assert all(np.array_equal(p, q) for p, q in zip(a, b)) and len(a) == 14
    epoch1, epoch2 = np.concatenate(a[:7]), np.concatenate(a[7:14])
    assert sorted(epoch1.tolist()) == sorted(epoch2.tolist()) == list(range(103))
    assert not np.array_equal(epoch1, epoch2)


def test_sequential_and_drop_last():
    x, ids = toy()
    seq = list(batches(x, ids, 25, order="sequential", scheme="standard"))
    assert np.concatenate([y for _, y in seq]).tolist() == list(range(103))
    np.testing.assert_array_equal(seq[1][0], normalize(x[25:50], "standard"))
    dropped = list(batches(x, ids, 25, order="sequential", drop_last=True))
    assert [len(y) for _, y in dropped] == [25, 25, 25, 25]


def test_replacement_sampling():
    x, ids = toy()
    got = [yb for _, yb in batches(x, ids, 64, order="replacement", rng=2, steps=5)]
    assert len(got) == 5 and all(len(b) == 64 for b in got)
    assert len(np.unique(np.concatenate(got))) < 5 * 64  # with replacement: repeats at this size
    with pytest.raises(ConfigError, match="needs steps="):
        next(batches(x, ids, 64, order="replacement", rng=2))


def test_batches_accept_unit_float_and_flat_images():
    x, ids = toy(20)
    xf = x.reshape(20, 784).astype(np.float32) / 255
    (xb, yb), = batches(xf, ids, 20, order="sequential")
    np.testing.assert_allclose(xb, normalize(x).reshape(20, 784), atol=1e-6)


def test_batches_errors():
    x, ids = toy(10)
    with pytest.raises(ConfigError, match="needs rng="):
        next(batches(x, ids, 4))
    with pytest.raises(DataError, match="10 images but 9 labels"):
        next(batches(x, ids[:9], 4, order="sequential"))
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        next(batches(x, ids, 0, order="sequential"))
    with pytest.raises(DataError, match=r"\[0, 1\] scale"):
        next(batches(x.astype(np.float32), ids, 4, order="sequential"))


def _shifted_by_hand(image, dy, dx):
    """image moved dy rows down and dx columns right, zeros where nothing moved in (a loop-free reference)."""
    h, w = image.shape
    out = np.zeros_like(image)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h - max(dy, 0),
                                                                      max(-dx, 0):w - max(dx, 0)]
    return out


@pytest.mark.parametrize("s", [1, 2, 3])
def test_random_shift_moves_each_image_by_its_own_offset(sample, s):
    images = sample.train.images[:600]
    moved = random_shift(images, s, np.random.default_rng(4))
    assert moved.shape == images.shape and moved.dtype == np.uint8
    offsets, kept = set(), 0
    for before, after in zip(images, moved):
        # exactly one offset in the allowed square explains each moved image
        fits = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)
                if np.array_equal(after, _shifted_by_hand(before, dy, dx))]
        assert len(fits) == 1, fits
        offsets.add(fits[0])
        kept += after.sum(dtype=np.int64) == before.sum(dtype=np.int64)
    assert kept >= 0.9 * len(images)  # most digits keep all their ink (a few touch the border)
    assert len(offsets) == (2 * s + 1) ** 2  # 600 images reach every offset, (0, 0) included
    again = random_shift(images, s, np.random.default_rng(4))
    np.testing.assert_array_equal(again, moved)
    scratch = np.zeros((600, 28 + 2 * s, 28 + 2 * s), np.uint8)  # reused: its border must stay 0
    for _ in range(2):
        np.testing.assert_array_equal(random_shift(images, s, np.random.default_rng(4), scratch), moved)
    np.testing.assert_array_equal(random_shift(images[::-1], s, np.random.default_rng(4), scratch),
                                  random_shift(images[::-1], s, np.random.default_rng(4)))


def test_batches_with_shift_augment_and_stay_reproducible(sample):
    x, y = sample.train.images[:500], sample.train.labels[:500]
    plain = list(batches(x, y, 100, rng=3))
    shifted = list(batches(x, y, 100, rng=3, shift=1))
    for (xp_, yp), (xs, ys) in zip(plain, shifted):
        np.testing.assert_array_equal(yp, ys)  # the shifts are drawn after the order: same batches
        changed = np.any(xp_ != xs, axis=(1, 2)).mean()
        assert 0.75 < changed < 1.0  # 8 of 9 offsets move an image
        assert np.isclose(xs.sum(axis=(1, 2)), xp_.sum(axis=(1, 2)), rtol=1e-5).mean() >= 0.9  # moved, not altered
    again = list(batches(x, y, 100, rng=3, shift=1))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(shifted, again))
    seq = list(batches(x, y, 100, order="sequential", rng=3, shift=2))
    assert np.concatenate([yb for _, yb in seq]).tolist() == y.tolist()
    with pytest.raises(ConfigError, match="needs rng="):
        next(batches(x, y, 100, order="sequential", shift=1))
    with pytest.raises(ConfigError, match="shift must be a non-negative integer"):
        next(batches(x, y, 100, rng=3, shift=-1))
    with pytest.raises(ConfigError, match=r"shift=28 must be smaller than the image side \(28 pixels\)"):
        next(batches(x, y, 100, rng=3, shift=28))
    with pytest.raises(ConfigError, match=r"shift=1 needs square images, got images of shape \(28, 20\)"):
        next(batches(x[:, :, :20], y, 100, rng=3, shift=1))


def test_random_shift_rejects_bad_arguments(sample):
    images = sample.train.images[:4]
    for bad in (1.5, -1, True):
        with pytest.raises(ConfigError, match="max_shift must be a non-negative integer"):
            random_shift(images, bad, np.random.default_rng(0))
    with pytest.raises(DataError, match=r"needs a batch of images \(B, H, W\), got shape \(28, 28\)"):
        random_shift(images[0], 1, np.random.default_rng(0))


def test_batches_never_copy_the_whole_data_set(sample):
    x, y = sample.train  # 10,000 images: a float32 copy would be 31 MB, the uint8 flatten 7.8 MB
    tracemalloc.start()
    try:
        n = sum(len(yb) for _, yb in batches(x, y, 64, rng=0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 10000
    assert peak < 1_000_000  # permutation (80 kB) + int64 labels (80 kB) + a few 64×784 batches


def test_make_sample_rebuilds_the_bundled_files_exactly(tmp_path, mnist_dir, capsys):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("make_sample", REPO / "scripts" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--src", str(mnist_dir), "--out", str(tmp_path), "--compresslevel", "1"]) == 0
    bundled = REGISTRY["mnist-sample"].bundled
    for f in sorted(bundled.glob("*.gz")):  # same content (the bundled copy is gzip level 9)
        assert gzip.decompress((tmp_path / f.name).read_bytes()) == gzip.decompress(f.read_bytes()), f.name
    printed = capsys.readouterr().out
    for digest in REGISTRY["mnist-sample"].checksums.values():
        assert digest in printed
