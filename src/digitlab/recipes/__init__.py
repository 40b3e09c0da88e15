"""Training recipes: one TOML file per recipe, shipped inside the package.

    >>> from digitlab.recipes import load_recipe, list_recipes
    >>> [r.name for r in list_recipes()]
    ['mlp', 'seed-000-softmax', 'seed-001-softmax', ...]
    >>> recipe = load_recipe("seed-004-mlp-relu", overrides={"epochs": 2})
    >>> recipe.lr, recipe.hidden
    (0.1, (300,))

A recipe file holds the fields of `Recipe` (flat keys, see the dataclass for what each one means) plus a
`[reported]` table with what the original notebook reported (`metric`, `value`, `note`, `target`, `spread`)
so that `digitlab reproduce` can compare. The network is either the MLP shorthand (`hidden`, `activation`,
`dropout`, `init`) or an `architecture` array of tables in the model file's spec format, e.g.

    [[architecture]]
    type = "Conv2D"
    filters = 32
    kernel = 3
    padding = "same"
    [[architecture]]
    type = "Flatten"
    [[architecture]]
    type = "Linear"
    out = 10            # "in" comes from the layer before; "init" may name an initializer per layer
 A `[datasets.<name>]` table (any data set name digitlab knows) holds fields that apply when the run's data set
is that one, whether the file or an override chose it, e.g. no rotation but mirroring for Fashion-MNIST:

    [datasets.fashion-mnist]
    rotate = 0.0
    flip = true

They apply after the file's own values and before `overrides` (the user's overrides always win); the resolved
`Recipe` (a run's config.json) holds the final values, not the table.
`load_recipe` also accepts a path to your own `.toml` file.
Anything wrong in a file or an override raises `ConfigError` naming the recipe and the field.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from digitlab.augment import check_limits
from digitlab.errors import ConfigError
from digitlab.nn.losses import get_loss

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_RECIPE = "cnn"  # what `digitlab train`, `digitlab serve` (with no model) and `make demo` train

CHOICES = {
    "split": ("standard", "pooled-sklearn"),
    "normalization": ("unit", "raw", "standard"),
    "dtype": ("float32", "float64"),
    "activation": ("relu", "leaky_relu", "sigmoid", "tanh"),
    "loss": ("softmax_ce", "softmax_mse", "sigmoid_bce"),
    "optimizer": ("sgd", "momentum", "nesterov", "adam"),
    "schedule": ("constant", "cosine", "step", "onecycle"),
    "order": ("shuffle", "sequential", "replacement"),
    "reported_metric": ("test_accuracy", "val_accuracy"),
}


@dataclass(frozen=True)
class Recipe:
    """Everything a training run needs; the TOML files set these, `overrides` change them."""

    name: str = "custom"
    description: str = ""
    system: str = ""  # what the original system was, for the `reproduce` table
    # --- data ---
    dataset: str = "mnist"  # a name digitlab.data knows: mnist, fashion-mnist, mnist-sample
    split: str = "standard"  # "standard": the data set's train/test files; "pooled-sklearn": pool train+test, then
    #                          split like sklearn train_test_split(test_size=test_fraction, random_state=split_seed)
    test_fraction: float = 0.2  # only for split = "pooled-sklearn"
    split_seed: int = 42  # only for split = "pooled-sklearn"
    val_size: int = 0  # hold out this many training images (random, from `seed`) for validation; 0 = none
    normalization: str = "unit"  # "unit" x/255, "raw" 0..255, "standard" (x/255 - 0.1307)/0.3081
    dtype: str = "float32"  # or "float64"
    # --- model ---
    architecture: tuple[dict, ...] = ()  # layer specs (model-file format); when set, hidden/activation/
    #                                      dropout/init below are not used
    hidden: tuple[int, ...] = (300,)  # MLP shorthand: hidden layer widths; () = a linear model
    activation: str = "relu"  # hidden activation
    bias: bool = True  # biases in every Linear layer
    init: tuple[str, ...] = ("he_normal",)  # per Linear layer ("normal:0.01" = N(0, 0.01)); the last entry repeats
    dropout: float = 0.0  # dropout rate after each hidden activation
    shift: int = 0  # augmentation: move each training image by up to this many pixels per direction, per step
    rotate: float = 0.0  # augmentation: turn each training image by up to +-rotate degrees (bilinear), per step
    scale: float = 0.0  # augmentation: zoom each training image by a factor in 1 +- scale (0.1 = +-10 %)
    translate: float = 0.0  # augmentation: move each training image by up to +-translate pixels (sub-pixel)
    flip: bool = False  # augmentation: mirror each training image left-right with probability 1/2, per step; for
    #                     data sets where a mirror image keeps its label, not digits
    loss: str = "softmax_ce"  # softmax_ce | softmax_mse | sigmoid_bce (one-vs-rest)
    label_smoothing: float = 0.0  # softmax_ce: train against (1 - e) one-hot + e / classes
    # --- optimisation ---
    optimizer: str = "sgd"  # sgd | momentum | nesterov | adam
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # for momentum / nesterov
    beta1: float = 0.9  # adam: decay of the gradient average (the start value when cycle_beta1 is set)
    beta2: float = 0.999  # adam: decay of the squared-gradient average
    weight_decay: float = 0.0  # L2 weight decay, on weights only (not biases or BatchNorm parameters)
    decay_all: bool = False  # true: weight decay on every parameter, biases and BatchNorm's too
    schedule: str = "constant"  # constant | cosine (to 0 at the end) | step (x0.1 after each third) |
    #                             onecycle (PyTorch OneCycleLR: lr/25 up to lr over 30 % of the steps, down to lr/25e4)
    warmup_steps: int = 0  # linear warm-up steps before the schedule
    cycle_beta1: bool = False  # onecycle + adam: beta1 0.95 -> 0.85 -> 0.95, inverse to the lr (as torch's OneCycleLR)
    # --- loop ---
    epochs: int = 10  # passes over the training set (ignored when steps > 0)
    steps: int = 0  # > 0: train for exactly this many steps instead (an "epoch" is then len(train)/batch steps)
    batch_size: int = 128  # 0 = full batch
    order: str = "shuffle"  # shuffle (new permutation each epoch) | sequential | replacement (sampled)
    seed: int = 0  # one seed for init, validation split, order, shifts and dropout
    checkpoint_every: int = 1  # write checkpoint.safetensors every this many epochs (and at the end)
    threads: int = 0  # BLAS threads while training; 0 = automatic: 1 when each step's products are small
    #                   (< 12M multiply-adds: threads gain little there and thrash on a busy machine) or the batch
    #                   is split into shards, else BLAS's own
    shards: int = 1  # split each batch into this many parts run in parallel threads (digitlab.nn.shards); the
    #                  result depends on it (float rounding), not on the machine; needs no BatchNorm or Dropout
    # --- what the notebook reported ---
    reported_metric: str = "test_accuracy"
    reported: float | None = None  # 0..1, None when the notebook gave no final figure
    reported_note: str = ""
    target: float | None = None  # the figure digitlab's own run must reach (reproduce marks ok / MISSED)
    spread: tuple[float, ...] = ()  # our measured figure for seeds 0, 1, ...: a seed-dependent figure is judged
    #                                 against this spread instead of `target`


FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}
TUPLE_FIELDS = {"hidden": int, "init": str, "architecture": dict, "spread": float}
REPORTED_KEYS = {"metric": "reported_metric", "value": "reported", "note": "reported_note", "target": "target",
                 "spread": "spread"}
#: fields a user may override (everything but the bookkeeping)
OVERRIDABLE = tuple(n for n in FIELDS if n not in ("name", "description", "system"))


def _recipe_dir():
    return resources.files("digitlab.recipes")


def recipe_names() -> list[str]:
    """Names of the recipes shipped with digitlab, sorted."""
    return sorted(p.name[: -len(".toml")] for p in _recipe_dir().iterdir() if p.name.endswith(".toml"))


def list_recipes() -> list[Recipe]:
    return [load_recipe(n) for n in recipe_names()]


def load_recipe(name: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Recipe `name` (shipped, or a path to a .toml file) with `overrides` applied and checked."""
    text, label, stem = _read(name)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {label}: not valid TOML ({exc})") from None
    values = _flatten(raw, label)
    values.setdefault("name", stem)
    tables = _dataset_tables(raw, values, label)
    overrides = overrides or {}
    values.update(tables.get(overrides.get("dataset", values.get("dataset", FIELDS["dataset"].default)), {}))
    values.update(overrides)
    return make_recipe(values, label)


