"""`digitlab train` with no options: the default recipe's promise, checked on full MNIST."""

import digitlab
from digitlab.train import evaluate


def test_default_recipe_reaches_98_3_percent_on_full_mnist(trained_mlp, mnist_dir):
    assert trained_mlp.recipe.name == "mlp"
    assert trained_mlp.test_accuracy >= 0.983, trained_mlp.history[-1]
    # the figure recorded in the model file is what the saved model really scores on the 10,000 test digits
    images, labels = digitlab.data.load("mnist", split="test", data_dir=mnist_dir)
    saved = digitlab.load(trained_mlp.model_path)
    assert saved.metadata["metrics"]["test_accuracy"] == evaluate(saved, images, labels)["accuracy"]
