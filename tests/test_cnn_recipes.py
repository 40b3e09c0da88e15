"""The CNN recipes (issue 9 §4): what each file sets reaches the optimizer and the initializers.

The default `cnn` is asserted >= 99.3 % on full MNIST in the slow tests (tests/test_default_recipe.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from digitlab.errors import ConfigError
from digitlab.nn.init import initialize
from digitlab.recipes import load_recipe
from digitlab.train import build_model, build_optimizer, _rngs


def test_cnn_fast_is_the_reference_network_and_optimizer():
    recipe = load_recipe("cnn-fast")
    model = build_model(recipe, 10, [str(i) for i in range(10)], _rngs(0), (28, 28))
    shapes = [tuple(p.shape) for p in model.net.parameters()]
    assert shapes == [(5, 5, 1, 24), (24,), (3, 3, 24, 32), (32,), (800, 256), (256,), (256, 10), (10,)]
    assert model.net.macs() == 576 * 25 * 24 + 100 * 216 * 32 + 800 * 256 + 2560  # ~1.24 M per image
    opt = build_optimizer(recipe, model.net, 235)
    assert (opt.beta1, opt.beta2) == (0.7, 0.9)
    assert (recipe.schedule, recipe.lr, recipe.batch_size, recipe.epochs) == ("onecycle", 0.01, 256, 1)


def test_adam_betas_come_from_the_recipe_and_are_checked():
    opt = build_optimizer(load_recipe("mlp", {"beta1": 0.8, "beta2": 0.95}))
    assert (opt.beta1, opt.beta2) == (0.8, 0.95)
    assert (build_optimizer(load_recipe("mlp")).beta1, build_optimizer(load_recipe("mlp")).beta2) == (0.9, 0.999)
    for bad in ({"beta1": 1.0}, {"beta2": -0.1}):
        with pytest.raises(ConfigError, match="beta1 and beta2 must be in"):
            load_recipe("mlp", bad)


def test_torch_uniform_is_bounded_by_one_over_sqrt_fan_in():
    W = initialize("torch_uniform", (5, 5, 8, 16), np.random.default_rng(0), dtype=np.float64)  # fan_in 200
    bound = 1 / math.sqrt(200)
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.99 * bound
    assert W.std() == pytest.approx(bound / math.sqrt(3), rel=0.03)  # uniform: std = bound / sqrt(3)
    dense = initialize("torch_uniform", (800, 256), np.random.default_rng(0))
    assert np.abs(dense).max() <= 1 / math.sqrt(800) < np.abs(dense).max() * 1.01


def test_cnn_inference_runs_in_chunks_that_keep_the_im2col_matrix_small():
    from digitlab.nn.model import CHUNK_VALUES

    names = [str(i) for i in range(10)]
    cnn = build_model(load_recipe("cnn"), 10, names, _rngs(0), (28, 28))
    chunk = cnn.inference_chunk()
    assert chunk == max(64, CHUNK_VALUES // (10 * 10 * 3 * 3 * 24))  # conv2's cols, 100 x 216 per image, the largest
    assert build_model(load_recipe("mlp"), 10, names, _rngs(0), (28, 28)).inference_chunk() == min(
        2048, CHUNK_VALUES // 784)
    images = np.random.default_rng(1).integers(0, 256, (2 * chunk + 5, 28, 28), dtype=np.uint8)
    np.testing.assert_allclose(cnn.scores(images), cnn.scores(images, batch_size=len(images)), rtol=1e-5, atol=1e-5)
