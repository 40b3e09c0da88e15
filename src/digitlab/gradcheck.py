"""`digitlab gradcheck`: a recipe's network checked against central differences (digitlab.nn.gradcheck).

    from digitlab.gradcheck import gradcheck_recipe
    gradcheck_recipe("cnn", samples=2)    # {"recipe", "max_relative_error", "parameters", "samples"}
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from digitlab.errors import ConfigError


def gradcheck_recipe(name: str = "mlp", samples: int = 4, seed: int = 0) -> dict:
    """digitlab.nn.gradcheck.check_model on the recipe's network (its layers and loss) in float64.

    The check runs at a generic point: weights N(0, 1/fan_in), biases and BatchNorm parameters N(0, 0.1)
    (BatchNorm's scale around 1), random 28x28 images on the [0, 1] scale. At some recipes' own starting
    points (zero init, uniform_scaled's tiny weights, raw 0..255 pixels) the gradients are so small or so
    badly scaled that central differences drown in rounding, which would say nothing about the backward
    pass this checks. BatchNorm is checked in training mode (batch statistics), as it trains.
    """
    from digitlab.data.dataset import normalize
    from digitlab.nn.gradcheck import check_model
    from digitlab.recipes import load_recipe
    from digitlab.train import _rngs, build_model

    if samples < 1:
        raise ConfigError(f"gradcheck needs at least one sample, got {samples}")
    recipe = dataclasses.replace(load_recipe(name), dtype="float64", seed=seed)
    rngs = _rngs(seed)
    rng = rngs["split"]
    shape = (28, 28)
    model = build_model(recipe, 10, [str(d) for d in range(10)], rngs, shape)
    for pname, p in zip(model.net.param_names(), model.net.parameters()):
        if p.ndim >= 2:
            p[...] = rng.standard_normal(p.shape) / math.sqrt(math.prod(p.shape[:-1]))   # fan_in
        else:
            p[...] = rng.standard_normal(p.shape) * 0.1 + (1.0 if pname.endswith("gamma") else 0.0)
    x = normalize(rng.integers(0, 256, size=(samples, *shape), dtype=np.uint8), "unit", np.float64)  # (S, 28, 28)
    y = rng.integers(0, 10, size=samples)  # (S,)
    error = check_model(model.net, model.loss, x, y, rng=rng)
    n_params = int(sum(p.size for p in model.net.parameters()))
    return {"recipe": recipe.name, "max_relative_error": error, "parameters": n_params, "samples": samples}
