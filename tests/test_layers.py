"""Layers and Sequential: gradient checks, numerical stability, buffers, spec round trips, determinism."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from digitlab.errors import ConfigError, TrainingError
from digitlab.nn.gradcheck import check_layer, check_model
from digitlab.nn.layers import (
    Dropout,
    LeakyReLU,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
    stable_sigmoid,
)
from digitlab.nn.losses import get_loss
from digitlab.nn.model import build_linear, build_mlp

TOL = 1e-6


def away_from_zero(rng, shape):
    """Inputs with |x| in [0.1, 2]: no ReLU kink within a finite-difference step."""
    return rng.uniform(0.1, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)


LAYERS = {
    "linear": lambda rng: Linear(6, 4, init="glorot_normal", rng=rng, dtype=np.float64),
    "linear-nobias": lambda rng: Linear(6, 4, bias=False, init="he_normal", rng=rng, dtype=np.float64),
    "relu": lambda rng: ReLU(),
    "leaky_relu": lambda rng: LeakyReLU(0.1),
    "sigmoid": lambda rng: Sigmoid(),
    "tanh": lambda rng: Tanh(),
    "dropout": lambda rng: Dropout(0.4, rng=rng),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_gradients_match_central_differences(name):
    rng = np.random.default_rng(3)
    layer = LAYERS[name](rng)
    assert check_layer(layer, away_from_zero(rng, (5, 6)), rng) < TOL


def test_gradcheck_detects_a_wrong_backward():
    class BrokenTanh(Tanh):
        def backward(self, dy, need_dx=True):
            return dy * (1 - self._y)          # forgot the square

    rng = np.random.default_rng(0)
    assert check_layer(BrokenTanh(), away_from_zero(rng, (4, 3)), rng) > 1e-2


def test_gradcheck_refuses_float32_layers():
    with pytest.raises(ValueError, match="float64"):
        check_layer(Linear(3, 2, rng=np.random.default_rng(0)), np.ones((2, 3)))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("loss", ["softmax_ce", "softmax_mse", "sigmoid_bce"])
def test_whole_network_gradients(activation, loss):
    rng = np.random.default_rng(1)
    net = build_mlp(12, [9, 7], 5, activation=activation, init="glorot_normal", dropout=0.25, rng=rng)
    x, y = away_from_zero(rng, (6, 12)), rng.integers(0, 5, size=6)
    assert check_model(net, loss, x, y, rng=rng, max_entries=None) < TOL


def test_sigmoid_is_stable_for_huge_inputs():
    x = np.array([[-1000.0, -100.0, 0.0, 100.0, 1000.0]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = Sigmoid().forward(x, train=False)
        y64 = stable_sigmoid(x.astype(np.float64))
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y[0, [0, 2, 4]], [0.0, 0.5, 1.0])
    assert 0 < y64[0, 1] < 1e-40               # exp(-100) keeps its precision
    assert y.dtype == np.float32


def test_activations_values():
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 2.0]])
    np.testing.assert_array_equal(ReLU().forward(x, train=False), [[0, 0, 0, 0.5, 2.0]])
    np.testing.assert_allclose(LeakyReLU(0.1).forward(x, train=False), [[-0.2, -0.05, 0, 0.5, 2.0]])
    np.testing.assert_allclose(Tanh().forward(x, train=False), np.tanh(x))
    np.testing.assert_allclose(Sigmoid().forward(x, train=False), 1 / (1 + np.exp(-x)))


def test_linear_forward_is_x_at_w_plus_b():
    rng = np.random.default_rng(0)
    layer = Linear(3, 2, init="normal(0.5)", rng=rng)
    layer.b[:] = [1.0, -1.0]
    x = rng.standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(layer.forward(x), x @ layer.W + layer.b, rtol=1e-6)


def sparse_columns(rng, n, d, live):
    """(n, d) float64 inputs that are 0 outside the columns `live`, where every value is non-zero."""
    x = np.zeros((n, d))
    x[:, live] = away_from_zero(rng, (n, len(live)))
    return x


def dense_reference(layer, x, dy):
    """y, dW, db, dx of a Linear computed with the plain full products."""
    return x @ layer.W + layer.b, x.T @ dy, dy.sum(axis=0), dy @ layer.W.T


@pytest.mark.parametrize("live", [[], [3], [0, 1, 2, 17, 18, 19], list(range(5, 12))])
def test_linear_skipping_zero_columns_equals_the_dense_products(live):
    rng = np.random.default_rng(1)
    layer = Linear(20, 6, init="glorot_normal", rng=rng, dtype=np.float64)
    layer.b[:] = rng.standard_normal(6)
    x = sparse_columns(rng, 9, 20, live)
    dy = rng.standard_normal((9, 6))
    y = layer.forward(x).copy()
    dx = layer.backward(dy)
    assert layer._cols is not None                       # the sparse path ran (most columns are 0)
    for got, want in zip((y, layer.dW, layer.db, dx), dense_reference(layer, x, dy)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_one_non_zero_value_keeps_its_column():
    """A column that is 0 in every sample but one (negative, or NaN) must still be multiplied."""
    rng = np.random.default_rng(2)
    layer = Linear(30, 4, init="glorot_normal", rng=rng, dtype=np.float64)
    for value in (0.7, -0.3, 1e-300):
        x = sparse_columns(rng, 8, 30, [0, 1])
        x[5, 22] = value                                  # one pixel, in the 6th sample only
        dy = rng.standard_normal((8, 4))
        y = layer.forward(x).copy()
        layer.backward(dy)
        want_y, want_dW, _, _ = dense_reference(layer, x, dy)
        np.testing.assert_allclose(y, want_y, rtol=1e-12)
        np.testing.assert_allclose(layer.dW, want_dW, rtol=1e-12, atol=1e-300)
        assert layer.dW[22].any() and not layer.dW[21].any()
    x[5, 22] = np.nan
    assert np.isnan(layer.forward(x)[5]).all() and not np.isnan(layer.forward(x)[4]).any()


def test_linear_gradients_with_zero_columns_match_central_differences():
    rng = np.random.default_rng(3)
    layer = Linear(24, 5, init="glorot_normal", rng=rng, dtype=np.float64)
    x = sparse_columns(rng, 6, 24, [2, 3, 10, 23])
    assert check_layer(layer, x, rng=rng) < TOL


def test_zero_column_gradient_rows_follow_each_batch():
    """dW's rows for columns dead in this batch are 0 even where an earlier batch (sparse or dense) wrote them."""
    rng = np.random.default_rng(4)
    layer = Linear(40, 3, init="glorot_normal", rng=rng, dtype=np.float64)
    batches = [[0, 1, 2], [30, 31], list(range(40)), [5, 6, 7, 8], [5, 6], list(range(40)), [39]]
    for live in batches:
        x = sparse_columns(rng, 7, 40, live)
        dy = rng.standard_normal((7, 3))
        layer.forward(x)
        layer.backward(dy, need_dx=False)
        assert (layer._cols is None) == (len(live) == 40)
        np.testing.assert_allclose(layer.dW, x.T @ dy, rtol=1e-12, atol=1e-15)
        assert not layer.dW[np.setdiff1d(np.arange(40), live)].any()