def make_recipe(values: dict[str, Any], label: str = "recipe") -> Recipe:
    """Build and validate a `Recipe` from plain values (e.g. JSON read back from config.json)."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{label}: unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    clean = {k: _coerce(k, v, label) for k, v in values.items()}
    if clean.get("architecture") and clean.get("hidden", FIELDS["hidden"].default) != FIELDS["hidden"].default:
        raise ConfigError(f"{label}: give either architecture or the MLP shorthand hidden, not both")
    recipe = Recipe(**clean)
    _validate(recipe, label)
    return recipe


def _read(name) -> tuple[str, str, str]:
    path = Path(name)
    if path.suffix == ".toml":
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        return path.read_text(encoding="utf-8"), str(path), path.stem
    resource = _recipe_dir() / f"{name}.toml"
    if not resource.is_file():
        raise ConfigError(f"no recipe named {name!r}; known recipes: {', '.join(recipe_names())}")
    return resource.read_text(encoding="utf-8"), f"{name!r}", str(name)


def _flatten(raw: dict, label: str) -> dict:
    values = {k: v for k, v in raw.items() if k not in ("reported", "datasets")}
    reported = raw.get("reported", {})
    if not isinstance(reported, dict):
        raise ConfigError(f"recipe {label}: [reported] must be a table")
    for key, value in reported.items():
        target = REPORTED_KEYS.get(key)
        if target is None:
            raise ConfigError(f"recipe {label}: unknown key reported.{key} (use {', '.join(REPORTED_KEYS)})")
        values[target] = value
    return values


def _dataset_tables(raw: dict, values: dict, label: str) -> dict[str, dict]:
    """The file's [datasets.<name>] tables, each checked: a known data set, overridable fields only (not
    `dataset`), and the file's values with the table applied must make a valid recipe."""
    from digitlab.data.sources import REGISTRY

    tables = raw.get("datasets", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"recipe {label}: datasets must be a table of [datasets.<name>] tables")
    for name, table in tables.items():
        where = f"recipe {label}: [datasets.{name}]"
        if name not in REGISTRY:
            raise ConfigError(f"{where}: unknown data set {name!r} (known: {', '.join(REGISTRY)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table of recipe fields")
        for key in table:
            if key not in OVERRIDABLE or key == "dataset":
                raise ConfigError(f"{where}: {key!r} is not a recipe field that can be set per data set")
        make_recipe({**values, **table, "dataset": name}, where)
    return tables


