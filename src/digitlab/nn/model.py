"""Classifier = network + loss + input normalisation + class names; model files; network builders.

    import numpy as np
    from digitlab.nn.model import Classifier, build_mlp, load
    net = build_mlp(784, [300], 10, activation="relu", init="he_normal", rng=np.random.default_rng(0))
    model = Classifier(net, "softmax_ce", normalization="unit", input_shape=[28, 28])
    net = Sequential.from_spec([{"type": "Conv2D", "filters": 8, "kernel": 3}, {"type": "ReLU"},
                                {"type": "Flatten"}, {"type": "Linear", "out": 10}], input_shape=(28, 28), rng=rng)
    model.predict_proba(images)        # uint8 [N,28,28]/[N,784] 0..255, or float [N,784]/[N,28,28] in [0,1]
    model.predict(images)              # int64 [N]
    model.save("runs/x/model.safetensors", recipe="mlp", seed=0)
    model = load("runs/x/model.safetensors")     # ModelFileError naming the file for any bad file

File format (format 1): a safetensors file whose tensors are the weights and buffers "{i}.{name}" of layer i
("1.W", "1.b", "3.running_mean", ...) and whose metadata holds one key, "digitlab", a JSON header with format,
digitlab_version, architecture (Sequential.spec()), loss, normalization, class_names, input_shape (one image,
e.g. [28, 28]), dtype and whatever the trainer adds (recipe, dataset, dataset_checksums, seed, metrics, ...).
Loading rebuilds the network from the header alone and never executes code. Files written before Flatten
existed start with a Linear layer taking 784 values: such a network takes flattened images (the Classifier
reshapes for it). Extra tensors (e.g. optimizer state in a checkpoint) can ride along via
`save(..., extra_tensors=...)` and come back from `read_model_file`.
"""

from __future__ import annotations

import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from digitlab.errors import ConfigError, DataError, ModelFileError
from digitlab.nn.backend import array_module
from digitlab.nn.layers import ACTIVATIONS, Conv2D, Dropout, Flatten, Linear, Sequential, param_shapes
from digitlab.nn.losses import get_loss

FORMAT_VERSION = 1
HEADER_KEY = "digitlab"
NORMALIZATIONS = ("unit", "raw", "standard", "none")  # "none": tabular features as given (digitlab.sklearn)
CHUNK_VALUES = 1 << 20  # inference: a chunk's largest intermediate array stays near this many values (4 MB float32)


def _digitlab_version() -> str:
    from digitlab import __version__

    return __version__


def _default_input_shape(input_dim: int) -> list[int]:
    side = math.isqrt(input_dim)
    return [side, side] if side * side == input_dim else [input_dim]


def _input_shape(shape, net: Sequential) -> list[int]:
    """The shape of one image: `shape`, or the network's own input shape (a flat one read as a square)."""
    input_dim = net.input_dim
    if shape is None:
        return list(net.input_shape) if len(net.input_shape) > 1 else _default_input_shape(input_dim)
    ok = isinstance(shape, (list, tuple)) and all(isinstance(d, int) and d > 0 for d in shape)
    if not ok or math.prod(shape) != input_dim:
        raise ConfigError(f"input_shape {shape!r} does not describe {input_dim} input values")
    return list(shape)


# BLAS's thread count is one setting for the whole process: chunk threads that set it take turns.
_BLAS_SETTING = threading.Lock()


def _map_chunks(fn, starts, threads: int = 0) -> list:
    """[fn(s) for s in starts] over up to `threads` threads (0: one per CPU this process may use), BLAS on one
    thread meanwhile. NumPy's loops and BLAS release the GIL, so chunks run side by side (two threads calling a
    multi-threaded OpenBLAS wait for each other instead); a chunk's result does not depend on the thread."""
    from threadpoolctl import threadpool_limits

    starts = list(starts)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = min(len(starts), threads or usable)
    if threads <= 1:
        return [fn(s) for s in starts]
    with _BLAS_SETTING, threadpool_limits(1, user_api="blas"), \
            ThreadPoolExecutor(threads, thread_name_prefix="digitlab-infer") as pool:
        return list(pool.map(fn, starts))


