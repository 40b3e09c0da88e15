"""Affine augmentation: exact identities, translations and rotations against NumPy, its hook in `batches`,
determinism and bit-identical resume through `train_recipe`, and `digitlab plot augment`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digitlab.augment import draw_params, random_affine, warp
from digitlab.data.dataset import batches, load, normalize
from digitlab.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits():
    images, labels = load("mnist-sample", "train", quiet=True)
    return images[:64], labels[:64]


def _still(n):
    return np.zeros(n), np.ones(n), np.zeros((n, 2))


def test_identity_warp_is_exact(digits):
    x = digits[0]
    np.testing.assert_array_equal(warp(x, *_still(len(x))), x.astype(np.float32))
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(random_affine(x, rng), x.astype(np.float32))  # all limits 0


@pytest.mark.parametrize("dy,dx", [(1, 0), (0, 1), (-1, 0), (0, -2), (3, -1)])
def test_whole_pixel_translation_is_a_roll_with_zero_fill(digits, dy, dx):
    x = digits[0]
    n = len(x)
    out = warp(x, np.zeros(n), np.ones(n), np.tile([float(dy), float(dx)], (n, 1)))
    want = np.zeros_like(x)
    h, w = x.shape[1:]
    want[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    np.testing.assert_array_equal(out, want.astype(np.float32))


def test_quarter_turn_is_rot90_and_half_turn_is_rot180(digits):
    x = digits[0]
    n = len(x)
    quarter = warp(x, np.full(n, math.pi / 2), np.ones(n), np.zeros((n, 2)))
    np.testing.assert_allclose(quarter, np.rot90(x, 1, axes=(1, 2)), atol=1e-3)  # counter-clockwise
    half = warp(x, np.full(n, math.pi), np.ones(n), np.zeros((n, 2)))
    np.testing.assert_allclose(half, x[:, ::-1, ::-1], atol=1e-3)


def test_half_pixel_shift_averages_neighbours():
    x = np.zeros((1, 6, 6), np.uint8)
    x[0, 2, 2] = 200
    out = warp(x, np.zeros(1), np.ones(1), np.array([[0.0, 0.5]]))
    assert out[0, 2, 2] == pytest.approx(100) and out[0, 2, 3] == pytest.approx(100)
    assert out.sum() == pytest.approx(200)


def test_zoom_about_the_centre():
    x = np.zeros((1, 28, 28), np.float32)
    x[0, 10, 10] = 1.0  # (-3.5, -3.5) from the centre (13.5, 13.5)
    out = warp(x, np.zeros(1), np.full(1, 2.0), np.zeros((2, 2))[:1])
    # zoom 2: output pixel p samples c + (p - c) / 2, so the dot lands on c + 2 (10 - c) = 6.5 as a tent
    # 0.25, 0.75, 0.75, 0.25 over pixels 5..8 in each axis: 4 times the ink (the area doubles in each axis)
    tent = np.array([0.25, 0.75, 0.75, 0.25])
    want = np.zeros((28, 28))
    want[5:9, 5:9] = np.outer(tent, tent)
    np.testing.assert_allclose(out[0], want, atol=1e-6)


def _reference_warp(img, angle, zoom, dy, dx, fill):
    """One image, pixel by pixel, in float64: output p reads the source c + R(-angle) (p - c - t) / zoom, where
    rows point down (so R is the screen's counter-clockwise turn), interpolated between its four neighbours."""
    h, w = img.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    out = np.empty((h, w))
    for i in range(h):
        for j in range(w):
            u, v = i - cy - dy, j - cx - dx
            sy = (math.cos(angle) * u + math.sin(angle) * v) / zoom + cy
            sx = (math.cos(angle) * v - math.sin(angle) * u) / zoom + cx
            y0, x0 = math.floor(sy), math.floor(sx)
            value = 0.0
            for yy, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
                for xx, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
                    inside = 0 <= yy < h and 0 <= xx < w
                    value += wy * wx * (img[yy, xx] if inside else fill)
            out[i, j] = value
    return out


@settings(max_examples=30, deadline=None)
@given(h=st.integers(3, 9), w=st.integers(3, 9), angle=st.floats(-math.pi, math.pi), zoom=st.floats(0.5, 2.0),
       dy=st.floats(-4, 4), dx=st.floats(-4, 4), fill=st.sampled_from([0.0, -0.5]), seed=st.integers(0, 1000))
def test_warp_matches_a_pixel_by_pixel_reference(h, w, angle, zoom, dy, dx, fill, seed):
    img = np.random.default_rng(seed).random((2, h, w))  # float64, non-square: rows and columns not swapped
    got = warp(img, np.array([angle, 0.0]), np.array([zoom, 1.0]), np.array([[dy, dx], [0.0, 0.0]]), fill=fill)
    np.testing.assert_allclose(got[0], _reference_warp(img[0], angle, zoom, dy, dx, fill), atol=1e-9)
    np.testing.assert_array_equal(got[1], img[1])


def test_fill_and_channel_axis_and_float64():
    x = np.full((2, 28, 28, 1), 0.5)
    out = warp(x, np.zeros(2), np.ones(2), np.array([[30.0, 0.0], [0.0, -2.0]]), fill=-0.25)
    assert out.shape == (2, 28, 28, 1) and out.dtype == np.float64
    assert (out[0] == -0.25).all()
    assert (out[1, :, -2:] == -0.25).all() and (out[1, :, :-2] == 0.5).all()


@settings(max_examples=25, deadline=None)
@given(rotate=st.floats(0, 20), scale=st.floats(0, 0.15), translate=st.floats(0, 2), seed=st.integers(0, 2**32))
def test_random_affine_keeps_values_in_range_mass_and_determinism(digits, rotate, scale, translate, seed):
    x = digits[0][:16]
    a = random_affine(x, np.random.default_rng(seed), rotate=rotate, scale=scale, translate=translate)
    b = random_affine(x, np.random.default_rng(seed), rotate=rotate, scale=scale, translate=translate)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 255.0001
    # bilinear resampling keeps the ink up to the zoom's area factor (1 +- 15 %) and a little blur
    ratio = a.sum(axis=(1, 2)) / x.sum(axis=(1, 2))
    assert np.all((ratio > 0.7) & (ratio < 1.4))


def test_random_affine_changes_images_and_consumes_four_draws_per_image(digits):
    x = digits[0][:10]
    rng = np.random.default_rng(1)
    out = random_affine(x, rng, rotate=12, scale=0.1, translate=2)
    assert all(not np.array_equal(o, i) for o, i in zip(out, x.astype(np.float32)))
    after = np.random.default_rng(1)
    after.random((4, 10))
    assert rng.random() == after.random()


def test_drawn_parameters_fill_their_limits_in_radians_fractions_and_pixels():
    angle, zoom, shift = draw_params(np.random.default_rng(0), 2000, rotate=12.0, scale=0.1, translate=2.0)
    for values, limit in ((angle, math.radians(12.0)), (zoom - 1.0, 0.1), (shift, 2.0)):
        assert np.abs(values).max() <= limit and np.abs(values).max() > 0.99 * limit
        assert values.min() < 0 < values.max()


def test_bad_arguments_are_clear_errors(digits):
    rng = np.random.default_rng(0)
    for kwargs in ({"rotate": -1}, {"rotate": 181}, {"scale": 1.0}, {"translate": math.nan}, {"rotate": "12"},
                   {"scale": True}, {"translate": math.inf}):
        with pytest.raises(ConfigError, match="augmentation"):
            random_affine(digits[0], rng, **kwargs)
    with pytest.raises(DataError, match="batch of images"):
        warp(np.zeros((28, 28)), *_still(1))


# ------------------------------------------------------------------------------------------ batches hook
AUG = {"rotate": 10.0, "scale": 0.1, "translate": 1.5}


def _all(images, labels, seed, **kwargs):
    return list(batches(images, labels, 16, rng=np.random.default_rng(seed), scheme="standard", **kwargs))


def test_batches_augment_reproducibly_with_the_normalised_background(digits):
    images, labels = digits
    a, b = _all(images, labels, 3, **AUG), _all(images, labels, 3, **AUG)
    plain = _all(images, labels, 3)
    assert all(np.array_equal(xa, xb) and np.array_equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert all(np.array_equal(ya, yp) for (_, ya), (_, yp) in zip(a, plain))  # same order as without
    assert not any(np.array_equal(xa, xp) for (xa, _), (xp, _) in zip(a, plain))
    zero = normalize(np.zeros((1, 28, 28), np.uint8), "standard")[0, 0]  # -0.424
    xa = a[0][0]
    assert xa.min() == pytest.approx(zero) and (xa == zero).mean() > 0.5  # background stays the 0 pixel
    assert xa.dtype == np.float32 and xa.shape == (16, 28, 28)


def test_zero_limits_change_nothing_and_draw_nothing(digits):
    images, labels = digits
    plain = _all(images, labels, 5, shift=1)
    same = _all(images, labels, 5, shift=1, rotate=0.0, scale=0.0, translate=0.0)
    assert all(np.array_equal(p[0], s[0]) for p, s in zip(plain, same))


@pytest.mark.parametrize("one", [{"rotate": 5.0}, {"scale": 0.05}, {"translate": 0.5}])
def test_each_limit_alone_augments(digits, one):
    images, labels = digits
    plain, moved = _all(images, labels, 5), _all(images, labels, 5, **one)
    assert not any(np.array_equal(p[0], m[0]) for p, m in zip(plain, moved))


def _mirrored(images, mask):  # (B, H, W), (B,) bool -> each image mirrored left-right where mask is set
    return np.where(mask[:, None, None], images[:, :, ::-1], images)


def test_flip_mirrors_about_half_of_the_images_exactly_as_the_seed_draws(digits):
    images, labels = digits
    plain, flipped = _all(images, labels, 4), _all(images, labels, 4, flip=True)
    replay = np.random.default_rng(4)
    replay.permutation(len(images))  # the epoch's order comes first, then one uniform per image per batch
    masks = [replay.random(len(xp)) < 0.5 for xp, _ in plain]
    for (xp, yp), (xf, yf), mask in zip(plain, flipped, masks):
        assert np.array_equal(yp, yf)  # same order as without
        np.testing.assert_array_equal(xf, _mirrored(xp, mask))
        assert all(not np.array_equal(a, b) for a, b in zip(xp[mask], xf[mask]))  # no digit is its own mirror
    share = np.concatenate(masks).mean()
    assert 0.3 < share < 0.7 and share == np.mean([np.any(xf != xp, axis=(1, 2)) for (xp, _), (xf, _)
                                                   in zip(plain, flipped)])
    again = _all(images, labels, 4, flip=True)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(flipped, again))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(flipped, _all(images, labels, 5, flip=True)))


