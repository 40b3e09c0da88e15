"""Training loop: determinism, resume, Ctrl-C, NaN stop, history, evaluate, and the seed-003/001 figures.

Fast tests train tiny models on the bundled mnist-sample; the `slow` ones use full MNIST (mnist_dir fixture).
"""

from __future__ import annotations

import csv
import json
import math
import signal

import numpy as np
import pytest

from digitlab.errors import ConfigError, TrainingError
from digitlab.train import (
    CHECKPOINT,
    HISTORY_COLUMNS,
    Plan,
    TrainingInterrupted,
    evaluate,
    prepare_data,
    train_recipe,
)
from digitlab.recipes import load_recipe

# A small but real recipe: shuffled mini-batches, shifted images (augmentation), dropout (the noise RNG), Adam
# state, cosine schedule.
TINY = {"dataset": "mnist-sample", "hidden": (32,), "epochs": 2, "batch_size": 200, "order": "shuffle",
        "optimizer": "adam", "lr": 0.003, "schedule": "cosine", "dropout": 0.1, "seed": 7, "normalization": "unit",
        "shift": 1}


def _weights(model) -> dict:
    return {k: v.copy() for k, v in model.net.state_dict().items()}


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _train(tmp_path, name="run", **overrides):
    return train_recipe("mlp", {**TINY, **overrides}, out_dir=tmp_path / name, quiet=True, report=False)


def _stop_at(step):
    def callback(state, model):
        if state.step == step:
            raise KeyboardInterrupt

    return callback


@pytest.mark.parametrize("threads", [0, 2], ids=["auto-threads", "two-blas-threads"])
def test_same_recipe_and_seed_give_bit_identical_weights(tmp_path, threads):
    # threads=0 lets fit() pick one BLAS thread for these tiny steps; 2 forces the multi-threaded path the
    # default recipe uses.
    a, b = _train(tmp_path, "a", threads=threads), _train(tmp_path, "b", threads=threads)
    assert _same_weights(_weights(a.model), _weights(b.model))
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    c = _train(tmp_path, "c", seed=8)
    assert not _same_weights(_weights(a.model), _weights(c.model))


def test_training_applies_the_recipe_shift(tmp_path, monkeypatch):
    import digitlab.train as train_mod

    seen = []
    real = train_mod.batches

    def spy(*args, **kwargs):
        seen.append(kwargs.get("shift"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "batches", spy)
    shifted = _train(tmp_path, "shifted", epochs=1)
    plain = _train(tmp_path, "plain", epochs=1, shift=0)
    assert seen == [1, 0]  # one epoch each: the recipe's shift reaches the batches
    assert not _same_weights(_weights(shifted.model), _weights(plain.model))  # and changes what is learnt


@pytest.mark.parametrize("stop_step", [50, 37], ids=["epoch-boundary", "mid-epoch"])
def test_interrupt_then_resume_is_bit_identical(tmp_path, stop_step):
    straight = _train(tmp_path, "straight")
    run = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted, match=r"resume with: digitlab train --resume .*interrupted"):
        train_recipe("mlp", TINY, out_dir=run, quiet=True, report=False, callback=_stop_at(stop_step))
    assert (run / CHECKPOINT).is_file()
    assert not (run / "model.safetensors").exists()
    resumed = train_recipe(None, out_dir=run, quiet=True, resume=True, report=False)
    assert _same_weights(_weights(straight.model), _weights(resumed.model))
    drop = ("seconds",)
    strip = [{k: v for k, v in r.items() if k not in drop} for r in straight.history]
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.history] == strip
    assert resumed.test_accuracy == straight.test_accuracy


