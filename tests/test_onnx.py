"""ONNX export checked by the real runtime: onnxruntime must give digitlab's digit for every image and its
probabilities within 1e-5, for every kind of model digitlab trains."""

import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from digitlab.cli import main  # noqa: E402
from digitlab.data import load  # noqa: E402
from digitlab.errors import ConfigError  # noqa: E402
from digitlab.export_onnx import OPSET, export_onnx  # noqa: E402
from digitlab.nn.layers import BatchNorm, Layer, Sequential  # noqa: E402
from digitlab.nn.model import Classifier, build_linear  # noqa: E402
from digitlab.recipes import recipe_names  # noqa: E402
from digitlab.train import train_recipe  # noqa: E402

QUICK = {"steps": 40, "batch_size": 256, "order": "shuffle", "val_size": 0, "split": "standard"}
SHORTER = {"cnn": {"steps": 8, "batch_size": 64}}  # enough to move BatchNorm's running statistics
# Every shipped recipe (softmax regression, one-vs-rest logistic, MLPs, the CNN: same-padded conv, BatchNorm,
# max pooling, dropout) plus the activations, losses, normalisations and dtype no shipped recipe uses.
KINDS = [(name, SHORTER.get(name, {})) for name in recipe_names()] + [
    ("mlp", {"activation": "tanh", "normalization": "standard"}),
    ("mlp", {"activation": "leaky_relu", "dropout": 0.2, "hidden": [64, 32]}),
    ("mlp", {"activation": "sigmoid", "loss": "softmax_mse", "dtype": "float64", "bias": False}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in extra.items()) for name, extra in KINDS]


def _train(name, extra, tmp_path, **kw):
    out = tmp_path / "run"
    return train_recipe(name, {**QUICK, **extra, **kw.pop("overrides", {})}, out_dir=out, report=False, **kw).model


