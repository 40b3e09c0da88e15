"""Losses: values against formulas written here, gradients against central differences, stability."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from digitlab.errors import ConfigError
from digitlab.nn.gradcheck import check_loss
from digitlab.nn.layers import Linear, Sequential
from digitlab.nn.losses import LOSSES, get_loss

NAMES = list(LOSSES)


def onehot(labels, c):
    y = np.zeros((len(labels), c))
    y[np.arange(len(labels)), labels] = 1.0
    return y


def softmax64(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n,c", [(1, 2), (7, 10), (16, 3)])
def test_loss_gradients_match_central_differences(name, n, c):
    rng = np.random.default_rng(n * 100 + c)
    scores = rng.standard_normal((n, c)) * 3
    labels = rng.integers(0, c, size=n)
    assert check_loss(name, scores, labels) < 1e-6


def test_softmax_ce_value_is_mean_negative_log_likelihood():
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    value, grad = get_loss("softmax_ce")(z.copy(), y)
    p = softmax64(z)
    assert value == pytest.approx(-np.log(p[np.arange(5), y]).mean(), rel=1e-12)
    np.testing.assert_allclose(grad, (p - onehot(y, 4)) / 5, rtol=1e-12)


def test_softmax_mse_value_and_true_jacobian():
    rng = np.random.default_rng(1)
    z, y = rng.standard_normal((3, 5)), np.array([4, 0, 2])
    value, grad = get_loss("softmax_mse")(z.copy(), y)
    p = softmax64(z)
    assert value == pytest.approx(((p - onehot(y, 5)) ** 2).sum(axis=1).mean(), rel=1e-12)
    g = 2 * (p - onehot(y, 5)) / 3                               # d loss / d p
    for i in range(3):                                           # explicit Jacobian diag(p) - p p^T
        jac = np.diag(p[i]) - np.outer(p[i], p[i])
        np.testing.assert_allclose(grad[i], jac.T @ g[i], rtol=1e-10, atol=1e-15)


def test_sigmoid_bce_value_and_gradient():
    rng = np.random.default_rng(2)
    z, y = rng.standard_normal((6, 3)), rng.integers(0, 3, size=6)
    value, grad = get_loss("sigmoid_bce")(z.copy(), y)
    s, Y = 1 / (1 + np.exp(-z)), onehot(y, 3)
    per_example = -(Y * np.log(s) + (1 - Y) * np.log(1 - s)).sum(axis=1)
    assert value == pytest.approx(per_example.mean(), rel=1e-12)
    np.testing.assert_allclose(grad, (s - Y) / 6, rtol=1e-12)


def test_one_vs_rest_weight_gradient_is_the_notebook_formula():
    """Through a bias-free Linear layer the weight gradient is X^T (sigmoid(XW) - Y) / N."""
    rng = np.random.default_rng(3)
    X, y = rng.random((20, 8)), rng.integers(0, 4, size=20)
    net = Sequential([Linear(8, 4, bias=False, init="normal(0.3)", rng=rng, dtype=np.float64)])
    W = net.layers[0].W.copy()
    _, d = get_loss("sigmoid_bce")(net.forward(X), y)
    net.backward(d)
    expected = X.T @ (1 / (1 + np.exp(-X @ W)) - onehot(y, 4)) / 20
    np.testing.assert_allclose(net.layers[0].dW, expected, rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_stay_finite_without_warnings(name, dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e3, -1e3, 5.0]], dtype=dtype)
    y = np.array([1, 2, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = get_loss(name)(z.copy(), y)
        probs = get_loss(name).probabilities(z)
    assert np.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(probs))
    assert grad.dtype == dtype


def test_softmax_ce_extreme_values_are_exact():
    z = np.array([[1e4, -1e4]])
    assert get_loss("softmax_ce")(z.copy(), np.array([0]))[0] == 0.0
    assert get_loss("softmax_ce")(z.copy(), np.array([1]))[0] == pytest.approx(2e4)
    value, _ = get_loss("sigmoid_bce")(np.array([[-1000.0, 1000.0]]), np.array([1]))
    assert value == pytest.approx(0.0, abs=1e-300)


@pytest.mark.parametrize("name", NAMES)
def test_probabilities_are_distributions(name):
    rng = np.random.default_rng(4)
    z = rng.standard_normal((9, 10)) * 5
    p = get_loss(name).probabilities(z)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(p.argmax(axis=1), z.argmax(axis=1))


def test_one_vs_rest_probabilities_are_renormalised_sigmoids():
    z = np.array([[0.0, 1.0, -2.0], [-1000.0, -1000.0, -1000.0]])
    p = get_loss("sigmoid_bce").probabilities(z)
    s = 1 / (1 + np.exp(-z[0]))
    np.testing.assert_allclose(p[0], s / s.sum(), rtol=1e-12)
    np.testing.assert_allclose(p[1], [1 / 3] * 3, rtol=1e-12)   # all sigmoids underflow: still no 0/0


def test_gradient_can_be_written_over_the_scores():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    expected = get_loss("softmax_ce")(z.copy(), y)
    scores = z.copy()
    value, grad = get_loss("softmax_ce")(scores, y, out=scores)
    assert grad is scores
    assert value == expected[0]
    np.testing.assert_array_equal(grad, expected[1])


def test_scores_are_left_alone_without_out():
    z = np.array([[1.0, 2.0, 3.0]])
    for name in NAMES:
        get_loss(name)(z, np.array([2]))
        np.testing.assert_array_equal(z, [[1.0, 2.0, 3.0]])


def test_registry_names_aliases_and_errors():
    assert get_loss("softmax_cross_entropy") is get_loss("softmax_ce")
    with pytest.raises(ConfigError, match="hinge"):
        get_loss("hinge")


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(2, 6)),
              elements=st.floats(-1e4, 1e4, allow_nan=False)), st.data())
def test_any_finite_logits_give_finite_nonnegative_loss(z, data):
    y = np.array(data.draw(st.lists(st.integers(0, z.shape[1] - 1), min_size=z.shape[0], max_size=z.shape[0])))
    for name in NAMES:
        value, grad = get_loss(name)(z.copy(), y)
        assert np.isfinite(value) and value >= 0.0
        assert np.all(np.isfinite(grad))
        if name == "softmax_ce":
            np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12)


# ------------------------------------------------------------------------------------------ label smoothing
@pytest.mark.parametrize("eps", [0.05, 0.1, 0.4])
@pytest.mark.parametrize("n,c", [(1, 2), (7, 10), (16, 3)])
def test_label_smoothing_gradient_matches_central_differences(eps, n, c):
    rng = np.random.default_rng(n * 10 + c)
    scores = rng.standard_normal((n, c)) * 3
    labels = rng.integers(0, c, size=n)
    assert check_loss(get_loss("softmax_ce", label_smoothing=eps), scores, labels) < 1e-6


def test_label_smoothing_value_and_gradient_against_the_smoothed_targets():
    rng = np.random.default_rng(2)
    z, y, eps = rng.standard_normal((5, 4)) * 2, np.array([0, 3, 1, 1, 2]), 0.2
    q = (1 - eps) * onehot(y, 4) + eps / 4  # PyTorch's CrossEntropyLoss(label_smoothing=0.2) targets
    p = softmax64(z)
    value, grad = get_loss("softmax_ce", label_smoothing=eps)(z.copy(), y)
    assert value == pytest.approx(-(q * np.log(p)).sum() / 5, rel=1e-12)
    np.testing.assert_allclose(grad, (p - q) / 5, atol=1e-15)
    plain, _ = get_loss("softmax_ce")(z.copy(), y)
    assert plain == pytest.approx(-np.log(p[np.arange(5), y]).mean(), rel=1e-12) and plain != value
    grad32 = get_loss("softmax_ce", label_smoothing=eps)(z.astype(np.float32), y, out=None)[1]
    assert grad32.dtype == np.float32
    np.testing.assert_allclose(grad32, (p - q) / 5, atol=1e-6)


def test_label_smoothing_options_are_checked():
    assert get_loss("softmax_ce", label_smoothing=0.0) is get_loss("softmax_ce")
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="label_smoothing"):
            get_loss("softmax_ce", label_smoothing=bad)
    for name in ("softmax_mse", "sigmoid_bce"):
        with pytest.raises(ConfigError, match="label smoothing needs loss softmax_ce"):
            get_loss(name, label_smoothing=0.1)


# ------------------------------------------------------------------------------------------ label range
@pytest.mark.parametrize("name,smoothing", [(n, 0.0) for n in NAMES] + [("softmax_ce", 0.1)])
@pytest.mark.parametrize("bad", [3, -1, 200])
def test_out_of_range_labels_are_refused_by_every_loss(name, bad, smoothing):
    z = np.zeros((4, 3))
    labels = np.array([0, 1, bad, 2])
    with pytest.raises(ValueError, match=r"labels must be class indices 0\.\.2"):
        get_loss(name, label_smoothing=smoothing)(z, labels)
    for dtype in (np.int8, np.int32, np.uint8, np.int64):  # -1 must not wrap into range in any width
        if np.iinfo(dtype).min <= bad <= np.iinfo(dtype).max:
            with pytest.raises(ValueError, match="class indices"):
                get_loss(name)(z, labels.astype(dtype))
    with pytest.raises(ValueError, match="class indices"):
        get_loss(name)(z, np.array([0.0, 1.0, 2.0, 1.0]))  # float labels are not indices
    get_loss(name)(z, np.array([0, 1, 2, 2]))  # the last class itself is fine
