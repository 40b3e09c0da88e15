"""digitlab.sklearn: checked by scikit-learn itself (parametrize_with_checks), in Pipelines and GridSearchCV,
against scikit-learn's own MLPClassifier, and as thin wrappers over digitlab.train.fit()."""

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SklearnMLP  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import digitlab.train  # noqa: E402
from digitlab.nn.model import Classifier, load  # noqa: E402
from digitlab.sklearn import CNNClassifier, MLPClassifier, SoftmaxRegression  # noqa: E402


# Three checks fit on unscaled features X ~ N(100, 1): plain SGD at SoftmaxRegression's default learning rate
# (0.1) diverges there, and fit says so with a ValueError (as scikit-learn's SGDClassifier does on overflow)
# instead of returning garbage weights. Adam (MLPClassifier, CNNClassifier) takes them in its stride.
UNSCALED_CHECKS = ("check_fit_idempotent", "check_fit_check_is_fitted", "check_n_features_in")


def expected_failed_checks(estimator):
    """scikit-learn's own mechanism for checks an estimator cannot pass."""
    if isinstance(estimator, SoftmaxRegression) and estimator.solver != "adam":
        why = "X ~ N(100, 1) unscaled: SGD at learning rate 0.1 diverges and fit raises ValueError"
        return {name: why for name in UNSCALED_CHECKS}
    return {}


ESTIMATORS = [SoftmaxRegression(), SoftmaxRegression(loss="sigmoid_bce", solver="nesterov"), MLPClassifier(),
              MLPClassifier(hidden_layer_sizes=(8, 8), activation="tanh", dropout=0.1, solver="momentum",
                            learning_rate_init=0.05),
              # scikit-learn's checks use any number of features: each row is a 1 x D image (input_shape -1)
              CNNClassifier(input_shape=(1, -1), max_iter=50, learning_rate_init=0.01,
                            architecture=[{"type": "Conv2D", "filters": 4, "kernel": 1},
                                          {"type": "ReLU"}, {"type": "Flatten"}, {"type": "Linear"}])]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)  # Xtr, Xte, ytr, yte


def test_grid_search_pipeline_on_load_digits(digits):
    Xtr, Xte, ytr, yte = digits
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=30, random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(4,), (64,)]}, cv=3)
    grid.fit(Xtr, ytr)
    assert grid.best_params_ == {"mlpclassifier__hidden_layer_sizes": (64,)}  # 4 hidden units are too few
    assert grid.cv_results_["mean_test_score"][0] < grid.cv_results_["mean_test_score"][1]
    assert grid.score(Xte, yte) >= 0.95


def test_grid_search_pipeline_on_mnist_sample():
    from digitlab.data import load

    images, labels = load("mnist-sample", split="train", quiet=True)
    X = images[:3000].reshape(3000, -1)  # (N, 784) uint8 pixels as tabular features
    y = np.array([f"digit {d}" for d in labels[:3000]])  # string labels
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), max_iter=10, random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__learning_rate_init": [1e-6, 1e-3]}, cv=2).fit(Xtr, ytr)
    assert grid.best_params_["mlpclassifier__learning_rate_init"] == 1e-3  # 1e-6 barely moves the weights
    assert list(grid.classes_) == [f"digit {d}" for d in range(10)]
    assert grid.predict(Xte[:3]).dtype.kind == "U"
    assert grid.score(Xte, yte) >= 0.80


