"""`digitlab serve`: the draw-a-digit web page and its JSON API on http://127.0.0.1:8000/.

    digitlab serve                              # the most accurate runs/*/model.safetensors, or train the default recipe
    digitlab serve runs/mlp/model.safetensors --port 8080
    digitlab serve --port 0 --json              # a free port; prints {"url": ..., "model": ...} as JSON

The server binds to localhost unless --host says otherwise, prints its URL, and runs until Ctrl-C. It answers
only requests addressed to localhost/127.0.0.1/::1 and the --host name (more with --allow-host), takes POSTs only
from its own pages (more with --allow-origin), and bounds what clients can hold: HEADER_TIMEOUT seconds to send
the request head, 30 s for the body, MAX_CONNECTIONS open connections, keep-alive KEEP_ALIVE seconds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from digitlab.commands._common import add_json_flag, emit
from digitlab.errors import ConfigError, ModelFileError

HEADER_TIMEOUT = 10.0  # seconds a client has to send a request's head (uvicorn has no such timeout itself)
KEEP_ALIVE = 5  # seconds an idle keep-alive connection stays open
MAX_CONNECTIONS = 100  # open connections; past it uvicorn answers 503 and new ones are closed at once


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the draw-a-digit web page and JSON API",
        description="Serve the draw-a-digit page and its JSON API (OpenAPI docs at /docs). With no MODEL, use the "
        "most accurate RUNS_DIR/*/model.safetensors (full-MNIST runs first), or train the default recipe first. "
        "The page can switch to any model in RUNS_DIR.",
    )
    p.add_argument("model", nargs="?", type=Path, default=None, metavar="MODEL",
                   help="a model.safetensors written by digitlab (default: the most accurate in --runs-dir, else train one)")
    p.add_argument("--host", type=str, default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 picks a free one)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to this host name (repeatable; '*' = any, e.g. behind a "
                        "proxy). Default: localhost, 127.0.0.1, ::1 and the --host name")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages of this origin (e.g. http://myapp.example:3000) POST to the API (repeatable)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"),
                   help="where to look for trained runs, and to put a new one (default: runs)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="MNIST folder for the page's \"Try a test digit\" (default: digitlab's usual search, else the "
                        "bundled sample)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port (0..65535)")
    why = ""
    model_path = args.model
    if model_path is None:
        best, count = most_accurate(args.runs_dir)
        if best is not None:
            model_path = Path(best.path)
            split, acc = ("test", best.test_accuracy) if best.test_accuracy is not None else ("validation", best.val_accuracy)
            measured = f"{100 * acc:.2f} % on {best.dataset or 'its'} {split}" if acc is not None else "no accuracy recorded"
            why = f" (the most accurate of {count} in {args.runs_dir}/: {measured})"
    if model_path is None:
        model_path = train_default(args.runs_dir)
    model = load_model(model_path)
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    url = f"http://{_url_host(args.host)}:{port}/"
    emit(args, {"url": url, "model": str(model_path), "host": args.host, "port": port},
         f"digitlab: serving {model_path}{why} at {url}  (API docs: {url}docs; Ctrl-C stops)")
    sys.stdout.flush()  # the URL must show up now, also when stdout is a pipe
    serve_socket(model, sock, allowed_hosts=allowed_hosts(args.host, args.allow_host),
                 allowed_origins=args.allow_origin, runs_dir=args.runs_dir, model_id=Path(model_path).parent.name,
                 data_dir=args.data_dir)
    return 0


def allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """Host header names the server answers: the local names, the bound name (unless a wildcard address)."""
    from digitlab.web.app import LOCAL_HOSTS

    names = list(LOCAL_HOSTS)
    if host not in ("0.0.0.0", "::", ""):
        bare = host.strip("[]").lower()
        names.append(f"[{bare}]" if ":" in bare else bare)  # an IPv6 Host header keeps its brackets
    return names + [h.lower() for h in extra]


def most_accurate(runs_dir: Path):
    """(the best readable run under RUNS_DIR as a digitlab.web.models.RunInfo, or None; how many there are)."""
    from digitlab.web.models import list_runs

    runs = [r for r in list_runs(runs_dir) if r.error is None]
    return (runs[0] if runs else None), len(runs)


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
    import errno
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
        hint = "; another program uses it: choose another --port, or --port 0 for any free one" if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    sock.listen(128)
    return sock


def serve_socket(model, sock, **app_options) -> None:
    """Run uvicorn on an already bound socket until Ctrl-C; `app_options` go to create_app."""
    server = make_server(model, **app_options)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def make_server(model, *, header_timeout: float = HEADER_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                **app_options):
    """The uvicorn.Server for `model`'s app (create_app(model, **app_options)) with digitlab's limits (not started)."""
    import uvicorn

    from digitlab.web import create_app

    app = create_app(model, **app_options)
    config = uvicorn.Config(app, log_level="warning", access_log=False, http=_guarded_h11(header_timeout, max_connections),
                            limit_concurrency=max_connections, timeout_keep_alive=KEEP_ALIVE,
                            h11_max_incomplete_event_size=16 * 1024)
    return uvicorn.Server(config)


def _guarded_h11(header_timeout: float, max_connections: int):
    """uvicorn's h11 protocol, plus what it lacks against slow clients: a connection that has not sent a complete
    request head within `header_timeout` seconds (at the start, or after a response) is closed, and connections
    past `max_connections` are closed as soon as they are accepted (uvicorn's limit_concurrency answers 503 only
    once a request head has arrived)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()
                return
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timer()

        def connection_lost(self, exc) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(header_timeout, self._head_too_slow)

        def _head_too_slow(self) -> None:
            idle = self.cycle is None or self.cycle.response_complete  # no request being answered
            if idle and self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host
