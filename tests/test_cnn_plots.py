"""CNN figures (issue 9 §5): `plot filters`, `plot activations` and the run report of a CNN model.

    .venv/bin/python -m pytest tests/test_cnn_plots.py -q

They use `sample_cnn`, a small CNN trained in seconds on the bundled mnist-sample (conftest.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from digitlab import plots
from digitlab.errors import DigitlabError
from digitlab.nn.layers import Conv2D
from test_plots import assert_png, run_cli  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def test_first_filters_are_the_first_conv_kernels(sample_cnn):
    conv = plots.conv_layers(sample_cnn.model)
    assert [type(layer) for _, layer in conv] == [Conv2D, Conv2D]
    W = conv[0][1].W  # (k, k, 1, F)
    kernels = plots.first_filters(sample_cnn.model)  # (F, k, k)
    assert kernels.shape == (W.shape[3], W.shape[0], W.shape[1])
    for f in (0, W.shape[3] - 1):
        np.testing.assert_array_equal(kernels[f], W[:, :, 0, f])


def test_feature_maps_are_each_conv_output_and_lead_to_the_scores(sample_cnn):
    model = sample_cnn.model
    image = np.asarray(__import__("digitlab").data.load("mnist-sample", split="test")[0][0])  # (28, 28) uint8
    maps = plots.feature_maps(model, image)
    convs = plots.conv_layers(model)
    assert [label.split(":")[0] for label, _ in maps] == [f"layer {i}" for i, _ in convs]
    for (_, m), (_, layer) in zip(maps, convs):
        assert m.shape == layer.output_shape
    first = convs[0][1].forward(model.prepare(image[None]), train=False)[0]
    np.testing.assert_allclose(maps[0][1], first, rtol=1e-6)
    h = maps[-1][1][None]  # the last conv layer's maps, carried through the rest of the network
    for layer in model.net.layers[convs[-1][0] + 1:]:
        h = layer.forward(h, train=False)
    np.testing.assert_allclose(h[0], model.scores(image[None])[0], rtol=1e-5, atol=1e-5)


def test_cli_filters_and_activations(sample_cnn, tmp_path, capsys):
    model_path = str(sample_cnn.model_path)
    code, out, _ = run_cli(capsys, "plot", "filters", model_path, "--out", str(tmp_path / "f.png"), "--json")
    assert code == 0 and json.loads(out) == {"path": str(tmp_path / "f.png"), "width": 800, "height": 620}
    pixels = assert_png(tmp_path / "f.png", "filters")
    r, b = pixels[..., 0].astype(int), pixels[..., 2].astype(int)
    assert ((r - b) > 80).sum() > 100 and ((b - r) > 80).sum() > 100  # kernels with + and - weights
    code, out, _ = run_cli(capsys, "plot", "activations", model_path, str(EXAMPLES / "seven.jpg"), "--json")
    assert code == 0
    written = Path(json.loads(out)["path"])
    assert written == sample_cnn.model_path.parent / "activations.png"
    assert_png(written, "activations")


def test_cli_cnn_plots_of_an_mlp_or_a_bad_picture_are_one_clear_error(sample_model, sample_cnn, tmp_path, capsys):
    for argv in (("filters", str(sample_model.model_path)),
                 ("activations", str(sample_model.model_path), str(EXAMPLES / "seven.jpg"))):
        code, out, err = run_cli(capsys, "plot", *argv, "--out", str(tmp_path / "x.png"))
        assert code == 1 and out == "" and err.count("\n") == 1
        assert str(sample_model.model_path) in err and "no convolution layer" in err
    bad = tmp_path / "not-a-picture.png"
    bad.write_bytes(b"definitely not a PNG" * 20)
    code, out, err = run_cli(capsys, "plot", "activations", str(sample_cnn.model_path), str(bad))
    assert code == 1 and err.count("\n") == 1 and str(bad) in err
    code, _, err = run_cli(capsys, "plot", "filters", str(sample_cnn.model_path), "--n", "0")
    assert code == 1 and "--n" in err
    assert not (tmp_path / "x.png").exists()


def test_run_report_of_a_cnn_shows_filters_and_feature_maps(sample_cnn):
    run_dir = sample_cnn.model_path.parent
    text = (run_dir / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "filters.png" in links and "activations.png" in links and "weights.png" not in links
    assert_png(run_dir / "filters.png", "filters")
    assert_png(run_dir / "activations.png", "activations")
    with pytest.raises(DigitlabError, match="no convolution layer"):
        plots.first_filters(type("M", (), {"net": type("N", (), {"layers": []})()})())


def test_scale_maps_scales_each_map_by_its_own_range_and_a_flat_map_to_zero():
    ramp = np.arange(12, dtype=np.float64).reshape(3, 4)
    maps = np.stack([ramp, np.full((3, 4), 2.5), -10 * ramp])   # (F, H, W)
    scaled = plots.scale_maps(maps)
    assert scaled.dtype == np.float32 and scaled.shape == maps.shape
    np.testing.assert_allclose(scaled[0], ramp / 11, rtol=1e-6)
    np.testing.assert_array_equal(scaled[1], 0.0)                 # flat: all 0, not NaN
    np.testing.assert_allclose(scaled[2], 1 - ramp / 11, rtol=1e-6, atol=1e-7)