def test_real_sigint_is_deferred_to_a_step_boundary_and_saves(tmp_path):
    def press_ctrl_c(state, model):
        if state.step == 10:
            signal.raise_signal(signal.SIGINT)

    run = tmp_path / "sigint"
    with pytest.raises(TrainingInterrupted, match="checkpoint saved") as info:
        train_recipe("mlp", TINY, out_dir=run, quiet=True, report=False, callback=press_ctrl_c)
    assert "step 10" in str(info.value)
    from digitlab.nn.model import read_model_file

    _, header, _ = read_model_file(run / CHECKPOINT)
    assert header["checkpoint"]["step"] == 10 and header["checkpoint"]["epoch"] == 0


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingError, match="no config.json"):
        train_recipe(None, out_dir=tmp_path, resume=True)


def test_huge_learning_rate_stops_with_a_clear_message(tmp_path):
    with pytest.raises(TrainingError) as info:
        _train(tmp_path, "nan", hidden=(), optimizer="sgd", lr=1e36, schedule="constant", normalization="raw",
               dropout=0.0)
    message = str(info.value)
    assert re_match(r"loss became (NaN|infinite) at epoch 1 step \d+ — learning rate 1e\+36 is probably too high",
                    message)
    assert "no checkpoint was written" in message


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    def poison(state, model):  # after the first epoch's checkpoint, break the weights
        if state.step == 51:
            model.net.parameters()[0][0, 0] = np.nan

    run = tmp_path / "poisoned"
    with pytest.raises(TrainingError, match=r"at epoch 2 step 52 .* last good checkpoint is .*epoch 1"):
        train_recipe("mlp", TINY, out_dir=run, quiet=True, report=False, callback=poison)
    from digitlab.nn.model import read_model_file

    model, header, _ = read_model_file(run / CHECKPOINT)
    assert header["checkpoint"]["epoch"] == 1
    assert all(np.isfinite(p).all() for p in model.net.parameters())
    assert len(list(csv.DictReader((run / "history.csv").open()))) == 1


def re_match(pattern, text):
    import re

    return re.search(pattern, text) is not None


