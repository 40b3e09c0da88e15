"""`digitlab sweep`: spec checking, a sweep end to end, pruning, failing trials, workers, resume after kill -9.

Every sweep trains tiny models on the bundled mnist-sample for 1-3 epochs, so each trial takes well under a
second of training (plus the run report where a test keeps it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed (pip install 'digitlab[sweep]')")

from digitlab.cli import main  # noqa: E402
from digitlab.errors import ConfigError  # noqa: E402
from digitlab.recipes import load_recipe  # noqa: E402
from digitlab.sweep import load_spec, run_sweep, sweep_status  # noqa: E402
from digitlab.train import train_recipe  # noqa: E402

TINY_FIXED = """
[fixed]
dataset = "mnist-sample"
shift = 0
batch_size = 200
"""


def write_spec(folder: Path, body: str, epochs: int | None = 2, fixed: str = "") -> Path:
    """body + [fixed] for a tiny model on mnist-sample (+ `fixed` lines; epochs=None: the space sets it)."""
    path = folder / "spec.toml"
    text = body + TINY_FIXED + ("" if epochs is None else f"epochs = {epochs}\n") + fixed
    path.write_text(text, encoding="utf-8")
    return path


def trials_of(out: Path) -> list[dict]:
    return sweep_status(out)["trials"]


# ------------------------------------------------------------------------------------------------ spec
def test_the_issue_example_parses_as_written(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text("""
recipe = "mlp"                 # base recipe (name or path)
metric = "val_accuracy"        # maximised
trials = 20
[space]
lr = { log = [1e-4, 1e-1] }
hidden = { choice = [[128], [256], [512, 256]] }
dropout = { float = [0.0, 0.5] }
shift = { int = [0, 2] }
[fixed]                        # plain overrides for every trial
epochs = 5
dataset = "mnist"
""", encoding="utf-8")
    spec = load_spec(path)
    assert (spec.recipe, spec.metric, spec.trials) == ("mlp", "val_accuracy", 20)
    assert (spec.sampler, spec.pruner) == ("tpe", "median")
    assert spec.fixed == {"epochs": 5, "dataset": "mnist"} and spec.study == "sweep"
    kinds = {p.name: (p.kind, p.values) for p in spec.space}
    assert kinds == {"lr": ("log", (1e-4, 1e-1)), "hidden": ("choice", ([128], [256], [512, 256])),
                     "dropout": ("float", (0.0, 0.5)), "shift": ("int", (0, 2))}
    hidden = spec.param("hidden")  # list choices travel through Optuna as JSON strings and come back as lists
    assert hidden.choices() == ["[128]", "[256]", "[512, 256]"] and hidden.decode("[512, 256]") == [512, 256]
    assert spec.param("shift").grid() == [0, 1, 2]


def test_a_recipe_file_is_found_next_to_the_spec(tmp_path, monkeypatch):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "mine.toml").write_text('hidden = [40]\ndataset = "mnist-sample"\n', encoding="utf-8")
    path = tmp_path / "specs" / "s.toml"
    path.write_text('recipe = "mine.toml"\n[space]\nlr = { log = [1e-3, 1e-2] }\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # not the spec's folder
    spec = load_spec(path)
    assert Path(spec.recipe) == tmp_path / "specs" / "mine.toml"
    assert load_recipe(spec.recipe).hidden == (40,)


def test_space_kinds_become_the_matching_optuna_distributions(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('recipe = "mlp"\n[space]\nlr = { log = [1e-4, 1e-1] }\ndropout = { float = [0.0, 0.5] }\n'
                    'shift = { int = [0, 2] }\nhidden = { choice = [[128], [512, 256]] }\n'
                    'optimizer = { choice = ["adam", "sgd"] }\n', encoding="utf-8")
    spec = load_spec(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        values = {p.name: p.suggest(trial) for p in spec.space}
        d = trial.distributions
        assert d["lr"].log and (d["lr"].low, d["lr"].high) == (1e-4, 1e-1)
        assert not d["dropout"].log and (d["dropout"].low, d["dropout"].high) == (0.0, 0.5)
        assert isinstance(d["shift"], optuna.distributions.IntDistribution)
        assert (d["shift"].low, d["shift"].high) == (0, 2)
        assert d["hidden"].choices == ("[128]", "[512, 256]") and values["hidden"] in ([128], [512, 256])
        assert d["optimizer"].choices == ("adam", "sgd") and values["optimizer"] in ("adam", "sgd")
        assert 1e-4 <= values["lr"] <= 1e-1 and 0 <= values["dropout"] <= 0.5 and values["shift"] in (0, 1, 2)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("body, words", [
    ('recipe = "mlp"\nbogus = 1\n[space]\nlr = { log = [1e-3, 1e-1] }\n', ["unknown key", "bogus"]),
    ('[space]\nlr = { log = [1e-3, 1e-1] }\n', ["no base recipe"]),
    ('recipe = "nope"\n[space]\nlr = { log = [1e-3, 1e-1] }\n', ["no recipe named 'nope'"]),
    ('recipe = "mlp"\n[space]\nlrr = { log = [1e-3, 1e-1] }\n', ["[space] lrr is not a recipe field"]),
    ('recipe = "mlp"\n[space]\nlr = { exp = [1e-3, 1e-1] }\n', ["[space] lr", "log = [lo, hi]"]),
    ('recipe = "mlp"\n[space]\nlr = { log = [0, 1e-1] }\n', ["[space] lr", "lo > 0"]),
    ('recipe = "mlp"\n[space]\ndropout = { float = [0.5, 0.1] }\n', ["[space] dropout", "empty"]),
    ('recipe = "mlp"\n[space]\nshift = { int = [0, 1.5] }\n', ["[space] shift", "whole numbers"]),
    ('recipe = "mlp"\n[space]\n', ["[space] is empty"]),
    ('recipe = "mlp"\n[space]\nval_size = { int = [10, 100] }\n', ["val_size cannot be searched"]),
    ('recipe = "mlp"\nsampler = "grid"\n[space]\nlr = { log = [1e-3, 1e-1] }\n', ["grid", "lr is continuous"]),
    ('recipe = "mlp"\nmetric = "test_accuracy"\n[space]\nlr = { log = [1e-3, 1e-1] }\n', ["metric", "val_accuracy"]),
    ('recipe = "mlp"\ntrials = 0\n[space]\nlr = { log = [1e-3, 1e-1] }\n', ["trials must be >= 1"]),
    ('recipe = "mlp"\ntrials = "many"\n[space]\nlr = { log = [1e-3, 1e-1] }\n', ["trials", "whole number"]),
    ('recipe = "mlp"\n[space]\nlr = { log = [1e-3, 1e-1] }\n[fixed]\nlr = 0.1\n', ["lr in both"]),
    ('recipe = "mlp"\n[space]\nlr = { log = [1e-3, 1e-1] }\n[fixed]\nepochs = -1\n', ["[fixed]", "epochs"]),
    ('recipe = "mlp"\n[space]\nlr = { log = [1e-3, 1e-1] }\n[[enqueue]]\nlr = 5.0\n', ["enqueue[0]", "lr = 5.0"]),
    ('recipe = "mlp"\n[space]\nlr = { log = [1e-3, 1e-1] \n', ["not valid TOML"]),
])
def test_bad_specs_name_the_file_and_the_field(tmp_path, body, words):
    path = tmp_path / "bad.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_cli_reports_a_bad_spec_in_one_line(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("digitlab: error: sweep spec") and "missing.toml does not exist" in err
    assert main(["sweep", "--status", str(tmp_path)]) == 1
    assert "not a sweep folder" in capsys.readouterr().err


def test_an_unreachable_storage_is_one_clear_error_without_the_password(tmp_path, capsys):
    spec = write_spec(tmp_path, 'recipe = "mlp"\n[space]\nlr = { log = [1e-3, 1e-2] }\n')
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://digitlab:s3cret@127.0.0.1:{port}/sweeps"
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--storage", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"digitlab: error: cannot open the study storage postgresql://digitlab:***@127.0.0.1:{port}")
    assert "s3cret" not in err and "Traceback" not in err
    assert "s3cret" not in (out / "sweep.json").read_text()
    assert main(["sweep", "--status", str(out)]) == 1  # the study is in the database: --status needs --storage
    assert "pass --storage URL" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ sweeps
def test_three_trial_sweep_end_to_end(tmp_path, capsys):
    spec = write_spec(tmp_path, """
