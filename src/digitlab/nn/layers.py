"""Layers and `Sequential`: forward and backward side by side, in NumPy (or CuPy, via `array_module`).

    import numpy as np
    from digitlab.nn.layers import Linear, ReLU, Sequential
    rng = np.random.default_rng(0)
    net = Sequential([Linear(784, 300, init="he_normal", rng=rng), ReLU(), Linear(300, 10, rng=rng)])
    scores = net.forward(x)            # (N, 784) -> (N, 10); train=True caches what backward needs
    net.backward(dscores)              # fills every layer's gradients (dW, db)
    params, grads = net.parameters(), net.grads()   # parallel lists of arrays for an optimizer
    scores = net.forward(x, train=False)            # inference: no caches, fresh output arrays

Inference (`train=False`) allocates fresh arrays and neither reads nor writes the training caches, so it is
safe to call between a training forward and its backward, and from several threads at once.

Gradient convention: `backward` OVERWRITES each gradient array with the gradient of the current batch (it
writes into the preallocated `dW`/`db` with `out=`); nothing accumulates across calls, so a training step
does not need `zero_grad()` (it exists to clear gradients explicitly, e.g. before inspecting them).

Speed notes (the seed-004 epoch is dominated by three matrix products per step):
  * train-mode outputs and input-gradients live in per-layer buffers reused while the batch shape stays the
    same — an array returned by `forward(..., train=True)` is valid until the next train-mode forward;
  * `Sequential.backward` skips the input gradient of the first layer (nobody needs d loss / d pixels);
  * ReLU and Dropout work in place on the preceding Linear's output buffer (forward) and on the following
    Linear's input-gradient buffer (backward), also when chained (Linear -> ReLU -> Dropout -> Linear) —
    never on arrays the caller passed in; ReLU in training as x * (x > 0) with the mask kept for backward,
    in inference as one maximum (in place on a preceding Linear's fresh output);
  * Dropout draws its mask as raw 32-bit integers (two per generator output) into a reused buffer;
  * bias gradients are the column sums of dy, computed as ones @ dy (a BLAS product) into `db`.
"""

from __future__ import annotations

import math

import numpy as np

from digitlab.errors import ConfigError, TrainingError
from digitlab.nn.backend import array_module
from digitlab.nn.init import initialize


def _buffer(store: dict, key: str, shape: tuple, dtype, xp):
    """A reusable array for `key`, reallocated only when the shape or dtype changes."""
    buf = store.get(key)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = store[key] = xp.empty(shape, dtype=dtype)
    return buf


