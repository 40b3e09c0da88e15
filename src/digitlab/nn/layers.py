"""Layers and `Sequential`: forward and backward side by side, in NumPy (or CuPy, via `array_module`).

    import numpy as np
    from digitlab.nn.layers import Conv2D, Flatten, Linear, MaxPool2D, ReLU, Sequential
    rng = np.random.default_rng(0)
    net = Sequential([Conv2D(32, 3, padding="same"), ReLU(), MaxPool2D(2), Flatten(), Linear(out_features=10)],
                     input_shape=(28, 28), rng=rng)    # each layer builds its weights from its input shape
    scores = net.forward(x)            # (N, 28, 28) -> (N, 10); train=True caches what backward needs
    net.backward(dscores)              # fills every layer's gradients (dW, db, ...)
    params, grads = net.parameters(), net.grads()   # parallel lists of arrays for an optimizer
    scores = net.forward(x, train=False)            # inference: no caches, fresh output arrays

Shapes: every shape below leaves out the batch axis N. `layer.build(input_shape)` returns the layer's output
shape and creates its parameters (Keras' idea), so a network is described by its input shape and a list of
layers; `Sequential` builds them in order. Images are (H, W) or (H, W, C): channels last (NHWC), because the
im2col matrix (N*Ho*Wo, k*k*C) times the kernel (k*k*C, F) is then already the next layer's NHWC output with
no transpose, and the patch copy reads C contiguous values at a time (see docs/ARCHITECTURE.md for the
measurement).

Workspace: in training a layer writes its outputs and input-gradients into arrays of the network's
workspace (`Sequential` hands each layer a dict, `layer.ws`), reused while the batch shape stays the same:
an array returned by `forward(..., train=True)` is valid until the next train-mode forward. A layer never
writes into an array it was given. A layer used on its own (no workspace) and every inference call allocate
fresh arrays, so inference is safe between a training forward and its backward, and from several threads.

Gradient convention: `backward` OVERWRITES each gradient array with the gradient of the current batch;
nothing accumulates across calls, so a training step needs no `zero_grad()`. `backward(dy, need_dx=False)`
skips the input gradient (Sequential does so for its first parametrised layer: nobody needs d loss / d pixels).

State: `param_names` are trained (and saved), `buffer_names` are saved but not trained (BatchNorm's running
statistics), `decay_names` are the parameters weight decay applies to (weights, not biases or BatchNorm's
scale and shift).
"""

from __future__ import annotations

import copy
import math

import numpy as np

from digitlab.errors import ConfigError, TrainingError
from digitlab.nn.backend import array_module
from digitlab.nn.init import initialize


def _shape(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


class Layer:
    """Base class. Subclasses set `param_names` (and `buffer_names`) and implement _build/forward/backward."""

    param_names: tuple[str, ...] = ()
    buffer_names: tuple[str, ...] = ()
    decay_names: tuple[str, ...] = ()
    # Why the layer cannot run on part of a batch in a data-parallel shard (nn/shards.py), or "" if it can.
    not_shardable: str = ""

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.ws: dict | None = None     # workspace given by the network (train-mode buffers)
        self.init, self.rng = "zeros", None

    # -- building -------------------------------------------------------------------------------------
    def build(self, input_shape, rng=None) -> tuple[int, ...]:
        """Create the parameters for inputs of `input_shape` (no batch axis); returns the output shape.
        A layer already built for this shape keeps its parameters."""
        input_shape = _shape(input_shape)
        if self.input_shape is not None:
            if input_shape != self.input_shape:
                raise ConfigError(f"{self!r} was built for inputs of shape {self.input_shape}, got {input_shape}")
            return self.output_shape
        if rng is not None and self.rng is None:
            self.rng = rng
        shapes = self.param_shapes(input_shape)
        for name, shape in shapes.items():
            init = self.init if name in self.decay_names else "zeros"
            setattr(self, name, initialize(init, shape, self.rng, self.dtype))
            setattr(self, "d" + name, np.zeros(shape, dtype=self.dtype))
        self._after_build()
        self.input_shape, self.output_shape = input_shape, self.compute_output_shape(input_shape)
        return self.output_shape

    def param_shapes(self, input_shape) -> dict[str, tuple]:
        """{parameter name: shape} for inputs of `input_shape` (nothing allocated; file checks use it too)."""
        return {}

    def compute_output_shape(self, input_shape) -> tuple[int, ...]:
        return _shape(input_shape)

    def _after_build(self) -> None:
        pass

    def macs(self) -> int:
        """Multiply-adds per sample of the forward pass (0 for cheap elementwise layers)."""
        return 0

    # -- state ----------------------------------------------------------------------------------------
    def parameters(self) -> list:
        return [getattr(self, n) for n in self.param_names]

    def grads(self) -> list:
        return [getattr(self, "d" + n) for n in self.param_names]

    def buffers(self) -> list:
        return [getattr(self, n) for n in self.buffer_names]

    def spec(self) -> dict:
        return {"type": type(self).__name__}

    @classmethod
    def from_spec(cls, spec: dict, rng=None, dtype=np.float32):
        return cls()

    def replica(self) -> "Layer":
        """A copy sharing the parameters and buffers, with its own gradients, caches and workspace."""
        new = copy.copy(self)
        for name in self.param_names:
            grad = getattr(self, "d" + name)
            setattr(new, "d" + name, array_module(grad).zeros_like(grad))
        new.ws = None
        return new

    def add_grads(self, other: "Layer") -> None:
        """Add a replica's gradients to this layer's (data-parallel shards sum their parts' gradients)."""
        for g, g_other in zip(self.grads(), other.grads()):
            g += g_other

    def _buf(self, key, shape, dtype, xp, train=True, zero=False):
        """A workspace array in training (reused while shape and dtype stay), a fresh one otherwise.
        zero=True: zeroed when (re)allocated only (for buffers whose untouched border must stay 0)."""
        make = xp.zeros if zero else xp.empty
        if not train or self.ws is None:
            return make(shape, dtype=dtype)
        buf = self.ws.get(key)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or array_module(buf) is not xp:
            buf = self.ws[key] = make(shape, dtype=dtype)
        return buf

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "type")
        return f"{type(self).__name__}({args})"


