"""Classifier inputs, model files: round trips, header contents and every kind of bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save as st_save

import digitlab
from digitlab.errors import ConfigError, DataError, ModelFileError
from digitlab.nn.model import FORMAT_VERSION, Classifier, build_linear, build_mlp, load, read_model_file


@pytest.fixture
def model():
    net = build_mlp(784, [16], 10, init=["he_normal", "normal(0.3)"], rng=np.random.default_rng(0))
    for b in (net.layers[0].b, net.layers[2].b):
        b[:] = np.random.default_rng(1).standard_normal(b.shape)
    return Classifier(net, "softmax_ce", normalization="unit")


@pytest.fixture
def images():
    return np.random.default_rng(2).integers(0, 256, size=(32, 28, 28), dtype=np.uint8)


@pytest.fixture
def saved(tmp_path, model):
    path = tmp_path / "model.safetensors"
    model.save(path, recipe="test", seed=0, metrics={"test_accuracy": 0.5})
    return path


def rewrite(path, tensors=None, header=None, raw_metadata=None):
    """A copy of a saved model file with tensors and/or header replaced."""
    with safe_open(str(path), framework="numpy") as f:
        old_tensors = {k: f.get_tensor(k) for k in f.keys()}
        old_header = json.loads(f.metadata()["digitlab"])
    tensors = old_tensors if tensors is None else tensors(old_tensors)
    header = old_header if header is None else header(old_header)
    meta = raw_metadata if raw_metadata is not None else {"digitlab": json.dumps(header)}
    out = path.with_name("bad.safetensors")
    out.write_bytes(st_save(tensors, metadata=meta))
    return out


# -- round trip ---------------------------------------------------------------------------------------

def test_round_trip_gives_bit_identical_predictions(saved, model, images):
    again = digitlab.load(saved)
    np.testing.assert_array_equal(again.predict_proba(images), model.predict_proba(images))
    np.testing.assert_array_equal(again.predict(images), model.predict(images))
    assert again.net.spec() == model.net.spec()
    assert again.class_names == [str(i) for i in range(10)]


def test_header_holds_the_contract_keys(saved):
    with safe_open(str(saved), framework="numpy") as f:
        header = json.loads(f.metadata()["digitlab"])
        assert sorted(f.keys()) == ["0.W", "0.b", "2.W", "2.b"]
    assert header["format"] == FORMAT_VERSION
    assert header["digitlab_version"] == digitlab.__version__
    assert header["architecture"][0] == {"type": "Linear", "in": 784, "out": 16, "bias": True}
    assert header["loss"] == "softmax_ce" and header["normalization"] == "unit"
    assert header["input_shape"] == [28, 28]
    assert header["recipe"] == "test" and header["metrics"] == {"test_accuracy": 0.5}
    assert load(saved).metadata["seed"] == 0


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, model):
    path = tmp_path / "sub" / "m.safetensors"
    model.save(path)
    first = path.read_bytes()
    with pytest.raises(ConfigError, match="JSON"):
        model.save(path, metrics={"bad": object()})
    assert path.read_bytes() == first
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]


def test_extra_tensors_ride_along(tmp_path, model):
    path = tmp_path / "ckpt.safetensors"
    model.save(path, extra_tensors={"optim.velocity.0": np.arange(3.0)}, epoch=2)
    again, header, extra = read_model_file(path)
    assert header["epoch"] == 2
    np.testing.assert_array_equal(extra["optim.velocity.0"], [0.0, 1.0, 2.0])
    with pytest.raises(ConfigError, match="clashes"):
        model.save(path, extra_tensors={"0.W": np.zeros(1)})


@pytest.mark.parametrize("loss,normalization", [("sigmoid_bce", "raw"), ("softmax_mse", "standard")])
def test_other_losses_and_normalisations_round_trip(tmp_path, images, loss, normalization):
    net = build_linear(784, 10, init="normal(0.001)", rng=np.random.default_rng(3), dtype=np.float64)
    model = Classifier(net, loss, normalization=normalization)
    model.save(tmp_path / "m.safetensors")
    again = load(tmp_path / "m.safetensors")
    assert again.loss_name == loss and again.normalization == normalization
    assert again.net.dtype == np.float64
    p = again.predict_proba(images)
    np.testing.assert_array_equal(p, model.predict_proba(images))
    assert p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


# -- inputs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("normalization", ["unit", "raw", "standard"])
def test_uint8_inference_folds_the_normalisation_into_the_first_layer(normalization, bias, dtype):
    from digitlab.data import normalize

    rng = np.random.default_rng(11)
    net = build_mlp(784, [24], 10, init="he_normal", bias=bias, rng=rng, dtype=dtype)
    if bias:
        net.layers[0].b[:] = rng.normal(size=24)
    model = Classifier(net, "softmax_ce", normalization=normalization)
    pixels = rng.integers(0, 256, size=(300, 28, 28), dtype=np.uint8)
    expected = net.forward(normalize(pixels, normalization, dtype), train=False)  # normalise, then the net
    got = model.scores(pixels, batch_size=128)                                     # folded, in 3 chunks
    assert got.dtype == dtype and got.shape == (300, 10)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())
    # the fold is recomputed from the current weights: training after a prediction is never served stale
    net.layers[0].W *= 2
    np.testing.assert_allclose(model.scores(pixels), net.forward(normalize(pixels, normalization, dtype), train=False),
                               rtol=tol, atol=tol * np.abs(expected).max() * 2)


def test_all_accepted_input_forms_agree(model, images):
    ref = model.predict_proba(images)
    assert ref.shape == (32, 10) and ref.dtype == np.float32
    np.testing.assert_allclose(ref.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(model.predict_proba(images.reshape(32, 784)), ref)
    # floats on [0, 1] are normalised first; uint8 pixels go through the first layer with the normalisation
    # folded in (Classifier.scores): the same numbers up to float32 rounding, and the same answers
    as_float = images.astype(np.float32) / np.float32(255)
    from_float = model.predict_proba(as_float)
    np.testing.assert_array_equal(model.predict_proba(as_float.reshape(32, 784)), from_float)
    np.testing.assert_allclose(from_float, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(model.predict(as_float), model.predict(images))
    # one image (BLAS may pick another kernel for one row: equal up to float32 rounding)
    np.testing.assert_allclose(model.predict_proba(images[0]), ref[:1], rtol=1e-5)
    np.testing.assert_array_equal(model.predict(images), ref.argmax(axis=1))
    assert model.predict(images).dtype == np.int64


def test_chunked_inference_matches_one_pass(model, images):
    np.testing.assert_allclose(model.predict_proba(images, batch_size=5), model.predict_proba(images),
                               rtol=1e-5)


def test_prediction_keeps_no_training_caches(model, images):
    model.predict_proba(images)
    assert model.net.layers[0]._x is None


@pytest.mark.parametrize("bad", [
    np.zeros((3, 27, 27), np.uint8),
    np.zeros((3, 100), np.float32),
    np.full((2, 784), 255.0, np.float32),                     # 0..255 floats: refused, not silently wrong
    np.full((2, 784), np.nan, np.float32),
    np.zeros((2, 784), np.int32),
])
def test_unusable_inputs_are_data_errors(model, bad):
    with pytest.raises(DataError):
        model.predict_proba(bad)


def test_classifier_rejects_inconsistent_construction():
    net = build_linear(784, 10)
    with pytest.raises(ConfigError, match="class_names"):
        Classifier(net, "softmax_ce", class_names=["a", "b"])
    with pytest.raises(ConfigError, match="normalization"):
        Classifier(net, "softmax_ce", normalization="zscore")
    with pytest.raises(ConfigError, match="loss"):
        Classifier(net, "hinge")


# -- bad files ----------------------------------------------------------------------------------------

def assert_model_error(path, *fragments):
    with pytest.raises(ModelFileError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message


def test_missing_file(tmp_path):
    assert_model_error(tmp_path / "nope.safetensors", "no such file")


def test_directory(tmp_path):
    assert_model_error(tmp_path, "directory")


def test_empty_file(tmp_path):
    (tmp_path / "e.safetensors").write_bytes(b"")
    assert_model_error(tmp_path / "e.safetensors", "empty")


@pytest.mark.parametrize("cut", [1, 100, 2000])
def test_truncated_file(saved, cut):
    data = saved.read_bytes()
    saved.write_bytes(data[:-cut])
    assert_model_error(saved, "truncated")


def test_file_cut_inside_its_header_is_truncated(saved):
    data = saved.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    saved.write_bytes(data[: 8 + header_len // 2])
    assert_model_error(saved, "truncated")


@pytest.mark.parametrize("content", [
    b"this is not a model at all, just some text " * 20,
    b"\x89PNG\r\n\x1a\n" + bytes(200),
    b"\x1f\x8b\x08\x08" + bytes(100),
    b"1234",
])
def test_not_a_safetensors_file(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    assert_model_error(path, "not a safetensors file")


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(st_save({"weight": np.zeros((2, 2), np.float32)}, metadata={"format": "pt"}))
    assert_model_error(path, "without a digitlab header")
    path.write_bytes(st_save({"weight": np.zeros((2, 2), np.float32)}))
    assert_model_error(path, "without a digitlab header")


def test_header_that_is_not_json(saved):
    assert_model_error(rewrite(saved, raw_metadata={"digitlab": "{not json"}), "not valid JSON")
    assert_model_error(rewrite(saved, raw_metadata={"digitlab": "[1, 2]"}), "not a JSON object")


def test_newer_format(saved):
    bad = rewrite(saved, header=lambda h: {**h, "format": FORMAT_VERSION + 1, "digitlab_version": "9.0"})
    assert_model_error(bad, f"format {FORMAT_VERSION + 1}", "9.0", "upgrade")


def test_header_without_format_or_architecture(saved):
    assert_model_error(rewrite(saved, header=lambda h: {k: v for k, v in h.items() if k != "format"}),
                       "format")
    assert_model_error(rewrite(saved, header=lambda h: {k: v for k, v in h.items() if k != "architecture"}),
                       "architecture")


def test_unknown_layer_type(saved):
    bad = rewrite(saved, header=lambda h: {**h, "architecture": [*h["architecture"], {"type": "Softmax2"}]})
    assert_model_error(bad, "Softmax2")


def test_unknown_loss_or_normalisation(saved):
    assert_model_error(rewrite(saved, header=lambda h: {**h, "loss": "hinge"}), "hinge")
    assert_model_error(rewrite(saved, header=lambda h: {**h, "normalization": "zscore"}), "zscore")


def test_missing_weights(saved):
    bad = rewrite(saved, tensors=lambda t: {k: v for k, v in t.items() if k != "2.b"})
    assert_model_error(bad, "2.b", "missing")


def test_weights_of_the_wrong_shape(saved):
    bad = rewrite(saved, tensors=lambda t: {**t, "0.W": np.zeros((10, 16), np.float32)})
    assert_model_error(bad, "0.W", "shape")


def test_weights_of_the_wrong_dtype(saved):
    bad = rewrite(saved, tensors=lambda t: {**t, "2.W": t["2.W"].astype(np.float64)})
    assert_model_error(bad, "2.W", "float64")


def test_weights_for_layers_that_do_not_exist(saved):
    bad = rewrite(saved, tensors=lambda t: {**t, "5.W": np.zeros((2, 2), np.float32)})
    assert_model_error(bad, "5.W")


def test_header_promising_huge_layers_fails_before_allocating(saved):
    huge = [{"type": "Linear", "in": 784, "out": 10 ** 9, "bias": True}]
    assert_model_error(rewrite(saved, header=lambda h: {**h, "architecture": huge}), "0.W", "(784, 1000000000)")
    huge = [{"type": "Linear", "in": 10 ** 7, "out": 10 ** 6, "bias": True}]      # not even the image's size
    assert_model_error(rewrite(saved, header=lambda h: {**h, "architecture": huge}), "10000000 inputs")
    conv = [{"type": "Conv2D", "filters": 10 ** 9, "kernel": 3}, {"type": "Flatten"}, {"type": "Linear", "out": 10}]
    assert_model_error(rewrite(saved, header=lambda h: {**h, "architecture": conv}), "0.W", "(3, 3, 1, 1000000000)")


@pytest.mark.parametrize("key,value", [("class_names", "0123456789"), ("class_names", ["a", "b"]),
                                       ("input_shape", 784), ("input_shape", [27, 27]), ("dtype", "float16")])
def test_inconsistent_header_fields(saved, key, value):
    assert_model_error(rewrite(saved, header=lambda h: {**h, key: value}), key if key != "dtype" else "float16")
