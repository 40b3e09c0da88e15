"""Hyper-parameter sweeps on Optuna: a spec file -> a study of trials, each a normal digitlab run folder.

    from digitlab.sweep import load_spec, run_sweep, sweep_status
    spec = load_spec("sweep.toml")
    result = run_sweep(spec, out_dir="sweeps/mlp", n_trials=20, workers=2)   # or storage="postgresql://..."
    sweep_status("sweeps/mlp")       # [{"number", "state", "params", "value", "run_dir", ...}, ...]

A spec (TOML) names a base recipe, a [space] over recipe fields, [fixed] overrides and the study settings:

    recipe = "mlp"                 # base recipe (name or path)
    metric = "val_accuracy"        # maximised (val_loss: minimised); never the test set
    trials = 20
    [space]
    lr = { log = [1e-4, 1e-1] }                       # suggest_float(log=True)
    hidden = { choice = [[128], [256], [512, 256]] }  # suggest_categorical
    dropout = { float = [0.0, 0.5] }
    shift = { int = [0, 2] }
    [fixed]
    epochs = 5

Trial n trains `train_recipe(recipe, fixed + params, out_dir=<sweep>/trials/trial-000n)` — the same as
`digitlab train` with those overrides — reporting the metric after every epoch so the pruner can stop it.
The sweep folder holds sweep.json (study name), study.journal (the default storage), trials/, best.toml.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from digitlab.errors import ConfigError, DigitlabError
from digitlab.fsutil import atomic_write_text
from digitlab.recipes import FIELDS, OVERRIDABLE, load_recipe, tomllib

METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
KINDS = ("log", "float", "int", "choice")
VAL_FRACTION = 10  # the validation split a sweep adds when the recipe has none: 1/10 of the training images
JOURNAL = "study.journal"
SWEEP_FILE = "sweep.json"
TRIAL_FILE = "trial.json"  # in each trial's run folder: the trial's state as the study records it
# RDB storages: a worker records a heartbeat every HEARTBEAT_S; a RUNNING trial without one for GRACE_S is
# failed by the next worker that starts a trial (optuna.storages.RDBStorage(heartbeat_interval, grace_period)).
HEARTBEAT_S = 20
GRACE_S = 120
SCHEMA_RETRIES = 5
COUNTED_ERROR = "error"  # user attr set when a trial itself failed; only such FAILs count towards `trials`


# ------------------------------------------------------------------------------------------------ spec
@dataclass(frozen=True)
class Param:
    """One search dimension: kind (log/float/int/choice) and its bounds or choices."""

    name: str
    kind: str
    values: tuple

    @property
    def encoded(self) -> bool:
        """Optuna's categorical choices must be scalars: list choices (hidden sizes) travel as JSON strings."""
        return self.kind == "choice" and not all(_scalar(v) for v in self.values)

    def choices(self) -> list:
        return [json.dumps(v) for v in self.values] if self.encoded else list(self.values)

    def grid(self) -> list:
        if self.kind == "int":
            return list(range(self.values[0], self.values[1] + 1))
        return self.choices()

    def suggest(self, trial):
        if self.kind == "choice":
            return self.decode(trial.suggest_categorical(self.name, self.choices()))
        lo, hi = self.values
        if self.kind == "int":
            return trial.suggest_int(self.name, lo, hi)
        return trial.suggest_float(self.name, lo, hi, log=self.kind == "log")

    def decode(self, raw):
        return json.loads(raw) if self.encoded else raw

    def encode(self, value):
        return json.dumps(value) if self.encoded else value