def test_few_zero_columns_use_the_dense_product():
    rng = np.random.default_rng(5)
    layer = Linear(100, 3, rng=rng, dtype=np.float64)
    for n_zero, sparse in ((10, False), (24, False), (25, True), (60, True)):   # SPARSE_INPUT_MIN_ZERO = 1/4
        x = sparse_columns(rng, 4, 100, list(range(n_zero, 100)))
        layer.forward(x)
        assert (layer._cols is not None) == sparse, n_zero


def test_inference_between_sparse_forward_and_backward_changes_nothing():
    rng = np.random.default_rng(6)
    layer = Linear(30, 4, rng=rng, dtype=np.float64)
    x = sparse_columns(rng, 5, 30, [1, 2, 3])
    dy = rng.standard_normal((5, 4))
    layer.forward(x)
    layer.forward(sparse_columns(rng, 11, 30, [20, 21]), train=False)
    layer.backward(dy)
    np.testing.assert_allclose(layer.dW, x.T @ dy, rtol=1e-12, atol=1e-15)


def test_dropout_scales_kept_units_and_is_identity_in_inference():
    rng = np.random.default_rng(0)
    layer = Dropout(0.25, rng=rng)
    x = np.ones((400, 500), dtype=np.float32)
    y = layer.forward(x, train=True)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), y)      # same mask going back
    assert layer.forward(x, train=False) is x


