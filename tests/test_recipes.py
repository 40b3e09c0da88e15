"""Recipe files: the six shipped recipes, overrides, bad files, and the pooled sklearn-style split."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.errors import ConfigError
from digitlab.recipes import Recipe, list_recipes, load_recipe, recipe_names

SEEDS = ("seed-000-softmax", "seed-001-softmax", "seed-002-mlp-sigmoid-mse", "seed-003-ovr-logistic",
         "seed-004-mlp-relu")


def test_recipes_ship_with_descriptions_and_figures():
    assert recipe_names() == ["cnn", "cnn-best", "cnn-fast", "lenet5", "mlp", *SEEDS]
    for recipe in list_recipes():
        assert recipe.description and recipe.system, recipe.name
        assert recipe.reported_metric in ("test_accuracy", "val_accuracy")
        bar = min(recipe.spread) if recipe.spread else recipe.target   # a seed-dependent figure: its spread
        assert bar is not None and 0.9 <= bar < 1.0, recipe.name


def test_architecture_tables_and_the_mlp_shorthand(tmp_path):
    from digitlab.recipes import architecture_of

    cnn = load_recipe("cnn")
    assert [e["type"] for e in cnn.architecture][:4] == ["Conv2D", "MaxPool2D", "ReLU", "Conv2D"]
    assert cnn.architecture[0] == {"type": "Conv2D", "init": "torch_uniform", "filters": 24, "kernel": 5}
    assert architecture_of(load_recipe("mlp")) == [
        {"type": "Flatten"}, {"type": "Linear", "out": 144, "bias": True, "init": "he_normal"}, {"type": "ReLU"},
        {"type": "Dropout", "p": 0.2}, {"type": "Linear", "out": 10, "bias": True, "init": "glorot_normal"}]
    assert architecture_of(load_recipe("seed-000-softmax")) == [
        {"type": "Flatten"}, {"type": "Linear", "out": 10, "bias": True, "init": "zeros"}]
    path = tmp_path / "mine.toml"
    path.write_text('epochs = 1\n[[architecture]]\ntype = "Flatten"\n[[architecture]]\ntype = "Linaer"\nout = 10\n')
    with pytest.raises(ConfigError, match=r"mine.toml: architecture layer 1: unknown layer type 'Linaer'"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="either architecture or the MLP shorthand hidden"):
        load_recipe("cnn", {"hidden": [64]})
    with pytest.raises(ConfigError, match="architecture.*wrong type"):
        load_recipe("cnn", {"architecture": ["Conv2D"]})


def test_seed_recipes_say_what_the_notebooks_did():
    s0, s1, s2, s3, s4 = (load_recipe(n) for n in SEEDS)
    assert (s0.split, s0.test_fraction, s0.split_seed, s0.init, s0.lr, s0.batch_size, s0.epochs, s0.order) == (
        "pooled-sklearn", 0.2, 42, ("zeros",), 0.1, 256, 200, "shuffle")
    assert s0.reported == 0.9218 and s3.reported == 0.9032 and s2.reported == 0.83
    assert (s1.init, s1.seed, s1.lr, s1.batch_size, s1.epochs, s1.order) == (
        ("normal:0.01",), 42, 0.2, 128, 10, "sequential")
    assert (s2.hidden, s2.activation, s2.bias, s2.loss, s2.normalization, s2.steps, s2.order, s2.val_size) == (
        (128,), "sigmoid", False, "softmax_mse", "raw", 10_000, "replacement", 10_000)
    assert s2.reported_metric == "val_accuracy"
    assert (s3.loss, s3.batch_size, s3.epochs, s3.lr, s3.normalization) == ("sigmoid_bce", 0, 200, 1e-5, "raw")
    assert s4.hidden == (300,) and float(s4.init[1].split(":")[1]) == pytest.approx((6 / 310) ** 0.5)


def test_overrides_are_checked():
    assert load_recipe("mlp", {"epochs": 2, "hidden": [64, 32]}).hidden == (64, 32)
    assert load_recipe("mlp", {"lr": 1}).lr == 1.0  # an int is fine for a float field
    with pytest.raises(ConfigError, match="unknown field.*epoch_count"):
        load_recipe("mlp", {"epoch_count": 2})
    with pytest.raises(ConfigError, match="'epochs'.*wrong type"):
        load_recipe("mlp", {"epochs": "two"})
    with pytest.raises(ConfigError, match="optimizer = 'adamw' is not one of"):
        load_recipe("mlp", {"optimizer": "adamw"})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        load_recipe("mlp", {"lr": 0.0})
    with pytest.raises(ConfigError, match="shift must be 0..13 pixels"):
        load_recipe("mlp", {"shift": 14})


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="no recipe named 'resnet'.*seed-004-mlp-relu"):
        load_recipe("resnet")


def test_own_recipe_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('description = "mine"\nhidden = [10]\nepochs = 1\n[reported]\nmetric = "test_accuracy"\n')
    recipe = load_recipe(path)
    assert (recipe.name, recipe.hidden, recipe.epochs) == ("mine", (10,), 1)
    assert recipe.lr == Recipe().lr  # unspecified fields keep the dataclass defaults
    (tmp_path / "bad.toml").write_text("hidden = [10\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_recipe(tmp_path / "bad.toml")
    (tmp_path / "badrep.toml").write_text("[reported]\nvalue = 92.18\n")
    with pytest.raises(ConfigError, match="must be a fraction"):
        load_recipe(tmp_path / "badrep.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")


def test_sklearn_split_matches_a_hand_derived_randomstate_permutation():
    from digitlab.data.dataset import sklearn_train_test_split_indices

    # RandomState(42).permutation(10) == [8, 1, 5, 0, 7, 2, 9, 4, 3, 6]; sklearn's
    # train_test_split(range(10), test_size=0.2, random_state=42) gives test [8, 1], train the rest in order.
    train, test = sklearn_train_test_split_indices(10, test_size=0.2, random_state=42)
    assert test.tolist() == [8, 1]
    assert train.tolist() == [5, 0, 7, 2, 9, 4, 3, 6]
    train, test = sklearn_train_test_split_indices(70_000, 0.2, 42)
    assert len(test) == 14_000 and len(train) == 56_000
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(70_000))


@pytest.mark.slow
def test_pooled_split_uses_all_70000_images(mnist_dir):
    from digitlab.data.dataset import load_dataset, sklearn_train_test_split_indices
    from digitlab.train import prepare_data

    data = prepare_data(load_recipe("seed-000-softmax"), mnist_dir)
    pooled = load_dataset("mnist", mnist_dir, quiet=True).split("all")
    train, test = sklearn_train_test_split_indices(70_000, 0.2, 42)
    assert np.array_equal(data.test.labels, pooled.labels[test])
    assert np.array_equal(data.train.images, pooled.images[train])
    assert data.val is None


# recipe: (digit translate, Fashion-MNIST's (translate, flip)): cnn-best mirrors clothes; cnn's small network
# underfits them in 5 epochs, so its table turns augmentation off altogether
@pytest.mark.parametrize("name, translate, fashion_translate, fashion_flip, fashion_epochs", [
    ("cnn", 2.0, 0.0, False, 5), ("cnn-best", 2.5, 1.0, True, 20)])
def test_fashion_mnist_table_turns_off_turns_and_zooms(name, translate, fashion_translate, fashion_flip,
                                                       fashion_epochs):
    digits = load_recipe(name)
    assert (digits.dataset, digits.rotate > 0, digits.scale > 0, digits.translate, digits.flip) == (
        "mnist", True, True, translate, False)
    assert load_recipe(name, {"dataset": "mnist"}) == digits
    fashion = load_recipe(name, {"dataset": "fashion-mnist"})
    assert (fashion.rotate, fashion.scale, fashion.translate, fashion.flip) == (0.0, 0.0, fashion_translate,
                                                                                fashion_flip)
    assert fashion == Recipe(**{**digits.__dict__, "dataset": "fashion-mnist", "rotate": 0.0, "scale": 0.0,
                                "translate": fashion_translate, "flip": fashion_flip,
                                "epochs": fashion_epochs})  # nothing else changes
    mine = load_recipe(name, {"dataset": "fashion-mnist", "rotate": 5, "flip": not fashion_flip})  # overrides win
    assert (mine.rotate, mine.scale, mine.flip) == (5.0, 0.0, not fashion_flip)


def test_dataset_table_applies_when_the_file_names_that_data_set(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('dataset = "fashion-mnist"\nrotate = 8.0\n[datasets.fashion-mnist]\nrotate = 0.0\nflip = true\n'
                    '[datasets.mnist-sample]\nepochs = 3\n')
    r = load_recipe(path)
    assert (r.rotate, r.flip, r.epochs) == (0.0, True, Recipe().epochs)
    s = load_recipe(path, {"dataset": "mnist-sample"})
    assert (s.rotate, s.flip, s.epochs) == (8.0, False, 3)


@pytest.mark.parametrize("table, message", [
    ("[datasets.fashion]\nflip = true\n", r"bad.toml: \[datasets.fashion\]: unknown data set 'fashion'"),
    ("[datasets.fashion-mnist]\nrotat = 0.0\n", r"bad.toml: \[datasets.fashion-mnist\]: 'rotat' is not a recipe"),
    ("[datasets.fashion-mnist]\nname = \"x\"\n", r"bad.toml: \[datasets.fashion-mnist\]: 'name' is not a recipe"),
    ("[datasets.fashion-mnist]\ndataset = \"mnist\"\n", r"\[datasets.fashion-mnist\]: 'dataset' is not a recipe"),
    ("[datasets.fashion-mnist]\nflip = \"yes\"\n", r"bad.toml.*\[datasets.fashion-mnist\]: field 'flip'.*wrong type"),
    ("[datasets.fashion-mnist]\nrotate = 400.0\n", r"bad.toml.*\[datasets.fashion-mnist\]: .*rotate = 400.0"),
    ("datasets = 3\n", r"bad.toml: datasets must be a table"),
    ("[datasets]\nfashion-mnist = 1\n", r"bad.toml: \[datasets.fashion-mnist\] must be a table"),
])
def test_bad_dataset_tables_are_refused_even_when_not_applied(tmp_path, table, message):
    path = tmp_path / "bad.toml"
    path.write_text("hidden = [10]\n" + table)
    with pytest.raises(ConfigError, match=message):
        load_recipe(path)  # the run's data set is mnist: the table would not apply, it is still checked