@dataclass(frozen=True)
class Spec:
    path: Path
    recipe: str
    metric: str = "val_accuracy"
    trials: int = 20
    sampler: str = "tpe"
    sampler_seed: int | None = None
    pruner: str = "median"
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 0
    study: str = ""
    report: bool = True  # each trial writes the run report (plots), as `digitlab train` does
    space: tuple[Param, ...] = ()
    fixed: dict = field(default_factory=dict)
    enqueue: tuple[dict, ...] = ()  # parameter sets to try first (decoded values), before the sampler's own

    @property
    def direction(self) -> str:
        return METRICS[self.metric]

    def param(self, name: str) -> Param:
        return next(p for p in self.space if p.name == name)


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def load_spec(path) -> Spec:
    """Read and check a sweep spec; any problem is a ConfigError naming the file and the field."""
    path = Path(path)
    where = f"sweep spec {path}"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from None
    top = {f.name for f in dataclasses.fields(Spec)} - {"path"}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(top))}")
    if "recipe" not in raw:
        raise ConfigError(f"{where}: no base recipe (add e.g. recipe = \"mlp\")")
    checks = {"recipe": str, "metric": str, "trials": int, "sampler": str, "sampler_seed": int, "pruner": str,
              "pruner_startup_trials": int, "pruner_warmup_epochs": int, "study": str, "report": bool,
              "space": dict, "fixed": dict, "enqueue": list}
    for key, kind in checks.items():
        if key in raw and (not isinstance(raw[key], kind) or (kind is int and isinstance(raw[key], bool))):
            raise ConfigError(f"{where}: {key} = {raw[key]!r} should be a {_type_word(kind)}")
    choices = {"metric": tuple(METRICS), "sampler": SAMPLERS, "pruner": PRUNERS}
    for key, allowed in choices.items():
        if key in raw and raw[key] not in allowed:
            raise ConfigError(f"{where}: {key} = {raw[key]!r} is not one of {', '.join(allowed)}")
    for key in ("trials", "pruner_startup_trials", "pruner_warmup_epochs"):
        if key in raw and raw[key] < (1 if key == "trials" else 0):
            raise ConfigError(f"{where}: {key} must be >= {1 if key == 'trials' else 0}, got {raw[key]}")
    recipe = raw["recipe"]
    if recipe.endswith(".toml") and (path.parent / recipe).is_file():
        recipe = str(path.parent / recipe)  # a recipe file path is relative to the spec (else to the cwd)
    space = tuple(_param(name, value, where) for name, value in raw.get("space", {}).items())
    if not space:
        raise ConfigError(f"{where}: [space] is empty; give at least one field to search, "
                          f"e.g. lr = {{ log = [1e-4, 1e-1] }}")
    fixed = raw.get("fixed", {})
    for name in fixed:
        _check_field(name, where, "fixed")
    both = sorted(set(fixed) & {p.name for p in space})
    if both:
        raise ConfigError(f"{where}: {', '.join(both)} in both [space] and [fixed]")
    try:
        load_recipe(recipe, fixed)
    except ConfigError as exc:
        raise ConfigError(f"{where}: base recipe with [fixed]: {exc}") from None
    spec = Spec(path=path, recipe=recipe, space=space, fixed=dict(fixed), study=raw.get("study") or path.stem,
                **{k: raw[k] for k in ("metric", "trials", "sampler", "sampler_seed", "pruner",
                                       "pruner_startup_trials", "pruner_warmup_epochs", "report") if k in raw})
    if spec.sampler == "grid":
        bad = [p.name for p in space if p.kind not in ("choice", "int")]
        if bad:
            raise ConfigError(f"{where}: sampler \"grid\" needs choice or int ranges; {', '.join(bad)} "
                              f"{'is' if len(bad) == 1 else 'are'} continuous")
    enqueue = tuple(_enqueued(i, entry, spec, where) for i, entry in enumerate(raw.get("enqueue", [])))
    return dataclasses.replace(spec, enqueue=enqueue)


def _type_word(kind) -> str:
    return {str: "string", int: "whole number", bool: "true/false", dict: "table", list: "list"}[kind]


def _check_field(name: str, where: str, table: str) -> None:
    if name not in FIELDS:
        raise ConfigError(f"{where}: [{table}] {name} is not a recipe field; known: {', '.join(OVERRIDABLE)}")
    if name not in OVERRIDABLE:
        raise ConfigError(f"{where}: [{table}] {name} cannot be set (bookkeeping field)")