def test_flip_draws_after_shift_and_affine_and_is_applied_last(digits):
    images, labels = digits
    moved, both = _all(images, labels, 6, shift=1, **AUG), _all(images, labels, 6, shift=1, **AUG, flip=True)
    replay = np.random.default_rng(6)
    replay.permutation(len(images))
    replay.integers(0, 3, size=(2, 16))  # the first batch's shift offsets, then its affine (4, B) uniforms
    replay.random((4, 16))
    mask = replay.random(16) < 0.5
    np.testing.assert_array_equal(both[0][0], _mirrored(moved[0][0], mask))  # later batches' streams differ
    same = _all(images, labels, 6, shift=1, **AUG, flip=False)  # no flip: no draws, the stream is unchanged
    assert all(np.array_equal(m[0], s[0]) for m, s in zip(moved, same))


def test_sequential_flip_leaves_the_callers_images_alone(digits):
    images = digits[0][:8].copy()
    before = images.copy()
    (x, _), = batches(images, np.zeros(8), 8, order="sequential", rng=1, scheme="raw", flip=True)
    assert np.array_equal(images, before) and not np.array_equal(x, before)


def test_batches_refuse_bad_augmentation(digits):
    images, labels = digits
    with pytest.raises(ConfigError, match="rotate"):
        next(batches(images, labels, 8, rng=0, rotate=-5))
    with pytest.raises(ConfigError, match="needs rng"):
        next(batches(images, labels, 8, order="sequential", scale=0.1))
    with pytest.raises(ConfigError, match="square"):
        next(batches(np.zeros((4, 10, 20), np.uint8), np.zeros(4), 2, rng=0, translate=1.0))
    with pytest.raises(ConfigError, match="flip must be True or False"):
        next(batches(images, labels, 8, rng=0, flip="yes"))
    with pytest.raises(ConfigError, match="needs rng"):
        next(batches(images, labels, 8, order="sequential", flip=True))


