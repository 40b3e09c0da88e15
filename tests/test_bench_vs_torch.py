"""The fairness rules of bench/vs_torch.py and bench/vs_torch_cnn.py (their shared bench/torch_compare.py): each
side's worker gets only its own settings (no timing here)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module", params=["vs_torch.py", "vs_torch_cnn.py"])
def vs_torch(request):
    script = BENCH / request.param
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))  # the bench scripts import their shared bench/torch_compare.py
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture
def launched(vs_torch, monkeypatch):
    """Runs run_worker for real up to subprocess.run and records (command, env) instead of starting it."""
    calls = []

    def fake_run(cmd, env, **kwargs):
        calls.append((cmd, env))
        out = {"side": cmd[cmd.index("--worker") + 1], "epoch_seconds": [2.0, 1.0, 3.0], "test_accuracy": 0.9}
        return subprocess.CompletedProcess(cmd, 0, json.dumps(out) + "\n", "")

    monkeypatch.setattr(vs_torch.torch_compare.subprocess, "run", fake_run)
    for name, value in {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                        "MKL_NUM_THREADS": "1", "KEEP_ME": "yes"}.items():
        monkeypatch.setenv(name, value)
    return calls


def test_defaults_reach_each_worker_without_any_thread_or_wait_setting(vs_torch, launched):
    defaults = vs_torch.torch_compare.configurations("default", cores=2)
    assert [c["side"] for c in defaults] == ["digitlab", "torch"]
    results = [vs_torch.COMPARISON.run_worker(c, "/data", 1, timeout=5) for c in defaults]
    for (cmd, env), config in zip(launched, defaults):
        assert cmd[1] == vs_torch.__file__  # the worker is the bench script itself
        assert cmd[cmd.index("--worker") + 1] == config["side"]
        assert cmd[cmd.index("--threads") + 1] == "0"
        assert env["KEEP_ME"] == "yes"
        assert not [k for k in env if k.startswith(("OMP_", "OPENBLAS_", "MKL_"))], env
    assert [r["seconds"] for r in results] == [2.0, 2.0]  # the median of the worker's epochs


def test_best_settings_go_to_their_own_side_only(vs_torch, launched):
    configs = vs_torch.torch_compare.configurations("best", cores=2)
    for config in configs:
        vs_torch.COMPARISON.run_worker(config, "/data", 1, timeout=5)
    passive = [env for (cmd, env) in launched if env.get("OMP_WAIT_POLICY") == "PASSIVE"]
    assert len(passive) == 2  # PyTorch with 1 and 2 threads
    for (cmd, env), config in zip(launched, configs):
        side = cmd[cmd.index("--worker") + 1]
        if side == "digitlab":
            assert "OMP_WAIT_POLICY" not in env
        assert cmd[cmd.index("--threads") + 1] == str(config["threads"])
    threads = {(c["side"], c["threads"]) for c in configs}
    assert {("digitlab", 1), ("digitlab", 2), ("torch", 1), ("torch", 2)} <= threads


def test_rounds_alternate_which_side_runs_first(vs_torch, launched, capsys):
    configs = vs_torch.torch_compare.configurations("default", cores=2)
    table = vs_torch.COMPARISON.measure(configs, rounds=4, data_dir="/data", epochs=1, timeout=5)
    firsts = [cmd[cmd.index("--worker") + 1] for cmd, _ in launched[::2]]
    assert firsts == ["digitlab", "torch", "digitlab", "torch"]
    assert [row[0]["position"] for row in table] == [1, 2, 1, 2]


def test_report_gives_defaults_and_each_sides_best_separately(vs_torch, launched, capsys):
    import argparse

    configs = vs_torch.torch_compare.configurations("best", cores=2)
    table = vs_torch.COMPARISON.measure(configs, rounds=2, data_dir="/data", epochs=3, timeout=5)
    for row in table:  # digitlab defaults 1.0 s, PyTorch defaults 2.0 s; the fastest: PyTorch 1 thread 1.6 s
        for result, config in zip(row, configs):
            result["seconds"] = {("digitlab", 0): 1.0, ("torch", 0): 2.0, ("torch", 1): 1.6}.get(
                (config["side"], config["threads"]), 3.0)
            result.update(version="v", intra_op_threads=2)
    args = argparse.Namespace(argv=["--mode", "best"], epochs=3, load_before="0")
    figures = vs_torch.COMPARISON.report(configs, table, args, cores=2)
    assert figures["default"]["ratio_of_medians"] == pytest.approx(0.5)
    assert figures["default"]["per_round_ratios"] == [0.5, 0.5]
    assert figures["best"]["digitlab"] == "digitlab defaults"
    assert figures["best"]["torch"] == "PyTorch, set_num_threads(1)"
    assert figures["best"]["ratio_of_medians"] == pytest.approx(1.0 / 1.6)
    assert "**0.50x**" in capsys.readouterr().out