def test_history_csv_and_run_folder(tmp_path):
    result = _train(tmp_path, "hist", val_size=1000)
    run = result.run_dir
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert tuple(rows[0].keys()) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["step"]) for r in rows] == [45, 90]  # 9,000 training images / 200 per batch
    for row, mem in zip(rows, result.history):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy", "lr"):
            assert float(row[key]) == mem[key], key
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    # lr of each epoch's last step: cosine from 0.003 over 90 steps, at steps 44 and 89
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.0015 * (1 + math.cos(math.pi * s / 90))
                                                            for s in (44, 89)], rel=1e-12)
    # the last row's val/test figures are the final model's, on the run's own validation and test images
    data = prepare_data(result.recipe)
    for split in ("val", "test"):
        part = getattr(data, split)
        measured = evaluate(result.model, part.images, part.labels)
        assert float(rows[1][f"{split}_accuracy"]) == measured["accuracy"]
        assert float(rows[1][f"{split}_loss"]) == pytest.approx(measured["loss"], rel=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_accuracy"] == result.test_accuracy and summary["epochs"] == 2
    config = json.loads((run / "config.json").read_text())
    assert config["hidden"] == [32] and config["val_size"] == 1000
    assert result.val_accuracy == result.history[-1]["val_accuracy"]
    from digitlab.plots import read_history

    assert read_history(run)["train_accuracy"].shape == (2,)


def test_model_file_metadata_and_reload(tmp_path):
    import digitlab
    import digitlab.data

    result = _train(tmp_path, "meta", epochs=1)
    model = digitlab.load(result.model_path)
    meta = model.metadata
    assert meta["recipe"] == "mlp" and meta["seed"] == 7 and meta["dataset"] == "mnist-sample"
    assert set(meta["dataset_checksums"]) and meta["normalization"] == "unit"
    # the recorded figure is what the saved model scores on the sample's 2,000 test digits
    images, labels = digitlab.data.load("mnist-sample", split="test")
    assert meta["metrics"]["test_accuracy"] == evaluate(model, images, labels)["accuracy"]
    assert "checkpoint" not in meta
    images = np.zeros((3, 28, 28), np.uint8)
    np.testing.assert_array_equal(model.predict_proba(images), result.model.predict_proba(images))


def test_steps_mode_with_replacement_and_full_batch(tmp_path):
    result = _train(tmp_path, "steps", steps=60, order="replacement", epochs=1)
    assert result.history[-1]["step"] == 60 and len(result.history) == 2  # 45 + 15 steps
    full = _train(tmp_path, "full", batch_size=0, epochs=3, hidden=(), dropout=0.0, optimizer="sgd", lr=0.5)
    assert [r["step"] for r in full.history] == [1, 2, 3]


def test_plan_counts_steps_and_epochs():
    recipe = load_recipe("seed-002-mlp-sigmoid-mse")
    plan = Plan.of(recipe, 50_000)
    assert (plan.per_epoch, plan.total, plan.epochs) == (391, 10_000, 26)
    assert plan.steps_in(25) == 10_000 - 25 * 391
    assert Plan.of(load_recipe("seed-003-ovr-logistic"), 60_000).total == 200


def test_evaluate_reports_accuracy_loss_and_per_class():
    from digitlab.nn import Classifier, build_linear

    net = build_linear(784, 10)
    net.layers[0].b[:] = np.arange(10, dtype=np.float32)  # always predicts class 9
    model = Classifier(net, "softmax_ce")
    images = np.zeros((20, 28, 28), np.uint8)
    labels = np.array([9] * 5 + [3] * 15)
    out = evaluate(model, images, labels, batch_size=7)
    assert out["accuracy"] == 0.25
    scores = np.arange(10, dtype=np.float64)
    expected = np.log(np.exp(scores).sum()) - np.array([scores[9]] * 5 + [scores[3]] * 15)
    assert out["loss"] == pytest.approx(expected.mean(), rel=1e-5)
    assert out["per_class"][9] == 1.0 and out["per_class"][3] == 0.0 and math.isnan(out["per_class"][0])
    with pytest.raises(ConfigError):
        evaluate(model, images, labels[:3])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_seed_003_gives_exactly_the_notebooks_90_32_percent(tmp_path, mnist_dir, dtype):
    result = train_recipe("seed-003-ovr-logistic", {"dtype": dtype}, out_dir=tmp_path / "s3", data_dir=mnist_dir,
                          report=False)
    assert result.model.net.parameters()[0].dtype == dtype
    assert f"{100 * result.test_accuracy:.2f}" == "90.32"


@pytest.mark.slow
def test_seed_001_reaches_92_percent(tmp_path, mnist_dir):
    result = train_recipe("seed-001-softmax", None, out_dir=tmp_path / "s1", data_dir=mnist_dir, report=False)
    assert result.test_accuracy >= 0.92
    assert len(result.epoch_seconds) == 10


@pytest.mark.slow
def test_trained_mlp_fixture_is_a_good_model(trained_mlp):
    assert trained_mlp.test_accuracy >= 0.97
    assert trained_mlp.model_path.is_file()
    for name in ("config.json", "history.csv", "summary.json", "report.md", "curves.png"):
        assert (trained_mlp.run_dir / name).is_file(), name


def test_sparse_input_training_is_deterministic(tmp_path, monkeypatch):
    """seed-004 (unit pixels, batches in order) multiplies only the non-zero pixel columns; two runs of it
    still give bit-identical weights, and the sparse path really ran."""
    import digitlab.nn.layers as layers

    sparse_batches = []
    real = layers._live_columns

    def spy(x):
        live, cols = real(x)
        sparse_batches.append(cols is not None)
        return live, cols

    monkeypatch.setattr(layers, "_live_columns", spy)
    runs = [train_recipe("seed-004-mlp-relu", {"dataset": "mnist-sample", "steps": 40, "threads": 1},
                         out_dir=tmp_path / name, quiet=True, report=False) for name in ("a", "b")]
    assert sum(sparse_batches) >= 80  # the first Linear, 40 training steps per run
    assert _same_weights(_weights(runs[0].model), _weights(runs[1].model))
