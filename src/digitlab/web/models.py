"""The models a server can offer: the runs under a runs folder, ranked by accuracy, loaded on demand.

    runs = list_runs(Path("runs"))        # [RunInfo], most accurate first (full-MNIST runs before others)
    best = runs[0] if runs else None      # what `digitlab serve` with no MODEL serves
    shelf = ModelShelf(runs_dir, served_model, served_id)
    shelf.get("mlp-20260101-120000")      # a SerializedModel; KeyError for an id that is not a listed run

A run's facts come from its model file's JSON header (safetensors metadata, read without the weights) and
the file's modification time. An id is a run folder's name and only ever looked up among the listed runs;
nothing from a request is used as a path.
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

MODEL_FILE = "model.safetensors"
FULL_DATASET = "mnist"  # accuracies on the bundled sample's 1,000 test digits are not comparable: ranked after


@dataclass(frozen=True)
class RunInfo:
    id: str  # the run folder's name
    path: str
    recipe: str | None
    dataset: str | None
    test_accuracy: float | None
    val_accuracy: float | None
    date: str  # the model file's modification time, ISO 8601 (UTC, seconds)
    error: str | None = None  # the header could not be read: listed, never served

    def as_dict(self) -> dict:
        return asdict(self)

    def rank(self) -> tuple:
        """Sort key, best first after reversing: readable, full MNIST, accuracy, then newest."""
        acc = self.test_accuracy if self.test_accuracy is not None else self.val_accuracy
        return (self.error is None, self.dataset == FULL_DATASET, acc if acc is not None else -1.0, self.date)


def read_run(model_path: Path) -> RunInfo:
    """The facts of one RUN/model.safetensors from its header (never the weights)."""
    from safetensors import safe_open

    model_path = Path(model_path)
    date = _dt.datetime.fromtimestamp(model_path.stat().st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")
    try:
        with safe_open(str(model_path), framework="numpy") as f:
            header = json.loads((f.metadata() or {}).get("digitlab", "{}"))
        metrics = header.get("metrics") or {}
        recipe, dataset = header.get("recipe"), header.get("dataset")
        return RunInfo(
            id=model_path.parent.name, path=str(model_path),
            recipe=recipe if isinstance(recipe, str) else None, dataset=dataset if isinstance(dataset, str) else None,
            test_accuracy=_number(metrics.get("test_accuracy")), val_accuracy=_number(metrics.get("val_accuracy")),
            date=date,
        )
    except Exception as exc:  # noqa: BLE001 - any unreadable header: listed with its problem, never served
        return RunInfo(id=model_path.parent.name, path=str(model_path), recipe=None, dataset=None, test_accuracy=None,
                       val_accuracy=None, date=date, error=f"{model_path}: cannot read the model header ({exc})")


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else None


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """RUNS_DIR/*/model.safetensors, most accurate first (see RunInfo.rank)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = [read_run(p) for p in runs_dir.glob(f"*/{MODEL_FILE}") if p.is_file()]
    return sorted(found, key=RunInfo.rank, reverse=True)


class ModelShelf:
    """The served model plus the runs of a runs folder, loaded when first asked for (a few kept, least recently
    used dropped). Thread-safe; every model is wrapped so its prediction calls hold that model's own lock."""

    def __init__(self, runs_dir: Path | None, served, served_id: str, keep: int = 3, wrap=lambda m: m):
        self.runs_dir = Path(runs_dir) if runs_dir is not None else None
        self.served_id = served_id
        self._served = wrap(served)
        self._wrap = wrap
        self._loaded: OrderedDict[str, object] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def runs(self) -> list[RunInfo]:
        return list_runs(self.runs_dir) if self.runs_dir is not None else []

    def get(self, model_id: str | None):
        """The model for `model_id` (None or the served id: the served model); KeyError if no such run."""
        import digitlab

        if model_id is None or model_id == self.served_id:
            return self._served
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id]
        run = next((r for r in self.runs() if r.id == model_id and r.error is None), None)
        if run is None:
            raise KeyError(model_id)
        model = self._wrap(digitlab.load(run.path))
        with self._lock:
            self._loaded[model_id] = model
            while len(self._loaded) > self._keep:
                self._loaded.popitem(last=False)
        return model