class Layer:
    """Base class. Subclasses set `param_names` and implement forward/backward/spec."""

    param_names: tuple[str, ...] = ()
    # Set by Sequential: True when forward's input is a buffer of the network's own (the previous Linear's
    # output, possibly passed on in place by in-place layers) that may be overwritten, and when backward's
    # dy is likewise the next Linear's input-gradient buffer. Never True for the caller's arrays, so a layer
    # used on its own leaves its inputs alone.
    input_is_scratch = False
    dy_is_scratch = False
    # True for elementwise layers that, given scratch input (dy), write their output (dx) over it: the
    # buffer then stays scratch for the layer after (before) them.
    in_place = False

    def __init__(self):
        self._bufs: dict = {}

    def parameters(self) -> list:
        return [getattr(self, n) for n in self.param_names]

    def grads(self) -> list:
        return [getattr(self, "d" + n) for n in self.param_names]

    def spec(self) -> dict:
        return {"type": type(self).__name__}

    @classmethod
    def from_spec(cls, spec: dict, rng=None, dtype=np.float32):
        return cls()

    def _out(self, key, x, train, shape=None, dtype=None):
        """Output array: a reused buffer in train mode, a fresh array in inference."""
        xp = array_module(x)
        shape, dtype = shape or x.shape, dtype or x.dtype
        return _buffer(self._bufs, key, shape, dtype, xp) if train else xp.empty(shape, dtype=dtype)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Linear(Layer):
    """y = x @ W + b with W (in, out); the one layer with parameters."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init="he_normal",
                 rng: np.random.Generator | None = None, dtype=np.float32):
        super().__init__()
        self.W = initialize(init, (in_features, out_features), rng, dtype)   # (in, out)
        self.b = np.zeros(out_features, dtype=dtype) if bias else None        # (out,)
        self.param_names = ("W", "b") if bias else ("W",)
        self.dW = np.zeros_like(self.W)
        self.db = np.zeros_like(self.b) if bias else None
        self._x = None

    def forward(self, x, train=True):
        xp = array_module(x)
        y = self._out("y", x, train, (x.shape[0], self.W.shape[1]), self.W.dtype)
        xp.matmul(x, self.W, out=y)                      # (N, in) @ (in, out) -> (N, out)
        if self.b is not None:
            y += self.b                                  # (N, out) + (out,)
        if train:
            self._x = x                                  # kept for dW = x^T dy
        return y

    def backward(self, dy, need_dx=True):
        xp = array_module(dy)
        xp.matmul(self._x.T, dy, out=self.dW)            # (in, N) @ (N, out) -> (in, out)
        if self.b is not None:                           # column sums as a BLAS product (faster than .sum(0))
            ones = self._bufs.get("ones")
            if ones is None or ones.shape[0] != dy.shape[0] or ones.dtype != dy.dtype:
                ones = self._bufs["ones"] = xp.ones(dy.shape[0], dtype=dy.dtype)
            xp.matmul(ones, dy, out=self.db)             # (N,) @ (N, out) -> (out,)
        if not need_dx:
            return None
        dx = _buffer(self._bufs, "dx", self._x.shape, dy.dtype, xp)
        return xp.matmul(dy, self.W.T, out=dx)           # (N, out) @ (out, in) -> (N, in)

    def spec(self) -> dict:
        return {"type": "Linear", "in": int(self.W.shape[0]), "out": int(self.W.shape[1]),
                "bias": self.b is not None}

    @classmethod
    def from_spec(cls, spec, rng=None, dtype=np.float32):
        return cls(int(spec["in"]), int(spec["out"]), bias=bool(spec.get("bias", True)), init="zeros",
                   dtype=dtype)


class ReLU(Layer):
    """y = max(x, 0); in training computed as x * (x > 0), the mask kept for backward, which is dy * mask."""

    in_place = True

    def forward(self, x, train=True):
        xp = array_module(x)
        if not train:  # no mask to keep; a preceding Linear's inference output is a fresh array
            return xp.maximum(x, 0, out=x if self.input_is_scratch else None)       # (N, D)
        self._mask = xp.greater(x, 0, out=self._out("mask", x, train, dtype=bool))      # (N, D) bool
        y = x if self.input_is_scratch else self._out("y", x, train)
        return xp.multiply(x, self._mask, out=y)        # (N, D), in place on the previous Linear's buffer

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        xp = array_module(dy)
        dx = dy if self.dy_is_scratch else _buffer(self._bufs, "dx", dy.shape, dy.dtype, xp)
        return xp.multiply(dy, self._mask, out=dx)      # (N, D) * (N, D) bool


class LeakyReLU(Layer):
    """y = x for x > 0, slope * x otherwise (0 < slope < 1)."""

    def __init__(self, slope: float = 0.01):
        super().__init__()
        if not 0.0 < float(slope) < 1.0:
            raise ConfigError(f"LeakyReLU slope must be between 0 and 1, got {slope}")
        self.slope = float(slope)

    def forward(self, x, train=True):
        xp = array_module(x)
        y = self._out("y", x, train)
        xp.multiply(x, self.slope, out=y)                # (N, D)
        xp.maximum(x, y, out=y)                          # (N, D): x where x > 0, slope*x elsewhere
        if train:
            self._y = y
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        xp = array_module(dy)
        local = xp.where(self._y > 0, 1.0, self.slope).astype(dy.dtype, copy=False)   # (N, D)
        return xp.multiply(dy, local, out=_buffer(self._bufs, "dx", dy.shape, dy.dtype, xp))

    def spec(self) -> dict:
        return {"type": "LeakyReLU", "slope": self.slope}

    @classmethod
    def from_spec(cls, spec, rng=None, dtype=np.float32):
        return cls(float(spec.get("slope", 0.01)))


def stable_sigmoid(x, out=None):
    """1 / (1 + exp(-x)) without overflow for any |x|: exp only ever sees -|x|."""
    xp = array_module(x)
    e = xp.exp(-xp.abs(x))                               # (N, D) in (0, 1]
    num = xp.where(x >= 0, 1.0, e).astype(x.dtype, copy=False)
    return xp.divide(num, 1.0 + e, out=out)


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)), computed stably; backward dy * y * (1 - y)."""

    def forward(self, x, train=True):
        y = stable_sigmoid(x, out=self._out("y", x, train))   # (N, D)
        if train:
            self._y = y
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        xp = array_module(dy)
        y = self._y
        dx = _buffer(self._bufs, "dx", dy.shape, dy.dtype, xp)
        xp.subtract(1, y, out=dx)                        # (N, D): 1 - y
        dx *= y
        dx *= dy
        return dx


