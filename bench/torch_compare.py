"""The fair digitlab-vs-PyTorch protocol shared by bench/vs_torch.py (seed-004 MLP) and bench/vs_torch_cnn.py
(cnn-fast): each side in its own worker process with its own library's settings, alternating, medians and
per-round ratios.

A bench script describes itself with a `Comparison` (its file, its two worker functions, what it measures and
its target) and calls `main(comparison)`; the workers are the script itself run with `--worker SIDE`.

The protocol (why: an earlier version ran both sides in one process with OMP_WAIT_POLICY=PASSIVE set for both,
which made PyTorch about 2.7x slower by itself and the result meaningless; see BENCHMARKS.md):
  * every measurement is a fresh worker process (the script with --worker) that prints one JSON line;
  * mode "default": each side with its library's defaults. The workers get this process's environment minus
    the variables that change thread counts or OpenMP / BLAS waiting (OMP_*, OPENBLAS_*, MKL_*, GOMP_*, KMP_*),
    so nothing set for one side, or left in the shell, reaches the other;
  * mode "best": each side also runs under each of its own candidate settings (PyTorch: torch.set_num_threads
    1..cores x OMP_WAIT_POLICY unset / PASSIVE; digitlab: BLAS threads 1..cores), and each side's fastest is
    reported next to its defaults. A setting only ever goes to the side it belongs to;
  * --rounds rounds; every round runs every configuration once, the order rotating from round to round, so a
    change in the machine's load hits both sides alike; a round's figure for a configuration is the median of
    its epochs;
  * printed: every round, the medians, the ratio of the medians, the per-round ratios and their median, and
    both test accuracies (the check that both sides learn the same thing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist"
# Environment variables through which a shell (or a previous bench) would change a library's threading; removed
# from every worker's environment, so that "default" means the library's own choice.
THREAD_ENV_PREFIXES = ("OMP_", "OPENBLAS_", "GOTO", "MKL_", "GOMP_", "KMP_", "VECLIB_", "NUMEXPR_", "BLIS_")


@dataclass(frozen=True)
class Comparison:
    """One bench: `script` runs a side with `--worker SIDE`; workers[side](data_dir, epochs, threads) -> dict
    with side, version, epoch_seconds (list), test_accuracy, settings (and intra_op_threads for torch)."""

    script: Path
    workers: dict[str, Callable[[str, int, int], dict]]
    what: str  # e.g. "seed-004 epoch time"
    target: float  # digitlab / PyTorch epoch ratio to reach
    rounds: int = 7
    epochs: int = 2
    doc: str = ""

    def run_worker(self, config: dict, data_dir: str, epochs: int, timeout: float) -> dict:
        return run_worker(self.script, config, data_dir, epochs, timeout)

    def measure(self, configs: list[dict], rounds: int, data_dir: str, epochs: int, timeout: float):
        return measure(self.script, configs, rounds, data_dir, epochs, timeout)

    def report(self, configs: list[dict], table: list[list[dict]], args, cores: int) -> dict:
        return report(self, configs, table, args, cores)


# ----------------------------------------------------------------------------------------------- worker helpers
def digitlab_worker(recipe: str, data_dir: str, epochs: int, threads: int, warmup_steps: int,
                    overrides: dict | None = None) -> dict:
    """Train `recipe` for `epochs` epochs with digitlab's own training, after `warmup_steps` steps of a throw-away
    run (thread pools, caches); threads 0 = the recipe's automatic choice."""
    import tempfile

    import numpy as np

    from digitlab.train import train_recipe

    base = {**(overrides or {}), **({"threads": threads} if threads else {})}
    with tempfile.TemporaryDirectory() as tmp:
        train_recipe(recipe, {**base, "steps": warmup_steps}, out_dir=Path(tmp) / "warmup", data_dir=data_dir,
                     report=False)
        result = train_recipe(recipe, {**base, "epochs": epochs}, out_dir=Path(tmp) / "run", data_dir=data_dir,
                              report=False)
    return {"side": "digitlab", "version": f"numpy {np.__version__}", "epoch_seconds": result.epoch_seconds,
            "test_accuracy": result.test_accuracy,
            "settings": f"BLAS threads {threads}" if threads else "defaults (recipe threads = automatic)"}