def _param(name: str, value, where: str) -> Param:
    _check_field(name, where, "space")
    if name == "val_size":
        raise ConfigError(f"{where}: [space] val_size cannot be searched: trials are compared on their validation sets")
    label = f"{where}: [space] {name}"
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in KINDS:
        raise ConfigError(f"{label} = {value!r} should be one of {{ log = [lo, hi] }}, {{ float = [lo, hi] }}, "
                          f"{{ int = [lo, hi] }}, {{ choice = [a, b, ...] }}")
    kind, args = next(iter(value.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{label}: {kind} needs a list, got {args!r}")
    if kind == "choice":
        return Param(name, kind, tuple(args))
    number = int if kind == "int" else (int, float)
    if len(args) != 2 or not all(isinstance(a, number) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{label}: {kind} needs [lo, hi] ({'whole ' if kind == 'int' else ''}numbers), got {args!r}")
    lo, hi = args
    if not lo <= hi or (kind != "int" and not lo < hi):
        raise ConfigError(f"{label}: {kind} range [{lo}, {hi}] is empty (lo must be below hi)")
    if kind == "log" and lo <= 0:
        raise ConfigError(f"{label}: log range needs lo > 0, got {lo}")
    return Param(name, kind, (float(lo), float(hi)) if kind != "int" else (lo, hi))


def _enqueued(i: int, entry, spec: Spec, where: str) -> dict:
    label = f"{where}: enqueue[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{label} should be a table of [space] values")
    names = {p.name for p in spec.space}
    extra = sorted(set(entry) - names)
    if extra:
        raise ConfigError(f"{label}: {', '.join(extra)} not in [space]")
    for name, value in entry.items():
        p = spec.param(name)
        inside = (value in p.values if p.kind == "choice" else
                  isinstance(value, (int, float)) and p.values[0] <= value <= p.values[1])
        if not inside:
            raise ConfigError(f"{label}: {name} = {value!r} is outside its [space] range")
    return dict(entry)


# ------------------------------------------------------------------------------------------------ storage
def open_storage(out_dir: Path, url: str | None):
    """The study's storage: an RDB URL (PostgreSQL, MySQL, ...) shared by many machines, or by default a
    journal file inside the sweep folder.

    Why a journal file and not SQLite: Optuna's docs advise against SQLite for parallel optimisation (its
    file lock serialises writers and concurrent workers hit "database is locked"; some features such as
    enqueued trials are not safe with it, optuna/optuna#4002), while JournalFileBackend is made for several
    processes sharing one file: every change is one appended JSON line written in a single write() + fsync
    under a lock, so a worker killed with kill -9 leaves either the whole line or none. See
    https://optuna.readthedocs.io/en/stable/reference/generated/optuna.storages.journal.JournalFileBackend.html
    The lock is an flock() on study.journal.lock (FlockLock), which the kernel releases when its process
    dies; Optuna's default symlink lock, made for NFS without working locks, would make every process wait
    out its 30 s grace period after a worker was killed while writing.
    """
    import optuna

    if url is None:
        from optuna.storages.journal import JournalFileBackend

        out_dir.mkdir(parents=True, exist_ok=True)
        path = str(out_dir / JOURNAL)
        lock = FlockLock(path + ".lock") if fcntl is not None else None  # None: Optuna's default (Windows)
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=lock))
    import sqlalchemy.exc

    for attempt in range(SCHEMA_RETRIES):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental" since Optuna 2.x
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, engine_kwargs={"pool_pre_ping": True},
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # workers starting together on a fresh database race to create Optuna's tables; the loser
            # finds them made on its next try
            if attempt == SCHEMA_RETRIES - 1:
                raise ConfigError(f"cannot open the study storage {_safe_url(url)}: {_first_line(exc)}") from None
            time.sleep(0.5 * (attempt + 1))
        except Exception as exc:  # sqlalchemy: bad URL, no driver, server unreachable, auth failure, ...
            raise ConfigError(f"cannot open the study storage {_safe_url(url)}: {_first_line(exc)}") from None


