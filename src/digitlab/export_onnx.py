"""ONNX export of a digitlab Classifier (needs the extra: pip install 'digitlab[onnx]').

    from digitlab.export_onnx import export_onnx, to_onnx_model
    export_onnx(model, "model.onnx")         # also: model.to_onnx(path), `digitlab export MODEL --format onnx`
    proto = to_onnx_model(model)             # the onnx.ModelProto, validated by onnx.checker

The graph takes what `model.predict` takes and gives what `model.predict_proba` gives:

    images         uint8   [N, *input_shape]  (N dynamic; raw pixels 0..255, e.g. [N, 28, 28])
      -> Cast(float32) -> Flatten -> normalisation (Mul, Add: the model's scheme, see data.dataset.affine)
      -> one block of nodes per layer (LAYER_EXPORTERS) -> probabilities head (PROBABILITY_HEADS)
    probabilities  float32 [N, classes]       rows sum to 1

CNN layers run in ONNX's NCHW layout: the pixels are reshaped (and, with several channels, transposed) into
it once before the first conv/pool layer and transposed back to digitlab's channels-last order before
Flatten (see LAYOUT_NEEDED). BatchNorm is exported as its inference-time Mul and Add.

A tabular model (normalisation "none", e.g. a digitlab.sklearn estimator's `model_`) takes `features`, float32
[N, *input_shape], used as given. The graph computes in float32 (a float64 model's weights are cast).
Metadata props: classes (JSON list), recipe, digitlab_version, dataset, normalization, loss.

Opset 13 (IR version 7): supported by every onnxruntime since 1.6 (2020), onnxruntime-web, TensorRT >= 7.1,
OpenVINO and the Core ML / TF converters, and the first opset whose Softmax is the per-axis softmax NumPy
means (older ones flatten trailing dimensions). Everything exported here exists in opset 13 unchanged,
including what a CNN needs (Conv, MaxPool, AveragePool, GlobalAveragePool, Reshape, Transpose, Flatten).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from digitlab.errors import ConfigError

OPSET = 13
INPUT, FEATURES, OUTPUT = "images", "features", "probabilities"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install 'digitlab[onnx]'") from None
    return onnx


class _Graph:
    """Nodes and initializers being collected; `add` returns the name of the node's output."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []

    def const(self, name: str, array) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def add(self, op: str, inputs: list, name: str, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name


# ------------------------------------------------------------------------------------------------ layers
# One function per digitlab layer type: (graph, layer, input name, prefix) -> output name.
#
# Layouts: digitlab keeps images channels-last, (N, H, W, C), ONNX's Conv and pooling want (N, C, H, W). A
# tensor travels in one of two layouts: "flat", digitlab's own element order in any shape (the graph input,
# Linear layers), or "nchw" (N, C, H, W), C = 1 for an (H, W) image. LAYOUT_NEEDED says which one a layer
# takes; `to_onnx_model` converts only where the layout changes: Reshape (+ Transpose) into NCHW before the
# first conv/pool layer, Transpose back to NHWC before Flatten so the flattened order is digitlab's exactly.
def _linear(g: _Graph, layer, x: str, p: str) -> str:
    inputs = [x, g.const(f"{p}.W", layer.W.astype(np.float32))]                     # (in, out)
    if layer.b is not None:
        inputs.append(g.const(f"{p}.b", layer.b.astype(np.float32)))                # (out,)
    return g.add("Gemm", inputs, f"{p}.gemm")                                         # (N, in) @ (in, out) + b


def _conv(g: _Graph, layer, x: str, p: str) -> str:
    """Explicit pads, as Conv2D._geometry pads: the extra row/column of "same" goes after."""
    h, w, _, _, _, top, left, hp, wp = layer._geometry(layer.input_shape)
    pads = [top, left, max(hp - h - top, 0), max(wp - w - left, 0)]               # begin H, W, end H, W
    inputs = [x, g.const(f"{p}.W", layer.W.transpose(3, 2, 0, 1).astype(np.float32))]  # (k,k,C,F) -> (F,C,k,k)
    if layer.b is not None:
        inputs.append(g.const(f"{p}.b", layer.b.astype(np.float32)))                # (F,)
    k, s = layer.kernel, layer.stride
    return g.add("Conv", inputs, f"{p}.conv", kernel_shape=[k, k], strides=[s, s], pads=pads)


def _pool(op: str):
    """p x p windows, stride p, no padding: trailing rows/columns that fill no window are dropped, as digitlab does."""
    return lambda g, layer, x, p: g.add(op, [x], f"{p}.{op.lower()}", kernel_shape=[layer.pool] * 2,
                                        strides=[layer.pool] * 2)


def _global_avg_pool(g: _Graph, layer, x: str, p: str) -> str:
    pooled = g.add("GlobalAveragePool", [x], f"{p}.global_average_pool")            # (N, C, 1, 1)
    return g.add("Flatten", [pooled], f"{p}.flatten", axis=1)                       # (N, C)


def _batch_norm(g: _Graph, layer, x: str, p: str) -> str:
    """Inference-time BatchNorm as digitlab computes it, x * inv + shift with inv = gamma / sqrt(var + eps) and
    shift = beta - mean * inv, over the last digitlab axis: the channels (C, 1, 1) of an NCHW image, the
    features of a flat (N, D) input, W of a one-channel (H, W) image (then the last NCHW axis too)."""
    inv = (layer.gamma / np.sqrt(layer.running_var + layer.eps)).astype(layer.gamma.dtype)     # (C,)
    shift = layer.beta - layer.running_mean * inv                                              # (C,)
    shape = (-1, 1, 1) if len(layer.input_shape) == 3 else (-1,)
    scaled = g.add("Mul", [x, g.const(f"{p}.inv", inv.astype(np.float32).reshape(shape))], f"{p}.mul")
    return g.add("Add", [scaled, g.const(f"{p}.shift", shift.astype(np.float32).reshape(shape))], f"{p}.add")


def _leaky_relu(g: _Graph, layer, x: str, p: str) -> str:
    return g.add("LeakyRelu", [x], f"{p}.leaky_relu", alpha=float(layer.slope))


def _elementwise(op: str):
    return lambda g, layer, x, p: g.add(op, [x], f"{p}.{op.lower()}")


def _identity(g, layer, x, p):
    return x


LAYER_EXPORTERS = {
    "Linear": _linear,
    "Conv2D": _conv,
    "MaxPool2D": _pool("MaxPool"),
    "AvgPool2D": _pool("AveragePool"),
    "GlobalAvgPool": _global_avg_pool,
    "BatchNorm": _batch_norm,
    "Flatten": _identity,  # the conversion to "flat" before it is the whole job
    "ReLU": _elementwise("Relu"),
    "LeakyReLU": _leaky_relu,
    "Sigmoid": _elementwise("Sigmoid"),
    "Tanh": _elementwise("Tanh"),
    "Dropout": _identity,  # inference
}
LAYOUT_NEEDED = {"Linear": "flat", "Flatten": "flat", "Conv2D": "nchw", "MaxPool2D": "nchw", "AvgPool2D": "nchw",
                 "GlobalAvgPool": "nchw", "BatchNorm": "nchw"}  # the rest work on either


def _to_nchw(g: _Graph, x: str, shape, p: str) -> str:
    """(N, ...) in digitlab's order for images of `shape` (H, W[, C]) -> (N, C, H, W)."""
    h, w, c = (*shape, 1)[:3]
    if c == 1:                                                                      # the same element order
        return g.add("Reshape", [x, g.const(f"{p}.nchw_shape", np.array([-1, 1, h, w], np.int64))], f"{p}.nchw")
    nhwc = g.add("Reshape", [x, g.const(f"{p}.nhwc_shape", np.array([-1, h, w, c], np.int64))], f"{p}.nhwc")
    return g.add("Transpose", [nhwc], f"{p}.nchw", perm=[0, 3, 1, 2])


def _to_flat(g: _Graph, x: str, shape, p: str) -> str:
    """(N, C, H, W) -> (N, H * W * C) in digitlab's (channels-last) order."""
    if (*shape, 1)[2] != 1:
        x = g.add("Transpose", [x], f"{p}.nhwc", perm=[0, 2, 3, 1])                 # (N, H, W, C)
    return g.add("Flatten", [x], f"{p}.flat", axis=1)


# ------------------------------------------------------------------------------------------------ heads
def _softmax(g: _Graph, scores: str) -> str:
    return g.add("Softmax", [scores], OUTPUT, axis=1)


def _ovr(g: _Graph, scores: str) -> str:
    """One-vs-rest: the sigmoids renormalised = softmax(log sigmoid(z)), log sigmoid(z) = -softplus(-z)
    (never 0/0, like digitlab.nn.losses.ovr_probabilities)."""
    neg = g.add("Neg", [scores], "ovr.neg")
    log_sigmoid = g.add("Neg", [g.add("Softplus", [neg], "ovr.softplus")], "ovr.log_sigmoid")
    return g.add("Softmax", [log_sigmoid], OUTPUT, axis=1)


PROBABILITY_HEADS = {"softmax_ce": _softmax, "softmax_mse": _softmax, "sigmoid_bce": _ovr}


# ------------------------------------------------------------------------------------------------ export
def describe(model) -> dict:
    """The exported graph's input and output, in words: {"input": "images uint8 [N, 28, 28]", "output": ...}."""
    dims = ", ".join(map(str, model.input_shape))
    source = f"{FEATURES} float32" if model.normalization == "none" else f"{INPUT} uint8"
    return {"input": f"{source} [N, {dims}]", "output": f"{OUTPUT} float32 [N, {len(model.class_names)}]"}


def to_onnx_model(model):
    """The Classifier as a checked onnx.ModelProto (see the module docstring for inputs and outputs)."""
    from digitlab.data.dataset import affine
    from digitlab import __version__

    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    g = _Graph(helper, numpy_helper)
    tabular = model.normalization == "none"
    source, source_type = (FEATURES, TensorProto.FLOAT) if tabular else (INPUT, TensorProto.UINT8)
    x = source if tabular else g.add("Cast", [INPUT], "pixels", to=TensorProto.FLOAT)  # (N, *input_shape) float32
    x = g.add("Flatten", [x], "flat", axis=1)                                   # (N, prod(input_shape))
    scale, offset = affine(model.normalization)
    if scale != 1.0:
        x = g.add("Mul", [x, g.const("norm.scale", np.float32(scale))], "norm.mul")
    if offset != 0.0:
        x = g.add("Add", [x, g.const("norm.offset", np.float32(offset))], "norm.add")
    layout = "flat"
    for i, layer in enumerate(model.net.layers):
        kind = type(layer).__name__
        if kind not in LAYER_EXPORTERS:
            raise ConfigError(f"cannot export layer {i} ({kind}) to ONNX yet; exportable layers: "
                              f"{', '.join(LAYER_EXPORTERS)}")
        image = len(layer.input_shape) > 1
        if image and layout != LAYOUT_NEEDED.get(kind, layout):
            convert = _to_nchw if layout == "flat" else _to_flat
            x, layout = convert(g, x, layer.input_shape, f"{i}"), LAYOUT_NEEDED[kind]
        x = LAYER_EXPORTERS[kind](g, layer, x, f"{i}")
        if len(layer.output_shape) == 1:
            layout = "flat"
    if model.loss_name not in PROBABILITY_HEADS:
        raise ConfigError(f"cannot export loss {model.loss_name!r} to ONNX; known: {', '.join(PROBABILITY_HEADS)}")
    PROBABILITY_HEADS[model.loss_name](g, x)

    n_classes = len(model.class_names)
    graph = helper.make_graph(
        g.nodes, "digitlab",
        [helper.make_tensor_value_info(source, source_type, ["N", *model.input_shape])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", n_classes])],
        initializer=g.initializers,
    )
    opset = [helper.make_opsetid("", OPSET)]
    proto = helper.make_model(graph, opset_imports=opset, producer_name="digitlab", producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opset))
    meta = model.metadata
    helper.set_model_props(proto, {
        "classes": json.dumps(model.class_names), "recipe": str(meta.get("recipe", "")),
        "digitlab_version": __version__, "dataset": str(meta.get("dataset", "")),
        "normalization": model.normalization, "loss": model.loss_name,
    })
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:  # a bug in this module, not the user's doing
        raise RuntimeError(f"digitlab built an invalid ONNX graph: {exc}") from exc
    return proto


def export_onnx(model, path) -> Path:
    """Write the model as an ONNX file atomically; returns the path."""
    from digitlab.fsutil import atomic_write_bytes

    return atomic_write_bytes(Path(path), to_onnx_model(model).SerializeToString())
