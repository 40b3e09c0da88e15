"""What train_recipe really does at each step, recomputed by hand from the recipe.

- Optimizer wiring and the learning-rate schedule: a linear softmax model with zero weights, trained full batch
  in float64 on mnist-sample, must follow exactly the trajectory written out below (its own gradient, PyTorch's
  update formulas, lr at step k from the recipe). A wrong momentum, a dropped Nesterov or weight-decay flag, or
  a schedule one step early or late moves the weights by far more than rounding.
- Epoch order: with batch size 1, each step's weight change of a linear model is a multiple of the one image it
  saw, so the order `fit` visits the training images can be read back from the weights.
- Gradient checks on square layers (in == out == batch), where a missing transpose keeps every shape right.
Only public APIs: train_recipe (its callback and history), prepare_data, digitlab.data, digitlab.nn.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import digitlab.data
from digitlab.data.dataset import normalize, train_val_split
from digitlab.recipes import load_recipe
from digitlab.train import prepare_data, train_recipe

STEPS = 6
# Linear softmax model from zero weights, full batch (one step per epoch), float64: every quantity is exact up
# to rounding, and the state after each step is what the callback sees.
LINEAR = {"dataset": "mnist-sample", "hidden": (), "init": ("zeros",), "batch_size": 0, "epochs": STEPS,
          "dtype": "float64", "normalization": "unit", "dropout": 0.0, "shift": 0, "val_size": 0, "seed": 0,
          "schedule": "constant", "warmup_steps": 0}


def _trajectory(tmp_path, overrides, name="run"):
    """Weights after each step (dicts of copies) and the run's result."""
    seen = []

    def record(state, model):
        seen.append((state.step, {k.split(".")[-1]: v.copy() for k, v in model.net.state_dict().items()}))  # W, b

    result = train_recipe("mlp", {**LINEAR, **overrides}, out_dir=tmp_path / name, quiet=True, report=False,
                          callback=record)
    assert [s for s, _ in seen] == list(range(1, len(seen) + 1))
    return [w for _, w in seen], result


def _softmax_ce_grads(W, b, X, y):
    """d mean CE / d (W, b) of softmax(X W + b), written out independently of digitlab.nn."""
    s = X @ W + b  # (N, 784) @ (784, C) + (C,)
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=1, keepdims=True)  # (N, C) softmax
    p[np.arange(len(y)), y] -= 1.0  # (N, C) softmax - Y
    p /= len(y)
    return X.T @ p, p.sum(axis=0)  # (784, C), (C,)


