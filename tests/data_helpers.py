"""Helpers for the data-layer tests: small fake IDX data sets and a real local HTTP server (127.0.0.1).

    arrays = fake_arrays(seed=0)                     # stem -> array, a tiny MNIST-shaped data set
    write_files(tmp_path, arrays, gz=True)           # the four files, either spelling
    spec = spec_for(arrays, mirrors=[srv.url("a/")]) # a DatasetSpec with the right content checksums
    with FileServer({"/a/train-images-idx3-ubyte.gz": gz_bytes, "/b/...": Drop(data)}) as srv: ...
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab.data.idx import idx_bytes
from digitlab.data.sources import DatasetSpec

STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def fake_arrays(n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 digits-shaped data: stem -> array (labels cover all 10 classes)."""
    rng = np.random.default_rng(seed)
    return {
        STEMS["train_images"]: rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        STEMS["train_labels"]: (np.arange(n_train) % 10).astype(np.uint8),
        STEMS["test_images"]: rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        STEMS["test_labels"]: (np.arange(n_test) % 10).astype(np.uint8),
    }


def sha(arr: np.ndarray) -> str:
    return hashlib.sha256(idx_bytes(arr)).hexdigest()


def gz(arr: np.ndarray) -> bytes:
    return gzip.compress(idx_bytes(arr), mtime=0)


def file_name(stem: str, *, gz: bool = True, dotted: bool = False) -> str:
    name = stem.replace("-idx", ".idx", 1) if dotted else stem
    return name + (".gz" if gz else "")


def write_files(directory, arrays, *, gz: bool = True, dotted: bool = False) -> dict[str, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for stem, arr in arrays.items():
        path = directory / file_name(stem, gz=gz, dotted=dotted)
        data = idx_bytes(arr)
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        out[stem] = path
    return out


def spec_for(arrays, *, name: str = "toy", mirrors=(), fallback=None, checksums=True) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        checksums={stem: sha(a) for stem, a in arrays.items()} if checksums else None,
        mirrors=tuple(mirrors),
        fallback=fallback,
    )


@dataclass(frozen=True)
class Drop:
    """Answer 200 with the full Content-Length, send only the first `keep` bytes, then hang up."""

    data: bytes
    keep: int


class FileServer:
    """A real HTTP server on 127.0.0.1 (free port) in a thread. routes: path -> bytes | int status | Drop."""

    def __init__(self, routes: dict):
        self.routes = dict(routes)
        self.hits: list[str] = []

    def url(self, prefix: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{prefix}"

    def __enter__(self) -> FileServer:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                server.hits.append(self.path)
                body = server.routes.get(self.path, 404)
                if isinstance(body, int):
                    self.send_error(body)
                    return
                data = body.data if isinstance(body, Drop) else body
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: body.keep] if isinstance(body, Drop) else data)
                self.wfile.flush()
                if isinstance(body, Drop):
                    self.close_connection = True

            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def files_under(root) -> list[Path]:
    """Every regular file below root (hidden temp files included)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
