"""Predicting photos and drawings: the accuracy target, `predict_image`, and `digitlab predict`.

    .venv/bin/python -m pytest tests/test_predict.py -q -s     # -s prints the measured accuracies

THE TARGET: MNIST test digits turned into phone-photo-like JPEGs and canvas-like PNGs (tests/photolike.py)
are predicted, through the full decode + preprocessing path, within 2 points of the same model's accuracy
on the very same MNIST digits. The model is the session's `trained_mlp` (full MNIST, see conftest.py).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photolike import make_set, train_sample_model  # noqa: E402
from test_images import png_claiming  # noqa: E402

import digitlab  # noqa: E402
from digitlab.cli import main  # noqa: E402
from digitlab.images import load_image, predict_image, to_mnist  # noqa: E402

N_PHOTO, N_CANVAS = 700, 300


@pytest.fixture(scope="module")
def mnist_test(mnist_dir):
    images, labels = digitlab.data.load("mnist", split="test", data_dir=mnist_dir)
    return images, labels.astype(np.int64)


@pytest.fixture(scope="module")
def model(trained_mlp):
    return digitlab.load(trained_mlp.model_path)


@pytest.fixture(scope="module")
def sample_model_path(tmp_path_factory) -> Path:
    """A small model trained on the bundled sample: for checks that need no accurate model (never skips)."""
    return train_sample_model(tmp_path_factory.mktemp("sample-model"))


@pytest.fixture(scope="module")
def sample_model(sample_model_path):
    return digitlab.load(sample_model_path)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def seven(size=400, dark_on_light=True) -> Image.Image:
    ink, paper = (0, 255) if dark_on_light else (255, 0)
    img = Image.new("L", (size, size), paper)
    d = ImageDraw.Draw(img)
    s = size / 400
    d.line([(110 * s, 90 * s), (290 * s, 90 * s), (180 * s, 320 * s)], fill=ink, width=round(26 * s), joint="curve")
    return img


# ------------------------------------------------------------------------------------------- target
def test_photo_like_and_canvas_like_digits_match_mnist_accuracy(model, mnist_test, trained_mlp):
    images, labels = mnist_test
    samples = make_set(images, labels, n_photo=N_PHOTO, n_canvas=N_CANVAS, seed=0)
    idx = np.array([s[3] for s in samples])
    truth = labels[idx]
    inputs, found = [], []
    for name, data, _, _ in samples:
        x, ok = to_mnist(load_image(data, name=name))
        inputs.append(x)
        found.append(ok)
    found = np.array(found)
    predicted = np.where(found, model.predict(np.stack(inputs)), -1)  # (300, 28, 28) -> (300,); no digit is wrong
    baseline = model.predict(images[idx])  # the same digits as MNIST gives them
    photo = np.arange(len(samples)) < N_PHOTO
    acc = {
        "photo": float((predicted[photo] == truth[photo]).mean()),
        "canvas": float((predicted[~photo] == truth[~photo]).mean()),
        "all": float((predicted == truth).mean()),
        "mnist": float((baseline == truth).mean()),
    }
    print(f"\nphoto-like {acc['photo']:.3f}  canvas-like {acc['canvas']:.3f}  all {acc['all']:.3f}  "
          f"same digits from MNIST {acc['mnist']:.3f}  model on all MNIST test {trained_mlp.test_accuracy:.3f}  (n={len(samples)}, no digit found in {(~found).sum()})")
    assert found.mean() >= 0.99, f"a digit was found in only {found.sum()} of {found.size} pictures"
    # The target: within 2 points of the model's accuracy on the whole MNIST test set ...
    assert acc["all"] >= trained_mlp.test_accuracy - 0.02, (acc, trained_mlp.test_accuracy)
    # ... and of its accuracy on the very digits the pictures were made from.
    assert acc["all"] >= acc["mnist"] - 0.02, acc
    assert acc["photo"] >= acc["mnist"] - 0.03 and acc["canvas"] >= acc["mnist"] - 0.03, acc


def test_mnist_digits_survive_preprocessing(model, mnist_test):
    """A digit that already is MNIST comes back as (nearly) the same input: same accuracy, small change."""
    images, labels = mnist_test
    sel = np.arange(0, 10_000, 40)  # 250 digits spread over the test set
    redone = np.stack([to_mnist(img)[0] for img in images[sel]])
    before = float((model.predict(images[sel]) == labels[sel]).mean())
    after = float((model.predict(redone) == labels[sel]).mean())
    change = float(np.abs(redone.astype(np.float64) - images[sel]).mean())
    print(f"\nMNIST digits: accuracy {before:.3f} as given, {after:.3f} after to_mnist; mean |change| {change:.1f}/255")
    assert after >= before - 0.01
    assert change < 12.0


# --------------------------------------------------------------------------------------- python API
def test_predict_image_returns_everything(sample_model):
    model = sample_model
    result = predict_image(model, png(seven()), top=3)
    assert set(result) == {"digit", "reason", "probabilities", "input", "top", "found"}
    assert result["found"] and result["digit"] == 7 and result["reason"] is None
    p = np.array(result["probabilities"])
    assert p.shape == (10,) and abs(p.sum() - 1) < 1e-4
    assert [d for d, _ in result["top"]] == list(np.argsort(-p)[:3])
    assert result["top"][0] == (7, pytest.approx(p[7]))
    assert result["input"].shape == (28, 28) and result["input"].dtype == np.uint8
    again = model.predict_image(seven(dark_on_light=False))  # Classifier.predict_image, white on black
    assert again["digit"] == 7 and np.abs(again["input"].astype(int) - result["input"]).mean() < 2


def test_blank_input_has_no_digit_but_still_probabilities(sample_model):
    model = sample_model
    result = predict_image(model, Image.new("RGB", (640, 480), (240, 235, 220)))
    assert result["digit"] is None and not result["found"] and result["reason"] == "no ink found"
    assert result["input"].max() == 0
    assert abs(sum(result["probabilities"]) - 1) < 1e-4


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def folder(tmp_path):
    """Two good pictures, a picture in a sub-folder pattern, and three bad files."""
    d = tmp_path / "pics"
    d.mkdir()
    seven().save(d / "a-seven.png")
    seven(900).convert("RGB").save(d / "b-seven.jpg", quality=80)
    (d / "c-notes.png").write_bytes(b"not a picture at all")
    (d / "d-empty.jpg").write_bytes(b"")
    data = png(seven())
    (d / "e-half.png").write_bytes(data[: len(data) // 2])
    (d / "f-bomb.png").write_bytes(png_claiming(50_000, 50_000))
    (d / "readme.txt").write_text("ignored: not an image suffix")
    return d


def test_cli_folder_prose_continues_after_bad_files(sample_model, sample_model_path, folder, capsys):
    code, out, err = run_cli(capsys, "predict", sample_model_path, folder)
    assert code == 1
    lines = out.strip().splitlines()
    assert [Path(line.split(":")[0]).name for line in lines] == ["a-seven.png", "b-seven.jpg"]
    assert all(": 7 (" in line and "runner-up:" in line and line.count("%") == 3 for line in lines)
    errors = err.strip().splitlines()
    assert len(errors) == 4
    assert "c-notes.png: not an image" in errors[0]
    assert "d-empty.jpg: empty file" in errors[1]
    assert "e-half.png: truncated" in errors[2]
    assert "f-bomb.png: too large: 50000×50000 pixels" in errors[3]
    assert "Traceback" not in err


def test_cli_json_globs_missing_files_and_top(sample_model, sample_model_path, folder, capsys):
    code, out, err = run_cli(capsys, "predict", sample_model_path, str(folder / "?-seven.*"),
                             folder / "missing.png", str(folder / "*.nomatch"), "--json", "--top", "1")
    assert code == 1 and err == ""
    records = json.loads(out)
    assert [Path(r["file"]).name for r in records] == ["a-seven.png", "b-seven.jpg", "missing.png", "*.nomatch"]
    for r in records[:2]:
        assert r["digit"] == 7 and r["error"] is None
        assert len(r["probabilities"]) == 10 and abs(sum(r["probabilities"]) - 1) < 1e-4
        assert len(r["top"]) == 1
    assert "no such file" in records[2]["error"] and records[2]["digit"] is None
    assert "no file matches" in records[3]["error"]


def test_cli_stdin_and_show_input(sample_model, sample_model_path, tmp_path, capsys, monkeypatch):
    class Stdin:
        buffer = io.BytesIO(png(seven()))

    monkeypatch.setattr(sys, "stdin", Stdin)
    blank = tmp_path / "blank.png"
    Image.new("L", (300, 300), 255).save(blank)
    shown = tmp_path / "shown"
    code, out, err = run_cli(capsys, "predict", sample_model_path, "-", blank, "--show-input", shown, "--json")
    assert code == 0, err
    records = json.loads(out)
    assert records[0]["file"] == "-" and records[0]["digit"] == 7
    assert records[1]["digit"] is None and records[1]["error"] is None and len(records[1]["probabilities"]) == 10
    expected = predict_image(sample_model, png(seven()))["input"]
    with Image.open(shown / "stdin.png") as small, Image.open(shown / "stdin-x10.png") as big:
        assert small.size == (28, 28) and big.size == (280, 280)
        assert np.array_equal(np.asarray(small), expected)
        assert np.array_equal(np.asarray(big)[::10, ::10], expected)
    assert (shown / "blank.png").is_file() and records[1]["input"] == str(shown / "blank.png")
    code, out, _ = run_cli(capsys, "predict", sample_model_path, blank)
    assert code == 0 and out.strip() == f"{blank}: no digit found"


def test_cli_show_input_that_cannot_be_a_folder_is_one_clear_error(sample_model_path, tmp_path, capsys):
    image = tmp_path / "seven.png"
    seven().save(image)
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("a file, not a folder")
    code, out, err = run_cli(capsys, "predict", sample_model_path, image, "--show-input", not_a_folder)
    assert code == 1 and out == ""
    assert err.startswith(f"digitlab: error: --show-input {not_a_folder}: cannot create the folder")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_prose_says_where_the_input_was_written(sample_model_path, tmp_path, capsys):
    image = tmp_path / "seven.png"
    seven().save(image)
    code, out, _ = run_cli(capsys, "predict", sample_model_path, image, "--show-input", tmp_path / "shown")
    assert code == 0 and out.strip().endswith(f"(input: {tmp_path / 'shown' / 'seven.png'})")


def test_cli_show_input_never_overwrites_a_name_twice(sample_model_path, tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        seven().save(tmp_path / sub / "digit.png")
    shown = tmp_path / "shown"
    code, out, _ = run_cli(capsys, "predict", sample_model_path, tmp_path / "a", tmp_path / "b",
                           "--show-input", shown, "--json")
    assert code == 0
    assert [r["input"] for r in json.loads(out)] == [str(shown / "digit.png"), str(shown / "digit-2.png")]
    assert sorted(p.name for p in shown.iterdir()) == ["digit-2-x10.png", "digit-2.png", "digit-x10.png", "digit.png"]


@pytest.mark.parametrize("loss,normalization", [("softmax_ce", "standard"), ("sigmoid_bce", "unit"),
                                                ("softmax_mse", "raw")])
def test_cli_works_with_every_model_kind(tmp_path, capsys, loss, normalization):
    from digitlab.nn.model import Classifier, build_linear, build_mlp

    rng = np.random.default_rng(0)
    net = build_mlp(784, [16], 10, rng=rng) if loss == "softmax_mse" else build_linear(784, 10, init="glorot_normal", rng=rng)
    path = Classifier(net, loss_name=loss, normalization=normalization).save(tmp_path / "m.safetensors")
    image = tmp_path / "seven.png"
    seven().save(image)
    code, out, err = run_cli(capsys, "predict", path, image, "--json")
    assert code == 0, err
    (record,) = json.loads(out)
    assert abs(sum(record["probabilities"]) - 1) < 1e-4
    best = record["top"][0][0]  # an untrained model: an answer, or no digit because it is not sure
    assert record["digit"] == best or record["reason"] == f"not sure: maybe {best} or {record['top'][1][0]}"


def test_cli_bad_model_and_bad_top(sample_model_path, tmp_path, capsys):
    image = tmp_path / "seven.png"
    seven().save(image)
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x00" * 20)
    code, _, err = run_cli(capsys, "predict", fake, image)
    assert code == 1 and err.startswith("digitlab: error:") and str(fake) in err and len(err.splitlines()) == 1
    code, _, err = run_cli(capsys, "predict", sample_model_path, image, "--top", "0")
    assert code == 1 and "--top" in err


# ------------------------------------------------------------------------------ files that are not files
def test_cli_refuses_fifos_and_devices_and_goes_on(sample_model_path, tmp_path, capsys):
    """`predict MODEL fifo.png good.png` used to wait forever on the FIFO; /dev/zero grew to gigabytes."""
    import os

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    good = tmp_path / "good.png"
    seven().save(good)
    code, out, err = run_cli(capsys, "predict", sample_model_path, fifo, "/dev/zero", good, "--json")
    assert code == 1
    fifo_rec, zero_rec, good_rec = json.loads(out)
    assert fifo_rec["error"] == f"{fifo}: not a regular file (a FIFO (named pipe)); images are read from files only"
    assert zero_rec["error"].startswith("/dev/zero: not a regular file (a character device)")
    assert good_rec["error"] is None and good_rec["digit"] in range(10)


def test_cli_stdin_is_read_up_to_the_cap(sample_model_path, tmp_path, capsys, monkeypatch):
    """`predict MODEL - </dev/zero`: stdin is read up to MAX_FILE_BYTES + 1, then that input is refused."""
    from digitlab.images import MAX_FILE_BYTES

    class Zeros(io.RawIOBase):
        def read(self, n=-1):
            assert 0 <= n <= MAX_FILE_BYTES + 1, f"unbounded read of stdin ({n})"
            return bytes(n)

    class Stdin:
        buffer = Zeros()

    monkeypatch.setattr(sys, "stdin", Stdin)
    good = tmp_path / "good.png"
    seven().save(good)
    code, out, err = run_cli(capsys, "predict", sample_model_path, "-", good)
    assert code == 1
    assert err.strip() == f"digitlab: error: <stdin>: too large: more than {MAX_FILE_BYTES:,} bytes"
    assert out.startswith(f"{good}: ")


def test_cli_a_251_character_name_with_show_input_is_fine_and_alone(sample_model_path, tmp_path, capsys):
    """File names are at most 255 bytes: NAME-x10.png (and its temporary name) must still fit."""
    long = tmp_path / ("a" * 247 + ".png")
    seven().save(long)
    good = tmp_path / "good.png"
    seven().save(good)
    shown = tmp_path / "shown"
    code, out, err = run_cli(capsys, "predict", sample_model_path, long, good, "--show-input", shown, "--json")
    assert code == 0, err
    long_rec, good_rec = json.loads(out)
    assert long_rec["error"] is None and Path(long_rec["input"]).name == "a" * 200 + ".png"
    assert (shown / ("a" * 200 + "-x10.png")).is_file() and good_rec["input"] == str(shown / "good.png")


def test_cli_a_write_failure_is_that_images_error_only(sample_model_path, tmp_path, capsys, monkeypatch):
    from digitlab.commands import predict as predict_cmd
    from digitlab.errors import DigitlabError

    real_write = predict_cmd._InputWriter.write

    def write(self, file, x):
        if "bad" in file:
            raise DigitlabError(f"{self.folder}/bad.png: cannot write here: File name too long")
        return real_write(self, file, x)

    monkeypatch.setattr(predict_cmd._InputWriter, "write", write)
    for name in ("bad.png", "good.png"):
        seven().save(tmp_path / name)
    code, out, err = run_cli(capsys, "predict", sample_model_path, tmp_path / "bad.png", tmp_path / "good.png",
                             "--show-input", tmp_path / "shown")
    assert code == 1
    assert err.count("\n") == 1 and "bad.png: cannot write its 28x28 input:" in err
    assert f"{tmp_path / 'good.png'}: " in out


def test_cli_refuses_a_decompression_bomb_under_pillows_limit(sample_model_path, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(9400, 9400))
    code, _, err = run_cli(capsys, "predict", sample_model_path, bomb)
    assert code == 1 and err.strip() == (
        f"digitlab: error: {bomb}: too large: 9400×9400 pixels (limit 16,000,000 pixels; possible decompression bomb)")


# ------------------------------------------------------------------------------------------ not a digit
def test_cli_says_why_a_dot_or_a_dash_is_not_a_digit(sample_model_path, tmp_path, capsys):
    dot = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(dot).ellipse((20, 20, 50, 50), fill=255)  # a dot in a corner ("0 91 %" before)
    dash = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(dash).line([(60, 140), (220, 140)], fill=255, width=18)  # a dash ("2 87 %" before)
    dot.save(tmp_path / "dot.png")
    dash.save(tmp_path / "dash.png")
    code, out, _ = run_cli(capsys, "predict", sample_model_path, tmp_path / "dot.png", tmp_path / "dash.png")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'dot.png'}: no digit: a blob or dot, not a digit (the model's best guess: ")
    assert lines[1].startswith(f"{tmp_path / 'dash.png'}: no digit: a flat mark, not a digit (the model's best guess: ")
    code, out, _ = run_cli(capsys, "predict", sample_model_path, tmp_path / "dot.png", "--json")
    (record,) = json.loads(out)
    assert record["digit"] is None and record["reason"] == "a blob or dot, not a digit" and len(record["probabilities"]) == 10


def test_generated_scribbles_are_mostly_refused_and_drawn_digits_are_not(model, mnist_test):
    """The rules' purpose, end to end with the full model: dots, dashes, scatters and blobs get no digit, while
    canvas-like drawings of MNIST test digits keep their answers (bench/reject_threshold.py has the full figures)."""
    from photolike import canvas_like, scribble

    rng = np.random.default_rng(5)
    refused = {kind: np.mean([predict_image(model, scribble(rng, kind))["digit"] is None for _ in range(12)])
               for kind in ("dot", "dash", "dots", "blob")}
    assert min(refused.values()) >= 0.75, refused
    images, labels = mnist_test
    answered = [predict_image(model, canvas_like(images[i], rng))["digit"] is not None for i in range(0, 2000, 20)]
    assert np.mean(answered) >= 0.95, np.mean(answered)