def _ones(layer, n, dtype, xp):
    """A ones vector (n,), kept in the workspace: column sums as one BLAS product (faster than .sum(0))."""
    store = layer.ws if layer.ws is not None else {}
    key = ("ones", n, np.dtype(dtype).str)
    if key not in store:
        store[key] = xp.ones(n, dtype=dtype)
    return store[key]


# Linear skips the input columns that are 0 in every sample of a batch when at least this fraction of them
# are: their rows of W add nothing to y and get a gradient of exactly 0 (for finite W: the full product would
# turn 0 * inf into NaN), so both products shrink by that fraction, for the cost of gathering the live columns
# of x and rows of W and scattering dW back. Pixels are the case it is for (a batch of 64 MNIST digits leaves
# ~38 % of the 784 pixels 0 in every image: the border); below about a quarter the gathers cost more than the
# smaller products save (BENCHMARKS.md).
SPARSE_INPUT_MIN_ZERO = 0.25


def _live_columns(x):
    """(live, cols): the columns of x (N, in) that are non-zero in some sample (NaN counts as non-zero), as an
    (in,) bool mask and as (k,) indices; (None, None) (use every column) when fewer than SPARSE_INPUT_MIN_ZERO
    of them are zero throughout."""
    live = (x != 0).any(axis=0)                          # (in,)
    cols = np.flatnonzero(live)                          # (k,)
    return (live, cols) if len(cols) <= (1.0 - SPARSE_INPUT_MIN_ZERO) * len(live) else (None, None)


class Linear(Layer):
    """y = x @ W + b with W (in, out) on flat inputs (N, in). `Linear(out_features=10)` takes `in` from build.
    A batch whose inputs are 0 in many columns (pixels) is multiplied on its non-zero columns only (exact)."""

    decay_names = ("W",)

    def __init__(self, in_features: int | None = None, out_features: int | None = None, bias: bool = True,
                 init="he_normal", rng: np.random.Generator | None = None, dtype=np.float32):
        super().__init__(dtype)
        if out_features is None or int(out_features) < 1:
            raise ConfigError(f"Linear needs out_features >= 1, got {out_features!r}")
        self.out_features, self.bias, self.init, self.rng = int(out_features), bool(bias), init, rng
        self.param_names = ("W", "b") if bias else ("W",)
        self.declared_in = None if in_features is None else int(in_features)   # "in" of a spec, checked at build
        self.b = self.db = None
        self._x = self._live = self._cols = None
        self._dW_rows = None   # after a sparse backward: the rows of dW it wrote (all others are 0); None: any
        if in_features is not None:
            self.build((int(in_features),))

    def param_shapes(self, input_shape):
        if len(input_shape) != 1:
            raise ConfigError(f"Linear needs flat inputs, got shape {input_shape} (put a Flatten before it)")
        if self.declared_in is not None and input_shape[0] != self.declared_in:
            raise ConfigError(f"Linear declares {self.declared_in} inputs but gets {input_shape[0]}")
        shapes = {"W": (input_shape[0], self.out_features)}
        if self.bias:
            shapes["b"] = (self.out_features,)
        return shapes

    def compute_output_shape(self, input_shape):
        return (self.out_features,)

    def macs(self) -> int:
        return int(self.W.size)

    def forward(self, x, train=True):
        xp = array_module(x)
        n, (n_in, n_out) = len(x), self.W.shape
        y = self._buf("y", (n, n_out), self.W.dtype, xp, train)
        live, cols = _live_columns(x) if xp is np else (None, None)   # GPU: always dense (its products are cheap)
        if cols is None:
            xp.matmul(x, self.W, out=y)                  # (N, in) @ (in, out) -> (N, out)
        else:                                            # columns that are 0 in every sample add nothing to y
            k = len(cols)
            # mode="clip": the indices are valid by construction, and "raise" would copy through a buffer
            x = x.take(cols, axis=1, mode="clip",        # (N, k): the live columns
                       out=self._buf("x_live", (n * n_in,), x.dtype, xp, train)[:n * k].reshape(n, k))
            W = self.W.take(cols, axis=0, mode="clip",   # (k, out): their rows of W
                            out=self._buf("W_live", (n_in, n_out), self.W.dtype, xp, train)[:k])
            np.matmul(x, W, out=y)                       # (N, k) @ (k, out) -> (N, out)
        if self.b is not None:
            y += self.b                                  # (N, out) + (out,)
        if train:
            self._x, self._live, self._cols = x, live, cols   # for dW = x^T dy (x: the live columns if cols)
        return y

    def backward(self, dy, need_dx=True):
        xp = array_module(dy)
        if self._cols is None:
            xp.matmul(self._x.T, dy, out=self.dW)        # (in, N) @ (N, out) -> (in, out)
            self._dW_rows = None
        else:
            dW_live = self._buf("dW_live", self.W.shape, dy.dtype, xp)[:len(self._cols)]
            xp.matmul(self._x.T, dy, out=dW_live)        # (k, N) @ (N, out) -> (k, out)
            # The rows of the all-zero columns get exactly 0: only those the last backward wrote need clearing
            # (backward is the one writer of dW, add_grads widens _dW_rows, zero_grad leaves zeros): a few rows
            # instead of all of dW.
            dead = ~self._live if self._dW_rows is None else self._dW_rows & ~self._live     # (in,)
            self.dW[dead] = 0
            self.dW[self._cols] = dW_live                # (in, out)
            self._dW_rows = self._live
        if self.b is not None:
            xp.matmul(_ones(self, len(dy), dy.dtype, xp), dy, out=self.db)   # (N,) @ (N, out) -> (out,)
        if not need_dx:
            return None
        dx = self._buf("dx", (len(dy), self.W.shape[0]), dy.dtype, xp)
        return xp.matmul(dy, self.W.T, out=dx)           # (N, out) @ (out, in) -> (N, in)

    def add_grads(self, other: "Layer") -> None:
        super().add_grads(other)
        if self._dW_rows is not None:   # dW may now be non-zero where the other's last backward wrote too
            self._dW_rows = None if other._dW_rows is None else self._dW_rows | other._dW_rows

    def spec(self) -> dict:
        spec = {"type": "Linear"}
        if self.input_shape is not None:
            spec["in"] = int(self.input_shape[0])
        return {**spec, "out": self.out_features, "bias": self.bias}

    @classmethod
    def from_spec(cls, spec, rng=None, dtype=np.float32):
        layer = cls(None, int(spec["out"]), bias=bool(spec.get("bias", True)),
                    init=spec.get("init", "he_normal") if rng is not None else "zeros", rng=rng, dtype=dtype)
        layer.declared_in = None if spec.get("in") is None else int(spec["in"])   # built by Sequential
        return layer