class Classifier:
    """A trained (or freshly built) network with everything needed to turn images into class scores."""

    def __init__(self, net: Sequential, loss_name: str = "softmax_ce", normalization: str = "unit",
                 class_names=None, metadata: dict | None = None, input_shape=None):
        self.net = net
        self.loss = get_loss(loss_name)
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
        self.normalization = normalization
        n_out = net.output_dim
        if class_names is not None and (isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__len__")):
            raise ConfigError(f"class_names must be a list of names, got {class_names!r}")
        self.class_names = [str(c) for c in (class_names if class_names is not None else range(n_out or 0))]
        if n_out is not None and len(self.class_names) != n_out:
            raise ConfigError(f"{len(self.class_names)} class_names for a network with {n_out} outputs")
        self.input_shape = _input_shape(input_shape, net)
        self.metadata = dict(metadata or {})
        # Chunks scored side by side in this many threads (0: one per usable CPU). CNNs: their im2col copies and
        # pooling are element-wise work BLAS threads do not share; networks of Linear layers are nearly all BLAS
        # products, faster on BLAS's own threads (BENCHMARKS.md, "Inference threads").
        self.inference_threads = 0 if any(isinstance(layer, Conv2D) for layer in net.layers) else 1

    @property
    def loss_name(self) -> str:
        return self.loss.name

    # -- inference ------------------------------------------------------------------------------------
    def _as_batch(self, images) -> np.ndarray:
        """Any accepted form -> (N, *net.input_shape) raw pixels (a view where possible); DataError otherwise."""
        x = np.asarray(images)
        dim = self.net.input_dim
        if list(x.shape) == self.input_shape or (x.ndim == 1 and x.size == dim):
            x = x[None]                                              # a single image
        if x.ndim < 2 or math.prod(x.shape[1:]) != dim:
            raise DataError(f"images of shape {x.shape} do not fit this model (it expects "
                            f"{'x'.join(map(str, self.input_shape))} = {dim} values per image)")
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"images must be uint8 0..255 or floats in [0, 1], got dtype {x.dtype}")
        return x.reshape(x.shape[0], *self.net.input_shape)         # e.g. (N, 784) -> (N, 28, 28) or back

    def prepare(self, images) -> np.ndarray:
        """Images in any accepted form -> normalised (N, *net.input_shape) array of the network's dtype.

        uint8 arrays are 0..255 pixels; float arrays are pixels in [0, 1]. DataError for anything else.
        """
        from digitlab.data.dataset import normalize  # THE normalisation (checks float ranges too)

        return normalize(self._as_batch(images), self.normalization, self.net.dtype)

    def scores(self, images, batch_size: int | None = None) -> np.ndarray:
        """Raw class scores (N, C) in inference mode (no training caches), batch_size images at a time
        (default: `inference_chunk()`): memory stays bounded for any N, and each chunk (2048 x 784 float32 =
        6 MB) is still in cache when the first matrix product reads it (measured 5-15 % faster than 16384).

        uint8 pixels skip the normalisation passes when the first parametrised layer is a Linear (after
        Flatten only): normalisation is affine, x * scale + offset, so it is folded into that layer (see
        `_folded_input_layer`) and each chunk is only converted to float. Other networks (CNNs: "same"
        padding pads with normalised zeros, which the fold cannot express) normalise each chunk.
        """
        from digitlab.data.dataset import normalize

        x = self._as_batch(images)
        batch_size = batch_size or self.inference_chunk()
        folded = self._folded_input_layer() if x.dtype == np.uint8 else None
        rest = self.net.layers[self._first_linear() + 1:] if folded is not None else []

        def chunk_scores(i):
            chunk = x[i:i + batch_size]
            if folded is None:
                return self.net.forward(normalize(chunk, self.normalization, self.net.dtype), train=False)
            W, b = folded
            xp = array_module(W)                                   # the network's array module
            h = xp.matmul(xp.asarray(chunk.reshape(len(chunk), -1), dtype=W.dtype), W)  # (B, in) @ (in, H)
            h += b
            for layer in rest:
                h = layer.forward(h, train=False)
            return h

        parts = _map_chunks(chunk_scores, range(0, max(x.shape[0], 1), batch_size), self.inference_threads)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _first_linear(self) -> int | None:
        """Index of the first layer if it is a Linear preceded by Flatten layers only, else None."""
        for i, layer in enumerate(self.net.layers):
            if isinstance(layer, Linear):
                return i
            if not isinstance(layer, Flatten):
                return None
        return None

    def _folded_input_layer(self):
        """(W', b') with normalize(x) @ W + b == x @ W' + b' for raw pixels x (flattened), or None unless the
        first parametrised layer is a Linear with only Flatten before it.

        normalize(x) = x * s + o, so W' = s W and b' = b + o * (column sums of W); the sums are taken in
        float64. Recomputed per call (one pass over W, ~0.1 ms), so it always matches the current weights.
        The scores then differ from the normalise-first path only by float rounding (~1e-6 relative).
        """
        from digitlab.data.dataset import affine

        k = self._first_linear()
        if k is None:
            return None
        first = self.net.layers[k]
        scale, offset = affine(self.normalization)
        W = first.W * first.W.dtype.type(scale)                                     # (in, H)
        b = offset * first.W.sum(axis=0, dtype=np.float64)                          # (H,)
        if first.b is not None:
            b += first.b
        return W, b.astype(first.W.dtype)

    def inference_chunk(self) -> int:
        """Images per inference chunk: 2,048, or fewer when one image's largest intermediate array is big (a
        CNN's im2col matrix, k*k*C values per output pixel), so that it stays near CHUNK_VALUES floats: two chunk
        threads' arrays then stay in cache (the default cnn, 10,000 images on 2 cores: 0.31 s with 72-image
        chunks, 0.41 s with 194, 0.38 s with 256; the mlp: 14 ms with 1,024, 1,337 or 2,048)."""
        per_image = [self.net.input_dim] + [math.prod(layer.output_shape) for layer in self.net.layers]
        per_image += [math.prod(layer.output_shape[:2]) * layer.W.size // layer.filters
                      for layer in self.net.layers if isinstance(layer, Conv2D)]
        return int(min(2048, max(64, CHUNK_VALUES // max(per_image))))

    def predict_proba(self, images, batch_size: int | None = None) -> np.ndarray:
        """float32 (N, C) class probabilities; rows sum to 1."""
        return self.loss.probabilities(self.scores(images, batch_size)).astype(np.float32, copy=False)

    def predict(self, images, batch_size: int | None = None) -> np.ndarray:
        """int64 (N,) predicted class indices (argmax of the scores)."""
        return self.scores(images, batch_size).argmax(axis=1).astype(np.int64)

    def predict_image(self, src, **kw) -> dict:
        """A photo/drawing (path, bytes, PIL image, array) -> dict; see digitlab.images.predict_image."""
        from digitlab.images import predict_image

        return predict_image(self, src, **kw)

    # -- files ----------------------------------------------------------------------------------------
    def header(self, **metadata) -> dict:
        """The JSON header saved with the weights: this model's description plus `metadata`."""
        head = {**self.metadata, **metadata}
        head.update(format=FORMAT_VERSION, digitlab_version=_digitlab_version(), architecture=self.net.spec(),
                    loss=self.loss.name, normalization=self.normalization, class_names=self.class_names,
                    input_shape=self.input_shape, dtype=str(np.dtype(self.net.dtype)))
        return head

    def save(self, path, extra_tensors: dict | None = None, **metadata) -> Path:
        """Write the model atomically as safetensors + JSON header; returns the path."""
        from safetensors.numpy import save

        from digitlab.fsutil import atomic_write_bytes

        head = self.header(**metadata)
        try:
            text = json.dumps(head)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model metadata for {path} is not JSON-serialisable: {exc}") from None
        tensors = {k: np.ascontiguousarray(v) for k, v in self.net.state_dict().items()}
        for k, v in (extra_tensors or {}).items():
            if k in tensors or k.split(".")[0].isdigit():
                raise ConfigError(f"extra tensor name {k!r} clashes with layer weights")
            tensors[k] = np.ascontiguousarray(v)
        self.metadata = {k: v for k, v in head.items()}
        return atomic_write_bytes(path, save(tensors, metadata={HEADER_KEY: text}))

    def __repr__(self) -> str:
        return f"Classifier({self.net!r}, loss={self.loss.name!r}, normalization={self.normalization!r})"

    # -- export ---------------------------------------------------------------------------------------
    def to_onnx(self, path) -> Path:
        """Write this model as ONNX (uint8 images in, probabilities out); see digitlab.export_onnx."""
        from digitlab.export_onnx import export_onnx

        return export_onnx(self, path)


# -- loading ------------------------------------------------------------------------------------------

def _open_model_file(path: Path):
    """The file opened for reading, or ModelFileError: missing, a folder, a FIFO/device (never read), unreadable."""
    from digitlab.fsutil import NotRegularFileError, open_regular

    try:
        return open_regular(path)
    except IsADirectoryError:
        raise ModelFileError(f"cannot load model {path}: it is a directory, not a model file") from None
    except FileNotFoundError:
        raise ModelFileError(f"cannot load model {path}: no such file") from None
    except NotRegularFileError as exc:
        raise ModelFileError(f"cannot load model {path}: it {exc.strerror}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot load model {path}: cannot read it ({exc.strerror or exc})") from None


def _check_header_length(path: Path) -> None:
    """A safetensors file starts with the byte length of its JSON header: a file cut inside it is truncated."""
    with _open_model_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ModelFileError(f"cannot load model {path}: the file is empty")
        try:
            head = f.read(8)
        except OSError as exc:
            raise ModelFileError(f"cannot load model {path}: cannot read it ({exc.strerror or exc})") from None
    n = int.from_bytes(head, "little") if len(head) == 8 else None
    plausible = n is not None and 2 <= n <= 100 * 2**20  # header sizes safetensors itself accepts
    if plausible and size < 8 + n:
        raise ModelFileError(f"cannot load model {path}: it is truncated (the header says {n} bytes, "
                             f"the file ends after {size - 8})")


def _read_safetensors(path: Path):
    """(metadata dict, {name: array}) or ModelFileError describing why the file is unreadable."""
    from safetensors import SafetensorError, safe_open

    _check_header_length(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: np.array(f.get_tensor(k)) for k in f.keys()}
    except SafetensorError as exc:
        msg = str(exc)
        if "IncompleteBuffer" in msg or "out of bounds" in msg.lower():
            why = "it is truncated (the weights end early)"
        else:
            why = "it is not a safetensors file"
        raise ModelFileError(f"cannot load model {path}: {why} ({msg})") from None
    except OSError as exc:
        raise ModelFileError(f"cannot load model {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ModelFileError(f"cannot load model {path}: {exc}") from None
    for name, t in tensors.items():
        if t.dtype.kind in "fc" and not np.isfinite(t).all():
            bad = int(t.size - np.count_nonzero(np.isfinite(t)))
            raise ModelFileError(f"cannot load model {path}: tensor {name!r} holds {bad} NaN or infinite "
                                 f"value{'s' if bad != 1 else ''} (of {t.size}); a model trained to "
                                 "non-finite weights cannot predict")
    return meta, tensors


def _parse_header(path: Path, meta: dict) -> dict:
    if HEADER_KEY not in meta:
        raise ModelFileError(f"cannot load model {path}: a safetensors file without a digitlab header "
                             f"(not written by digitlab)")
    try:
        head = json.loads(meta[HEADER_KEY])
    except (ValueError, RecursionError) as exc:  # bad JSON; a > 4300-digit integer; nesting too deep
        why = ("nested too deeply" if isinstance(exc, RecursionError) else
               "an integer of more than 4300 digits" if "integer string conversion" in str(exc) else str(exc))
        raise ModelFileError(f"cannot load model {path}: its digitlab header is not valid JSON ({why})") from None
    if not isinstance(head, dict):
        raise ModelFileError(f"cannot load model {path}: its digitlab header is not a JSON object")
    fmt = head.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise ModelFileError(f"cannot load model {path}: header has no integer 'format' version")
    if fmt > FORMAT_VERSION:
        raise ModelFileError(f"cannot load model {path}: written in model format {fmt} by digitlab "
                             f"{head.get('digitlab_version', '?')}; this digitlab ({_digitlab_version()}) reads "
                             f"format {FORMAT_VERSION} or older — upgrade digitlab")
    for key in ("architecture", "loss", "normalization"):
        if key not in head:
            raise ModelFileError(f"cannot load model {path}: header lacks {key!r}")
    return head


def _check_shapes(spec, input_shape, tensors: dict) -> None:
    """Every parametrised layer's stored weights (and buffers) must have the shapes the architecture gives
    for `input_shape` (ValueError/ConfigError otherwise), checked before any weights are allocated."""
    for name, shape in param_shapes(spec, input_shape).items():
        stored = tensors.get(name)
        if stored is None:
            raise ValueError(f"weights {name!r} are missing")
        if tuple(stored.shape) != shape:
            raise ValueError(f"weights {name!r} have shape {tuple(stored.shape)}, but the architecture says {shape}")


def read_model_file(path) -> tuple[Classifier, dict, dict]:
    """(model, header, extra tensors) from a digitlab safetensors file; ModelFileError naming the file."""
    path = Path(path)
    meta, tensors = _read_safetensors(path)
    head = _parse_header(path, meta)
    try:
        dtype = np.dtype(head.get("dtype", "float32"))
        if dtype not in (np.float32, np.float64):
            raise ConfigError(f"unsupported dtype {dtype}")
        _check_shapes(head["architecture"], head.get("input_shape"), tensors)   # before allocating anything
        net = Sequential.from_spec(head["architecture"], input_shape=head.get("input_shape"), dtype=dtype)
        net.load_state_dict(tensors)
        model = Classifier(net, head["loss"], head["normalization"], head.get("class_names"),
                           metadata=head, input_shape=head.get("input_shape"))
    except (ConfigError, ValueError, TypeError, MemoryError) as exc:
        raise ModelFileError(f"cannot load model {path}: {exc}") from None
    names = set(net.state_dict())
    stray = sorted(k for k in tensors if k not in names and k.split(".")[0].isdigit())
    if stray:
        raise ModelFileError(f"cannot load model {path}: unexpected weights {', '.join(stray)} "
                             f"for its architecture")
    extra = {k: v for k, v in tensors.items() if k not in names}
    return model, head, extra


def load(path) -> Classifier:
    """A Classifier from a digitlab model file; ModelFileError naming the file for any unusable file."""
    return read_model_file(path)[0]


# -- builders -----------------------------------------------------------------------------------------

def build_linear(input_dim: int, num_classes: int, init="zeros", bias: bool = True,
                 rng: np.random.Generator | None = None, dtype=np.float32) -> Sequential:
    """One Linear layer: softmax regression with "softmax_ce", one-vs-rest logistic with "sigmoid_bce"."""
    return Sequential([Linear(input_dim, num_classes, bias=bias, init=init, rng=rng, dtype=dtype)])


def build_mlp(input_dim: int, hidden, num_classes: int, activation: str = "relu", init="he_normal",
              bias: bool = True, dropout: float = 0.0, rng: np.random.Generator | None = None,
              dtype=np.float32) -> Sequential:
    """Linear -> activation (-> Dropout) for each hidden width, then a Linear to num_classes.

    `init` is one initializer for every layer or a list with one per Linear layer.
    """
    hidden = [int(h) for h in hidden]
    widths = [int(input_dim), *hidden, int(num_classes)]
    n_linear = len(widths) - 1
    inits = list(init) if isinstance(init, (list, tuple)) else [init] * n_linear
    if len(inits) != n_linear:
        raise ConfigError(f"{len(inits)} initializers given for {n_linear} Linear layers")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    layers = []
    for k in range(n_linear):
        layers.append(Linear(widths[k], widths[k + 1], bias=bias, init=inits[k], rng=rng, dtype=dtype))
        if k < n_linear - 1:
            layers.append(ACTIVATIONS[activation]())
            if dropout:
                layers.append(Dropout(dropout, rng=rng))
    return Sequential(layers)