def torch_result(torch, epoch_seconds: list, accuracy: float, threads: int) -> dict:
    """A PyTorch worker's JSON answer: its times, accuracy and the threading it ran with."""
    return {"side": "torch", "version": f"torch {torch.__version__}", "epoch_seconds": epoch_seconds,
            "test_accuracy": accuracy, "intra_op_threads": torch.get_num_threads(),
            "settings": (f"torch.set_num_threads({threads})" if threads else "defaults")
            + (f", OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}" if "OMP_WAIT_POLICY" in os.environ else "")}


def clean_env() -> dict:
    """This process's environment without the thread / wait-policy variables of any library."""
    return {k: v for k, v in os.environ.items() if not k.startswith(THREAD_ENV_PREFIXES)}


def configurations(mode: str, cores: int) -> list[dict]:
    """[{side, label, threads, env}]: the defaults of both sides, then (mode "best") each side's candidates."""
    configs = [{"side": "digitlab", "label": "digitlab defaults", "threads": 0, "env": {}},
               {"side": "torch", "label": "PyTorch defaults", "threads": 0, "env": {}}]
    if mode == "best":
        for t in range(1, cores + 1):
            configs.append({"side": "digitlab", "label": f"digitlab, {t} BLAS thread(s)", "threads": t, "env": {}})
            for policy in (None, "PASSIVE"):
                configs.append({"side": "torch", "threads": t, "env": {"OMP_WAIT_POLICY": policy} if policy else {},
                                "label": f"PyTorch, set_num_threads({t})"
                                         + (f", OMP_WAIT_POLICY={policy}" if policy else "")})
    return configs


def run_worker(script: Path, config: dict, data_dir: str, epochs: int, timeout: float) -> dict:
    """Run one configuration of `script` in a fresh process; its result with `seconds` = median epoch."""
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", config["side"], "--epochs", str(epochs),
           "--threads", str(config["threads"]), "--data-dir", data_dir]
    done = subprocess.run(cmd, env={**clean_env(), **config["env"]}, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{Path(script).name}: worker {config['label']!r} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["seconds"] = statistics.median(result["epoch_seconds"])
    return result


def measure(script: Path, configs: list[dict], rounds: int, data_dir: str, epochs: int,
            timeout: float) -> list[list[dict]]:
    """rounds x configs results; round r runs the configurations rotated by r (the defaults pair alternates)."""
    table = [[None] * len(configs) for _ in range(rounds)]
    for r in range(rounds):
        order = [(r + k) % len(configs) for k in range(len(configs))]
        for k in order:
            table[r][k] = run_worker(script, configs[k], data_dir, epochs, timeout)
            table[r][k]["position"] = order.index(k) + 1
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{configs[k]['label']} {table[r][k]['seconds']:.3f} s"
                                                      for k in order), file=sys.stderr, flush=True)
    return table


def _percents(results: list[dict]) -> str:
    return ", ".join(f"{100 * r['test_accuracy']:.2f}" for r in results)