class Conv2D(Layer):
    """2-D convolution on NHWC images: im2col (one strided view copied into one matrix) and one GEMM.

    W (k, k, C, F), b (F,). padding "valid" (no padding) or "same" (output ceil(H / stride), zeros split like
    TensorFlow: the extra row/column goes after). Inputs (N, H, W) are taken as one channel.
    Backward: dW = cols^T @ dY, dX by col2im as k*k strided slice-adds into a padded buffer.
    """

    param_names = ("W", "b")
    decay_names = ("W",)

    def __init__(self, filters: int, kernel: int = 3, stride: int = 1, padding: str = "valid", bias: bool = True,
                 init="he_normal", rng: np.random.Generator | None = None, dtype=np.float32):
        super().__init__(dtype)
        if padding not in ("valid", "same"):
            raise ConfigError(f"Conv2D padding must be 'valid' or 'same', got {padding!r}")
        if min(int(filters), int(kernel), int(stride)) < 1:
            raise ConfigError(f"Conv2D needs filters, kernel and stride >= 1, got {filters}, {kernel}, {stride}")
        self.filters, self.kernel, self.stride, self.padding = int(filters), int(kernel), int(stride), padding
        self.bias, self.init, self.rng = bool(bias), init, rng
        self.param_names = ("W", "b") if bias else ("W",)
        self.b = self.db = None

    def _geometry(self, input_shape):
        """(H, W, C, Ho, Wo, pad_top, pad_left, Hp, Wp): sizes of the input, output and padded input."""
        if len(input_shape) not in (2, 3):
            raise ConfigError(f"Conv2D needs images (H, W) or (H, W, C), got shape {input_shape}")
        h, w, c = (*input_shape, 1)[:3]
        k, s = self.kernel, self.stride
        if self.padding == "same":
            ho, wo = -(-h // s), -(-w // s)
            ph, pw = max((ho - 1) * s + k - h, 0), max((wo - 1) * s + k - w, 0)
        else:
            ho, wo, ph, pw = (h - k) // s + 1, (w - k) // s + 1, 0, 0
        if ho < 1 or wo < 1:
            raise ConfigError(f"Conv2D kernel {k} does not fit images of {h}x{w}")
        return h, w, c, ho, wo, ph // 2, pw // 2, (ho - 1) * s + k, (wo - 1) * s + k

    def param_shapes(self, input_shape):
        c = self._geometry(input_shape)[2]
        shapes = {"W": (self.kernel, self.kernel, c, self.filters)}
        if self.bias:
            shapes["b"] = (self.filters,)
        return shapes

    def compute_output_shape(self, input_shape):
        g = self._geometry(input_shape)
        return (g[3], g[4], self.filters)

    def macs(self) -> int:
        return int(self.output_shape[0] * self.output_shape[1] * self.W.size)

    def forward(self, x, train=True):
        xp = array_module(x)
        h, w, c, ho, wo, pt, pl, hp, wp = self._geometry(self.input_shape)
        n, k, s = x.shape[0], self.kernel, self.stride
        x = x.reshape(n, h, w, c)                                          # (N, H, W) -> (N, H, W, C), a view
        if (pt, pl, hp, wp) != (0, 0, h, w):                               # zero border, centre rewritten
            xpad = self._buf("xpad", (n, hp, wp, c), x.dtype, xp, train, zero=True)
            rows, cols_ = min(h, hp - pt), min(w, wp - pl)
            xpad[:, pt:pt + rows, pl:pl + cols_] = x[:, :rows, :cols_]    # (N, Hp, Wp, C)
            x = xpad
        sn, sh, sw, sc = x.strides
        patches = xp.lib.stride_tricks.as_strided(                         # (N, Ho, Wo, k, k, C), a view
            x, (n, ho, wo, k, k, c), (sn, s * sh, s * sw, sh, sw, sc))     # only read (CuPy has no writeable=)
        # With a bias, cols gets a column of ones and the kernel matrix a row b, so the GEMM adds the bias
        # (one pass less over the output) and backward's cols^T @ dY gives db with dW.
        kkc, nb, f = k * k * c, int(self.b is not None), self.filters
        cols = self._buf("cols", (n * ho * wo, kkc + nb), x.dtype, xp, train)  # (M, kkC [+ 1])
        cols[:, :kkc].reshape(n, ho, wo, k, k, c)[...] = patches           # im2col: the one copy (into a view)
        wb = self.W.reshape(kkc, f)                                        # (kkC, F)
        if nb:
            cols[:, kkc] = 1
            wb = xp.concatenate([wb, self.b[None]])                        # (kkC + 1, F): [W; b]
        y = self._buf("y", (n, ho, wo, f), x.dtype, xp, train)
        xp.matmul(cols, wb, out=y.reshape(-1, f))                          # (M, kkC [+ 1]) @ (., F) -> (M, F)
        if train:
            self._cols, self._n = cols, n
        return y

    def backward(self, dy, need_dx=True):
        xp = array_module(dy)
        h, w, c, ho, wo, pt, pl, hp, wp = self._geometry(self.input_shape)
        n, k, s, f = self._n, self.kernel, self.stride, self.filters
        dy2 = dy.reshape(n * ho * wo, f)                                   # (M, F)
        if self.b is None:
            xp.matmul(self._cols.T, dy2, out=self.dW.reshape(-1, f))       # (kkC, M) @ (M, F) -> (kkC, F)
        else:                                                              # [dW; db] in one product
            dwb = xp.matmul(self._cols.T, dy2, out=self._buf("dwb", (k * k * c + 1, f), dy.dtype, xp))
            self.dW[...] = dwb[:-1].reshape(self.dW.shape)
            self.db[...] = dwb[-1]
        if not need_dx:
            return None
        # dX: one (M, C) block of d cols per kernel offset (one batched GEMM), each added onto its shifted slice
        wk = self.W.reshape(k * k, c, f).transpose(0, 2, 1)                # (kk, F, C), a view
        dcols = self._buf("dcols", (k * k, n * ho * wo, c), dy.dtype, xp)
        xp.matmul(dy2, wk, out=dcols)                                      # (M, F) @ (kk, F, C) -> (kk, M, C)
        dxpad = self._buf("dxpad", (n, hp, wp, c), dy.dtype, xp)
        dxpad.fill(0)
        for i in range(k):                                                 # col2im: k*k contiguous slice-adds
            for j in range(k):
                dxpad[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] += dcols[i * k + j].reshape(n, ho, wo, c)
        if (pt, pl, hp, wp) == (0, 0, h, w):
            dx = dxpad
        else:                                                              # (N, H, W, C): drop the padding
            dx = self._buf("dx", (n, h, w, c), dy.dtype, xp, zero=True)
            rows, cols_ = min(h, hp - pt), min(w, wp - pl)
            dx[:, :rows, :cols_] = dxpad[:, pt:pt + rows, pl:pl + cols_]
        return dx.reshape(n, *self.input_shape)

    def spec(self) -> dict:
        return {"type": "Conv2D", "filters": self.filters, "kernel": self.kernel, "stride": self.stride,
                "padding": self.padding, "bias": self.bias}

    @classmethod
    def from_spec(cls, spec, rng=None, dtype=np.float32):
        return cls(int(spec["filters"]), int(spec.get("kernel", 3)), int(spec.get("stride", 1)),
                   str(spec.get("padding", "valid")), bias=bool(spec.get("bias", True)),
                   init=spec.get("init", "he_normal") if rng is not None else "zeros", rng=rng, dtype=dtype)


class _Pool2D(Layer):
    """Non-overlapping p x p pooling (stride p) on NHWC images; trailing rows/columns that do not fill a
    window are dropped (like Keras' "valid")."""

    def __init__(self, pool: int = 2, dtype=np.float32):
        super().__init__(dtype)
        if int(pool) < 1:
            raise ConfigError(f"pool size must be >= 1, got {pool}")
        self.pool = int(pool)

    def compute_output_shape(self, input_shape):
        if len(input_shape) not in (2, 3):
            raise ConfigError(f"{type(self).__name__} needs images (H, W) or (H, W, C), got shape {input_shape}")
        h, w, c = (*input_shape, 1)[:3]
        if h < self.pool or w < self.pool:
            raise ConfigError(f"{type(self).__name__}({self.pool}) does not fit images of {h}x{w}")
        return (h // self.pool, w // self.pool, c)

    def _windows(self, x):
        """x (N, H, W[, C]) -> (N, Ho, p, Wo, p, C), a view of the part the windows cover."""
        ho, wo, c = self.output_shape
        p = self.pool
        x = x.reshape(len(x), *self.input_shape[:2], c)[:, :ho * p, :wo * p]
        return x.reshape(len(x), ho, p, wo, p, c)

    def _dx(self, dwin, xp):
        """(N, Ho, p, Wo, p, C) gradient of the windows -> (N, *input_shape), zeros where no window reaches."""
        n, (ho, wo, c), p = len(dwin), self.output_shape, self.pool
        h, w = self.input_shape[:2]
        if (h, w) == (ho * p, wo * p):
            return dwin.reshape(n, *self.input_shape)
        dx = self._buf("dx", (n, h, w, c), dwin.dtype, xp, zero=True)
        dx[:, :ho * p, :wo * p] = dwin.reshape(n, ho * p, wo * p, c)
        return dx.reshape(n, *self.input_shape)

    def spec(self) -> dict:
        return {"type": type(self).__name__, "pool": self.pool}

    @classmethod
    def from_spec(cls, spec, rng=None, dtype=np.float32):
        return cls(int(spec.get("pool", 2)), dtype=dtype)


class MaxPool2D(_Pool2D):
    """Max over each p x p window; the gradient goes to ONE element per window (the first maximum)."""

    def forward(self, x, train=True):
        xp = array_module(x)
        win = self._windows(x)                                   # (N, Ho, p, Wo, p, C)
        if self.pool == 2:
            return self._forward2(win, train, xp)
        y = win.max(axis=(2, 4))                                 # (N, Ho, Wo, C)
        if train:                                                # mask of the first maximum of each window
            mask = self._buf("mask", win.shape, bool, xp)
            free = self._buf("free", y.shape, bool, xp)          # windows whose maximum is not yet taken
            free.fill(True)
            for a in range(self.pool):                           # p*p window positions, not output pixels
                for b in range(self.pool):
                    hit = mask[:, :, a, :, b]
                    xp.equal(win[:, :, a, :, b], y, out=hit)
                    hit &= free
                    free &= ~hit
            self._mask = mask
        return y

    def _forward2(self, win, train, xp):
        """2 x 2 windows by pairwise maxima (a reduction over two short axes is ~3x slower); the mask marks the
        first maximum in row-major order: the right column only if strictly larger, the lower row likewise."""
        left, right = win[:, :, :, :, 0], win[:, :, :, :, 1]    # (N, Ho, 2, Wo, C) each, views
        rowmax = xp.maximum(left, right)                         # (N, Ho, 2, Wo, C): max of each window row
        y = self._buf("y", rowmax[:, :, 0].shape, win.dtype, xp, train)
        xp.maximum(rowmax[:, :, 0], rowmax[:, :, 1], out=y)      # (N, Ho, Wo, C)
        if train:
            r = xp.greater(right, left)                          # (N, Ho, 2, Wo, C): row's max is on the right
            low = xp.greater(rowmax[:, :, 1], rowmax[:, :, 0])   # (N, Ho, Wo, C): window's max is in the low row
            mask = self._buf("mask", win.shape, bool, xp)        # (N, Ho, 2, Wo, 2, C); a > b is a and not b
            xp.logical_not(xp.logical_or(r[:, :, 0], low), out=mask[:, :, 0, :, 0])
            xp.greater(r[:, :, 0], low, out=mask[:, :, 0, :, 1])
            xp.greater(low, r[:, :, 1], out=mask[:, :, 1, :, 0])
            xp.logical_and(r[:, :, 1], low, out=mask[:, :, 1, :, 1])
            self._mask = mask
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        xp = array_module(dy)
        dwin = self._buf("dwin", self._mask.shape, dy.dtype, xp)
        xp.multiply(self._mask, dy[:, :, None, :, None], out=dwin)    # (N, Ho, p, Wo, p, C)
        return self._dx(dwin, xp)


class AvgPool2D(_Pool2D):
    """Mean over each p x p window."""

    def forward(self, x, train=True):
        return self._windows(x).mean(axis=(2, 4))                # (N, Ho, Wo, C)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        xp = array_module(dy)
        n, (ho, wo, c), p = len(dy), self.output_shape, self.pool
        dwin = self._buf("dwin", (n, ho, p, wo, p, c), dy.dtype, xp)
        xp.multiply(dy[:, :, None, :, None], dy.dtype.type(1.0 / (p * p)), out=dwin)
        return self._dx(dwin, xp)


class GlobalAvgPool(Layer):
    """(N, H, W, C) -> (N, C): the mean of each channel over the image."""

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ConfigError(f"GlobalAvgPool needs images (H, W, C), got shape {input_shape}")
        return (input_shape[2],)

    def forward(self, x, train=True):
        return x.mean(axis=(1, 2))                               # (N, C)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        xp = array_module(dy)
        h, w, c = self.input_shape
        dx = self._buf("dx", (len(dy), h, w, c), dy.dtype, xp)
        xp.multiply(dy[:, None, None, :], dy.dtype.type(1.0 / (h * w)), out=dx)   # (N, H, W, C)
        return dx


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)), a view."""

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x, train=True):
        return x.reshape(len(x), -1)

    def backward(self, dy, need_dx=True):
        return dy.reshape(len(dy), *self.input_shape) if need_dx else None


class BatchNorm(Layer):
    """Batch normalisation over every axis but the last (features of (N, D), channels of (N, H, W, C)).

    Training: y = gamma * (x - mean) / sqrt(var + eps) + beta with the batch's mean and (biased) variance,
    and running_mean/var <- momentum * running + (1 - momentum) * batch (unbiased variance, like PyTorch).
    Inference uses the running statistics (buffers: saved in model files, not trained).
    """

    param_names = ("gamma", "beta")
    buffer_names = ("running_mean", "running_var")
    not_shardable = "its statistics are over the whole batch"

    def __init__(self, momentum: float = 0.9, eps: float = 1e-5, dtype=np.float32):
        super().__init__(dtype)
        if not 0.0 <= float(momentum) < 1.0 or float(eps) <= 0:
            raise ConfigError(f"BatchNorm needs 0 <= momentum < 1 and eps > 0, got {momentum}, {eps}")
        self.momentum, self.eps = float(momentum), float(eps)

    def param_shapes(self, input_shape):
        return {"gamma": (input_shape[-1],), "beta": (input_shape[-1],)}

    def _after_build(self):
        self.gamma[...] = 1
        self.running_mean = np.zeros_like(self.gamma)
        self.running_var = np.ones_like(self.gamma)

    def forward(self, x, train=True):
        xp = array_module(x)
        axes = tuple(range(x.ndim - 1))
        if not train:
            inv = (self.gamma / xp.sqrt(self.running_var + self.eps)).astype(x.dtype)     # (C,)
            return x * inv + (self.beta - self.running_mean * inv)                     # (N, ..., C)
        m = x.size // x.shape[-1]                                                       # values per channel
        mean = x.mean(axis=axes)                                                        # (C,)
        xc = xp.subtract(x, mean, out=self._buf("xhat", x.shape, x.dtype, xp))          # (N, ..., C)
        var = xp.mean(xc * xc, axis=axes)                                               # (C,)
        self._inv = 1.0 / xp.sqrt(var + self.eps)                                       # (C,)
        self._xhat = xc
        xc *= self._inv                                                                 # x-hat, in place
        y = xp.multiply(xc, self.gamma, out=self._buf("y", x.shape, x.dtype, xp))
        y += self.beta
        mu = self.momentum
        self.running_mean[...] = mu * self.running_mean + (1 - mu) * mean
        self.running_var[...] = mu * self.running_var + (1 - mu) * var * (m / max(m - 1, 1))
        return y

    def backward(self, dy, need_dx=True):
        xp = array_module(dy)
        axes = tuple(range(dy.ndim - 1))
        m = dy.size // dy.shape[-1]
        xhat = self._xhat
        xp.sum(dy, axis=axes, out=self.dbeta)                                           # (C,)
        xp.sum(dy * xhat, axis=axes, out=self.dgamma)                                   # (C,)
        if not need_dx:
            return None
        # dx = gamma * inv / m * (m dy - sum(dy) - xhat * sum(dy xhat))
        dx = xp.multiply(xhat, self.dgamma / m, out=self._buf("dx", dy.shape, dy.dtype, xp))
        dx += self.dbeta / m
        xp.subtract(dy, dx, out=dx)
        dx *= self.gamma * self._inv
        return dx

    def spec(self) -> dict:
        return {"type": "BatchNorm", "momentum": self.momentum, "eps": self.eps}

    @classmethod
    def from_spec(cls, spec, rng=None, dtype=np.float32):
        return cls(float(spec.get("momentum", 0.9)), float(spec.get("eps", 1e-5)), dtype=dtype)


class ReLU(Layer):
    """y = max(x, 0); in training x * (x > 0) with the mask kept for backward, which is dy * mask.
    The mask is 0/1 in x's float type, not bool: multiplying two float arrays is the faster loop."""

    def forward(self, x, train=True):
        xp = array_module(x)
        if not train:
            return xp.maximum(x, 0)
        self._mask = xp.greater(x, 0, out=self._buf("mask", x.shape, x.dtype, xp))      # (N, ...) 0.0 / 1.0
        return xp.multiply(x, self._mask, out=self._buf("y", x.shape, x.dtype, xp))

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        xp = array_module(dy)
        return xp.multiply(dy, self._mask, out=self._buf("dx", dy.shape, dy.dtype, xp))


