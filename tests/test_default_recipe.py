"""`digitlab train` with no options: the default recipe's promise, checked on full MNIST."""

import pytest

import digitlab
from digitlab.recipes import DEFAULT_RECIPE
from digitlab.train import evaluate


@pytest.mark.slow
def test_default_cnn_reaches_99_3_percent_on_full_mnist(trained_cnn, mnist_dir):
    assert DEFAULT_RECIPE == trained_cnn.recipe.name == "cnn"
    assert trained_cnn.test_accuracy >= 0.993, trained_cnn.history[-1]
    # the figure recorded in the model file is what the saved model really scores on the 10,000 test digits
    images, labels = digitlab.data.load("mnist", split="test", data_dir=mnist_dir)
    saved = digitlab.load(trained_cnn.model_path)
    assert saved.metadata["metrics"]["test_accuracy"] == evaluate(saved, images, labels)["accuracy"]
    assert (trained_cnn.run_dir / "filters.png").is_file() and (trained_cnn.run_dir / "activations.png").is_file()


@pytest.mark.slow
def test_the_mlp_recipe_keeps_its_98_3_percent(trained_mlp):
    assert trained_mlp.recipe.name == "mlp"
    assert trained_mlp.test_accuracy >= 0.983, trained_mlp.history[-1]