def _reference(lrs, X, y, *, optimizer, momentum=0.9, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
    """The weights after each of len(lrs) steps with PyTorch's update rules (see digitlab.nn.optim's doc)."""
    params = [np.zeros((X.shape[1], 10)), np.zeros(10)]
    slots = [[np.zeros_like(p) for p in params] for _ in range(2)]  # velocity | (m, v)
    out = []
    for t, lr in enumerate(lrs, start=1):
        grads = _softmax_ce_grads(params[0], params[1], X, y)
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g + weight_decay * p if i == 0 else g  # weight decay on weights only, never the bias
            if optimizer == "adam":
                m, v = slots[0][i], slots[1][i]
                m[...] = b1 * m + (1 - b1) * g
                v[...] = b2 * v + (1 - b2) * g * g
                p -= lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
            elif optimizer in ("momentum", "nesterov"):
                v = slots[0][i]
                v[...] = momentum * v + g
                p -= lr * (g + momentum * v if optimizer == "nesterov" else v)
            else:
                p -= lr * g
        out.append({"W": params[0].copy(), "b": params[1].copy()})
    return out


def _expected_lrs(lr, schedule, warmup, total=STEPS):
    """The recipe's documented schedule at steps 0..total-1: "step" is x0.1 after each third of the run."""
    def base(k):
        if schedule == "step":
            return lr * 0.1 ** (k // math.ceil(total / 3))
        if schedule == "cosine":
            return lr * 0.5 * (1 + math.cos(math.pi * k / total))
        return lr

    return [base(k) * min(1.0, (k + 1) / warmup) if warmup else base(k) for k in range(total)]


@pytest.fixture(scope="module")
def sample_train():
    images, labels = digitlab.data.load("mnist-sample", split="train")
    return normalize(images, "unit", np.float64).reshape(len(images), -1), labels.astype(np.int64)


WIRING = {
    "sgd-step-warmup": dict(optimizer="sgd", lr=0.5, schedule="step", warmup_steps=3),
    "sgd-cosine": dict(optimizer="sgd", lr=0.5, schedule="cosine"),
    "sgd-constant-weight-decay": dict(optimizer="sgd", lr=0.5, weight_decay=0.05),
    "momentum-step": dict(optimizer="momentum", momentum=0.8, lr=0.2, schedule="step"),
    "nesterov-warmup-weight-decay": dict(optimizer="nesterov", momentum=0.7, lr=0.2, warmup_steps=2,
                                         weight_decay=0.05),
    "adam-step-warmup": dict(optimizer="adam", lr=0.01, schedule="step", warmup_steps=2),
    "adam-weight-decay": dict(optimizer="adam", lr=0.01, weight_decay=0.5),
}


@pytest.mark.parametrize("case", WIRING)
def test_recipe_optimizer_and_schedule_drive_every_step(tmp_path, sample_train, case):
    cfg = WIRING[case]
    weights, result = _trajectory(tmp_path, cfg)
    assert len(weights) == STEPS
    lrs = _expected_lrs(cfg["lr"], cfg.get("schedule", "constant"), cfg.get("warmup_steps", 0))
    expected = _reference(lrs, *sample_train, optimizer=cfg["optimizer"], momentum=cfg.get("momentum", 0.9),
                          weight_decay=cfg.get("weight_decay", 0.0))
    for k, (got, want) in enumerate(zip(weights, expected)):
        for name in ("W", "b"):
            # atol: at zero weights the sample's balanced classes give bias gradients of pure rounding (~1e-16),
            # which Adam's first step turns into updates of ~1e-10 either way
            np.testing.assert_allclose(got[name], want[name], rtol=1e-7, atol=1e-8,
                                       err_msg=f"{case}: {name} after step {k + 1}")
    # history.csv's lr column: the learning rate of each epoch's last (here: only) step
    assert [row["lr"] for row in result.history] == pytest.approx(lrs, rel=1e-12)


def test_the_reference_tells_the_cases_apart(sample_train):
    """Guard for the test above: each wiring mistake moves the trajectory far beyond its tolerance."""
    X, y = sample_train
    X, y = X[:500], y[:500]
    base = _reference(_expected_lrs(0.2, "step", 0), X, y, optimizer="momentum", momentum=0.8)[-1]["W"]
    variants = [
        _reference(_expected_lrs(0.2, "step", 0), X, y, optimizer="momentum", momentum=0.9),
        _reference(_expected_lrs(0.2, "step", 0), X, y, optimizer="nesterov", momentum=0.8),
        _reference(_expected_lrs(0.2, "step", 0), X, y, optimizer="momentum", momentum=0.8, weight_decay=0.05),
        _reference(_expected_lrs(0.2, "step", 0, total=STEPS + 1)[1:], X, y, optimizer="momentum", momentum=0.8),
    ]
    for other in variants:
        assert np.abs(other[-1]["W"] - base).max() > 1e-4 * np.abs(base).max()


# ------------------------------------------------------------------------------------------------ epoch order
ORDER = {"dataset": "mnist-sample", "hidden": (), "init": ("zeros",), "batch_size": 1, "epochs": 2,
         "dtype": "float64", "normalization": "unit", "dropout": 0.0, "shift": 0, "optimizer": "sgd", "lr": 0.1,
         "schedule": "constant", "order": "shuffle", "val_size": 9_950, "seed": 3}


def _row_index(images):
    """{image bytes: index} of the sample's training images (all 10,000 are distinct)."""
    index = {img.tobytes(): i for i, img in enumerate(images)}
    assert len(index) == len(images)
    return index


def test_prepare_data_splits_train_into_disjoint_complete_train_and_val():
    images, _ = digitlab.data.load("mnist-sample", split="train")
    index = _row_index(images)
    data = prepare_data(load_recipe("mlp", {**ORDER, "val_size": 1_000}))
    train = [index[img.tobytes()] for img in data.train.images]
    val = [index[img.tobytes()] for img in data.val.images]
    assert len(val) == 1_000 and len(train) == 9_000
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == list(range(10_000))
    assert data.test is not None and len(data.test.labels) == 2_000


@pytest.mark.parametrize("size", [1_000, 0.25, 1])
@pytest.mark.parametrize("stratify", [False, True])
def test_train_val_split_is_disjoint_and_complete(size, stratify):
    labels = digitlab.data.load("mnist-sample", split="train")[1]
    tr, va = train_val_split(labels, size, seed=11, stratify=stratify)
    k = size if isinstance(size, int) else math.ceil(size * len(labels))
    assert len(va) == k and len(tr) == len(labels) - k
    assert np.intersect1d(tr, va).size == 0
    np.testing.assert_array_equal(np.union1d(tr, va), np.arange(len(labels)))


def test_fit_visits_every_training_image_once_per_epoch_in_a_fresh_random_order(tmp_path):
    images, _ = digitlab.data.load("mnist-sample", split="train")
    index = _row_index(images)
    X = normalize(images, "unit", np.float64).reshape(len(images), -1)  # (10000, 784)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    train_ids = sorted(index[img.tobytes()] for img in prepare_data(load_recipe("mlp", ORDER)).train.images)
    assert len(train_ids) == 50

    previous, order = np.zeros((784, 10)), []

    def which_image(state, model):
        # plain SGD, batch of one, linear model: W_new - W_old = -lr x (p - y)^T, every column a multiple of x
        W = next(v for k, v in model.net.state_dict().items() if k.endswith(".W"))
        delta = W - previous
        previous[...] = W
        column = delta[:, np.argmax(np.linalg.norm(delta, axis=0))]  # (784,)
        cosine = X @ (column / np.linalg.norm(column))  # (10000,)
        best = int(np.argmax(np.abs(cosine)))
        assert abs(cosine[best]) > 1 - 1e-9, "a step's update is not a multiple of one training image"
        order.append(best)

    train_recipe("mlp", ORDER, out_dir=tmp_path / "order", quiet=True, report=False, callback=which_image)
    first, second = order[:50], order[50:]
    assert len(second) == 50
    assert sorted(first) == train_ids and sorted(second) == train_ids  # each training image once, no val image
    assert first != train_ids and second != train_ids  # not sequential
    assert first != second  # a new permutation each epoch


def test_fit_applies_the_recipes_flip_to_about_half_of_the_steps(tmp_path):
    """Batch of one, linear model: each step's update is a multiple of the image it saw, mirrored or not."""
    images, _ = digitlab.data.load("mnist-sample", split="train")
    X = normalize(images, "unit", np.float64)  # (10000, 28, 28)
    both = np.concatenate([X, X[:, :, ::-1]]).reshape(2 * len(X), -1)  # originals, then their mirror images
    both /= np.linalg.norm(both, axis=1, keepdims=True)
    previous, seen = np.zeros((784, 10)), []

    def which_image(state, model):
        W = next(v for k, v in model.net.state_dict().items() if k.endswith(".W"))
        delta = W - previous
        previous[...] = W
        column = delta[:, np.argmax(np.linalg.norm(delta, axis=0))]
        cosine = both @ (column / np.linalg.norm(column))  # (20000,)
        best = int(np.argmax(np.abs(cosine)))
        assert abs(cosine[best]) > 1 - 1e-9, "a step's update is neither a training image nor its mirror image"
        seen.append(divmod(best, len(X)))  # (mirrored?, image)

    train_recipe("mlp", {**ORDER, "flip": True}, out_dir=tmp_path / "flip", quiet=True, report=False,
                 callback=which_image)
    mirrored = [m for m, _ in seen]
    assert len(seen) == 100 and 30 <= sum(mirrored) <= 70
    assert sorted(i for _, i in seen[:50]) == sorted(i for _, i in seen[50:])  # still each image once per epoch


def test_full_batch_training_still_flips_every_step(tmp_path):
    """One batch per epoch normalises the data once unless the recipe augments: flip must count as augmenting."""
    plain, _ = _trajectory(tmp_path, {}, "plain")
    flipped, _ = _trajectory(tmp_path, {"flip": True}, "flipped")
    again, _ = _trajectory(tmp_path, {"flip": True}, "again")
    assert not np.array_equal(plain[0]["W"], flipped[0]["W"])
    assert all(np.array_equal(a["W"], b["W"]) for a, b in zip(flipped, again))


# ------------------------------------------------------------------------------------------------ square layers
def test_gradients_of_a_network_of_square_layers():
    """16-16-16 layers and a batch of 16: dx = dy W^T and dW = x^T dy keep their shapes when transposed wrongly."""
    from digitlab.nn.gradcheck import check_layer, check_model
    from digitlab.nn.layers import Linear
    from digitlab.nn.model import build_mlp

    rng = np.random.default_rng(5)
    layer = Linear(16, 16, init="glorot_normal", rng=rng, dtype=np.float64)
    layer.b[:] = rng.standard_normal(16)
    assert check_layer(layer, rng.standard_normal((16, 16)), rng) < 1e-6
    for activation in ("relu", "tanh"):
        net = build_mlp(16, [16, 16], 16, activation=activation, init="glorot_normal", rng=rng,
                        dtype=np.float64)
        x = rng.uniform(0.1, 2.0, size=(16, 16)) * rng.choice([-1.0, 1.0], size=(16, 16))
        y = rng.integers(0, 16, size=16)
        assert check_model(net, "softmax_ce", x, y, rng=rng, max_entries=None) < 1e-6, activation


def test_square_gradient_check_sees_a_missing_transpose():
    """Guard: the same check on a Linear whose backward forgets the transpose fails clearly."""
    from digitlab.nn.gradcheck import check_layer
    from digitlab.nn.layers import Linear

    class NoTranspose(Linear):
        def backward(self, dy, need_dx=True):
            super().backward(dy, need_dx=False)
            return dy @ self.W  # should be W.T

    rng = np.random.default_rng(5)
    layer = NoTranspose(16, 16, init="glorot_normal", rng=rng, dtype=np.float64)
    assert check_layer(layer, rng.standard_normal((16, 16)), rng) > 1e-2
