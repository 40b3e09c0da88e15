"""Training checkpoints: weights + optimizer state + RNG states + position, in one model file.

    from digitlab.checkpoint import TrainState, save_checkpoint, load_checkpoint
    save_checkpoint(run_dir / CHECKPOINT, model, optimizer, state, rngs)    # atomic (digitlab.fsutil)
    state = load_checkpoint(run_dir / CHECKPOINT, model, optimizer, rngs)  # restores all of them in place

A checkpoint is a model file (digitlab.nn.model) whose header carries a "checkpoint" table (the TrainState
fields and the optimizer's scalars) and whose extra tensors "optim.*" hold the optimizer's arrays.
`order_rng` is the order generator's state at the start of the epoch the run is in (the epoch after the
last completed one when `batch` == 0): resuming replays that epoch's order and skips `batch` batches, so a
resumed run equals an uninterrupted one bit for bit, whether it stopped at an epoch end, mid-epoch (Ctrl-C)
or was killed (kill -9) during a checkpoint write (the stale temporary file is removed on resume).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab.errors import DigitlabError, ModelFileError, TrainingError
from digitlab.nn.model import Classifier, read_model_file

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class TrainState:
    """Where a run is; everything a checkpoint needs besides the weights and optimizer arrays."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps
    batch: int = 0  # steps done in the current, unfinished epoch
    loss_sum: float = 0.0  # running sums of the current epoch
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    order_rng: dict | None = None  # order-RNG state at the start of the current epoch (see the module doc)
    noise_rng: dict | None = None  # noise-RNG state (shifts, dropout) when the checkpoint was written
    start_loss: float | None = None  # loss of the first step (divergence check)
    history: list = field(default_factory=list)

    def record(self, loss: float, correct: int, n: int) -> None:
        self.step += 1
        self.batch += 1
        self.loss_sum += loss * n
        self.correct += correct
        self.seen += n
        if self.start_loss is None:
            self.start_loss = float(loss)

    def next_epoch(self, order_rng) -> None:
        """The current epoch is complete: reset the running sums, remember where the next order starts."""
        self.epoch += 1
        self.batch, self.loss_sum, self.correct, self.seen, self.seconds = 0, 0.0, 0, 0, 0.0
        self.order_rng = order_rng.bit_generator.state


_FIELD_TYPES = {"epoch": int, "step": int, "batch": int, "loss_sum": (int, float), "correct": int, "seen": int,
                "seconds": (int, float), "order_rng": (dict, type(None)), "noise_rng": (dict, type(None)),
                "start_loss": (int, float, type(None)), "history": list}


def _state_from_header(info: dict) -> TrainState:
    """TrainState from a checkpoint header table; ValueError naming the field that is missing or wrong."""
    unknown = sorted(set(info) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}")
    for name, kind in _FIELD_TYPES.items():
        value = info.get(name, getattr(TrainState(), name))
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise ValueError(f"field {name!r} = {value!r} is not valid")
    if not all(isinstance(row, dict) for row in info.get("history", [])):
        raise ValueError("field 'history' must be a list of tables")
    return TrainState(**info)


def save_checkpoint(path, model: Classifier, optimizer, state: TrainState, rngs: dict) -> Path:
    """Weights + optimizer arrays as tensors; optimizer scalars, position, RNG states and history in the header."""
    opt_state = optimizer.state_dict()
    arrays = {f"optim.{k}": v for k, v in opt_state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in opt_state.items() if not isinstance(v, np.ndarray)}
    state.noise_rng = rngs["noise"].bit_generator.state
    return model.save(path, extra_tensors=arrays, checkpoint={"optimizer": scalars, **dataclasses.asdict(state)})


def remove_stale_temporaries(path) -> list[Path]:
    """Delete temporary files a killed checkpoint write left next to `path` (digitlab.fsutil's naming)."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def load_checkpoint(path, model: Classifier, optimizer, rngs: dict) -> TrainState:
    """Restore weights, optimizer and RNG states from `path` into the given objects; returns the TrainState.

    ModelFileError naming the file when its checkpoint header is damaged; TrainingError when it belongs to
    another run (another architecture or optimizer).
    """
    remove_stale_temporaries(path)
    saved, header, extra = read_model_file(path)
    info = header.get("checkpoint")
    if not isinstance(info, dict):
        raise TrainingError(f"{path} is a model file, not a training checkpoint (no 'checkpoint' header)")
    try:
        model.net.load_state_dict(saved.net.state_dict())
    except ValueError as exc:
        raise TrainingError(f"{path}: does not match this run's model ({exc})") from None
    try:
        info = dict(info)
        scalars = info.pop("optimizer")
        if not isinstance(scalars, dict):
            raise ValueError("field 'optimizer' is not a table")
        state = _state_from_header(info)
        optimizer.load_state_dict({**scalars, **{k[len("optim."):]: v for k, v in extra.items()
                                                 if k.startswith("optim.")}})
        if state.noise_rng is not None:
            rngs["noise"].bit_generator.state = state.noise_rng
        if state.order_rng is not None:
            rngs["order"].bit_generator.state = state.order_rng
    except TrainingError as exc:
        raise TrainingError(f"{path}: {exc}") from None
    except (DigitlabError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelFileError(f"cannot resume from {path}: its checkpoint header is damaged "
                             f"({type(exc).__name__}: {exc})") from None
    return state


def checkpoint_epoch(path) -> str:
    """The completed epochs a checkpoint holds, for messages ("?" when unreadable)."""
    try:
        return str(read_model_file(path)[1]["checkpoint"]["epoch"])
    except Exception:  # only for the message; the file itself is left alone
        return "?"
