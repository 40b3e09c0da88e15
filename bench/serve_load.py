"""Load benchmark of `digitlab serve`: N predict requests at concurrency C against a real server on 127.0.0.1.

    .venv/bin/python bench/serve_load.py runs/mlp/model.safetensors
    .venv/bin/python bench/serve_load.py MODEL --requests 2000 --concurrency 16 --data-dir ../shared/data/mnist --json

Starts `digitlab serve MODEL --port 0 --json` as a subprocess (it picks a free port and prints its URL), sends
canvas-like drawings (MNIST test digits as 280x280 white-on-black PNGs, what the page sends) from C threads,
each with its own keep-alive connection, and prints a markdown table: errors (must be 0), throughput and
p50/p99 latency. Bounded: every request has a timeout, and the server is stopped at the end in any case.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="a model.safetensors written by digitlab")
    p.add_argument("--requests", type=int, default=2000, help="predict requests to send (default: 2000)")
    p.add_argument("--concurrency", type=int, default=16, help="client threads sending at once (default: 16)")
    p.add_argument("--warmup", type=int, default=32, help="untimed requests sent first (default: 32)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before one request counts as failed")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the MNIST test digits are (default: digitlab's usual places, else the bundled sample)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a markdown table")
    return p.parse_args(argv)


def drawings(data_dir: Path | None, count: int = 200) -> tuple[list[bytes], list[int]]:
    """MNIST test digits as the page would send them: 280x280 PNG, white ink on black."""
    from PIL import Image

    import digitlab.data

    images, labels = digitlab.data.load("mnist", split="test", data_dir=data_dir, quiet=True)
    bodies = []
    for image in images[:count]:
        buf = io.BytesIO()
        Image.fromarray(image, mode="L").resize((280, 280), Image.Resampling.BILINEAR).save(buf, format="PNG")
        bodies.append(buf.getvalue())
    return bodies, [int(v) for v in labels[:count]]


def start_server(model: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "digitlab", "serve", str(model), "--port", "0", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    while not lines or lines[-1].rstrip() != "}":
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=10)
            raise SystemExit(f"serve_load: `{shlex.join(cmd)}` exited with status {proc.returncode}")
        lines.append(line)
    return proc, json.loads("".join(lines))["url"]


def wait_healthy(url: str, seconds: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url + "healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"serve_load: {url} did not answer /healthz within {seconds:g} s")
        time.sleep(0.1)


def run_load(url: str, bodies: list[bytes], labels: list[int], n: int, concurrency: int, timeout: float) -> dict:
    """Send n requests from `concurrency` threads; returns latencies (s), errors and agreement with labels."""
    import httpx

    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    errors: list[str] = []
    correct = 0

    def worker() -> None:
        nonlocal next_index, correct
        with httpx.Client(base_url=url, timeout=timeout, headers={"content-type": "image/png"}) as client:
            while True:
                with lock:
                    i = next_index
                    next_index += 1
                if i >= n:
                    return
                body = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                try:
                    r = client.post("api/predict", content=body)
                    ok = r.status_code == 200
                    digit = r.json().get("digit") if ok else None
                except (httpx.HTTPError, ValueError) as exc:
                    ok, digit, r = False, None, exc
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                        correct += digit == labels[i % len(labels)]
                    else:
                        errors.append(str(getattr(r, "status_code", r)))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "wall_s": wall, "correct": correct}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] if ordered else float("nan")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.model.is_file():
        raise SystemExit(f"serve_load: {args.model}: no such model file")
    bodies, labels = drawings(args.data_dir)
    proc, url = start_server(args.model)
    try:
        wait_healthy(url)
        run_load(url, bodies, labels, args.warmup, args.concurrency, args.timeout)
        res = run_load(url, bodies, labels, args.requests, args.concurrency, args.timeout)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat = res["latencies"]
    figures = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "errors": len(res["errors"]),
        "wall_s": round(res["wall_s"], 3),
        "throughput_rps": round(len(lat) / res["wall_s"], 1),
        "p50_ms": round(1000 * percentile(lat, 50), 2),
        "p99_ms": round(1000 * percentile(lat, 99), 2),
        "mean_ms": round(1000 * statistics.fmean(lat), 2) if lat else None,
        "agree_with_labels": round(res["correct"] / max(1, len(lat)), 4),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"`{figures['command']}` (server: `digitlab serve MODEL --port 0`, 280x280 PNG drawings)\n")
        print("| requests | concurrency | errors | wall s | throughput req/s | p50 ms | p99 ms | answers = label |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {figures['requests']} | {figures['concurrency']} | {figures['errors']} | {figures['wall_s']} "
              f"| {figures['throughput_rps']} | {figures['p50_ms']} | {figures['p99_ms']} "
              f"| {100 * figures['agree_with_labels']:.1f} % |")
    if res["errors"]:
        print(f"serve_load: {len(res['errors'])} requests failed, e.g. {res['errors'][:5]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