def test_accuracy_at_least_sklearn_mlp_on_load_digits(digits):
    """Same hidden sizes (100,), same 50 epochs, same Adam 1e-3 and batches of 200, mean over three seeds;
    scikit-learn keeps its default L2 penalty and its convergence test is switched off so it runs all 50."""
    Xtr, Xte, ytr, yte = digits
    ours, theirs = [], []
    for seed in range(3):
        ours.append(make_pipeline(StandardScaler(), MLPClassifier((100,), max_iter=50, random_state=seed))
                    .fit(Xtr, ytr).score(Xte, yte))
        ref = SklearnMLP((100,), max_iter=50, n_iter_no_change=10**6, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter reached, as intended
            theirs.append(make_pipeline(StandardScaler(), ref).fit(Xtr, ytr).score(Xte, yte))
        assert ref.n_iter_ == 50
    assert np.mean(ours) >= np.mean(theirs) > 0.95


def test_fit_trains_through_digitlab_fit(digits, monkeypatch):
    """No second training loop: every epoch runs inside digitlab.train.fit()."""
    calls = []
    real = digitlab.train.fit
    monkeypatch.setattr(digitlab.train, "fit", lambda *a, **k: calls.append(a[3].epochs) or real(*a, **k))
    Xtr, _, ytr, _ = digits
    clf = MLPClassifier((16,), max_iter=3, random_state=0).fit(Xtr, ytr)
    assert calls == [3] and clf.n_iter_ == 3 and len(clf.loss_curve_) == 3
    assert clf._trainer["optimizer"].decay_mask == [True, False, True, False]  # weights decay, biases not
    clf.partial_fit(Xtr, ytr)
    assert calls == [3, 4] and clf.n_iter_ == 4  # one more epoch, continuing the same run


def test_string_labels_probabilities_and_model(digits, tmp_path):
    Xtr, Xte, ytr, yte = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    clf = SoftmaxRegression(max_iter=20, random_state=0).fit(Xtr / 16, names[ytr])
    assert list(clf.classes_) == sorted(names) and clf.n_features_in_ == 64
    proba = clf.predict_proba(Xte / 16)
    assert proba.shape == (len(Xte), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.predict(Xte / 16), clf.classes_[proba.argmax(axis=1)])
    np.testing.assert_allclose(clf.predict_log_proba(Xte / 16), np.log(proba))
    assert clf.score(Xte / 16, names[yte]) >= 0.9
    assert isinstance(clf.model_, Classifier) and clf.model_.class_names == list(clf.classes_)
    reloaded = load(clf.model_.save(tmp_path / "m.safetensors"))  # digitlab's own file format
    np.testing.assert_array_equal(reloaded.predict(Xte / 16), proba.argmax(axis=1))


def test_loss_curve_decreases_and_partial_fit_continues(digits):
    Xtr, _, ytr, _ = digits
    X = StandardScaler().fit_transform(Xtr)
    clf = MLPClassifier((32,), max_iter=10, random_state=0).fit(X, ytr)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0] / 2
    inc = MLPClassifier((32,), random_state=0)
    for _ in range(10):
        inc.partial_fit(X, ytr, classes=np.arange(10))
    np.testing.assert_allclose(inc.loss_curve_, clf.loss_curve_, rtol=1e-12)  # same epochs, same numbers
    with pytest.raises(ValueError, match="labels not in classes_"):
        inc.partial_fit(X[:5], np.array([0, 1, 2, 3, 11]))
    with pytest.raises(ValueError, match="needs classes="):
        MLPClassifier().partial_fit(X, ytr)
    with pytest.raises(ValueError, match="differ from the classes"):
        inc.partial_fit(X, ytr, classes=np.arange(11))


def test_early_stopping_keeps_the_best_epoch(digits):
    Xtr, _, ytr, _ = digits
    X = StandardScaler().fit_transform(Xtr)
    clf = MLPClassifier((32,), max_iter=300, early_stopping=True, n_iter_no_change=3, random_state=0).fit(X, ytr)
    assert 4 <= clf.n_iter_ < 300 and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    best, stalled, stop = -np.inf, 0, None  # scikit-learn's rule, replayed on the recorded scores
    for epoch, score in enumerate(clf.validation_scores_, start=1):
        stalled = stalled + 1 if score < best + clf.tol else 0
        best = max(best, score)
        if stalled > clf.n_iter_no_change:
            stop = epoch
            break
    assert stop == clf.n_iter_  # it stopped at the first epoch the rule says, not before or after
    _, X_val, _, y_val = train_test_split(X, ytr, test_size=0.1, stratify=ytr, random_state=clf._seed)
    assert clf.score(X_val, y_val) == clf.best_validation_score_  # the best weights were restored


def test_random_state_clone_and_pickle(digits):
    Xtr, Xte, ytr, _ = digits
    a = MLPClassifier((16,), max_iter=5, random_state=3).fit(Xtr, ytr)
    b = clone(a).fit(Xtr, ytr)
    c = MLPClassifier((16,), max_iter=5, random_state=4).fit(Xtr, ytr)
    np.testing.assert_array_equal(a.predict_proba(Xte), b.predict_proba(Xte))
    assert not np.allclose(a.predict_proba(Xte), c.predict_proba(Xte))
    d = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(d.predict_proba(Xte), a.predict_proba(Xte))
    assert a.set_params(max_iter=7).get_params()["max_iter"] == 7


