"""scikit-learn estimators over digitlab's own networks (needs the extra: pip install 'digitlab[sklearn]').

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from digitlab.sklearn import MLPClassifier, SoftmaxRegression
    clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(100,), max_iter=50, random_state=0))
    clf.fit(X_train, y_train).score(X_test, y_test)      # any 2-D numeric X, any label type (strings too)
    clf[-1].model_                                      # the digitlab Classifier inside (model_.save(...) works)

Each estimator follows scikit-learn's conventions (the constructor only stores its parameters; `fit`,
`partial_fit`, `predict`, `predict_proba`, `predict_log_proba`, `score`; `classes_`, `n_features_in_`,
`loss_curve_`, `n_iter_`; clone-able and picklable) and is a thin wrapper: the network comes from
digitlab.nn (build_linear / build_mlp / Sequential.from_spec), the steps from digitlab.train.fit() with
digitlab's losses and optimizers. Features reach the network as given (normalisation scheme "none"): scale
them in the pipeline (StandardScaler) as you would for scikit-learn's own MLP.

`fit` trains `max_iter` epochs (full passes over X) unless `early_stopping=True`: then `validation_fraction`
of X (stratified) is held out, training stops once its accuracy has not improved by `tol` for
`n_iter_no_change` epochs, and the best weights seen are kept (scikit-learn's MLPClassifier rule).
`partial_fit` trains one epoch on the data it is given, continuing the optimizer's state.
"""

from __future__ import annotations

import dataclasses

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("digitlab.sklearn needs scikit-learn >= 1.6: pip install 'digitlab[sklearn]'") from exc

from digitlab.errors import ConfigError, TrainingError
from digitlab.nn.init import parse_init
from digitlab.nn.layers import ACTIVATIONS, Sequential
from digitlab.nn.losses import LOSSES
from digitlab.nn.model import Classifier, build_linear, build_mlp

__all__ = ["SoftmaxRegression", "MLPClassifier", "CNNClassifier"]

SOLVERS = ("sgd", "momentum", "nesterov", "adam")
_DTYPES = (np.float64, np.float32)  # X keeps float32 if given, anything else becomes float64


# ------------------------------------------------------------------------------------------------ the adapter
def _train_epochs(model: Classifier, trainer, settings: dict, X, y, val, epochs: int):
    """THE one place this module touches digitlab's training internals: `epochs` more epochs of
    digitlab.train.fit() on (X float [N, D], y int64 [N]), evaluating on `val` = (X_val, y_val) after each.

    `trainer` is None on the first call; the returned one (recipe, optimizer, position, random streams) is
    passed back to continue where training stopped. Returns (trainer, the new per-epoch history rows).
    """
    from digitlab import train
    from digitlab.data.dataset import Split
    from digitlab.recipes import Recipe

    if trainer is None:
        recipe = Recipe(name="sklearn", dataset="arrays", normalization="none", **settings)
        # weight decay on weights only (scikit-learn's alpha spares the intercepts too); total_steps matters
        # only for a onecycle beta1 schedule, which these estimators never set
        trainer = {"recipe": recipe, "optimizer": train.build_optimizer(recipe, model.net),
                   "state": train.TrainState(), "rngs": train._rngs(recipe.seed)}
    state = trainer["state"]
    recipe = dataclasses.replace(trainer["recipe"], epochs=state.epoch + epochs, batch_size=settings["batch_size"])
    data = train.RunData("arrays", Split(X, y), None if val is None else Split(*val), None, {}, model.class_names)
    done = len(state.history)
    try:
        train.fit(model, trainer["optimizer"], data, recipe, state, trainer["rngs"], quiet=True)
    except TrainingError as exc:  # a diverged run: scikit-learn's SGDClassifier raises ValueError here too
        raise ValueError(f"{exc}; scaling the features (e.g. StandardScaler) might help") from None
    return trainer, state.history[done:]