class FlockLock:
    """The lock of a journal file for Optuna's JournalFileBackend (its lock_obj interface: acquire/release),
    held with flock(): exclusive between processes, released by the kernel if the holder dies."""

    def __init__(self, path: str):
        self.path, self.fd = path, None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until no other process holds it
        self.fd = fd
        return True

    def release(self) -> None:
        fd, self.fd = self.fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _safe_url(url: str) -> str:
    """The URL without its password, for messages and files."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _sampler(spec: Spec, worker: int):
    import optuna

    # Each worker gets its own seed: with one shared seed all workers would propose the same parameters.
    seed = None if spec.sampler_seed is None else spec.sampler_seed + worker
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler({p.name: p.grid() for p in spec.space}, seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: running trials count as bad guesses, so parallel workers do not all try the same region
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _pruner(spec: Spec):
    import optuna

    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup_trials,
                                       n_warmup_steps=spec.pruner_warmup_epochs)


def open_study(spec: Spec, out_dir: Path, storage_url: str | None, worker: int = 0, create: bool = False):
    """Load the spec's study from its storage (with `create`: make it first, then enqueue spec.enqueue)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial ourselves
    storage = open_storage(out_dir, storage_url)
    kwargs = dict(study_name=spec.study, storage=storage, sampler=_sampler(spec, worker), pruner=_pruner(spec))
    try:
        if create:
            try:
                study = optuna.create_study(direction=spec.direction, **kwargs)
            except optuna.exceptions.DuplicatedStudyError:
                return _check_direction(optuna.load_study(**kwargs), spec)
            study.set_user_attr("metric", spec.metric)
            for params in spec.enqueue:
                study.enqueue_trial({k: spec.param(k).encode(v) for k, v in params.items()})
            return study
        return _check_direction(optuna.load_study(**kwargs), spec)
    except DigitlabError:
        raise
    except Exception as exc:  # the database went away between connecting and using it, ...
        where = _storage_label(out_dir, storage_url)
        raise ConfigError(f"study {spec.study!r} in {where}: {_first_line(exc)}") from None


def _check_direction(study, spec: Spec):
    if study.direction.name.lower() != spec.direction:
        raise ConfigError(f"study {spec.study!r} already exists and {study.direction.name.lower()}s its value; "
                          f"spec {spec.path} wants to {spec.direction} {spec.metric} (rename the study)")
    return study


def _storage_label(out_dir: Path, url: str | None) -> str:
    return str(out_dir / JOURNAL) if url is None else _safe_url(url)


# ------------------------------------------------------------------------------------------------ trials
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _dead_local(trial) -> bool:
    """A RUNNING trial whose worker process on this machine no longer exists (kill -9, power loss)."""
    attrs = trial.user_attrs
    return attrs.get("host") == socket.gethostname() and "pid" in attrs and not _alive(attrs["pid"])


def fail_dead_trials(study) -> list[int]:
    """Mark RUNNING trials of dead local workers FAIL and queue their parameters again (RDB storages do the
    same for other machines through Optuna's heartbeat and RetryHeartbeatStaleTrialCallback). Such failures
    do not count towards the sweep's number of trials."""
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _dead_local(t):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(t.params)
            failed.append(t.number)
    return failed


def counted_trials(study) -> int:
    """Trials that use up the budget: finished or running ones, and failures of the trial itself (not of
    its worker: a trial lost to Ctrl-C or a killed worker is run again by the next sweep command)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in done or (t.state == TrialState.FAIL and COUNTED_ERROR in t.user_attrs))


class _EpochReporter:
    """fit()'s per-step callback: after each epoch, report the metric and stop the trial if the pruner says so."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric, self.reported, self.last = trial, metric, 0, None

    def __call__(self, state, model) -> None:
        if len(state.history) > self.reported:  # an epoch ended since the last step
            self.report(state.history, prune=True)

    def report(self, history: list, prune: bool) -> None:
        import optuna

        for row in history[self.reported:]:
            self.last = row[self.metric]
            self.trial.report(self.last, step=row["epoch"])
        self.reported = len(history)
        if prune and self.trial.should_prune():
            last = history[-1]
            raise optuna.TrialPruned(f"pruned after epoch {last['epoch']}: {self.metric} "
                                     f"{last[self.metric]:.4f} is worse than the median of earlier trials")