recipe = "mlp"
trials = 3
sampler = "random"
sampler_seed = 1
pruner = "none"
[space]
lr = { log = [1e-3, 1e-2] }
hidden = { choice = [[16], [24, 12]] }
""")
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    trials = result["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2] and {t["state"] for t in trials} == {"COMPLETE"}
    for t in trials:
        run = Path(t["run_dir"])
        assert run.parent == (out / "trials").resolve()
        for name in ("config.json", "history.csv", "model.safetensors", "summary.json", "report.md"):
            assert (run / name).is_file(), name
        config = json.loads((run / "config.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        assert config["lr"] == t["params"]["lr"] and config["hidden"] == t["params"]["hidden"]
        assert config["val_size"] == 1000  # mnist-sample has 10,000 training images: the sweep held out 10 %
        assert t["value"] == summary["val_accuracy"] and t["test_accuracy"] == summary["test_accuracy"]
        assert json.loads((run / "trial.json").read_text())["state"] == "COMPLETE"
    best = max(trials, key=lambda t: t["value"])
    assert result["best"]["number"] == best["number"]
    assert result["plots"] == [str(out / "history.png"), str(out / "importances.png")]
    for plot in result["plots"]:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --status reads the same study back
    assert main(["sweep", "--status", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == trials
    assert main(["sweep", "--status", str(out)]) == 0
    table = capsys.readouterr().out
    assert f"best: trial {best['number']}" in table and table.count("COMPLETE") == 3
    # best.toml is a ready recipe: training it again gives the best trial's model, bit for bit
    again = train_recipe(result["best_recipe"], out_dir=tmp_path / "again", report=False)
    assert again.val_accuracy == best["value"] and again.test_accuracy == best["test_accuracy"]
    # rerunning the finished sweep runs nothing more
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0
    assert trials_of(out) == trials


def test_a_clearly_worse_trial_is_pruned_and_its_folder_says_so(tmp_path):
    # enqueue: a good learning rate first (the pruner's reference), then a hopeless one
    spec = load_spec(write_spec(tmp_path, """
