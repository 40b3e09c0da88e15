"""`digitlab recipes | train | evaluate | reproduce | gradcheck` from the command line, on mnist-sample."""

from __future__ import annotations

import json
import re
import signal

import numpy as np
import pytest

import digitlab
import digitlab.train
from digitlab.cli import main
from digitlab.train import evaluate

SMALL = ["--recipe", "mlp", "--dataset", "mnist-sample", "--epochs", "1", "--hidden", "16", "--batch-size", "64", "--quiet"]


def run_json(capsys, *argv):
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_recipes_lists_every_recipe(capsys):
    code, rows = run_json(capsys, "recipes")
    assert code == 0
    assert [r["name"] for r in rows] == ["cnn", "cnn-best", "cnn-fast", "lenet5", "mlp", "seed-000-softmax",
                                         "seed-001-softmax", "seed-002-mlp-sigmoid-mse", "seed-003-ovr-logistic",
                                         "seed-004-mlp-relu"]
    assert [r["name"] for r in rows if r["default"]] == ["cnn"]
    assert main(["recipes"]) == 0
    text = capsys.readouterr().out
    assert "seed-003-ovr-logistic" in text and "one-vs-rest" in text
    assert [line.split()[0] for line in text.splitlines() if line.endswith("[default]")] == ["cnn"]


def test_train_then_evaluate_json(tmp_path, capsys):
    out = tmp_path / "run"
    code, result = run_json(capsys, "train", *SMALL, "--shift", "2", "--dropout", "0.1", "--out", str(out))
    assert code == 0
    images, labels = digitlab.data.load("mnist-sample", split="test")
    expected = evaluate(digitlab.load(out / "model.safetensors"), images, labels)
    assert result["test_accuracy"] == expected["accuracy"] and result["test_accuracy"] > 0.5
    assert len(result["epoch_seconds"]) == 1
    assert result["model_path"] == str(out / "model.safetensors")
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden"], config["shift"], config["dropout"]) == ([16], 2, 0.1)

    code, ev = run_json(capsys, "evaluate", result["model_path"], "--dataset", "mnist-sample")
    assert code == 0
    assert ev["accuracy"] == pytest.approx(result["test_accuracy"])
    assert ev["loss"] == pytest.approx(expected["loss"]) and ev["per_class"] == pytest.approx(expected["per_class"])
    assert ev["n"] == 2000
    code, ev_dir = run_json(capsys, "evaluate", str(out), "--dataset", "mnist-sample", "--split", "train")
    assert ev_dir["split"] == "train" and ev_dir["n"] == 10_000


def _weights(path):
    return digitlab.load(path).net.state_dict()