def make_objective(spec: Spec, out_dir: Path, fixed: dict, data_dir=None, quiet: bool = True):
    """The Optuna objective: one `train_recipe` run per trial in out_dir/trials/trial-NNNN."""
    import optuna

    from digitlab.train import train_recipe

    def objective(trial) -> float:
        params = {p.name: p.suggest(trial) for p in spec.space}
        run_dir = (out_dir / "trials" / f"trial-{trial.number:04d}").resolve()
        for key, value in {"run_dir": str(run_dir), "params": params, "host": socket.gethostname(),
                           "pid": os.getpid()}.items():
            trial.set_user_attr(key, value)
        record = {"study": spec.study, "number": trial.number, "params": params}
        reporter = _EpochReporter(trial, spec.metric)
        t0 = time.perf_counter()
        try:
            result = train_recipe(spec.recipe, {**fixed, **params}, out_dir=run_dir, data_dir=data_dir,
                                  quiet=True, callback=reporter, report=spec.report)
        except optuna.TrialPruned as exc:  # Optuna records the last reported value as the trial's value
            trial.set_user_attr("reason", str(exc))
            _finish_trial(run_dir, record, "PRUNED", reporter.last, str(exc), t0, quiet)
            raise
        except DigitlabError as exc:  # diverged loss (TrainingError), impossible combination (ConfigError)
            trial.set_user_attr(COUNTED_ERROR, str(exc))
            _finish_trial(run_dir, record, "FAIL", None, str(exc), t0, quiet)
            raise
        except KeyboardInterrupt as exc:  # Optuna marks the trial FAIL; the next sweep command runs it again
            trial.set_user_attr("interrupted", str(exc) or "interrupted")
            trial.study.enqueue_trial(trial.params)
            _finish_trial(run_dir, record, "FAIL", None, f"interrupted: {exc}", t0, quiet=True)
            raise
        reporter.report(result.history, prune=False)
        value = getattr(result, spec.metric) if spec.metric == "val_accuracy" else result.history[-1][spec.metric]
        trial.set_user_attr("test_accuracy", result.test_accuracy)
        trial.set_user_attr("epochs", len(result.history))
        _finish_trial(run_dir, record, "COMPLETE", value, None, t0, quiet)
        return value

    return objective


def _finish_trial(run_dir: Path, record: dict, state: str, value, reason, t0: float, quiet: bool) -> None:
    """trial.json in the run folder says what the study recorded, so a pruned or failed folder is not
    mistaken for a finished run; plus one line on stderr."""
    seconds = time.perf_counter() - t0
    if run_dir.is_dir():
        atomic_write_text(run_dir / TRIAL_FILE, json.dumps(
            {**record, "state": state, "value": value, "reason": reason, "seconds": seconds}, indent=2) + "\n")
    if not quiet:
        what = reason or f"value {value:.4f}"
        print(f"trial {record['number']}: {state} {what} ({_params_text(record['params'])}; {seconds:.1f} s)",
              file=sys.stderr)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, list) else str(v)


# ------------------------------------------------------------------------------------------------ workers
@dataclass(frozen=True)
class Job:
    """What every worker process needs (picklable)."""

    spec: Spec
    out_dir: Path
    storage: str | None
    n_trials: int
    fixed: dict
    data_dir: str | None
    quiet: bool


def work(job: Job, worker: int = 0) -> None:
    """One worker: run trials until the study has `n_trials` counted trials."""
    study = open_study(job.spec, job.out_dir, job.storage, worker=worker)
    fail_dead_trials(study)
    objective = make_objective(job.spec, job.out_dir, job.fixed, job.data_dir, job.quiet)
    while counted_trials(study) < job.n_trials:
        # one trial per call so the budget is checked against what every worker has done meanwhile;
        # catch: a trial that fails by itself is recorded FAIL and the sweep goes on
        study.optimize(objective, n_trials=1, catch=(DigitlabError,))


def _work_in_child(job: Job, worker: int) -> None:
    try:
        work(job, worker)
    except KeyboardInterrupt:
        sys.exit(130)
    except DigitlabError as exc:
        print(f"digitlab: worker {worker}: {exc}", file=sys.stderr)
        sys.exit(1)