def assert_runtime_agrees(model, path, images):
    """onnxruntime's probabilities vs digitlab's on the same uint8 images."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"images": images})[0]  # (N, C)
    expected = model.predict_proba(images)  # (N, C)
    assert probs.dtype == np.float32 and probs.shape == expected.shape
    np.testing.assert_array_equal(probs.argmax(axis=1), model.predict(images))  # every image, same digit
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)
    return session


@pytest.mark.parametrize(("name", "extra"), KINDS, ids=IDS)
def test_onnxruntime_matches_digitlab_on_sample(name, extra, tmp_path):
    model = _train(name, extra, tmp_path, overrides={"dataset": "mnist-sample"})
    images, _ = load("mnist-sample", split="test", quiet=True)  # uint8 (N, 28, 28)
    path = model.to_onnx(tmp_path / "model.onnx")
    session = assert_runtime_agrees(model, path, images)
    assert session.run(None, {"images": images[:1]})[0].shape == (1, 10)  # N is dynamic
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == model.class_names and meta["recipe"] == model.metadata["recipe"]
    assert meta["digitlab_version"] and meta["normalization"] == model.normalization


def conv(filters, kernel=3, stride=1, padding="valid", bias=True):
    return {"type": "Conv2D", "filters": filters, "kernel": kernel, "stride": stride, "padding": padding,
            "bias": bias}


FLAT_10 = [{"type": "Flatten"}, {"type": "Linear", "out": 10}]
# Each CNN layer kind and geometry: padding valid/same with strides that leave a row over or pad one more
# after than before, pools that drop trailing rows, BatchNorm on channels, on features and on a bare (H, W)
# image, global average pooling straight into the scores.
CNN_ARCHITECTURES = {
    "conv-valid": [conv(4), {"type": "ReLU"}, *FLAT_10],
    "conv-same-stride2-bn": [conv(6, 3, 2, "same", bias=False), {"type": "BatchNorm"}, {"type": "ReLU"},
                             conv(5, 3, 2, "same"), {"type": "Tanh"}, *FLAT_10],
    "conv-valid-stride2-maxpool-bn-features": [conv(3, 4, 2), {"type": "LeakyReLU"}, {"type": "MaxPool2D", "pool": 2},
                                               {"type": "Flatten"}, {"type": "BatchNorm"},
                                               {"type": "Linear", "out": 10}],
    "avgpool-global-avgpool-dropout": [conv(8, 5, 1, "same"), {"type": "AvgPool2D", "pool": 3}, {"type": "Sigmoid"},
                                       conv(10, 3, 1, "same"), {"type": "GlobalAvgPool"}, {"type": "Dropout", "p": 0.3}],
    "bn-on-image-pool-first-stride3": [{"type": "BatchNorm"}, {"type": "MaxPool2D", "pool": 2},
                                       conv(4, 3, 3, "same"), *FLAT_10],
    "even-kernel-same-stride3-pool3": [conv(3, 2, 3, "same"), {"type": "MaxPool2D", "pool": 3}, *FLAT_10],
}


def _random_cnn(arch, input_shape, normalization, rng):
    """A CNN with random weights and random BatchNorm statistics (a fresh one has mean 0, variance 1)."""
    net = Sequential.from_spec(arch, input_shape=input_shape, rng=rng)
    for layer in net.layers:
        if isinstance(layer, BatchNorm):
            n = layer.gamma.shape
            layer.running_mean[...], layer.running_var[...] = rng.normal(size=n), rng.uniform(0.2, 3, size=n)
            layer.gamma[...], layer.beta[...] = rng.uniform(0.5, 2, size=n), rng.normal(size=n)
    return Classifier(net, "softmax_ce", normalization, input_shape=list(input_shape))


@pytest.mark.parametrize("normalization", ["unit", "standard"])
@pytest.mark.parametrize("arch", CNN_ARCHITECTURES.values(), ids=CNN_ARCHITECTURES.keys())
def test_cnn_layers_match_onnxruntime(arch, normalization, tmp_path):
    images, _ = load("mnist-sample", split="test", quiet=True)
    model = _random_cnn(arch, (28, 28), normalization, np.random.default_rng(0))
    assert_runtime_agrees(model, model.to_onnx(tmp_path / "cnn.onnx"), images[:1000])


def test_cnn_on_multichannel_images(tmp_path):
    """(H, W, C) inputs: digitlab's channels-last pixels are transposed to NCHW once, and back before Flatten."""
    rng = np.random.default_rng(1)
    arch = [{"type": "BatchNorm"}, conv(5, 3, 2, "same"), {"type": "ReLU"}, *FLAT_10]
    model = _random_cnn(arch, (14, 14, 4), "unit", rng)
    images = rng.integers(0, 256, size=(300, 14, 14, 4), dtype=np.uint8)
    session = assert_runtime_agrees(model, model.to_onnx(tmp_path / "rgba.onnx"), images)
    assert session.get_inputs()[0].shape == ["N", 14, 14, 4]
    ops = [node.op_type for node in onnx.load(str(tmp_path / "rgba.onnx")).graph.node]
    assert ops.count("Transpose") == 2  # into NCHW at the start, back to NHWC before Flatten


def test_trained_cnn_exports_through_the_cli(tmp_path, capsys):
    """A CNN trained by train_recipe (BatchNorm statistics from real batches), exported by `digitlab export`."""
    arch = [conv(4, 3, 2, "same", bias=False), {"type": "BatchNorm"}, {"type": "ReLU"},
            {"type": "AvgPool2D", "pool": 2}, conv(8, 3), {"type": "ReLU"}, {"type": "GlobalAvgPool"},
            {"type": "Linear", "out": 10}]
    model = _train("cnn", {"dataset": "mnist-sample", "architecture": arch, "steps": 10, "batch_size": 64, "shards": 1},
                   tmp_path)
    assert model.net.layers[1].running_mean.any()
    src = tmp_path / "run" / "model.safetensors"
    assert main(["export", str(src), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(tmp_path / "run" / "model.onnx")
    assert result["input"] == "images uint8 [N, 28, 28]" and result["output"] == "probabilities float32 [N, 10]"
    images, _ = load("mnist-sample", split="test", quiet=True)
    assert_runtime_agrees(model, result["out"], images)


def test_graph_signature_and_checker(tmp_path):
    rng = np.random.default_rng(0)
    model = Classifier(build_linear(784, 10, init="normal:0.01", rng=rng), "softmax_ce", "standard", list("abcdefghij"))
    proto = onnx.load(str(export_onnx(model, tmp_path / "m.onnx")))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import] == [OPSET]
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", 28, 28]
    assert out.name == "probabilities" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 10]
    assert json.loads({p.key: p.value for p in proto.metadata_props}["classes"]) == list("abcdefghij")
    images = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    assert_runtime_agrees(model, tmp_path / "m.onnx", images)  # "standard" normalisation inside the graph