def test_dropout_masks_follow_the_generator():
    x = np.ones((20, 30))
    a = Dropout(0.5, rng=np.random.default_rng(7)).forward(x, train=True)
    b = Dropout(0.5, rng=np.random.default_rng(7)).forward(x, train=True)
    c = Dropout(0.5, rng=np.random.default_rng(8)).forward(x, train=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dropout_without_generator_cannot_train():
    with pytest.raises(TrainingError, match="Generator"):
        Dropout(0.5).forward(np.ones((2, 2)), train=True)


def test_bad_layer_arguments():
    with pytest.raises(ConfigError):
        Dropout(1.0)
    with pytest.raises(ConfigError):
        LeakyReLU(-0.1)
    with pytest.raises(ConfigError, match="Generator"):
        Linear(3, 2, init="he_normal", rng=None)


def reference_grads(net, x, y, loss):
    """Gradients from a freshly built copy of net (no buffers from earlier batches)."""
    fresh = Sequential.from_spec(net.spec(), dtype=net.dtype)
    fresh.load_state_dict(net.state_dict())
    scores = fresh.forward(x)
    _, d = loss(scores, y, out=scores)
    fresh.backward(d)
    return [g.copy() for g in fresh.grads()]


def test_buffers_survive_changing_batch_sizes_and_grads_are_overwritten():
    rng = np.random.default_rng(0)
    net = build_mlp(10, [8], 4, rng=rng)
    loss = get_loss("softmax_ce")
    x, y = rng.random((64, 10), dtype=np.float32), rng.integers(0, 4, size=64)
    for n in (64, 13, 64, 13):                 # full batches and a short last batch, twice
        scores = net.forward(x[:n])
        _, d = loss(scores, y[:n], out=scores)
        net.backward(d)
        for got, want in zip(net.grads(), reference_grads(net, x[:n], y[:n], loss)):
            np.testing.assert_array_equal(got, want)


def test_training_never_touches_the_callers_arrays():
    rng = np.random.default_rng(0)
    net = Sequential([ReLU(), Linear(5, 3, rng=rng), ReLU(), Linear(3, 2, rng=rng)], input_shape=(5,))
    x = rng.standard_normal((4, 5)).astype(np.float32)
    x0 = x.copy()
    scores = net.forward(x)
    d = np.ones_like(scores)
    d0 = d.copy()
    net.backward(d)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(d, d0)


def test_inference_between_forward_and_backward_changes_nothing():
    rng = np.random.default_rng(0)
    net = build_mlp(6, [5, 4], 3, activation="tanh", dropout=0.3, rng=rng)
    x, y = rng.random((7, 6), dtype=np.float32), rng.integers(0, 3, size=7)
    state = net.state_dict()
    loss = get_loss("softmax_ce")
    results = []
    for interleave in (False, True):
        net.load_state_dict(state)
        for layer in net.layers:
            if isinstance(layer, Dropout):
                layer.rng = np.random.default_rng(9)
        scores = net.forward(x)
        if interleave:
            net.forward(rng.random((11, 6), dtype=np.float32), train=False)
        _, d = loss(scores, y, out=scores)
        net.backward(d)
        results.append([g.copy() for g in net.grads()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_inference_returns_fresh_arrays():
    rng = np.random.default_rng(0)
    net = build_mlp(5, [4], 3, rng=rng)
    x = rng.random((2, 5), dtype=np.float32)
    a = net.forward(x, train=False)
    b = net.forward(x + 1, train=False)
    assert a is not b and not np.shares_memory(a, b)


def test_first_layer_input_gradient_is_skipped_unless_asked():
    rng = np.random.default_rng(0)
    net = build_mlp(5, [4], 3, dtype=np.float64, rng=rng)
    x = rng.random((2, 5))
    net.forward(x)
    assert net.backward(np.ones((2, 3))) is None
    net.forward(x)
    dx = net.backward(np.ones((2, 3)), input_grad=True)
    assert dx.shape == (2, 5)


def test_spec_round_trip_and_unknown_types():
    rng = np.random.default_rng(0)
    net = build_mlp(7, [6, 5], 3, activation="leaky_relu", dropout=0.1, bias=False, rng=rng)
    spec = net.spec()
    assert spec[0] == {"type": "Linear", "in": 7, "out": 6, "bias": False}
    again = Sequential.from_spec(spec, rng=np.random.default_rng(1))
    assert again.spec() == spec
    with pytest.raises(ConfigError, match="Conv2d"):
        Sequential.from_spec([{"type": "Conv2d"}])
    with pytest.raises(ConfigError, match="layer 0"):
        Sequential.from_spec([{"type": "Linear", "in": 3}], input_shape=(3,))       # no "out"
    with pytest.raises(ConfigError, match="input_shape"):
        Sequential.from_spec([{"type": "Linear", "out": 3}])                      # "in" from nowhere
    with pytest.raises(ConfigError, match="layer 1 .*Flatten"):
        Sequential.from_spec([{"type": "ReLU"}, {"type": "Linear", "out": 3}], input_shape=(4, 4))


def test_same_seed_same_weights_and_dtype_choice():
    a = build_mlp(20, [10], 4, init=["he_normal", "uniform_scaled"], rng=np.random.default_rng(5))
    b = build_mlp(20, [10], 4, init=["he_normal", "uniform_scaled"], rng=np.random.default_rng(5))
    c = build_mlp(20, [10], 4, init=["he_normal", "uniform_scaled"], rng=np.random.default_rng(6))
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(a.parameters()[0], c.parameters()[0])
    assert all(p.dtype == np.float32 for p in a.parameters())
    d = build_mlp(20, [10], 4, rng=np.random.default_rng(5), dtype=np.float64)
    assert d.forward(np.zeros((1, 20))).dtype == np.float64
    assert d.astype(np.float32).dtype == np.float32


def test_linear_model_shapes_flow_from_arguments():
    net = build_linear(12, 3, rng=None)
    assert net.spec() == [{"type": "Linear", "in": 12, "out": 3, "bias": True}]
    assert net.forward(np.ones((2, 12), np.float32)).shape == (2, 3)
    assert (net.input_dim, net.output_dim) == (12, 3)
    assert np.count_nonzero(net.layers[0].W) == 0          # default zero init


def test_zero_grad_and_parameter_names():
    rng = np.random.default_rng(0)
    net = build_mlp(4, [3], 2, rng=rng)
    assert net.param_names() == ["0.W", "0.b", "2.W", "2.b"]
    scores = net.forward(rng.random((5, 4), dtype=np.float32))
    net.backward(np.ones_like(scores))
    assert any(np.any(g) for g in net.grads())
    net.zero_grad()
    assert not any(np.any(g) for g in net.grads())