def trial_fixed(spec: Spec, workers: int, data_dir=None) -> dict:
    """[fixed] plus what the sweep adds: a validation split when the recipe has none, and BLAS threads
    split between local workers (both land in each trial's config.json like any other override)."""
    from digitlab.train import prepare_data

    fixed = dict(spec.fixed)
    recipe = load_recipe(spec.recipe, fixed)
    if recipe.val_size == 0:
        data = prepare_data(recipe, data_dir, quiet=True)
        fixed["val_size"] = max(1, len(data.train.labels) // VAL_FRACTION)
    if workers > 1 and "threads" not in fixed and all(p.name != "threads" for p in spec.space):
        fixed["threads"] = max(1, (os.cpu_count() or 1) // workers)
    return fixed


def grid_size(spec: Spec) -> int:
    return math.prod(len(p.grid()) for p in spec.space)


def run_sweep(spec: Spec, out_dir, n_trials: int | None = None, workers: int = 1, storage: str | None = None,
              data_dir=None, quiet: bool = True) -> dict:
    """Run (or continue) the sweep: W local worker processes until the study has n_trials trials."""
    import multiprocessing

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    n = n_trials if n_trials is not None else spec.trials
    if n < 1:
        raise ConfigError(f"--trials must be >= 1, got {n}")
    if spec.sampler == "grid":
        n = min(n, grid_size(spec))  # every grid point once
    _write_sweep_file(out_dir, spec, storage)
    fixed = trial_fixed(spec, workers, data_dir)
    study = open_study(spec, out_dir, storage, create=True)
    lost = fail_dead_trials(study)
    if lost and not quiet:
        print(f"sweep: trial(s) {', '.join(map(str, lost))} of a dead worker marked FAIL; continuing",
              file=sys.stderr)
    job = Job(spec, out_dir, storage, n, fixed, None if data_dir is None else str(data_dir), quiet)
    if workers == 1:
        work(job)
    else:
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked BLAS pools or DB connections
        procs = [ctx.Process(target=_work_in_child, args=(job, i), name=f"sweep-worker-{i}") for i in range(workers)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            for p in procs:  # they got the same Ctrl-C and are saving their checkpoints
                p.join()
            raise
        codes = [p.exitcode for p in procs]
        if 130 in codes and all(c in (0, 130) for c in codes):  # the workers got the Ctrl-C before we did
            raise KeyboardInterrupt
        died = [f"worker {i} (exit {c})" for i, c in enumerate(codes) if c != 0]
        if died:
            raise DigitlabError(f"sweep {out_dir}: {', '.join(died)} stopped early; rerun the same command to "
                                f"continue the study")
    result = summarize(study, out_dir, spec)
    write_best_recipe(result, spec, fixed, out_dir)
    result["plots"] = [str(p) for p in write_sweep_plots(study, result, out_dir)]
    return result


def _write_sweep_file(out_dir: Path, spec: Spec, storage: str | None) -> None:
    """sweep.json: what `--status DIR` needs to find the study (never a password)."""
    path = out_dir / SWEEP_FILE
    info = {"study": spec.study, "spec": str(spec.path.resolve()), "metric": spec.metric,
            "storage": "journal" if storage is None else _safe_url(storage)}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if old.get("study") not in (None, spec.study):
            raise ConfigError(f"{out_dir} holds the sweep of study {old['study']!r}, not {spec.study!r}; "
                              f"choose another --out")
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ status
def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":  # enqueued, not started: not a trial yet
            continue
        attrs = t.user_attrs
        reason = attrs.get(COUNTED_ERROR) or attrs.get("reason") or attrs.get("interrupted")
        if t.state.name == "FAIL" and reason is None:
            reason = "interrupted (its worker stopped)"
        rows.append({"number": t.number, "state": t.state.name, "params": attrs.get("params", t.params),
                     "value": t.value, "test_accuracy": attrs.get("test_accuracy"), "epochs": attrs.get("epochs"),
                     "run_dir": attrs.get("run_dir"), "host": attrs.get("host"), "reason": reason,
                     "stale": t.state.name == "RUNNING" and _dead_local(t),
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete and t.datetime_start else None})
    return rows


def summarize(study, out_dir: Path, spec: Spec) -> dict:
    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    sign = -1 if spec.direction == "maximize" else 1
    best = min(complete, key=lambda r: (sign * r["value"], r["number"])) if complete else None
    return {"study": spec.study, "sweep_dir": str(out_dir), "metric": spec.metric, "direction": spec.direction,
            "best": best, "trials": rows}


def sweep_status(out_dir, storage: str | None = None) -> dict:
    """The study behind a sweep folder (read-only): its trials and the best one."""
    out_dir = Path(out_dir)
    path = out_dir / SWEEP_FILE
    if not path.is_file():
        raise ConfigError(f"{out_dir} is not a sweep folder (no {SWEEP_FILE})")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        name, metric = info["study"], info["metric"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc})") from None
    if storage is None and info.get("storage") != "journal":
        raise ConfigError(f"the study of {out_dir} lives in {info.get('storage')}: pass --storage URL")
    if storage is None and not (out_dir / JOURNAL).is_file():
        raise ConfigError(f"{out_dir}: no {JOURNAL} (the study was never started here)")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(out_dir, storage))
    except KeyError:
        raise ConfigError(f"no study {name!r} in {_storage_label(out_dir, storage)}") from None
    spec = Spec(path=Path(info.get("spec", "")), recipe="", metric=metric, study=name)
    return summarize(study, out_dir, spec)


def status_table(result: dict, top: int | None = None) -> str:
    """The leaderboard: best first (COMPLETE by value), then the rest by number."""
    rows = result["trials"]
    sign = -1 if result["direction"] == "maximize" else 1
    done = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: (sign * r["value"], r["number"]))
    rest = [r for r in rows if r["state"] != "COMPLETE"]
    lines = [f"study {result['study']} ({result['sweep_dir']}): {len(rows)} trials, "
             f"{len(done)} complete; {result['direction']} {result['metric']}",
             f"{'#':>4}  {'state':<8}  {result['metric']:>12}  {'test_acc':>8}  params / reason"]
    for r in done[:top] + rest:
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        test = "" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        state = "STALE" if r["stale"] else r["state"]
        tail = _params_text(r["params"]) + (f"  — {r['reason']}" if r["reason"] else "")
        lines.append(f"{r['number']:>4}  {state:<8}  {value:>12}  {test:>8}  {tail}")
    if result.get("best"):
        lines.append(f"best: trial {result['best']['number']} -> {result['best']['run_dir']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ best recipe
def write_best_recipe(result: dict, spec: Spec, fixed: dict, out_dir: Path) -> Path | None:
    """best.toml: the base recipe with [fixed], the sweep's additions and the best trial's parameters —
    `digitlab train --recipe best.toml` trains that trial again."""
    import tomli_w

    best = result["best"]
    if best is None:
        return None
    recipe = load_recipe(spec.recipe, {**fixed, **best["params"]})
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(recipe).items()
              if k in OVERRIDABLE and not k.startswith("reported") and k != "target" and v is not None}
    values = {"name": f"{spec.study}-best",
              "description": f"best trial {best['number']} of sweep {spec.study}: {spec.metric} {best['value']:.4f}",
              "system": recipe.system, **values}
    path = out_dir / "best.toml"
    atomic_write_text(path, f"# written by digitlab sweep from {best['run_dir']}\n" + tomli_w.dumps(values))
    result["best_recipe"] = str(path)
    return path