# ------------------------------------------------------------------------------------------------ base
class _DigitlabClassifier(ClassifierMixin, BaseEstimator):
    """Shared fit / predict logic; subclasses define __init__ (the parameters) and _build_network."""

    def _build_network(self, n_features: int, n_classes: int, rng, dtype) -> Sequential:
        raise NotImplementedError

    def _check_params(self) -> None:
        """ValueError naming the parameter; scikit-learn checks parameters in fit, never in __init__."""
        checks = [
            ("solver", self.solver in SOLVERS, f"one of {SOLVERS}"),
            ("loss", self.loss in LOSSES, f"one of {tuple(LOSSES)}"),
            ("learning_rate_init", _positive(self.learning_rate_init), "a number > 0"),
            ("momentum", _number(self.momentum) and 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("weight_decay", _number(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
            ("batch_size", self.batch_size == "auto" or _positive_int(self.batch_size), "'auto' or an int >= 1"),
            ("max_iter", _positive_int(self.max_iter), "an int >= 1"),
            ("validation_fraction", _number(self.validation_fraction) and 0 < self.validation_fraction < 1,
             "a number in (0, 1)"),
            ("n_iter_no_change", _positive_int(self.n_iter_no_change), "an int >= 1"),
            ("tol", _number(self.tol) and self.tol >= 0, "a number >= 0"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"{type(self).__name__}: {name}={getattr(self, name)!r} must be {want}")

    # -- training -------------------------------------------------------------------------------------
    def fit(self, X, y):
        """Train a fresh network for max_iter epochs (or until early stopping); returns self."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=_DTYPES)
        check_classification_targets(y)
        self._start(X, np.unique(y))
        return self._train(X, self._encode(y), self.max_iter, self.early_stopping)

    def partial_fit(self, X, y, classes=None):
        """One epoch on (X, y), continuing the current network; the first call needs `classes`."""
        first = not hasattr(self, "model_")
        if first:
            self._check_params()
        X, y = validate_data(self, X, y, dtype=_DTYPES, reset=first)
        check_classification_targets(y)
        if first:
            if classes is None:
                raise ValueError(f"{type(self).__name__}: the first call to partial_fit needs classes=")
            self._start(X, np.unique(np.asarray(classes)))
        elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes={classes!r} differ from the classes of the first partial_fit, "
                             f"{self.classes_!r}")
        return self._train(X, self._encode(y), 1, early_stopping=False)

    def _start(self, X, classes) -> None:
        """A new network for X's width and these classes; forgets any earlier training."""
        self.classes_ = classes
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        net = self._build_network(X.shape[1], len(classes), np.random.default_rng(seed), X.dtype)
        self.model_ = Classifier(net, self.loss, "none", [str(c) for c in classes], input_shape=[X.shape[1]])
        self._seed, self._trainer = seed, None
        self.loss_curve_, self.n_iter_, self.t_ = [], 0, 0

    def _encode(self, y) -> np.ndarray:
        """Labels -> int64 indices into classes_; ValueError for a label fit never saw."""
        idx = np.searchsorted(self.classes_, y)  # (N,)
        bad = (idx >= len(self.classes_)) | (self.classes_[np.minimum(idx, len(self.classes_) - 1)] != y)
        if bad.any():
            raise ValueError(f"y contains labels not in classes_ {self.classes_!r}: {np.unique(y[bad])!r}")
        return idx.astype(np.int64)

    def _settings(self) -> dict:
        """This estimator's parameters as digitlab recipe fields."""
        hidden = tuple(getattr(self, "hidden_layer_sizes", ()))
        return {"optimizer": self.solver, "lr": float(self.learning_rate_init), "momentum": float(self.momentum),
                "weight_decay": float(self.weight_decay), "hidden": hidden, "seed": self._seed,
                "dtype": str(self.model_.net.dtype), "loss": self.loss}

    def _train(self, X, y, epochs: int, early_stopping: bool):
        val = None
        if early_stopping:
            X, X_val, y, y_val = train_test_split(X, y, test_size=self.validation_fraction, stratify=y,
                                                  random_state=self._seed)
            val = (X_val, y_val)
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
        settings = {**self._settings(), "batch_size": min(200 if self.batch_size == "auto" else self.batch_size,
                                                          len(y))}
        if not early_stopping:
            self._trainer, rows = _train_epochs(self.model_, self._trainer, settings, X, y, None, epochs)
            self._record(rows)
            return self
        best, stalled = None, 0
        for _ in range(epochs):  # one fit() call per epoch, to stop between epochs
            self._trainer, rows = _train_epochs(self.model_, self._trainer, settings, X, y, val, 1)
            self._record(rows)
            score = rows[-1]["val_accuracy"]
            self.validation_scores_.append(score)
            stalled = stalled + 1 if score < self.best_validation_score_ + self.tol else 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                best = {k: v.copy() for k, v in self.model_.net.state_dict().items()}
            if stalled > self.n_iter_no_change:
                break
        self.model_.net.load_state_dict(best)
        return self

    def _record(self, rows) -> None:
        self.loss_curve_ += [row["train_loss"] for row in rows]
        self.n_iter_ += len(rows)
        self.t_ = rows[-1]["step"] if rows else self.t_

    # -- inference ------------------------------------------------------------------------------------
    def predict_proba(self, X) -> np.ndarray:
        """(N, n_classes) class probabilities in the order of classes_; rows sum to 1."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=_DTYPES, reset=False)
        return self.model_.loss.probabilities(self.model_.scores(X))  # (N, C), the network's dtype

    def predict_log_proba(self, X) -> np.ndarray:
        with np.errstate(divide="ignore"):  # a probability that underflowed to 0 is -inf, as in scikit-learn
            return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=_DTYPES, reset=False)
        return self.classes_[self.model_.predict(X)]


def _store_params(estimator, params: dict) -> None:
    """__init__ only stores its arguments, unchanged (scikit-learn's rule)."""
    for name, value in params.items():
        if name != "self":
            setattr(estimator, name, value)


def _number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)


def _positive(v) -> bool:
    return _number(v) and v > 0


def _positive_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


# ------------------------------------------------------------------------------------------------ estimators
class SoftmaxRegression(_DigitlabClassifier):
    """One Linear layer: multinomial logistic (softmax) regression, or one-vs-rest logistic regression with
    loss="sigmoid_bce". Zero-initialised, so the result depends on random_state only through the batch order."""

    def __init__(self, loss="softmax_ce", solver="sgd", learning_rate_init=0.1, momentum=0.9, weight_decay=0.0,
                 batch_size="auto", max_iter=100, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, random_state=None):
        _store_params(self, locals())

    def _build_network(self, n_features, n_classes, rng, dtype):
        return build_linear(n_features, n_classes, init="zeros", dtype=dtype)


class MLPClassifier(_DigitlabClassifier):
    """Linear -> activation (-> Dropout) per hidden width, then Linear to the classes (digitlab's build_mlp).

    Defaults follow scikit-learn's MLPClassifier (one hidden layer of 100, ReLU, Adam at 1e-3, batches of
    200, 200 epochs, Glorot-uniform initial weights). `init`: any digitlab initializer name ("he_normal", ...)."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", init="glorot_uniform", dropout=0.0,
                 loss="softmax_ce",
                 solver="adam", learning_rate_init=0.001, momentum=0.9, weight_decay=0.0, batch_size="auto",
                 max_iter=200, early_stopping=False, validation_fraction=0.1, n_iter_no_change=10, tol=1e-4,
                 random_state=None):
        _store_params(self, locals())

    def _check_params(self) -> None:
        super()._check_params()
        sizes = self.hidden_layer_sizes
        if not isinstance(sizes, (list, tuple)) or not all(_positive_int(h) for h in sizes):
            raise ValueError(f"MLPClassifier: hidden_layer_sizes={sizes!r} must be a tuple of ints >= 1")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"MLPClassifier: activation={self.activation!r} must be one of {tuple(ACTIVATIONS)}")
        try:
            parse_init(self.init)
        except ConfigError as exc:
            raise ValueError(f"MLPClassifier: init={self.init!r}: {exc}") from None
        if not (_number(self.dropout) and 0 <= self.dropout < 1):
            raise ValueError(f"MLPClassifier: dropout={self.dropout!r} must be a number in [0, 1)")

    def _build_network(self, n_features, n_classes, rng, dtype):
        return build_mlp(n_features, self.hidden_layer_sizes, n_classes, activation=self.activation, init=self.init,
                         dropout=float(self.dropout), rng=rng, dtype=dtype)


class CNNClassifier(_DigitlabClassifier):
    """A network from an `architecture` list in the model-file spec format (Sequential.spec(), e.g. the
    `[[architecture]]` tables of a recipe) for images of `input_shape` (H, W) or (H, W, C), given as rows of X
    (N, prod(input_shape)) in digitlab's channels-last order; one size may be -1, taken from X's width (e.g.
    (1, -1): each row is a one-pixel-high image). A last Linear entry may leave out "out" (the
    number of classes). Weights start from each entry's "init" (the layer's default otherwise).

    The default is deliberately small (8 filters, one pooling) so that it trains in seconds on CPU; pass a
    recipe's architecture (e.g. recipes/cnn.toml) for a stronger network."""

    DEFAULT_ARCHITECTURE = (
        {"type": "Conv2D", "filters": 8, "kernel": 3, "padding": "same"}, {"type": "ReLU"},
        {"type": "MaxPool2D", "pool": 2}, {"type": "Flatten"}, {"type": "Linear"},
    )

    def __init__(self, architecture=None, input_shape=(28, 28), loss="softmax_ce", solver="adam",
                 learning_rate_init=0.001, momentum=0.9, weight_decay=0.0, batch_size="auto", max_iter=10,
                 early_stopping=False, validation_fraction=0.1, n_iter_no_change=10, tol=1e-4,
                 random_state=None):
        _store_params(self, locals())

    def _check_params(self) -> None:
        super()._check_params()
        shape = self.input_shape
        ok = (isinstance(shape, (list, tuple)) and 1 <= len(shape) <= 3 and list(shape).count(-1) <= 1
              and all(d == -1 or _positive_int(d) for d in shape))
        if not ok:
            raise ValueError(f"CNNClassifier: input_shape={shape!r} must be 1 to 3 sizes >= 1, one of them "
                             f"may be -1 (taken from X's width, as in numpy.reshape)")
        arch = self.architecture
        if arch is not None and not (isinstance(arch, (list, tuple)) and arch and all(isinstance(e, dict)
                                                                                       for e in arch)):
            raise ValueError(f"CNNClassifier: architecture={arch!r} must be a non-empty list of layer dicts")

    def _build_network(self, n_features, n_classes, rng, dtype):
        shape = list(self.input_shape)
        known = int(np.prod([d for d in shape if d != -1]))
        if -1 in shape and n_features % known == 0:
            shape[shape.index(-1)] = n_features // known
        if int(np.prod(shape)) != n_features:
            raise ValueError(f"CNNClassifier: input_shape={tuple(self.input_shape)} does not fit X's "
                             f"{n_features} features")
        spec = [dict(entry) for entry in (self.architecture or self.DEFAULT_ARCHITECTURE)]
        if spec[-1].get("type") == "Linear":
            spec[-1].setdefault("out", n_classes)
        try:
            return Sequential.from_spec(spec, input_shape=shape, rng=rng, dtype=dtype)  # X's rows as images
        except ConfigError as exc:
            raise ValueError(f"CNNClassifier: architecture for images of {tuple(shape)}: {exc}") from None