# ------------------------------------------------------------------------------------------ training
TINY = {"dataset": "mnist-sample", "hidden": (16,), "epochs": 2, "steps": 12, "batch_size": 500,
        "optimizer": "adam", "lr": 0.003, "schedule": "onecycle", "seed": 3, "normalization": "standard",
        "shift": 1, "rotate": 12.0, "scale": 0.1, "translate": 2.0, "label_smoothing": 0.1}


def _weights(model):
    return {k: v.copy() for k, v in model.net.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_augmented_training_is_deterministic_and_resumes_bit_identically(tmp_path):
    from digitlab.train import TrainingInterrupted, train_recipe

    def run(name, **kw):
        return train_recipe("mlp", {**TINY, **kw}, out_dir=tmp_path / name, quiet=True, report=False)

    straight, again = run("a"), run("b")
    assert _same(_weights(straight.model), _weights(again.model))
    assert not _same(_weights(straight.model), _weights(run("c", rotate=0.0, scale=0.0, translate=0.0).model))

    def stop(state, model):
        if state.step == 7:  # mid-epoch: 20 steps per epoch of 10,000 images at 500
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train_recipe("mlp", TINY, out_dir=tmp_path / "cut", quiet=True, report=False, callback=stop)
    resumed = train_recipe(None, out_dir=tmp_path / "cut", quiet=True, resume=True, report=False)
    assert _same(_weights(straight.model), _weights(resumed.model))
    assert resumed.history[-1]["train_loss"] == straight.history[-1]["train_loss"]


def test_recipe_augmentation_and_smoothing_reach_the_training_step(tmp_path, monkeypatch):
    import digitlab.train as train_mod

    seen = []
    real = train_mod.batches

    def spy(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("shift", "rotate", "scale", "translate", "flip")})
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "batches", spy)
    quick = {**TINY, "steps": 3}
    smooth = train_mod.train_recipe("mlp", quick, out_dir=tmp_path / "s", quiet=True, report=False)
    assert seen == [{"shift": 1, "rotate": 12.0, "scale": 0.1, "translate": 2.0, "flip": False}]
    plain = train_mod.train_recipe("mlp", {**quick, "label_smoothing": 0.0}, out_dir=tmp_path / "p", quiet=True,
                                   report=False)
    assert not _same(_weights(smooth.model), _weights(plain.model))  # the smoothed loss is what trains


