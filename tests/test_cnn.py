"""Convolutional layers (issue 9 §2): gradient checks, a reference convolution, pooling ties, BatchNorm modes,
model files with conv/BatchNorm layers, legacy files, and a tiny CNN that learns on the bundled sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitlab.errors import ConfigError
from digitlab.nn.gradcheck import check_layer, check_model
from digitlab.nn.layers import (
    AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, GlobalAvgPool, Linear, MaxPool2D, ReLU, Sequential,
)
from digitlab.nn.model import Classifier, load
from digitlab.train import train_recipe

FIXTURES = Path(__file__).parent / "fixtures"


def built(layer, shape, seed=0):
    layer.build(shape, rng=np.random.default_rng(seed))
    return layer


def reference_conv(x, W, b, stride, padding):
    """Direct convolution, one output pixel at a time (float64, NHWC, TensorFlow's "same" split)."""
    n, h, w, c = x.shape
    k, f = W.shape[0], W.shape[3]
    if padding == "same":
        ho, wo = -(-h // stride), -(-w // stride)
        ph, pw = max((ho - 1) * stride + k - h, 0), max((wo - 1) * stride + k - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    y = np.zeros((n, ho, wo, f))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]       # (N, k, k, C)
            y[:, i, j] = np.tensordot(patch, W, axes=([1, 2, 3], [0, 1, 2])) + b
    return y


CONV_CASES = [  # (input shape, filters, kernel, stride, padding, batch)
    ((7, 7), 3, 3, 1, "valid", 2),
    ((7, 6, 2), 4, 3, 1, "same", 3),
    ((9, 9, 2), 3, 3, 2, "same", 2),
    ((8, 7, 3), 2, 3, 2, "valid", 1),
    ((6, 6, 1), 2, 5, 1, "same", 1),
    ((5, 5, 2), 3, 2, 1, "same", 2),     # even kernel: the extra padding row goes after
]


@pytest.mark.parametrize("shape,filters,kernel,stride,padding,n", CONV_CASES)
def test_conv2d_matches_a_direct_convolution_and_passes_the_gradient_check(shape, filters, kernel, stride, padding, n):
    rng = np.random.default_rng(1)
    conv = built(Conv2D(filters, kernel, stride, padding, dtype=np.float64), shape)
    conv.b[...] = rng.standard_normal(filters)
    x = rng.standard_normal((n, *shape))
    want = reference_conv(x.reshape(n, *shape[:2], -1), conv.W, conv.b, stride, padding)
    np.testing.assert_allclose(conv.forward(x, train=False), want, rtol=1e-10, atol=1e-12)
    assert conv.output_shape == want.shape[1:]
    assert check_layer(conv, x, rng=rng) < 1e-7


@pytest.mark.parametrize("layer,shape", [
    (MaxPool2D(2, dtype=np.float64), (6, 6, 3)),
    (MaxPool2D(2, dtype=np.float64), (7, 5, 2)),        # odd sizes: the last row/column is dropped
    (MaxPool2D(3, dtype=np.float64), (7, 7)),
    (AvgPool2D(2, dtype=np.float64), (7, 6, 3)),
    (GlobalAvgPool(dtype=np.float64), (5, 3, 4)),
    (Flatten(dtype=np.float64), (4, 3, 2)),
], ids=["max2", "max2-odd", "max3-2d", "avg2-odd", "global-avg", "flatten"])
@pytest.mark.parametrize("n", [1, 3])
def test_pooling_and_flatten_pass_the_gradient_check(layer, shape, n):
    rng = np.random.default_rng(2)
    built(layer, shape)
    assert check_layer(layer, rng.standard_normal((n, *shape)), rng=rng) < 1e-7


def test_maxpool_values_and_ties_route_the_gradient_to_one_element():
    pool = built(MaxPool2D(2), (4, 4, 1))
    x = np.array([[1, 1, 0, 5], [1, 1, 2, 3], [7, 0, 4, 4], [0, 0, 4, 4]], np.float32).reshape(1, 4, 4, 1)
    y = pool.forward(x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[1, 5], [7, 4]])
    dx = pool.backward(np.ones_like(y))[0, :, :, 0]
    np.testing.assert_array_equal(dx, [[1, 0, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])   # one per window
    pool5 = built(MaxPool2D(2), (5, 5))
    pool5.forward(np.ones((2, 5, 5), np.float32))       # all ties
    dx = pool5.backward(np.ones((2, 2, 2, 1), np.float32))
    assert dx.shape == (2, 5, 5) and dx.sum() == 8 and not dx[:, 4].any() and not dx[:, :, 4].any()
    pool3 = built(MaxPool2D(3), (6, 6, 2))                # 3 x 3 windows (not the 2 x 2 case)
    pool3.forward(np.ones((1, 6, 6, 2), np.float32))     # all ties: the first element of each window
    dx = pool3.backward(np.ones((1, 2, 2, 2), np.float32))[0]
    assert dx.sum() == 8 and dx[::3, ::3].all()


@pytest.mark.parametrize("shape", [(6,), (4, 5, 3)], ids=["dense", "conv"])
def test_batchnorm_gradient_train_and_eval_modes(shape):
    rng = np.random.default_rng(3)
    bn = built(BatchNorm(momentum=0.5, dtype=np.float64), shape)
    bn.gamma[...] = rng.standard_normal(shape[-1])
    bn.beta[...] = rng.standard_normal(shape[-1])
    x = rng.standard_normal((8, *shape)) * 3 + 2
    assert check_layer(bn, x, rng=rng) < 1e-7
    y = bn.forward(x)                                    # training: normalised by the batch's own statistics
    axes = tuple(range(x.ndim - 1))
    np.testing.assert_allclose(((y - bn.beta) / bn.gamma).mean(axis=axes), 0, atol=1e-9)
    np.testing.assert_allclose(((y - bn.beta) / bn.gamma).std(axis=axes), 1, atol=1e-4)
    bn2 = built(BatchNorm(momentum=0.8, dtype=np.float64), shape)   # not 0.5: momentum and 1 - momentum differ
    bn2.forward(x)
    m = x.size // x.shape[-1]
    np.testing.assert_allclose(bn2.running_mean, 0.2 * x.mean(axis=axes))
    np.testing.assert_allclose(bn2.running_var, 0.8 + 0.2 * x.var(axis=axes) * m / (m - 1))
    ev = bn2.forward(x[:2], train=False)                 # inference: the running statistics
    want = (x[:2] - bn2.running_mean) / np.sqrt(bn2.running_var + bn2.eps) * bn2.gamma + bn2.beta
    np.testing.assert_allclose(ev, want, rtol=1e-12)


def test_dropout_on_conv_outputs_drops_single_values_and_scales_the_rest():
    drop = built(Dropout(0.25, rng=np.random.default_rng(4)), (6, 6, 8))
    x = np.ones((50, 6, 6, 8), np.float32)
    y = drop.forward(x)
    assert y.shape == x.shape and set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.01
    np.testing.assert_array_equal(drop.backward(x), y)
    assert drop.forward(x, train=False) is x


SMALL_CNN = [{"type": "Conv2D", "filters": 4, "kernel": 3, "padding": "same", "bias": False},
             {"type": "BatchNorm"}, {"type": "ReLU"}, {"type": "MaxPool2D", "pool": 2},
             {"type": "Conv2D", "filters": 6, "kernel": 3, "stride": 2}, {"type": "ReLU"},
             {"type": "Dropout", "p": 0.2}, {"type": "GlobalAvgPool"}, {"type": "Linear", "out": 5}]


def test_a_whole_cnn_passes_the_gradient_check_including_the_input():
    rng = np.random.default_rng(5)
    net = Sequential.from_spec(SMALL_CNN, input_shape=(11, 11), rng=rng, dtype=np.float64)
    for layer in net.layers:
        if isinstance(layer, Dropout):
            layer.rng = np.random.default_rng(6)
    assert check_model(net, "softmax_ce", rng.random((3, 11, 11)), [0, 3, 4], rng=rng, max_entries=None) < 1e-6


def test_first_layer_skips_its_input_gradient():
    net = Sequential.from_spec(SMALL_CNN, input_shape=(11, 11), rng=np.random.default_rng(0))
    scores = net.forward(np.random.default_rng(1).random((2, 11, 11), dtype=np.float32))
    assert net.backward(scores) is None
    assert net.backward(net.forward(np.ones((2, 11, 11), np.float32)), input_grad=True).shape == (2, 11, 11)


def test_cnn_model_file_round_trip_with_buffers_and_uint8_scores(tmp_path):
    rng = np.random.default_rng(7)
    net = Sequential.from_spec(SMALL_CNN[:-1] + [{"type": "Linear", "out": 10}], input_shape=(28, 28), rng=rng)
    for _ in range(3):
        net.forward(rng.random((16, 28, 28), dtype=np.float32))      # move BatchNorm's running statistics
    assert not np.all(net.layers[1].running_mean == 0)
    model = Classifier(net, "softmax_ce", "standard", input_shape=[28, 28])
    path = model.save(tmp_path / "cnn.safetensors")
    again = load(path)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(again.net.state_dict()[k], v, err_msg=k)
    assert "1.running_var" in again.net.state_dict()
    pixels = rng.integers(0, 256, size=(9, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(again.scores(pixels), model.scores(pixels))
    np.testing.assert_allclose(model.scores(pixels), model.scores(pixels.reshape(9, 784) / 255.0), rtol=1e-5,
                               atol=1e-5)
    assert model.predict(pixels[0]).shape == (1,)


def test_old_model_files_still_load_and_predict_identically():
    # written by digitlab 0.1.0 before Flatten and buffers existed: Linear(784 -> 12) first, no Flatten
    from digitlab.data.dataset import load_dataset

    model = load(FIXTURES / "legacy-mlp-0.1.safetensors")
    assert model.net.spec()[0] == {"type": "Linear", "in": 784, "out": 12, "bias": True}
    assert model.input_shape == [28, 28] and model.net.input_shape == (784,)
    images = load_dataset("mnist-sample", quiet=True).test.images[:64]
    np.testing.assert_array_equal(model.scores(images), np.load(FIXTURES / "legacy-mlp-0.1-scores.npy"))


def test_layers_refuse_shapes_they_cannot_take():
    with pytest.raises(ConfigError, match="layer 0 .*Linear needs flat inputs"):
        Sequential([Linear(out_features=3)], input_shape=(4, 4))
    with pytest.raises(ConfigError, match="kernel 5 does not fit images of 3x3"):
        Sequential([Conv2D(2, 5)], input_shape=(3, 3))
    with pytest.raises(ConfigError, match="padding"):
        Conv2D(2, 3, padding="full")
    with pytest.raises(ConfigError, match="MaxPool2D.*images"):
        Sequential([MaxPool2D(2)], input_shape=(12,))
    assert Sequential([Conv2D(8, 3, padding="same", rng=np.random.default_rng(0)), ReLU(), MaxPool2D(2), Flatten()],
                      input_shape=(28, 28)).output_shape == (14 * 14 * 8,)


TINY_CNN = {"dataset": "mnist-sample", "epochs": 2, "batch_size": 64, "lr": 0.003, "seed": 3, "shift": 0, "shards": 1,
            "architecture": [{"type": "Conv2D", "filters": 8, "kernel": 3, "stride": 2, "bias": False},
                             {"type": "BatchNorm"}, {"type": "ReLU"}, {"type": "MaxPool2D", "pool": 2},
                             {"type": "Flatten"}, {"type": "Dropout", "p": 0.1}, {"type": "Linear", "out": 10}]}


def test_a_tiny_cnn_learns_the_sample_in_seconds_and_is_deterministic(tmp_path):
    a = train_recipe("cnn", TINY_CNN, out_dir=tmp_path / "a", quiet=True, report=False)
    assert a.test_accuracy > 0.8                         # chance is 0.1
    b = train_recipe("cnn", TINY_CNN, out_dir=tmp_path / "b", quiet=True, report=False)
    for k, v in a.model.net.state_dict().items():
        np.testing.assert_array_equal(b.model.net.state_dict()[k], v, err_msg=k)
    again = load(a.model_path)                           # the trained CNN's file gives the same answers
    images = np.zeros((3, 28, 28), np.uint8)
    np.testing.assert_array_equal(again.scores(images), a.model.scores(images))


def test_gradcheck_cli_works_for_the_cnn_recipe(capsys):
    from digitlab.cli import main

    assert main(["gradcheck", "--recipe", "cnn", "--samples", "2"]) == 0
    assert "cnn: max relative error" in capsys.readouterr().out


def test_a_cnn_resumes_bit_identically_with_its_batchnorm_statistics(tmp_path):
    from digitlab.train import TrainingInterrupted

    straight = train_recipe("cnn", TINY_CNN, out_dir=tmp_path / "a", quiet=True, report=False)

    def stop(state, model):
        if state.step == 200:                            # mid-epoch 2 (157 steps per epoch)
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train_recipe("cnn", TINY_CNN, out_dir=tmp_path / "b", quiet=True, report=False, callback=stop)
    resumed = train_recipe(None, out_dir=tmp_path / "b", quiet=True, resume=True, report=False)
    state = straight.model.net.state_dict()
    assert "1.running_mean" in state
    for k, v in resumed.model.net.state_dict().items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)