def report(comparison: Comparison, configs, table, args, cores: int) -> dict:
    dl = [row[0] for row in table]
    th = [row[1] for row in table]
    dl_med = statistics.median(r["seconds"] for r in dl)
    th_med = statistics.median(r["seconds"] for r in th)
    ratios = [d["seconds"] / t["seconds"] for d, t in zip(dl, th)]
    print(f"## {comparison.what}, digitlab vs PyTorch (CPU float32), each side in its own process\n")
    print(f"`python bench/{Path(comparison.script).name} {' '.join(args.argv)}` — "
          f"{platform.machine()}, {cores} cores, {dl[0]['version']}, {th[0]['version']}, "
          f"{args.epochs} epoch(s) per process, {len(table)} rounds, load average before: {args.load_before}\n")
    print(f"### Each library's defaults (PyTorch: {th[0]['intra_op_threads']} intra-op threads, OMP_WAIT_POLICY "
          f"unset; digitlab: its recipe's automatic BLAS threads)\n")
    print("| round | digitlab s/epoch | PyTorch s/epoch | ratio | ran first |")
    print("|---|---|---|---|---|")
    for i, (d, t, q) in enumerate(zip(dl, th, ratios), 1):
        first = "digitlab" if d["position"] < t["position"] else "PyTorch"
        print(f"| {i} | {d['seconds']:.3f} | {t['seconds']:.3f} | {q:.2f}x | {first} |")
    print(f"| **median** | **{dl_med:.3f}** | **{th_med:.3f}** | **{dl_med / th_med:.2f}x** | |")
    print(f"\nratio of the medians {dl_med / th_med:.2f}x; per-round ratios {min(ratios):.2f}-{max(ratios):.2f}x, "
          f"median {statistics.median(ratios):.2f}x (target <= {comparison.target:.2f}x)")
    dl_acc = statistics.median(r["test_accuracy"] for r in dl)
    th_acc = statistics.median(r["test_accuracy"] for r in th)
    similar = abs(dl_acc - th_acc) <= 0.01
    print(f"test accuracy after {args.epochs} epoch(s), median over rounds: digitlab {100 * dl_acc:.2f} %, "
          f"PyTorch {100 * th_acc:.2f} % ({'similar' if similar else 'NOT similar: the comparison is suspect'}); "
          f"per round: digitlab {_percents(dl)}, PyTorch {_percents(th)}")
    out = {"default": {"digitlab_s": dl_med, "torch_s": th_med, "ratio_of_medians": dl_med / th_med,
                       "per_round_ratios": ratios, "digitlab_accuracy": dl_acc, "torch_accuracy": th_acc,
                       "rounds": [[d["seconds"], t["seconds"]] for d, t in zip(dl, th)]}}
    if len(configs) > 2:
        print("\n### Each side's own settings (best settings)\n")
        print("| configuration | median s/epoch | rounds |")
        print("|---|---|---|")
        medians = []
        for k, config in enumerate(configs):
            runs = [row[k]["seconds"] for row in table]
            medians.append(statistics.median(runs))
            print(f"| {config['label']} | {medians[-1]:.3f} | {', '.join(f'{s:.3f}' for s in runs)} |")
        best = {side: min((k for k, c in enumerate(configs) if c["side"] == side), key=lambda k: medians[k])
                for side in ("digitlab", "torch")}
        b_dl, b_th = best["digitlab"], best["torch"]
        best_ratios = [row[b_dl]["seconds"] / row[b_th]["seconds"] for row in table]
        print(f"\nbest of each side: {configs[b_dl]['label']} {medians[b_dl]:.3f} s vs {configs[b_th]['label']} "
              f"{medians[b_th]:.3f} s = **{medians[b_dl] / medians[b_th]:.2f}x** (per-round ratios "
              f"{min(best_ratios):.2f}-{max(best_ratios):.2f}x, median {statistics.median(best_ratios):.2f}x)")
        out["best"] = {"digitlab": configs[b_dl]["label"], "torch": configs[b_th]["label"],
                       "ratio_of_medians": medians[b_dl] / medians[b_th], "per_round_ratios": best_ratios,
                       "medians": {c["label"]: m for c, m in zip(configs, medians)}}
    return out


def main(comparison: Comparison, argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = Path(comparison.script).stem
    parser = argparse.ArgumentParser(description=comparison.doc.splitlines()[0] if comparison.doc else None)
    parser.add_argument("--rounds", type=int, default=comparison.rounds,
                        help=f"rounds; each runs every configuration (default: {comparison.rounds})")
    parser.add_argument("--epochs", type=int, default=comparison.epochs,
                        help=f"epochs per worker process (default: {comparison.epochs})")
    parser.add_argument("--mode", choices=["default", "best"], default="best",
                        help="default: each library's defaults only; best: also each side's own candidate "
                             "settings, reported separately (default: best)")
    parser.add_argument("--data-dir", type=str, default=str(DEFAULT_DATA), help="MNIST folder")
    parser.add_argument("--json", type=str, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per worker (default: 900)")
    parser.add_argument("--worker", choices=sorted(comparison.workers), default=None,
                        help="run one side in this process and print one JSON line (used by the driver)")
    parser.add_argument("--threads", type=int, default=0, help="worker only: threads (0 = the library's default)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.epochs < 1:
        parser.error("--rounds and --epochs must be >= 1")
    if not Path(args.data_dir).is_dir():
        print(f"{name}: no MNIST at {args.data_dir} (pass --data-dir)", file=sys.stderr)
        return 2
    if args.worker:
        print(json.dumps(comparison.workers[args.worker](args.data_dir, args.epochs, args.threads)))
        return 0
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        print(f"{name}: PyTorch is not installed; run: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    args.argv, args.load_before = argv, " / ".join(f"{x:.2f}" for x in os.getloadavg())
    configs = configurations(args.mode, cores)
    table = measure(comparison.script, configs, args.rounds, args.data_dir, args.epochs, args.timeout)
    figures = comparison.report(configs, table, args, cores)
    print(f"\nload average after: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0