# ------------------------------------------------------------------------------------------ plot
def test_augment_grid_and_png(tmp_path, digits):
    from PIL import Image

    from digitlab.plots import augment_grid, plot_augment

    x = digits[0][:6]
    grid = augment_grid(x, copies=3, seed=0, **AUG)
    assert grid.shape == (6, 4, 28, 28)
    np.testing.assert_array_equal(grid[:, 0], x)
    assert not any(np.array_equal(grid[i, k], grid[i, 0]) for i in range(6) for k in range(1, 4))

    def centre(img):  # (28, 28) -> centre of mass (row, col)
        ys, xs = np.mgrid[:28, :28]
        return np.array([(ys * img).sum(), (xs * img).sum()]) / img.sum()

    for i in range(6):
        for k in range(1, 4):  # moved by at most ~2 px translation plus what rotation/zoom do off-centre
            assert np.abs(centre(grid[i, k]) - centre(grid[i, 0])).max() < 4.0
    out = plot_augment(x, tmp_path / "aug.png", copies=3, **AUG)
    with Image.open(out.path) as png:
        assert png.format == "PNG" and png.size == (out.width, out.height)
    assert not list(tmp_path.glob("*.tmp*"))


def test_cli_plot_augment(tmp_path, capsys):
    import json

    from digitlab.cli import main

    out = tmp_path / "a.png"
    assert main(["plot", "augment", "mnist-sample", "--n", "3", "--copies", "2", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(out) and out.is_file()
    assert main(["plot", "augment", "mnist-sample", "--rotate", "400", "--out", str(tmp_path / "b.png")]) != 0
    assert "rotate" in capsys.readouterr().err and not (tmp_path / "b.png").exists()


def test_augment_grid_shows_flips(digits):
    from digitlab.plots import augment_grid

    x = digits[0][:6]
    grid = augment_grid(x, copies=4, seed=0, flip=True)
    mirrored = np.array([[np.array_equal(c, o[:, ::-1]) for c in g[1:]] for g, o in zip(grid, x)])  # (6, 4)
    kept = np.array([[np.array_equal(c, o) for c in g[1:]] for g, o in zip(grid, x)])
    assert (mirrored ^ kept).all() and 0 < mirrored.sum() < mirrored.size


def test_cli_plot_augment_takes_the_recipes_table_for_the_data_set(tmp_path, monkeypatch):
    from digitlab import plots
    from digitlab.cli import main

    seen, real = [], plots.plot_augment
    monkeypatch.setattr(plots, "plot_augment", lambda images, out, **kw: seen.append(kw) or real(images, out, **kw))
    path = tmp_path / "mine.toml"
    path.write_text("hidden = [10]\nrotate = 9.0\n[datasets.mnist-sample]\nrotate = 0.0\nflip = true\n")
    for k, flags in enumerate([[], ["--no-flip", "--rotate", "3"]]):
        out = tmp_path / f"{k}.png"
        assert main(["plot", "augment", "mnist-sample", "--recipe", str(path), "--n", "2", *flags, "--out",
                     str(out)]) == 0 and out.is_file()
    assert [(kw["rotate"], kw["flip"]) for kw in seen] == [(0.0, True), (3.0, False)]