class LeakyReLU(Layer):
    """y = x for x > 0, slope * x otherwise (0 < slope < 1)."""

    def __init__(self, slope: float = 0.01, dtype=np.float32):
        super().__init__(dtype)
        if not 0.0 < float(slope) < 1.0:
            raise ConfigError(f"LeakyReLU slope must be between 0 and 1, got {slope}")
        self.slope = float(slope)

    def forward(self, x, train=True):
        xp = array_module(x)
        y = xp.multiply(x, self.slope, out=self._buf("y", x.shape, x.dtype, xp, train))
        xp.maximum(x, y, out=y)                          # x where x > 0, slope*x elsewhere
        if train:
            self._y = y
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        xp = array_module(dy)
        local = xp.where(self._y > 0, 1.0, self.slope).astype(dy.dtype, copy=False)   # (N, ...)
        return xp.multiply(dy, local, out=self._buf("dx", dy.shape, dy.dtype, xp))

    def spec(self) -> dict:
        return {"type": "LeakyReLU", "slope": self.slope}

    @classmethod
    def from_spec(cls, spec, rng=None, dtype=np.float32):
        return cls(float(spec.get("slope", 0.01)), dtype=dtype)


def stable_sigmoid(x, out=None):
    """1 / (1 + exp(-x)) without overflow for any |x|: exp only ever sees -|x|."""
    xp = array_module(x)
    e = xp.exp(-xp.abs(x))                               # (N, D) in (0, 1]
    num = xp.where(x >= 0, 1.0, e).astype(x.dtype, copy=False)
    return xp.divide(num, 1.0 + e, out=out)


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)), computed stably; backward dy * y * (1 - y)."""

    def forward(self, x, train=True):
        y = stable_sigmoid(x, out=self._buf("y", x.shape, x.dtype, array_module(x), train))
        if train:
            self._y = y
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        xp = array_module(dy)
        dx = xp.subtract(1, self._y, out=self._buf("dx", dy.shape, dy.dtype, xp))    # 1 - y
        dx *= self._y
        dx *= dy
        return dx


class Tanh(Layer):
    """y = tanh(x); backward dy * (1 - y^2)."""

    def forward(self, x, train=True):
        xp = array_module(x)
        y = xp.tanh(x, out=self._buf("y", x.shape, x.dtype, xp, train))
        if train:
            self._y = y
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        xp = array_module(dy)
        dx = xp.multiply(self._y, self._y, out=self._buf("dx", dy.shape, dy.dtype, xp))  # y^2
        xp.subtract(1, dx, out=dx)
        dx *= dy
        return dx


class Dropout(Layer):
    """Inverted dropout on any shape (dense or conv outputs): in training zero each value with probability p
    and scale the rest by 1/(1-p); inference is the identity. `hold_mask = True` reuses the last mask (for
    gradient checks). The mask costs 32 random bits per value, two per 64-bit output of the generator: a
    value is dropped when its bits are below round(p * 2^32), i.e. with probability p to within 2^-33.
    """

    not_shardable = "its masks come from one random stream in batch order"

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None, dtype=np.float32):
        super().__init__(dtype)
        if not 0.0 <= float(p) < 1.0:
            raise ConfigError(f"Dropout probability must be in [0, 1), got {p}")
        self.p, self.rng, self.hold_mask = float(p), rng, False
        self._threshold = np.uint32(min(round(self.p * 2**32), 2**32 - 1))   # drop when bits < threshold
        self._mask = None

    def forward(self, x, train=True):
        if not train:
            return x                                     # inference: identity, the training mask untouched
        if self.p == 0.0:
            self._mask = None
            return x
        xp = array_module(x)
        if not (self.hold_mask and self._mask is not None and self._mask.shape == x.shape):
            self._mask = xp.asarray(self._draw_mask(x.shape, x.dtype))
        return xp.multiply(x, self._mask, out=self._buf("y", x.shape, x.dtype, xp))

    def _draw_mask(self, shape, dtype):
        """Array of `shape`: 1/(1-p) for kept values, 0 for dropped ones (a reused NumPy buffer)."""
        if not isinstance(self.rng, np.random.Generator):
            raise TrainingError("Dropout needs a numpy.random.Generator to train (build it with rng=...)")
        n = math.prod(shape)
        words = self.rng.bit_generator.random_raw((n + 1) // 2)                      # (ceil(n/2),) uint64
        bits = words.view(np.uint32)[:n].reshape(shape)                              # uint32
        mask = self._buf("mask", shape, dtype, np)
        np.greater_equal(bits, self._threshold, out=mask)                           # 1.0 kept, 0.0 dropped
        mask *= mask.dtype.type(1.0 / (1.0 - self.p))
        return mask

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        if self._mask is None:
            return dy
        xp = array_module(dy)
        return xp.multiply(dy, self._mask, out=self._buf("dx", dy.shape, dy.dtype, xp))

    def spec(self) -> dict:
        return {"type": "Dropout", "p": self.p}

    @classmethod
    def from_spec(cls, spec, rng=None, dtype=np.float32):
        return cls(float(spec.get("p", 0.5)), rng=rng, dtype=dtype)


LAYER_TYPES = {cls.__name__: cls for cls in (Linear, Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool, Flatten,
                                             BatchNorm, ReLU, LeakyReLU, Sigmoid, Tanh, Dropout)}
ACTIVATIONS = {"relu": ReLU, "leaky_relu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh}


class Sequential:
    """A list of layers applied in order, built for `input_shape`; owns the training workspace."""

    def __init__(self, layers, input_shape=None, rng: np.random.Generator | None = None):
        self.layers = list(layers)
        if input_shape is None:  # e.g. Sequential([Linear(784, 300), ...]): the first layer knows its input
            first = self.layers[0].input_shape if self.layers else None
            if first is None:
                raise ConfigError("Sequential needs input_shape= (its first layer does not know its input)")
            input_shape = first
        self.input_shape = _shape(input_shape)
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.build(shape, rng=rng)
            except ConfigError as exc:
                raise ConfigError(f"layer {i} ({type(layer).__name__}): {exc}") from None
        self.output_shape = shape
        params = self.parameters()
        self.dtype = params[0].dtype if params else np.dtype(np.float32)   # fixed: load_state_dict keeps it
        self._own_workspace()
        first = next((i for i, l in enumerate(self.layers) if l.param_names), len(self.layers))
        self._first_param = first   # layers up to and including this one need no input gradient

    def _own_workspace(self) -> None:
        self.workspace: dict[int, dict] = {i: {} for i in range(len(self.layers))}
        for i, layer in enumerate(self.layers):
            layer.ws = self.workspace[i]

    def replica(self) -> "Sequential":
        """A network sharing this one's parameters and buffers, with its own gradients, caches and workspace
        (one per data-parallel shard: digitlab.nn.shards)."""
        net = copy.copy(self)
        net.layers = [layer.replica() for layer in self.layers]
        net._own_workspace()
        return net

    # -- computation ----------------------------------------------------------------------------------
    def forward(self, x, train: bool = True):
        """(N, *input_shape) -> (N, *output_shape) scores. train=True caches what backward needs.
        Inputs with the same number of values per sample are reshaped (e.g. (N, 28, 28) for a net on (784,))."""
        xp = array_module(x)
        x = xp.asarray(x)
        if x.shape[1:] != self.input_shape:
            if math.prod(x.shape[1:]) != self.input_dim:
                raise ValueError(f"inputs of shape {x.shape[1:]} do not fit a network on {self.input_shape}")
            x = x.reshape(len(x), *self.input_shape)
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

    def macs(self) -> int:
        """Multiply-adds per sample of a forward pass (the matrix products of Linear and Conv2D layers)."""
        return sum(layer.macs() for layer in self.layers)

    # -- parameters and buffers -----------------------------------------------------------------------
    def parameters(self) -> list:
        return [p for layer in self.layers for p in layer.parameters()]

    def grads(self) -> list:
        return [g for layer in self.layers for g in layer.grads()]

    def param_names(self) -> list[str]:
        return [f"{i}.{n}" for i, layer in enumerate(self.layers) for n in layer.param_names]

    def buffer_names(self) -> list[str]:
        return [f"{i}.{n}" for i, layer in enumerate(self.layers) for n in layer.buffer_names]

    def decay_flags(self) -> list[bool]:
        """Parallel to parameters(): True for weights (weight decay applies), False for biases and BatchNorm."""
        return [n in layer.decay_names for layer in self.layers for n in layer.param_names]

    def zero_grad(self) -> None:
        for g in self.grads():
            g[...] = 0

    def state_dict(self) -> dict:
        """{"1.W": array, "1.b": array, "3.running_mean": ...}: parameters and buffers, what a model file stores."""
        names = self.param_names() + self.buffer_names()
        arrays = self.parameters() + [b for layer in self.layers for b in layer.buffers()]
        return dict(zip(names, arrays))

    def load_state_dict(self, tensors: dict) -> None:
        """Copy arrays into parameters and buffers; ValueError naming the tensor when one is missing or mismatched."""
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
    def input_dim(self) -> int:
        """Values per input sample (784 for 28x28 images)."""
        return math.prod(self.input_shape)

    @property
    def output_dim(self) -> int | None:
        return self.output_shape[0] if len(self.output_shape) == 1 else None

    # -- architecture as data -------------------------------------------------------------------------
    def spec(self) -> list[dict]:
        """The JSON architecture list, e.g. [{"type": "Flatten"}, {"type": "Linear", "in": 784, "out": 300, ...}]."""
        return [layer.spec() for layer in self.layers]

    @staticmethod
    def layers_from_spec(spec, rng=None, dtype=np.float32) -> list:
        """Unbuilt layers from a spec list; ConfigError naming the entry for an unknown type or a bad entry.
        With `rng` the weights get each entry's "init" (or the layer's default), without it zeros (loading)."""
        if not isinstance(spec, (list, tuple)) or not spec:
            raise ConfigError("architecture must be a non-empty list of layers")
        layers = []
        for i, entry in enumerate(spec):
            kind = entry.get("type") if isinstance(entry, dict) else None
            if kind not in LAYER_TYPES:
                raise ConfigError(f"layer {i}: unknown layer type {kind!r}; known: {', '.join(LAYER_TYPES)}")
            try:
                layers.append(LAYER_TYPES[kind].from_spec(entry, rng=rng, dtype=dtype))
            except (KeyError, TypeError, ValueError, ConfigError) as exc:
                raise ConfigError(f"layer {i} ({kind}): invalid entry {entry!r} ({exc})") from None
        return layers

    @classmethod
    def from_spec(cls, spec: list, input_shape=None, rng: np.random.Generator | None = None,
                  dtype=np.float32) -> "Sequential":
        """Rebuild from `spec()` for inputs of `input_shape` (zero weights unless rng is given).

        Files written before Flatten existed start with a Linear whose "in" is the flattened image: such a
        network takes flat inputs, and its Classifier flattens images for it.
        """
        layers = cls.layers_from_spec(spec, rng=rng, dtype=dtype)
        return cls(layers, input_shape=_net_input_shape(layers, input_shape), rng=rng)

    def astype(self, dtype) -> "Sequential":
        """A copy with every parameter and buffer cast to `dtype` (e.g. float64 for gradient checks)."""
        net = Sequential.from_spec(self.spec(), input_shape=self.input_shape, dtype=dtype)
        for src, dst in zip(self.layers, net.layers):
            if isinstance(src, Dropout):
                dst.rng = src.rng
        net.load_state_dict({k: v.astype(dtype) for k, v in self.state_dict().items()})
        return net

    def __repr__(self) -> str:
        return f"Sequential([{', '.join(map(repr, self.layers))}], input_shape={self.input_shape})"


def param_shapes(spec, input_shape) -> dict[str, tuple]:
    """{"1.W": (784, 144), ...}: the parameter and buffer shapes `spec` needs for inputs of `input_shape`,
    computed without allocating anything (model files are checked against it before any weights are made).
    ConfigError for a spec that cannot be built."""
    layers = Sequential.layers_from_spec(spec)
    shape, shapes = _net_input_shape(layers, input_shape), {}
    for i, layer in enumerate(layers):
        try:
            for name, s in layer.param_shapes(shape).items():
                shapes[f"{i}.{name}"] = _shape(s)
            if layer.buffer_names:                      # buffers have the shape of the first parameter
                for name in layer.buffer_names:
                    shapes[f"{i}.{name}"] = shapes[f"{i}.{layer.param_names[0]}"]
            shape = _shape(layer.compute_output_shape(shape))
        except ConfigError as exc:
            raise ConfigError(f"layer {i} ({type(layer).__name__}): {exc}") from None
    return shapes


def _net_input_shape(layers, input_shape) -> tuple[int, ...]:
    """The input shape of a network made of `layers` for images of `input_shape`: a first Linear with a
    declared "in" (files written before Flatten existed) takes the flattened image."""
    ok = isinstance(input_shape, (list, tuple)) and 1 <= len(input_shape) <= 3 and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in input_shape)
    if input_shape is not None and not ok:
        raise ConfigError(f"input_shape {input_shape!r} must be a list of 1 to 3 positive sizes")
    first = layers[0]
    if isinstance(first, Linear) and first.declared_in is not None:
        if input_shape is not None and math.prod(_shape(input_shape)) != first.declared_in:
            raise ConfigError(f"input_shape {list(input_shape)} does not describe the {first.declared_in} "
                              f"inputs of the first Linear layer")
        return (first.declared_in,)
    if input_shape is None:
        raise ConfigError("the network needs an input_shape (its first layer does not declare its inputs)")
    return _shape(input_shape)