def _coerce(key: str, value: Any, label: str) -> Any:
    want = FIELDS[key].type
    bad = ConfigError(f"{label}: field {key!r} = {value!r} has the wrong type (expected {want})")
    if key in TUPLE_FIELDS:
        if isinstance(value, (str, int, dict)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad
        item = TUPLE_FIELDS[key]
        if item is float:
            value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        if not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise bad
        return tuple(dict(v) for v in value) if item is dict else tuple(value)
    if key in ("reported", "target") and value is None:
        return None
    if want in ("float", "float | None"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if want == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad
    if want == "bool" and not isinstance(value, bool):
        raise bad
    if want == "str" and not isinstance(value, str):
        raise bad
    return value


def _validate(r: Recipe, label: str) -> None:
    for key, allowed in CHOICES.items():
        if getattr(r, key) not in allowed:
            raise ConfigError(f"{label}: {key} = {getattr(r, key)!r} is not one of {', '.join(allowed)}")
    checks = [
        (r.lr > 0, "lr must be > 0"),
        (r.epochs >= 1 or r.steps >= 1, "epochs or steps must be >= 1"),
        (r.steps >= 0, "steps must be >= 0"),
        (r.seed >= 0, f"seed must be >= 0, got {r.seed}"),
        (r.batch_size >= 0, "batch_size must be >= 0 (0 = full batch)"),
        (all(h >= 1 for h in r.hidden), "hidden widths must be >= 1"),
        (0.0 <= r.dropout < 1.0, "dropout must be in [0, 1)"),
        (r.val_size >= 0, "val_size must be >= 0"),
        (0 <= r.shift < 14, "shift must be 0..13 pixels"),
        (0.0 < r.test_fraction < 1.0, "test_fraction must be between 0 and 1"),
        (r.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
        (r.threads >= 0, "threads must be >= 0 (0 = automatic)"),
        (1 <= r.shards <= 64, f"shards must be 1..64, got {r.shards}"),
        (r.weight_decay >= 0, "weight_decay must be >= 0"),
        (0.0 <= r.beta1 < 1.0 and 0.0 <= r.beta2 < 1.0, "beta1 and beta2 must be in [0, 1)"),
        (r.warmup_steps >= 0, "warmup_steps must be >= 0"),
        (not r.cycle_beta1 or (r.schedule, r.optimizer) == ("onecycle", "adam"),
         "cycle_beta1 needs schedule = \"onecycle\" and optimizer = \"adam\""),
        (len(r.init) >= 1, "init needs at least one initializer"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{label}: {message}")
    try:
        check_limits(r.rotate, r.scale, r.translate)
        get_loss(r.loss, r.label_smoothing)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    for key in ("reported", "target"):
        value = getattr(r, key)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{label}: {key} must be a fraction in [0, 1], got {value}")
    if not all(0.0 <= v <= 1.0 for v in r.spread):
        raise ConfigError(f"{label}: spread must list fractions in [0, 1], got {list(r.spread)}")
    if r.architecture:
        from digitlab.nn.layers import Sequential  # checks every entry's type and fields

        try:
            Sequential.layers_from_spec(list(r.architecture))
        except ConfigError as exc:
            raise ConfigError(f"{label}: architecture {exc}") from None


def architecture_of(r: Recipe, n_classes: int = 10) -> list[dict]:
    """The recipe's network as a spec list: `architecture`, or the MLP shorthand spelled out as
    Flatten -> (Linear -> activation [-> Dropout]) per hidden width -> Linear(n_classes), one init each."""
    if r.architecture:
        return [dict(entry) for entry in r.architecture]
    widths = [*r.hidden, n_classes]
    inits = list(r.init[:len(widths)]) + [r.init[-1]] * (len(widths) - len(r.init))
    spec = [{"type": "Flatten"}]
    for k, (width, init) in enumerate(zip(widths, inits)):
        spec.append({"type": "Linear", "out": width, "bias": r.bias, "init": init})
        if k < len(widths) - 1:
            spec.append({"type": ACTIVATION_LAYERS[r.activation]})
            if r.dropout:
                spec.append({"type": "Dropout", "p": r.dropout})
    return spec


ACTIVATION_LAYERS = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "sigmoid": "Sigmoid", "tanh": "Tanh"}


__all__ = ["DEFAULT_RECIPE", "Recipe", "architecture_of", "list_recipes", "load_recipe", "make_recipe",
           "recipe_names"]