recipe = "mlp"
trials = 2
pruner_startup_trials = 1
[space]
lr = { log = [1e-7, 1e-2] }
[[enqueue]]
lr = 3e-3
[[enqueue]]
lr = 1e-7
""", epochs=3, fixed="hidden = [16]\n"))
    out = tmp_path / "sweep"
    result = run_sweep(spec, out)
    good, bad = result["trials"]
    assert good["state"] == "COMPLETE" and good["epochs"] == 3 and good["params"]["lr"] == 3e-3
    assert bad["state"] == "PRUNED" and bad["params"]["lr"] == 1e-7 and "pruned after epoch 1" in bad["reason"]
    run = Path(bad["run_dir"])
    record = json.loads((run / "trial.json").read_text())
    assert record["state"] == "PRUNED" and "pruned after epoch 1" in record["reason"]
    assert record["value"] == bad["value"] < good["value"]  # the value it was pruned with
    assert len((run / "history.csv").read_text().strip().splitlines()) == 2  # header + the one epoch it ran
    assert not (run / "model.safetensors").exists() and not (run / "summary.json").exists()
    assert result["best"]["number"] == 0


def test_failing_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    spec = load_spec(write_spec(tmp_path, """
recipe = "seed-004-mlp-relu"
sampler = "grid"
sampler_seed = 0
[space]
lr = { choice = [-1.0, 1e30, 0.05] }
""", fixed="hidden = [16]\nactivation = \"tanh\"\n"))
    result = run_sweep(spec, tmp_path / "sweep")  # grid: every point once, 3 trials
    by_lr = {t["params"]["lr"]: t for t in result["trials"]}
    assert sorted(by_lr) == [-1.0, 0.05, 1e30] and len(result["trials"]) == 3
    assert by_lr[-1.0]["state"] == "FAIL" and "lr must be > 0" in by_lr[-1.0]["reason"]  # ConfigError
    assert by_lr[1e30]["state"] == "FAIL" and "loss became" in by_lr[1e30]["reason"]  # TrainingError
    assert json.loads((Path(by_lr[1e30]["run_dir"]) / "trial.json").read_text())["state"] == "FAIL"
    assert by_lr[0.05]["state"] == "COMPLETE" and result["best"]["params"]["lr"] == 0.05


def test_two_local_workers_share_the_study_and_split_the_threads(tmp_path):
    spec = load_spec(write_spec(tmp_path, """