class Tanh(Layer):
    """y = tanh(x); backward dy * (1 - y^2)."""

    def forward(self, x, train=True):
        xp = array_module(x)
        y = xp.tanh(x, out=self._out("y", x, train))    # (N, D)
        if train:
            self._y = y
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        xp = array_module(dy)
        dx = _buffer(self._bufs, "dx", dy.shape, dy.dtype, xp)
        xp.multiply(self._y, self._y, out=dx)            # (N, D): y^2
        xp.subtract(1, dx, out=dx)
        dx *= dy
        return dx


class Dropout(Layer):
    """Inverted dropout: in training zero each unit with probability p and scale the rest by 1/(1-p).

    Inference is the identity. `hold_mask = True` reuses the last mask (for gradient checks).
    The mask costs one draw of 32 random bits per unit, two per 64-bit output of the generator (no float
    conversion): a unit is dropped when its bits are below round(p * 2^32), i.e. with probability p to
    within 2^-33. Forward and backward are one multiply each, in place on scratch buffers.
    """

    in_place = True

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None):
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ConfigError(f"Dropout probability must be in [0, 1), got {p}")
        self.p, self.rng, self.hold_mask = float(p), rng, False
        self._threshold = np.uint32(min(round(self.p * 2**32), 2**32 - 1))   # drop when bits < threshold
        self._mask = None

    def forward(self, x, train=True):
        if not train:
            return x
        if self.p == 0.0:
            self._mask = None
            return x
        xp = array_module(x)
        if not (self.hold_mask and self._mask is not None and self._mask.shape == x.shape):
            self._mask = xp.asarray(self._draw_mask(x.shape, x.dtype))
        y = x if self.input_is_scratch else self._out("y", x, train)
        return xp.multiply(x, self._mask, out=y)                                     # (N, D)

    def _draw_mask(self, shape, dtype):
        """(N, D) array of `dtype`: 1/(1-p) for kept units, 0 for dropped ones (a reused NumPy buffer)."""
        if not isinstance(self.rng, np.random.Generator):
            raise TrainingError("Dropout needs a numpy.random.Generator to train (build it with rng=...)")
        n = math.prod(shape)
        words = self.rng.bit_generator.random_raw((n + 1) // 2)                      # (ceil(n/2),) uint64
        bits = words.view(np.uint32)[:n].reshape(shape)                              # (N, D) uint32
        mask = _buffer(self._bufs, "mask", shape, dtype, np)
        np.greater_equal(bits, self._threshold, out=mask)                           # 1.0 kept, 0.0 dropped
        mask *= mask.dtype.type(1.0 / (1.0 - self.p))
        return mask

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        if self._mask is None:
            return dy
        xp = array_module(dy)
        dx = dy if self.dy_is_scratch else _buffer(self._bufs, "dx", dy.shape, dy.dtype, xp)
        return xp.multiply(dy, self._mask, out=dx)

    def spec(self) -> dict:
        return {"type": "Dropout", "p": self.p}

    @classmethod
    def from_spec(cls, spec, rng=None, dtype=np.float32):
        return cls(float(spec.get("p", 0.5)), rng=rng)


LAYER_TYPES = {cls.__name__: cls for cls in (Linear, ReLU, LeakyReLU, Sigmoid, Tanh, Dropout)}
ACTIVATIONS = {"relu": ReLU, "leaky_relu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh}


class Sequential:
    """A list of layers applied in order; the whole network as far as training is concerned."""

    def __init__(self, layers):
        self.layers = list(layers)
        first = next((i for i, l in enumerate(self.layers) if l.param_names), len(self.layers))
        self._first_param = first   # layers up to and including this one need no input gradient
        for prev, layer in zip([None, *self.layers], self.layers):   # Linear -> ReLU -> Dropout: one buffer
            layer.input_is_scratch = isinstance(prev, Linear) or (
                prev is not None and prev.in_place and prev.input_is_scratch)
        for layer, after in zip(reversed(self.layers), [None, *reversed(self.layers)]):
            layer.dy_is_scratch = isinstance(after, Linear) or (
                after is not None and after.in_place and after.dy_is_scratch)

    # -- computation ----------------------------------------------------------------------------------
    def forward(self, x, train: bool = True):
        """(N, in_features) -> (N, out_features) scores. train=True caches what backward needs."""
        xp = array_module(x)
        x = xp.asarray(x)
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy, input_grad: bool = False):
        """Back-propagate d loss / d scores; fills every gradient. Returns d loss / d input if input_grad."""
        for i in range(len(self.layers) - 1, -1, -1):
            dy = self.layers[i].backward(dy, need_dx=input_grad or i > self._first_param)
        return dy

    # -- parameters -----------------------------------------------------------------------------------
    def parameters(self) -> list:
        return [p for layer in self.layers for p in layer.parameters()]

    def grads(self) -> list:
        return [g for layer in self.layers for g in layer.grads()]

    def param_names(self) -> list[str]:
        return [f"{i}.{n}" for i, layer in enumerate(self.layers) for n in layer.param_names]

    def zero_grad(self) -> None:
        for g in self.grads():
            g[...] = 0

    def state_dict(self) -> dict:
        """{"0.W": array, "0.b": array, "2.W": ...}: the arrays a model file stores."""
        return dict(zip(self.param_names(), self.parameters()))

    def load_state_dict(self, tensors: dict) -> None:
        """Copy arrays into the parameters; ValueError naming the tensor when one is missing or mismatched."""
        for name, param in self.state_dict().items():
            if name not in tensors:
                raise ValueError(f"weights {name!r} are missing")
            arr = tensors[name]
            if tuple(arr.shape) != param.shape:
                raise ValueError(f"weights {name!r} have shape {tuple(arr.shape)}, expected {param.shape}")
            if arr.dtype != param.dtype:
                raise ValueError(f"weights {name!r} are {arr.dtype}, expected {param.dtype}")
            param[...] = arr

    @property
    def dtype(self):
        params = self.parameters()
        return params[0].dtype if params else np.dtype(np.float32)

    @property
    def input_dim(self) -> int | None:
        first = next((l for l in self.layers if isinstance(l, Linear)), None)
        return None if first is None else int(first.W.shape[0])

    @property
    def output_dim(self) -> int | None:
        last = next((l for l in reversed(self.layers) if isinstance(l, Linear)), None)
        return None if last is None else int(last.W.shape[1])

    # -- architecture as data -------------------------------------------------------------------------
    def spec(self) -> list[dict]:
        """The JSON architecture list, e.g. [{"type": "Linear", "in": 784, "out": 300, "bias": true}, ...]."""
        return [layer.spec() for layer in self.layers]

    @classmethod
    def from_spec(cls, spec: list, rng: np.random.Generator | None = None, dtype=np.float32) -> "Sequential":
        """Rebuild (zero weights) from `spec()`; ConfigError for an unknown type or a bad entry."""
        if not isinstance(spec, list) or not spec:
            raise ConfigError("architecture must be a non-empty list of layers")
        layers = []
        for i, entry in enumerate(spec):
            kind = entry.get("type") if isinstance(entry, dict) else None
            if kind not in LAYER_TYPES:
                raise ConfigError(f"layer {i}: unknown layer type {kind!r}; known: {', '.join(LAYER_TYPES)}")
            try:
                layers.append(LAYER_TYPES[kind].from_spec(entry, rng=rng, dtype=dtype))
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"layer {i} ({kind}): invalid entry {entry!r} ({exc})") from None
        return cls(layers)

    def astype(self, dtype) -> "Sequential":
        """A copy with every parameter cast to `dtype` (e.g. float64 for gradient checks)."""
        net = Sequential.from_spec(self.spec(), dtype=dtype)
        for src, dst in zip(self.layers, net.layers):
            if isinstance(src, Dropout):
                dst.rng = src.rng
        net.load_state_dict({k: v.astype(dtype) for k, v in self.state_dict().items()})
        return net

    def __repr__(self) -> str:
        return "Sequential([" + ", ".join(map(repr, self.layers)) + "])"
