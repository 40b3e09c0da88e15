"""`digitlab train` with no options: the default recipe's promise, checked on full MNIST."""


def test_default_recipe_reaches_98_3_percent_on_full_mnist(trained_mlp):
    assert trained_mlp.recipe.name == "mlp"
    assert trained_mlp.test_accuracy >= 0.983, trained_mlp.history[-1]
    assert trained_mlp.model.metadata["metrics"]["test_accuracy"] == trained_mlp.test_accuracy