def test_a_diverging_fit_is_one_value_error():
    rng = np.random.default_rng(0)
    X, y = rng.normal(loc=100, size=(30, 2)), np.arange(30) % 3  # unscaled: SGD at lr 0.1 blows up
    with pytest.raises(ValueError, match=r"learning rate 0\.1 is probably too high.*StandardScaler"):
        SoftmaxRegression(max_iter=10, random_state=0).fit(X, y)
    assert SoftmaxRegression(max_iter=10, random_state=0).fit(X - 100, y).n_iter_ == 10  # scaled: trains


def test_bad_parameters_raise_value_error_in_fit(digits):
    Xtr, _, ytr, _ = digits
    for est, name in [(MLPClassifier(hidden_layer_sizes=(0,)), "hidden_layer_sizes"),
                      (MLPClassifier(activation="swish"), "activation"), (MLPClassifier(init="nope"), "init"),
                      (SoftmaxRegression(solver="lbfgs"), "solver"), (SoftmaxRegression(max_iter=0), "max_iter"),
                      (SoftmaxRegression(learning_rate_init=-1), "learning_rate_init")]:
        with pytest.raises(ValueError, match=name):
            est.fit(Xtr, ytr)


def test_import_digitlab_without_sklearn():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "import digitlab, digitlab.train, digitlab.nn.model\n"
            "try:\n    import digitlab.sklearn\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'digitlab[sklearn]'" in out


def test_cnn_classifier_on_mnist_sample():
    from digitlab.data import load

    images, labels = load("mnist-sample", split="all", quiet=True)
    X, y = images[:3000].reshape(3000, -1) / 255.0, labels[:3000]  # rows of 784 pixels in [0, 1]
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    clf = CNNClassifier(max_iter=4, learning_rate_init=0.003, random_state=0).fit(Xtr, ytr)  # conv 8@3x3, pool
    assert type(clf.model_.net.layers[0]).__name__ == "Conv2D" and clf.model_.net.input_shape == (28, 28)
    assert clf.score(Xte, yte) >= 0.85


def test_cnn_classifier_on_load_digits_images_and_its_errors(digits):
    """8x8 images as rows of X, a BatchNorm CNN from a spec list; input_shape -1 takes X's width."""
    Xtr, Xte, ytr, yte = digits
    arch = [{"type": "Conv2D", "filters": 8, "kernel": 3, "padding": "same"}, {"type": "BatchNorm"},
            {"type": "ReLU"}, {"type": "MaxPool2D", "pool": 2}, {"type": "Flatten"}, {"type": "Linear"}]
    clf = CNNClassifier(architecture=arch, input_shape=(8, -1), max_iter=20, learning_rate_init=0.01,
                        random_state=0).fit(Xtr / 16, ytr)
    net = clf.model_.net
    assert net.input_shape == (8, 8) and net.layers[3].output_shape == (4, 4, 8)
    assert clf.score(Xte / 16, yte) >= 0.9
    assert net.layers[1].running_mean.any()  # BatchNorm's statistics were trained
    for bad, match in [({"input_shape": (3, -1)}, "does not fit X's 64 features"),
                       ({"input_shape": (0, 8)}, "input_shape"),
                       ({"input_shape": (-1, -1)}, "input_shape"),
                       ({"architecture": [{"type": "Conv2D", "filters": 4, "kernel": 9}, {"type": "Flatten"},
                                          {"type": "Linear"}], "input_shape": (8, 8)}, "does not fit images"),
                       ({"architecture": "conv"}, "architecture")]:
        with pytest.raises(ValueError, match=match):
            CNNClassifier(**bad).fit(Xtr, ytr)


def test_cnn_classifier_builds_from_an_architecture_list(digits):
    """Any spec list works, dense layers too; the last Linear gets its "out" from the data."""
    Xtr, Xte, ytr, yte = digits
    arch = [{"type": "Linear", "in": 64, "out": 32}, {"type": "ReLU"}, {"type": "Linear", "in": 32}]
    clf = CNNClassifier(architecture=arch, input_shape=(8, 8), max_iter=30, random_state=0)
    pipe = make_pipeline(StandardScaler(), clf).fit(Xtr, ytr)
    assert [layer.spec() for layer in clf.model_.net.layers][-1]["out"] == 10
    assert pipe.score(Xte, yte) >= 0.9
    assert arch[-1] == {"type": "Linear", "in": 32}  # the parameter itself is left alone
    with pytest.raises(ValueError, match="input_shape"):
        CNNClassifier(architecture=arch, input_shape=(28, 28)).fit(Xtr, ytr)
