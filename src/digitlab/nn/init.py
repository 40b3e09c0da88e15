"""Weight initializers chosen by name; every random draw comes from an explicit Generator.

    import numpy as np
    from digitlab.nn.init import initialize
    rng = np.random.default_rng(42)
    W = initialize("he_normal", (784, 300), rng)                 # float32 (784, 300)
    W = initialize({"name": "normal", "std": 0.01}, (784, 10), rng, dtype=np.float64)
    W = initialize("normal(0.01)", (784, 10), rng)               # same thing as a string ("normal:0.01" too)

Weights are shaped (fan_in, fan_out), or (k, k, C, F) for convolution kernels, where (like Keras)
fan_in = k*k*C and fan_out = k*k*F. Names:
  zeros            all zeros (no randomness, `rng` may be None)
  normal(std)      N(0, std^2), std defaults to 0.01
  he_normal        N(0, 2/fan_in)
  glorot_normal    N(0, 2/(fan_in+fan_out))
  glorot_uniform   U(-a, a), a = sqrt(6/(fan_in+fan_out))
  uniform_scaled   U(-1, 1) / sqrt(fan_in*fan_out)   (the 784-128-10 notebook's)
  torch_uniform    U(-a, a), a = 1/sqrt(fan_in)      (PyTorch's default for Linear and Conv2d weights)
Draws are made in float64 and then cast, so a float32 and a float64 model from the same seed start from the
same numbers (up to rounding).
"""

from __future__ import annotations

import math
import re

import numpy as np

from digitlab.errors import ConfigError


def _zeros(shape, fans, rng):
    return np.zeros(shape)


def _normal(shape, fans, rng, std=0.01):
    return rng.standard_normal(shape) * float(std)


def _he_normal(shape, fans, rng):
    return rng.standard_normal(shape) * math.sqrt(2.0 / fans[0])


def _glorot_normal(shape, fans, rng):
    return rng.standard_normal(shape) * math.sqrt(2.0 / (fans[0] + fans[1]))


def _glorot_uniform(shape, fans, rng):
    limit = math.sqrt(6.0 / (fans[0] + fans[1]))
    return rng.uniform(-limit, limit, size=shape)


def _uniform_scaled(shape, fans, rng):
    return rng.uniform(-1.0, 1.0, size=shape) / math.sqrt(fans[0] * fans[1])


def _torch_uniform(shape, fans, rng):  # kaiming_uniform_(a=sqrt(5)): bound sqrt(6 / ((1 + 5) fan_in))
    limit = 1.0 / math.sqrt(fans[0])
    return rng.uniform(-limit, limit, size=shape)


INITIALIZERS = {
    "zeros": _zeros,
    "normal": _normal,
    "he_normal": _he_normal,
    "glorot_normal": _glorot_normal,
    "glorot_uniform": _glorot_uniform,
    "uniform_scaled": _uniform_scaled,
    "torch_uniform": _torch_uniform,
}
_CALL = re.compile(r"^\s*([a-z_]+)\s*(?:\(\s*([^)]*?)\s*\)|:\s*(\S+))\s*$")  # normal(0.01) | normal:0.01


def parse_init(spec) -> tuple[str, dict]:
    """'he_normal' | 'normal(0.01)' | {'name': 'normal', 'std': 0.01} -> (name, kwargs); ConfigError if unknown."""
    if isinstance(spec, dict):
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        name = spec.get("name")
    elif isinstance(spec, str):
        m = _CALL.match(spec)
        name, kwargs = (m.group(1), {"std": _number(m.group(2) or m.group(3), spec)}) if m else (spec.strip(), {})
    else:
        raise ConfigError(f"initializer {spec!r}: expected a name like 'he_normal' or 'normal(0.01)'")
    if name not in INITIALIZERS:
        raise ConfigError(f"unknown initializer {name!r}; choose one of {', '.join(INITIALIZERS)}")
    if (kwargs and name != "normal") or set(kwargs) - {"std"}:
        raise ConfigError(f"initializer {spec!r}: only 'normal' takes a parameter (std)")
    return name, kwargs


def _number(text, spec) -> float:
    try:
        return float(text)  # a plain number only; nothing is ever evaluated
    except ValueError:
        raise ConfigError(f"initializer {spec!r}: {text!r} is not a number") from None


def initialize(spec, shape, rng: np.random.Generator | None, dtype=np.float32) -> np.ndarray:
    """A new (fan_in, fan_out) or (k, k, C, F) array drawn by the named initializer from `rng`, cast to
    `dtype` ("zeros" takes any shape)."""
    name, kwargs = parse_init(spec)
    if name == "zeros":
        return np.zeros(shape, dtype=dtype)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"initializer {name!r} needs an explicit numpy.random.Generator (got {rng!r})")
    if len(shape) not in (2, 4):
        raise ConfigError(f"initializer {name!r}: expected a (fan_in, fan_out) or (k, k, C, F) shape, got {shape}")
    field = math.prod(shape[:-2])                                  # k*k for kernels, 1 for matrices
    fans = (shape[-2] * field, shape[-1] * field)
    return np.ascontiguousarray(INITIALIZERS[name](tuple(shape), fans, rng, **kwargs), dtype=dtype)