@pytest.mark.parametrize("stop_step", [100, 200], ids=["mid-epoch-1", "mid-epoch-2"])
def test_ctrl_c_then_resume_from_cli_equals_an_uninterrupted_run(tmp_path, capsys, monkeypatch, stop_step):
    two_epochs = [*SMALL, "--epochs", "2", "--seed", "3"]  # 157 steps per epoch (10,000 / 64)
    code, straight = run_json(capsys, "train", *two_epochs, "--out", str(tmp_path / "straight"))
    assert code == 0 and straight["steps"] == 314

    real = digitlab.train.train_recipe

    def press_ctrl_c(state, model):
        if state.step == stop_step:
            signal.raise_signal(signal.SIGINT)

    def with_ctrl_c(*args, **kwargs):
        return real(*args, **{**kwargs, "callback": press_ctrl_c})

    out = tmp_path / "run"
    monkeypatch.setattr(digitlab.train, "train_recipe", with_ctrl_c)
    assert main(["train", *two_epochs, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"step {stop_step}" in err and f"resume with: digitlab train --resume {out}" in err
    assert not (out / "model.safetensors").exists()
    monkeypatch.setattr(digitlab.train, "train_recipe", real)

    assert main(["train", "--resume", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    resumed = json.loads(captured.out)  # the note goes to stderr: stdout stays pure JSON
    epoch, step = stop_step // 157 + 1, stop_step + 1  # 1-based: the next epoch and step to run
    assert f"resuming {out} at epoch {epoch} step {step} of 314" in captured.err
    assert resumed["steps"] == 314 and resumed["epochs"] == 2
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert resumed["train_loss"] == straight["train_loss"]
    a, b = _weights(straight["model_path"]), _weights(resumed["model_path"])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    before = _weights(out / "model.safetensors")
    assert main(["train", "--resume", str(out), "--json"]) == 0  # already finished: nothing left to do
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["epoch_seconds"]) == 1
    assert f"{out} is already complete (157 steps)" in captured.err
    after = _weights(out / "model.safetensors")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--recipe", "nope", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("digitlab: error: no recipe named 'nope'") and "Traceback" not in err
    assert main(["train", "--optimizer", "adamw", "--out", str(tmp_path / "y")]) == 1
    assert "optimizer = 'adamw' is not one of" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.safetensors")]) == 1
    assert "missing.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--hidden", "3x"])


def _tiny_recipe(path, target):
    path.write_text('description = "tiny"\nsystem = "softmax regression"\ndataset = "mnist-sample"\n'
                    f'hidden = []\nepochs = 2\nlr = 0.5\n[reported]\nmetric = "test_accuracy"\n'
                    f'value = 0.5\ntarget = {target}\n')
    return str(path)


def test_reproduce_prints_one_progress_line_per_recipe(tmp_path, capsys):
    easy, hard = _tiny_recipe(tmp_path / "easy.toml", 0.6), _tiny_recipe(tmp_path / "hard.toml", 0.999)
    assert main(["reproduce", easy, hard, "--out", str(tmp_path / "rep")]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()  # no per-epoch lines: exactly one per recipe
    assert len(lines) == 2, captured.err
    assert re.fullmatch(r"\[1/2\] easy \.\.\. \d+\.\d\d % test, ok \(>= 60\.00 %\), \d+\.\d s", lines[0])
    assert re.fullmatch(r"\[2/2\] hard \.\.\. \d+\.\d\d % test, MISSED \(>= 99\.90 %\), \d+\.\d s", lines[1])
    assert "| easy |" in captured.out and "| hard |" in captured.out  # the table stays on stdout


def test_reproduce_json_rows(tmp_path, capsys):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('description = "tiny"\nsystem = "softmax regression"\ndataset = "mnist-sample"\n'
                      'hidden = []\nepochs = 1\nlr = 0.5\n[reported]\nmetric = "test_accuracy"\n'
                      'value = 0.5\ntarget = 0.6\n')
    code, rows = run_json(capsys, "reproduce", str(recipe), "--out", str(tmp_path / "rep"))
    assert code == 0
    (row,) = rows
    assert {"recipe", "metric", "reported", "ours", "seconds"} <= set(row)
    assert row["recipe"] == "tiny" and row["metric"] == "test_accuracy" and row["reported"] == 0.5
    assert row["ours"] > 0.6 and row["ok"] is True
    images, labels = digitlab.data.load("mnist-sample", split="test")
    model = digitlab.load(tmp_path / "rep" / "tiny" / "model.safetensors")
    assert row["ours"] == evaluate(model, images, labels)["accuracy"]  # the figure is the saved model's
    recipe.write_text(recipe.read_text().replace("target = 0.6", "target = 0.999"))
    assert main(["reproduce", str(recipe), "--out", str(tmp_path / "rep2"), "--quiet", "--strict"]) == 1
    table = capsys.readouterr().out
    assert "| tiny | softmax regression | 50.00 % test |" in table and "≥ 99.90 % MISSED" in table


@pytest.mark.parametrize("recipe", ["seed-002-mlp-sigmoid-mse", "seed-003-ovr-logistic", "mlp"])
def test_gradcheck_passes_for_recipe_models(capsys, recipe):
    code, result = run_json(capsys, "gradcheck", "--recipe", recipe, "--samples", "3")
    assert code == 0, result
    assert result["max_relative_error"] < 1e-6 and result["ok"] is True


def test_gradcheck_fails_loudly_with_a_tiny_tolerance(capsys):
    assert main(["gradcheck", "--recipe", "seed-001-softmax", "--tolerance", "0"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_flip_flag_reaches_the_recipe_and_config_json(tmp_path, capsys, monkeypatch):
    real, seen = digitlab.train.train_recipe, []

    def record(name, overrides, **kwargs):
        seen.append((name, overrides))
        raise digitlab.train.TrainingInterrupted("stopped by the test")

    monkeypatch.setattr(digitlab.train, "train_recipe", record)
    for flags in (["--flip"], ["--no-flip"], []):
        assert main(["train", "--recipe", "cnn", "--dataset", "fashion-mnist", *flags]) == 130
    assert [o for _, o in seen] == [{"dataset": "fashion-mnist", "flip": True},
                                    {"dataset": "fashion-mnist", "flip": False}, {"dataset": "fashion-mnist"}]
    monkeypatch.setattr(digitlab.train, "train_recipe", real)
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--flip", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["flip"] is True