recipe = "mlp"
trials = 4
report = false
pruner = "none"
[space]
lr = { log = [1e-3, 1e-2] }
""", fixed="hidden = [16]\n"))
    out = tmp_path / "sweep"
    result = run_sweep(spec, out, workers=2)
    trials = result["trials"]
    assert 4 <= len(trials) <= 5  # a worker may start one more in the last instant before the other finishes
    assert {t["state"] for t in trials} == {"COMPLETE"}
    assert len({t["run_dir"] for t in trials}) == len(trials)
    assert len({t["host"] for t in trials}) == 1
    expected = max(1, (os.cpu_count() or 1) // 2)
    for t in trials:
        assert json.loads((Path(t["run_dir"]) / "config.json").read_text())["threads"] == expected
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(Path(t["run_dir"]).name for t in trials)
    # asking for more trials continues the same study (in this process: one worker)
    more = run_sweep(spec, out, n_trials=len(trials) + 1)["trials"]
    assert more[:-1] == trials and more[-1]["number"] == len(trials) and more[-1]["state"] == "COMPLETE"


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_the_journal_lock_of_a_killed_worker_is_released_at_once(tmp_path):
    import fcntl

    path = tmp_path / "study.journal.lock"
    code = ("import sys, time; from digitlab.sweep import FlockLock; FlockLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        fd = os.open(path, os.O_RDWR)
        with pytest.raises(BlockingIOError):  # held by the other process
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        holder.kill()
        holder.wait()
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # kill -9 released it: no stale lock to wait out
    os.close(fd)


def _sweep_cmd(spec, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "digitlab", "sweep", str(spec), "--out", str(out), "--quiet", *extra]


def _wait_for(predicate, proc, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the sweep exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


# Trial 1 is the long one (enqueued with 20 epochs), so it is surely still running when it is interrupted.
LONG_SECOND_TRIAL = """
recipe = "mlp"
trials = 3
report = false
pruner = "none"
[space]
epochs = { choice = [1, 20] }
[[enqueue]]
epochs = 1
[[enqueue]]
epochs = 20
[[enqueue]]
epochs = 1
[[enqueue]]
epochs = 1
"""


def test_kill_9_loses_only_the_running_trial_and_a_rerun_continues(tmp_path):
    spec = write_spec(tmp_path, LONG_SECOND_TRIAL, epochs=None, fixed="hidden = [16]\n")
    out = tmp_path / "sweep"
    proc = subprocess.Popen(_sweep_cmd(spec, out), stderr=subprocess.PIPE, text=True)
    second = out / "trials" / "trial-0001" / "history.csv"  # trial 1 has finished an epoch: it is running
    _wait_for(second.is_file, proc, 120, "trial 1 to start")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t["number"]: t for t in trials_of(out)}
    assert before[0]["state"] == "COMPLETE" and before[1]["state"] == "RUNNING" and before[1]["stale"]
    done = subprocess.run(_sweep_cmd(spec, out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = {t["number"]: t for t in trials_of(out)}
    assert after[0] == before[0]  # the finished trial is kept as it was
    assert after[1]["state"] == "FAIL" and "interrupted" in after[1]["reason"]
    assert sorted(n for n, t in after.items() if t["state"] == "COMPLETE") == [0, 2, 3]  # 3 trials, as asked
    # the lost trial's parameters were queued again: one more trial runs them
    more = subprocess.run(_sweep_cmd(spec, out, "--trials", "4"), capture_output=True, text=True, timeout=300)
    assert more.returncode == 0, more.stderr
    retried = trials_of(out)[-1]
    assert retried["number"] == 4 and retried["state"] == "COMPLETE" and retried["params"] == {"epochs": 20}


# ------------------------------------------------------------------------------------------------ PostgreSQL
def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on a free loopback port (Debian's `postgresql` package), as the
    `postgres` user when the tests run as root."""
    pytest.importorskip("psycopg", reason="no PostgreSQL driver (pip install 'psycopg[binary]')")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql; `make test` does that as root)")
    as_user = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="digitlab-pg-"))  # not under pytest's 0700 root-only tmp
    data = folder / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if as_user:
        shutil.chown(folder, "postgres")

    def pg(*args):
        return subprocess.run(as_user + [str(bindir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=120)

    try:
        init = pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr.strip().splitlines()[-1:]}")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = folder / "server.log"
        start = pg("pg_ctl", "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start")
        if start.returncode != 0:
            why = log.read_text(errors="replace") if log.exists() else start.stderr
            pytest.skip(f"the PostgreSQL server did not start: {why.strip().splitlines()[-1:]}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_machines_share_one_study_in_postgresql(tmp_path, postgres_url):
    body = """
recipe = "mlp"
study = "shared"
trials = 8
report = false
pruner = "none"
[space]
lr = { log = [1e-3, 1e-2] }
"""
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    procs = []
    for folder in machines:  # each worker as if on its own machine: own folder, own copy of the spec
        folder.mkdir()
        spec = write_spec(folder, body, epochs=3, fixed="hidden = [16]\n")
        procs.append(subprocess.Popen(_sweep_cmd(spec.name, Path("sweep"), "--storage", postgres_url), cwd=folder,
                                      stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    trials = sweep_status(machines[0] / "sweep", storage=postgres_url)["trials"]
    assert sweep_status(machines[1] / "sweep", storage=postgres_url)["trials"] == trials
    assert 8 <= len(trials) <= 9  # one worker may start a 9th trial in the instant before the 8th is counted
    assert [t["number"] for t in trials] == list(range(len(trials)))
    assert {t["state"] for t in trials} == {"COMPLETE"}
    runs = [Path(t["run_dir"]) for t in trials]
    assert len(set(runs)) == len(runs)  # no trial duplicated
    for folder in machines:  # both machines worked, and every run folder on disk belongs to exactly one trial
        on_disk = sorted((folder / "sweep" / "trials").resolve().iterdir())
        assert on_disk and on_disk == sorted(r for r in runs if r.parent == on_disk[0].parent)
        for run in on_disk:
            record = json.loads((run / "trial.json").read_text())
            assert record["state"] == "COMPLETE" and record["study"] == "shared"
            assert trials[record["number"]]["run_dir"] == str(run)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_fails_the_running_trial_with_its_checkpoint_and_says_how_to_continue(tmp_path, workers):
    spec = write_spec(tmp_path, LONG_SECOND_TRIAL, epochs=None, fixed="hidden = [16]\n")
    out = tmp_path / "sweep"
    # a session of its own: Ctrl-C in a terminal goes to the whole process group, workers included
    proc = subprocess.Popen(_sweep_cmd(spec, out, "--workers", str(workers)), stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for((out / "trials" / "trial-0001" / "history.csv").is_file, proc, 120, "trial 1 to start")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "rerun the same command to continue" in err
    trials = {t["number"]: t for t in trials_of(out)}
    assert trials[1]["state"] == "FAIL" and "interrupted" in trials[1]["reason"]
    if workers == 1:
        assert set(trials) == {0, 1} and trials[0]["state"] == "COMPLETE"
    for t in trials.values():  # with 2 workers the short trial 0 may be finishing when the Ctrl-C comes
        assert t["state"] == "COMPLETE" or (t["state"] == "FAIL" and "interrupted" in t["reason"])
    run = Path(trials[1]["run_dir"])
    assert (run / "checkpoint.safetensors").is_file()  # fit() saved it on the way out
    assert json.loads((run / "trial.json").read_text())["state"] == "FAIL"


def test_val_loss_is_minimised(tmp_path):
    spec = load_spec(write_spec(tmp_path, """
recipe = "mlp"
metric = "val_loss"
trials = 2
report = false
pruner = "none"
[space]
lr = { log = [1e-7, 1e-2] }
[[enqueue]]
lr = 1e-7
[[enqueue]]
lr = 3e-3
""", fixed="hidden = [16]\n"))
    result = run_sweep(spec, tmp_path / "sweep")
    bad, good = result["trials"]
    assert result["direction"] == "minimize" and good["value"] < bad["value"]
    assert result["best"]["number"] == good["number"]
    summary = json.loads((Path(good["run_dir"]) / "summary.json").read_text())
    assert good["value"] == summary["val_loss"]