# ------------------------------------------------------------------------------------------------ plots
def write_sweep_plots(study, result: dict, out_dir: Path) -> list[Path]:
    """history.png (each finished trial's value and the best so far) and importances.png (Optuna's fANOVA
    parameter importances, when at least two trials finished)."""
    from matplotlib.figure import Figure

    done = [r for r in result["trials"] if r["state"] == "COMPLETE"]
    if not done:
        return []
    written = []
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    numbers = [r["number"] for r in done]
    values = [r["value"] for r in done]
    best = (max if result["direction"] == "maximize" else min)
    running = [best(values[:i + 1]) for i in range(len(values))]
    ax.scatter(numbers, values, s=14, label="trial")
    ax.step(numbers, running, where="post", color="C1", label="best so far")
    ax.set(xlabel="trial", ylabel=result["metric"], title=f"sweep {result['study']}")
    ax.legend(loc="lower right" if result["direction"] == "maximize" else "upper right")
    written.append(_save_png(fig, out_dir / "history.png"))
    if len(done) >= 2 and len({json.dumps(r["params"], sort_keys=True) for r in done}) >= 2:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # scikit-learn's random forests
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
        fig = Figure(figsize=(6, 1 + 0.4 * len(importances)), dpi=100)
        ax = fig.add_subplot()
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set(xlabel=f"importance for {result['metric']} (fANOVA)", title=f"sweep {result['study']}")
        fig.tight_layout()
        written.append(_save_png(fig, out_dir / "importances.png"))
    return written


def _save_png(fig, path: Path) -> Path:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from digitlab.fsutil import atomic_write_bytes

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path