def test_unknown_layer_is_one_clear_error(tmp_path):
    class Swish(Layer):
        def forward(self, x, train=True):
            return x

    model = Classifier(Sequential([*build_linear(784, 10).layers, Swish()]), "softmax_ce", "unit")
    with pytest.raises(ConfigError, match=r"layer 1 \(Swish\)"):
        model.to_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export(tmp_path, capsys, monkeypatch):
    model = _train("seed-000-softmax", {"dataset": "mnist-sample"}, tmp_path)
    src = tmp_path / "run" / "model.safetensors"
    assert main(["export", str(src), "--format", "onnx", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(tmp_path / "run" / "model.onnx") and result["opset"] == OPSET
    assert result["input"] == "images uint8 [N, 28, 28]" and result["output"] == "probabilities float32 [N, 10]"
    images, _ = load("mnist-sample", split="test", quiet=True)
    assert_runtime_agrees(model, result["out"], images[:200])
    assert main(["export", str(src), "--out", str(tmp_path / "x.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "x.onnx").is_file()
    assert main(["export", str(src), "--out", str(src)]) == 1
    assert "is the model file itself" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.safetensors")]) == 1
    assert "no such file" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # the extra not installed: one line saying what to install
    assert main(["export", str(src), "--out", str(tmp_path / "y.onnx")]) == 1
    assert "pip install 'digitlab[onnx]'" in capsys.readouterr().err and not (tmp_path / "y.onnx").exists()


def test_readme_snippet_runs_without_digitlab(tmp_path):
    """The README's three onnxruntime lines, in a Python where digitlab cannot be imported."""
    model = _train("seed-001-softmax", {"dataset": "mnist-sample"}, tmp_path)
    model.to_onnx(tmp_path / "model.onnx")
    images, _ = load("mnist-sample", split="test", quiet=True)
    np.save(tmp_path / "images.npy", images[:20])
    code = ("import sys; sys.modules['digitlab'] = None\n"
            "import numpy as np; images = np.load('images.npy')\n"
            "import onnxruntime as ort\n"
            "session = ort.InferenceSession('model.onnx')\n"
            "print(session.run(None, {'images': images})[0].argmax(axis=1).tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == model.predict(images[:20]).tolist()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "extra"), KINDS, ids=IDS)
def test_onnxruntime_matches_digitlab_on_full_mnist_test(name, extra, tmp_path, mnist_dir):
    model = _train(name, extra, tmp_path, data_dir=mnist_dir)
    images, _ = load("mnist", split="test", data_dir=mnist_dir)  # all 10,000
    assert_runtime_agrees(model, model.to_onnx(tmp_path / "model.onnx"), images)


@pytest.mark.slow
def test_onnxruntime_matches_fully_trained_default_model(trained_mlp, mnist_dir, tmp_path):
    images, _ = load("mnist", split="test", data_dir=mnist_dir)
    model = trained_mlp.model
    assert_runtime_agrees(model, model.to_onnx(tmp_path / "mlp.onnx"), images)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_sklearn_estimator_model_exports_with_float_features(kind, tmp_path):
    """A digitlab.sklearn model_ (normalisation "none") takes `features` float32 [N, D] as given; a CNN
    reshapes each row into its 8x8 image inside the graph."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from digitlab.sklearn import CNNClassifier, MLPClassifier

    X, y = sklearn_datasets.load_digits(return_X_y=True)
    X = ((X - X.mean(axis=0)) / (X.std(axis=0) + 1)).astype(np.float32)
    if kind == "mlp":
        clf = MLPClassifier((32,), activation="tanh", max_iter=20, random_state=0).fit(X, y)
    else:
        arch = [conv(8, 3, 1, "same"), {"type": "BatchNorm"}, {"type": "ReLU"}, {"type": "MaxPool2D"}, *FLAT_10]
        clf = CNNClassifier(arch, input_shape=(8, 8), max_iter=5, learning_rate_init=0.01, random_state=0).fit(X, y)
    session = ort.InferenceSession(str(clf.model_.to_onnx(tmp_path / "digits.onnx")))
    (inp,) = session.get_inputs()
    assert inp.name == "features" and inp.type == "tensor(float)" and inp.shape == ["N", 64]
    probs = session.run(None, {"features": X})[0]  # (N, 10)
    np.testing.assert_array_equal(clf.classes_[probs.argmax(axis=1)], clf.predict(X))
    np.testing.assert_allclose(probs, clf.predict_proba(X), rtol=0, atol=1e-5)
