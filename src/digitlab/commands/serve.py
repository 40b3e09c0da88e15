"""`digitlab serve`: the draw-a-digit web page and its JSON API on http://127.0.0.1:8000/.

    digitlab serve                              # newest runs/*/model.safetensors, or train the default recipe first
    digitlab serve runs/mlp/model.safetensors --port 8080
    digitlab serve --port 0 --json              # a free port; prints {"url": ..., "model": ...} as JSON

The server binds to localhost unless --host says otherwise, prints its URL, and runs until Ctrl-C.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from digitlab.commands._common import add_json_flag, emit
from digitlab.errors import ConfigError, ModelFileError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the draw-a-digit web page and JSON API",
        description="Serve the draw-a-digit page and its JSON API (OpenAPI docs at /docs). With no MODEL, use the "
        "newest RUNS_DIR/*/model.safetensors, or train the default recipe first.",
    )
    p.add_argument("model", nargs="?", type=Path, default=None, metavar="MODEL",
                   help="a model.safetensors written by digitlab (default: the newest in --runs-dir, else train one)")
    p.add_argument("--host", type=str, default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 picks a free one)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"),
                   help="where to look for trained runs, and to put a new one (default: runs)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port (0..65535)")
    model_path = args.model if args.model is not None else newest_model(args.runs_dir)
    if model_path is None:
        model_path = train_default(args.runs_dir)
    model = load_model(model_path)
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    url = f"http://{_url_host(args.host)}:{port}/"
    emit(args, {"url": url, "model": str(model_path), "host": args.host, "port": port},
         f"digitlab: serving {model_path} at {url}  (API docs: {url}docs; Ctrl-C stops)")
    sys.stdout.flush()  # the URL must show up now, also when stdout is a pipe
    serve_socket(model, sock)
    return 0


def newest_model(runs_dir: Path) -> Path | None:
    """The most recently written RUNS_DIR/*/model.safetensors, or None when there is none."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return None
    candidates = [p for p in runs_dir.glob("*/model.safetensors") if p.is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, str(p)))


def train_default(runs_dir: Path) -> Path:
    """Train the default recipe into RUNS_DIR/RECIPE-YYYYmmdd-HHMMSS with progress; returns its model path."""
    from digitlab.recipes import DEFAULT_RECIPE
    from digitlab.train import train_recipe

    out_dir = Path(runs_dir) / f"{DEFAULT_RECIPE}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"digitlab: no model in {runs_dir}/; training the {DEFAULT_RECIPE!r} recipe into {out_dir} first",
          flush=True)
    result = train_recipe(DEFAULT_RECIPE, out_dir=out_dir, quiet=False)
    return Path(result.model_path)


def load_model(path: Path):
    import digitlab

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    return digitlab.load(path)


def bind_socket(host: str, port: int):
    """A listening socket, bound before uvicorn starts, so the printed URL is right even for --port 0."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r}: cannot resolve it ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def serve_socket(model, sock) -> None:
    """Run uvicorn on an already bound socket until Ctrl-C."""
    import uvicorn

    from digitlab.web import create_app

    config = uvicorn.Config(create_app(model), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host
